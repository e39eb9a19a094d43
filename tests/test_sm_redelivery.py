"""What an ended or resumed stream-managed session's unacknowledged stanzas become.

XEP-0198 §4: treated as stanzas for an unavailable resource, never twice on
a resource that already has them, and stamped (XEP-0203) with the time the
server first queued them; the same stamp on a resumption. XEP-0352 §5.2: a
resumed stream starts active.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime

import pytest
from support.archive import carbons
from support.client import clark, closed_after, to_text
from support.im import User, body_is, presence
from support.server import ServerProcess
from support.sm import (
    MECHANISM,
    PLUGINS,
    SMClient,
    assert_resumed_without_repeats,
    chat_to,
    come_online,
    plain_online,
    received_bodies,
    sm,
    sm_online,
    superseded_updates_then_chat,
)

RESUME_TIMEOUT = 4
NS_DELAY = "urn:xmpp:delay"
NS_CARBONS = "urn:xmpp:carbons:2"
INACTIVE = "<inactive xmlns='urn:xmpp:csi:0'/>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("server"),
        server={"plugins": [*PLUGINS, "carbons"]},
        plugin={"sm": {"resume_timeout": RESUME_TIMEOUT}},
    )
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture
def clients(server: ServerProcess) -> Iterator:
    yield from closed_after(lambda cls=SMClient: cls.for_server(server))


def gone(watcher: User, full: str) -> None:
    """Wait until the waiting session has timed out (its unavailable presence)."""
    watcher.expect(presence(full, "unavailable"), timeout=RESUME_TIMEOUT + 5)
    watcher.sync()


def stamp_of(message: ET.Element) -> ET.Element:
    delays = message.findall(clark(NS_DELAY, "delay"))
    assert len(delays) == 1, to_text(message)
    return delays[0]


def assert_stamped_near(message: ET.Element, when: float, host: str) -> None:
    """One <delay/> from the server, stamped to the second of C{when} (not later)."""
    delay = stamp_of(message)
    assert delay.get("from") == host, to_text(message)
    stamp = datetime.strptime(delay.get("stamp"), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert when - 1.5 <= stamp <= when + 1, (to_text(message), when)


def phone_laptop_and_bob(clients, server: ServerProcess):
    """Alice online on a phone with SM and a laptop without; bob online to write to her."""
    alice_account, bob_account = server.new_account(), server.new_account()
    phone = sm_online(clients, alice_account)
    laptop = plain_online(clients, alice_account)
    return alice_account, phone, laptop, plain_online(clients, bob_account)


def test_bare_jid_message_is_not_delivered_twice_to_the_other_resource(
    clients, server: ServerProcess
) -> None:
    alice_account, phone, laptop, bob = phone_laptop_and_bob(clients, server)
    chat_to(bob, alice_account[0], "to-both")
    phone.expect(body_is("to-both"))
    laptop.expect(body_is("to-both"))
    phone.drop()  # never acknowledged
    gone(laptop, phone.jid)
    laptop.assert_nothing(body_is("to-both"), wait=0.5)
    # Nor was it stored: the laptop, still available, has it.
    laptop.client.close()
    again = plain_online(clients, alice_account, "again")
    assert "to-both" not in received_bodies(again.client, 0.5)


def test_bare_jid_message_goes_offline_when_no_other_resource_has_it(
    clients, server: ServerProcess
) -> None:
    alice_account, phone, laptop, bob = phone_laptop_and_bob(clients, server)
    sent_at = time.time()
    chat_to(bob, alice_account[0], "stored-once")
    phone.expect(body_is("stored-once"))
    laptop.expect(body_is("stored-once"))
    laptop.client.close()  # leaves: nobody else has it any more
    phone.drop()
    watcher = plain_online(clients, (bob.bare, bob.password), "watcher")
    time.sleep(RESUME_TIMEOUT + 1)
    watcher.sync()
    again = plain_online(clients, alice_account, "again")
    messages = [e for e in again.received(0.5) if body_is("stored-once")(e)]
    assert len(messages) == 1
    assert_stamped_near(messages[0], sent_at, server.host)  # when queued, not when re-routed


def test_message_to_the_full_jid_is_not_repeated_to_a_carbons_resource(
    clients, server: ServerProcess
) -> None:
    alice_account, bob_account = server.new_account(), server.new_account()
    phone = sm_online(clients, alice_account)
    laptop = plain_online(clients, alice_account)
    carbons(laptop)
    bob = plain_online(clients, bob_account)
    chat_to(bob, phone.jid, "direct")
    phone.expect(body_is("direct"))
    laptop.expect(lambda e: e.find(clark(NS_CARBONS, "received")) is not None)
    phone.drop()
    gone(laptop, phone.jid)
    laptop.assert_nothing(body_is("direct"), wait=0.5)


def test_message_to_the_full_jid_goes_to_another_resource_stamped(
    clients, server: ServerProcess
) -> None:
    alice_account, bob_account = server.new_account(), server.new_account()
    phone = sm_online(clients, alice_account)
    laptop = plain_online(clients, alice_account)  # no carbons: it never saw the message
    bob = plain_online(clients, bob_account)
    sent_at = time.time()
    chat_to(bob, phone.jid, "for-phone")
    phone.expect(body_is("for-phone"))
    phone.drop()
    message = laptop.expect(body_is("for-phone"), timeout=RESUME_TIMEOUT + 5)
    assert_stamped_near(message, sent_at, server.host)


def test_carbon_copies_of_an_ended_session_are_not_rerouted(clients, server: ServerProcess) -> None:
    alice_account, bob_account = server.new_account(), server.new_account()
    phone = sm_online(clients, alice_account)
    carbons(User(phone, *alice_account))
    laptop = plain_online(clients, alice_account)
    bob = plain_online(clients, bob_account)
    chat_to(laptop, bob.client.jid, "from-laptop")
    bob.expect(body_is("from-laptop"))
    phone.expect(lambda e: e.find(clark(NS_CARBONS, "sent")) is not None)
    phone.drop()
    gone(laptop, phone.jid)
    laptop.assert_nothing(lambda e: e.find(clark(NS_CARBONS, "sent")) is not None, wait=0.5)


def test_resumed_stanzas_carry_the_time_they_were_first_queued(
    clients, server: ServerProcess
) -> None:
    alice_account, bob_account = server.new_account(), server.new_account()
    phone = sm_online(clients, alice_account)
    User(phone, *alice_account).received(0.1)
    phone.ack()
    bob = plain_online(clients, bob_account)
    first_at = time.time()
    chat_to(bob, phone.jid, "seen-not-acked")
    phone.expect(body_is("seen-not-acked"))
    phone.drop()
    time.sleep(1.2)
    queued_at = time.time()
    chat_to(bob, phone.jid, "while-away")
    bob.sync()
    time.sleep(1.5)
    phone.reconnect(*alice_account)
    # As if that message was lost with the connection: it is sent again.
    assert phone.resume(h=phone.handled - 1).tag == sm("resumed")
    assert_stamped_near(phone.expect(body_is("seen-not-acked")), first_at, server.host)
    assert_stamped_near(phone.expect(body_is("while-away")), queued_at, server.host)
    # What is sent live after the resumption is not delayed.
    chat_to(bob, phone.jid, "live")
    assert phone.expect(body_is("live")).find(clark(NS_DELAY, "delay")) is None


def test_a_resumed_stream_starts_active(clients, server: ServerProcess) -> None:
    """XEP-0352 §5.2: the CSI state is not restored on resumption; the client
    is active (nothing held) until it says <inactive/> again."""
    alice_account = server.new_account()
    phone = sm_online(clients, alice_account)
    laptop = plain_online(clients, alice_account)
    phone.expect(presence(laptop.client.jid))
    phone.send(INACTIVE)
    phone.request()  # taken before the laptop's update (an <r/> flushes nothing)
    laptop.send("<presence><show>away</show></presence>")
    laptop.sync()
    # Held (no ping here: an iq would flush what is held).
    assert not [e for e in phone.drain(0.5) if presence(laptop.client.jid)(e)]
    phone.drop()
    phone.reconnect(*alice_account)
    assert phone.resume().tag == sm("resumed")
    phone.expect(presence(laptop.client.jid))  # held before: re-sent at once
    laptop.send("<presence><show>xa</show></presence>")
    update = phone.expect(presence(laptop.client.jid))
    assert update.findtext(clark("jabber:client", "show")) == "xa"


def inactive_phone(clients, account, order: str) -> tuple[SMClient, User]:
    """A stream-managed phone that went inactive (XEP-0352) before or after <enable/>,
    and the account's laptop, whose presence it has."""
    phone: SMClient = clients()
    phone.login(account[0], account[1], "phone", MECHANISM)
    if order == "enable-first":
        assert phone.enable().tag == sm("enabled")
    come_online(phone)
    laptop = plain_online(clients, account)
    phone.expect(presence(laptop.client.jid))
    phone.send(INACTIVE)
    if order == "inactive-first":
        assert phone.enable().tag == sm("enabled")
    else:
        phone.request()  # a round trip: the server has taken <inactive/>
    return phone, laptop


@pytest.mark.parametrize("order", ["enable-first", "inactive-first"])
def test_updates_dropped_while_inactive_are_not_resent_on_resumption(
    clients, server: ServerProcess, order: str
) -> None:
    """Stream management counts what reaches the wire: a presence update the
    client state superseded is neither counted nor kept, so acking all it got
    leaves nothing to send again."""
    alice_account, bob_account = server.new_account(), server.new_account()
    phone, laptop = inactive_phone(clients, alice_account, order)
    bob = plain_online(clients, bob_account)
    superseded_updates_then_chat(phone, laptop, bob, "once")
    assert_resumed_without_repeats(phone, alice_account, body_is("once"), presence(laptop.jid))


def test_updates_dropped_while_inactive_leave_nothing_to_reroute(
    clients, server: ServerProcess
) -> None:
    """The same when the session ends: the message the client acknowledged is
    not delivered again to another resource."""
    alice_account, bob_account = server.new_account(), server.new_account()
    phone, laptop = inactive_phone(clients, alice_account, "enable-first")
    bob = plain_online(clients, bob_account)
    superseded_updates_then_chat(phone, laptop, bob, "acked")
    phone.close()
    gone(laptop, phone.jid)
    laptop.assert_nothing(body_is("acked"), wait=0.5)
