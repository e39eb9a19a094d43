"""imserver's own stream management rules: limits, shutdown, counters, re-routing.

The scenarios both servers share are in test_sm.py; these check what only
imserver's configuration and lifecycle decide, plus the counter arithmetic
in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.client import RawClient, closed_after, stanza_error, to_text
from support.im import AccountPool, User, body_is, presence
from support.server import ServerProcess
from support.sm import (
    MECHANISM,
    NS_SM,
    PLUGINS,
    SMClient,
    chat_to,
    come_online,
    received_bodies,
    sm,
    sm_online,
)

from plugins.sm import MOD, AckedStream

MAX_UNACKED = 8
CHATSTATES = "http://jabber.org/protocol/chatstates"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("server"),
        server={"plugins": PLUGINS},
        plugin={"sm": {"resume_timeout": 60, "max_unacked": MAX_UNACKED}},
    )
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture
def clients(server: ServerProcess) -> Iterator:
    yield from closed_after(lambda cls=SMClient, target=None: cls.for_server(target or server))


def plain(clients, account, resource: str = "desk", target=None) -> User:
    client = clients(RawClient, target)
    client.login(account[0], account[1], resource, MECHANISM)
    come_online(client)
    return User(client, *account)


def test_too_many_unacked_stanzas_close_the_stream_and_nothing_is_lost(
    clients, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = sm_online(clients, alice_account)  # never acks
    bob = plain(clients, bob_account)
    sent = [f"n{i}" for i in range(MAX_UNACKED + 4)]
    chat_to(bob, alice.jid, *sent)
    alice.expect_stream_error("policy-violation")
    again = clients(RawClient)
    again.login(alice_account[0], alice_account[1], "phone", MECHANISM)
    come_online(again)
    assert received_bodies(again, 0.5) == sent


def test_unacked_message_goes_to_another_resource(clients, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    phone = sm_online(clients, alice_account)
    desk = plain(clients, alice_account, "desk")
    bob = plain(clients, bob_account)
    chat_to(bob, phone.jid, "for-phone")
    phone.expect(body_is("for-phone"))
    phone.close()  # ends the session without acking: the desk resource gets it
    desk.expect(body_is("for-phone"))


def test_unanswered_iq_to_an_ended_session_bounces(clients, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = sm_online(clients, alice_account)
    bob = plain(clients, bob_account)
    bob.send(f"<iq type='get' id='v1' to='{alice.jid}'><query xmlns='jabber:iq:version'/></iq>")
    alice.expect(lambda e: e.get("id") == "v1")
    alice.close()
    error = bob.expect(lambda e: e.get("id") == "v1")
    assert stanza_error(error) == ("cancel", "service-unavailable"), to_text(error)


def test_waiting_sessions_end_at_shutdown_and_their_messages_are_kept(clients, make_server) -> None:
    target = make_server(server={"plugins": PLUGINS}, plugin={"sm": {"resume_timeout": 60}})
    alice_account, bob_account = target.new_account(), target.new_account()
    alice = clients(SMClient, target)
    alice.login(alice_account[0], alice_account[1], "phone", MECHANISM)
    assert alice.enable().tag == sm("enabled")
    come_online(alice)
    bob = plain(clients, bob_account, target=target)
    chat_to(bob, alice.jid, "before-shutdown")
    alice.expect(body_is("before-shutdown"))
    alice.drop()
    bob.sync()
    bob.client.close()
    target.restart()
    again = clients(RawClient, target)
    again.login(alice_account[0], alice_account[1], "phone", MECHANISM)
    come_online(again)
    assert received_bodies(again, 0.5) == ["before-shutdown"]


def test_presence_stays_while_waiting(clients, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = sm_online(clients, alice_account)
    bob = plain(clients, bob_account)
    for x, x_bare, y, y_bare in (
        (alice, alice_account[0], bob.client, bob.bare),
        (bob.client, bob.bare, alice, alice_account[0]),
    ):
        x.send(f"<presence to='{y_bare}' type='subscribe'/>")
        y.expect(presence(x_bare, "subscribe"))
        y.send(f"<presence to='{x_bare}' type='subscribed'/>")
    bob.expect(presence(alice.jid))
    alice.drop()
    bob.assert_nothing(presence(alice.jid, "unavailable"), wait=0.5)
    # A probe still finds the waiting resource available (RFC 6121 §4.3.2).
    other = plain(clients, bob_account, "probe")
    other.expect(presence(alice.jid))


# -- counters in memory -------------------------------------------------------------


class _Transport:
    secure = True
    peer_address = "127.0.0.1"
    closed = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


class _Manager:
    max_unacked = 1000


class _Session:
    stanzas_in = 0


def test_answers_to_misplaced_requests_are_not_counted(clients, pool: AccountPool) -> None:
    """A <failed/> for a second <enable/> or for a <resume/> on a bound stream is
    not a stanza (XEP-0198 §4 counts stanzas): not counted, so not sent again."""
    (account,) = pool.take(1)
    alice = sm_online(clients, account)
    alice.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    alice.expect(sm("failed"))
    alice.send(f"<resume xmlns='{NS_SM}' previd='{alice.sm_id}' h='{alice.handled}'/>")
    alice.expect(sm("failed"))
    alice.ack()
    alice.request()
    alice.drop()
    alice.reconnect(*account)
    assert alice.resume().tag == sm("resumed")
    again = [e for e in alice.drain(0.5) if e.tag == sm("failed")]
    assert not again, [to_text(e) for e in again]


def test_counters_wrap_at_2_to_the_32() -> None:
    acked = AckedStream(_Manager(), _Session(), _Transport())
    acked.acked = MOD - 2
    acked.queue.extend([(b"<message/>", 0.0)] * 4)
    assert acked.sent == 2
    assert acked.ack(MOD - 1)  # one handled
    assert len(acked.queue) == 3
    assert acked.ack(1)  # wrapped past zero: two more
    assert len(acked.queue) == 1
    assert not acked.ack(3)  # more than was sent
    assert acked.ack(2) and not acked.queue
    session = _Session()
    session.stanzas_in = 5
    acked = AckedStream(_Manager(), session, _Transport())
    session.stanzas_in = 5 + MOD + 3
    assert acked.handled == 3


def test_stanzas_held_for_an_inactive_client_are_resent_on_resume(
    clients, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = sm_online(clients, alice_account)
    bob = plain(clients, bob_account)
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    chat_to(bob, alice.jid, "seen")
    alice.expect(body_is("seen"))
    bob.send(f"<message to='{alice.jid}' type='chat'><composing xmlns='{CHATSTATES}'/></message>")
    bob.sync()
    assert alice.request() == 2  # <a/> passes while the chat state is held
    alice.ack()
    alice.drop()
    alice.reconnect(*alice_account)
    assert alice.resume().tag == sm("resumed")
    held = alice.expect(
        lambda e: e.find("{http://jabber.org/protocol/chatstates}composing") is not None
    )
    assert held.get("from") == bob.jid
