"""Offline messages (RFC 6121 §8.5.2.2.1, XEP-0160) with XEP-0203 delay stamps."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from support.client import MESSAGE, NS_CLIENT, RawClient, stanza_error, to_text
from support.im import NS_DELAY, AccountPool, User, canonical, login, message, online, presence
from support.server import ServerProcess

MakeClient = Callable[..., RawClient]
DELAY = f"{{{NS_DELAY}}}delay"


#: limits.offline_messages of this module's server (small, so the limit is easy to reach).
OFFLINE_LIMIT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """This module's server: the default configuration but a small offline store."""
    process = ServerProcess(
        tmp_path_factory.mktemp("server"), limits={"offline_messages": OFFLINE_LIMIT}
    )
    try:
        yield process.start()
    finally:
        process.kill()


def body(stanza: ET.Element) -> str | None:
    return stanza.findtext(f"{{{NS_CLIENT}}}body")


def check_delay(stanza: ET.Element, sent_after: datetime) -> None:
    """One XEP-0203 delay, stamped (UTC, XEP-0082) between sending and now, by the server."""
    delays = stanza.findall(DELAY)
    assert len(delays) == 1, to_text(stanza)
    stamp = delays[0].get("stamp") or ""
    assert stamp.endswith("Z"), stamp
    when = datetime.fromisoformat(stamp)
    assert sent_after - timedelta(seconds=1) <= when <= datetime.now(UTC), stamp
    assert delays[0].get("from") == "localhost"


def come_online(user: User, priority: int | None = None) -> None:
    user.roster()
    user.available(priority=priority)


def test_stored_then_delivered_in_order_once(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    start = datetime.now(UTC).replace(microsecond=0)
    sent = [
        f"<message id='o1' type='chat' to='{bob_account[0]}'><body>first</body>"
        "<thread>t-1</thread></message>",
        f"<message id='o2' to='{bob_account[0]}'><subject>s</subject><body>second</body></message>",
        f"<message id='o3' type='normal' to='{bob_account[0]}'><body>third</body>"
        "<x xmlns='urn:example:unknown' a='b'/></message>",
    ]
    for xml in sent:
        alice.send(xml)
    alice.assert_nothing()  # stored, not bounced

    bob = login(make_client, bob_account)
    bob.assert_nothing()  # nothing before initial presence
    come_online(bob)
    got = [bob.expect(message(alice.jid)) for _ in sent]
    assert [m.get("id") for m in got] == ["o1", "o2", "o3"]
    for stanza, xml in zip(got, sent, strict=True):
        check_delay(stanza, start)
        assert stanza.get("to") == bob.bare
        original = ET.fromstring(xml.replace("<message ", f"<message xmlns='{NS_CLIENT}' ", 1))
        assert [canonical(c) for c in stanza if c.tag != DELAY] == [canonical(c) for c in original]
    bob.assert_nothing()
    # Delivered means removed: the next login gets nothing.
    online(make_client, bob_account).assert_nothing(message())


def test_not_delivered_at_negative_priority(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    alice.send(f"<message type='chat' to='{bob_account[0]}'><body>later</body></message>")
    alice.assert_nothing()

    shy = login(make_client, bob_account, "shy")
    come_online(shy, priority=-1)
    shy.assert_nothing(message())
    # A negative-priority resource does not count: new messages are stored too.
    alice.send(f"<message type='chat' to='{bob_account[0]}'><body>still later</body></message>")
    alice.assert_nothing()
    shy.assert_nothing(message())

    bob = login(make_client, bob_account, "main")
    come_online(bob, priority=0)
    assert [body(bob.expect(message(alice.jid))) for _ in range(2)] == ["later", "still later"]
    shy.assert_nothing(message())


def test_delivered_when_a_negative_priority_is_raised(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """XEP-0160 §3: stored messages go out once a resource can get bare-JID messages,
    which for an available resource at -1 is when it raises its priority to 0 or more."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    alice.send(f"<message type='chat' to='{bob_account[0]}'><body>kept</body></message>")
    alice.assert_nothing()

    bob = login(make_client, bob_account, "shy")
    come_online(bob, priority=-1)
    bob.assert_nothing(message())
    bob.send("<presence><priority>1</priority></presence>")
    assert body(bob.expect(message(alice.jid))) == "kept"
    # Changing presence again delivers nothing twice.
    bob.send("<presence><show>away</show><priority>2</priority></presence>")
    bob.assert_nothing(message())


def test_connected_but_not_available_counts_as_offline(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """§8.5.2: a resource that has not sent initial presence is not available, so a
    message for the bare JID is stored (no error) and arrives with initial presence."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = login(make_client, bob_account)
    bob.roster()
    start = datetime.now(UTC).replace(microsecond=0)
    alice.send(f"<message type='chat' to='{bob.bare}'><body>are you there?</body></message>")
    alice.assert_nothing()
    bob.assert_nothing()
    bob.available()
    got = bob.expect(message(alice.jid, "chat"))
    assert body(got) == "are you there?"
    check_delay(got, start)


@pytest.mark.parametrize(
    ("type_", "error"),
    [("headline", None), ("groupchat", ("cancel", "service-unavailable")), ("error", None)],
)
def test_not_stored(
    make_client: MakeClient, pool: AccountPool, type_: str, error: tuple[str, str] | None
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    alice.send(f"<message id='n1' type='{type_}' to='{bob_account[0]}'><body>x</body></message>")
    if error is None:
        alice.assert_nothing()
    else:
        bounced = alice.expect(lambda e: e.tag == MESSAGE and e.get("id") == "n1")
        assert stanza_error(bounced) == error
    online(make_client, bob_account).assert_nothing(message())


def test_survives_a_restart(
    server: ServerProcess, make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    start = datetime.now(UTC).replace(microsecond=0)
    alice.send(f"<message type='chat' to='{bob_account[0]}'><body>kept</body></message>")
    alice.assert_nothing()

    alice.client.close()
    server.restart()
    bob = online(make_client, bob_account)
    got = bob.expect(message(alice.jid, "chat"))
    assert body(got) == "kept"
    check_delay(got, start)


def test_limit_bounces_further_messages(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    for n in range(1, OFFLINE_LIMIT + 3):
        alice.send(
            f"<message id='l{n}' type='chat' to='{bob_account[0]}'><body>n{n}</body></message>"
        )
    for n in (OFFLINE_LIMIT + 1, OFFLINE_LIMIT + 2):
        bounced = alice.expect(lambda e, n=n: e.tag == MESSAGE and e.get("id") == f"l{n}")
        assert bounced.get("type") == "error"
        assert stanza_error(bounced) == ("cancel", "service-unavailable")
        assert body(bounced) == f"n{n}"
        assert bounced.find(DELAY) is None, "the bounce is the message as sent"
    alice.assert_nothing()

    bob = online(make_client, bob_account)
    stored = [body(bob.expect(message(alice.jid))) for _ in range(OFFLINE_LIMIT)]
    assert stored == [f"n{n}" for n in range(1, OFFLINE_LIMIT + 1)]
    bob.assert_nothing(message())
    # Delivered messages free the space again.
    bob.send("<presence type='unavailable'/>")
    bob.expect(presence(bob.jid, "unavailable"))
    alice.send(f"<message id='l9' type='chat' to='{bob_account[0]}'><body>n9</body></message>")
    alice.assert_nothing()
    bob.available()
    assert body(bob.expect(message(alice.jid))) == "n9"


# -- privacy rules apply when stored messages are delivered, not when they were stored -------

NS_BLOCKING = "urn:xmpp:blocking"
NS_PRIVACY = "jabber:iq:privacy"


def _store_chats(make_client: MakeClient, senders: list, to: str) -> list[User]:
    """Each sender (an account) sends C{to} a chat whose body is its bare JID; all stored."""
    users = [online(make_client, account) for account in senders]
    for user in users:
        user.send(f"<message type='chat' to='{to}'><body>{user.bare}</body></message>")
    for user in users:
        user.assert_nothing()  # stored, not bounced
    return users


def _bodies(user: User) -> list[str | None]:
    return [body(m) for m in user.received() if m.tag == MESSAGE]


def test_a_contact_blocked_after_storing_is_not_delivered(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account, carol_account = pool.take(3)
    bob, carol = _store_chats(make_client, [bob_account, carol_account], alice_account[0])
    alice = login(make_client, alice_account)  # bound but not available: nothing flushed yet
    answer = alice.iq(
        f"<iq type='set'><block xmlns='{NS_BLOCKING}'><item jid='{bob.bare}'/></block></iq>"
    )
    assert answer.get("type") == "result", to_text(answer)
    come_online(alice)
    assert _bodies(alice) == [carol.bare]
    bob.assert_nothing()  # dropped without an error: the block stays secret
    # Dropped, not kept for later: unblocking does not bring it back.
    answer = alice.iq(f"<iq type='set'><unblock xmlns='{NS_BLOCKING}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    alice.client.close()
    alice = login(make_client, alice_account)
    come_online(alice)
    assert _bodies(alice) == []


def test_a_default_privacy_list_set_after_storing_applies(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """A rule that needs the roster (subscription='none': not a contact) at flush time."""
    alice_account, friend_account, stranger_account = pool.take(3)
    alice = online(make_client, alice_account)
    friend = online(make_client, friend_account)
    friend.send(f"<presence type='subscribe' to='{alice.bare}'/>")
    alice.expect(presence(friend.bare, "subscribe"))
    alice.send(f"<presence type='subscribed' to='{friend.bare}'/>")
    friend.expect(presence(alice.bare, "subscribed"))
    alice.client.close()
    friend.client.close()
    _store_chats(make_client, [friend_account, stranger_account], alice_account[0])

    alice = login(make_client, alice_account)
    for inner in (
        "<list name='contacts-only'><item type='subscription' value='none' action='deny'"
        " order='1'><message/></item></list>",
        "<default name='contacts-only'/>",
    ):
        answer = alice.iq(f"<iq type='set'><query xmlns='{NS_PRIVACY}'>{inner}</query></iq>")
        assert answer.get("type") == "result", to_text(answer)
    # A fresh session: its rules and roster are loaded from the store at login.
    alice.client.close()
    alice = login(make_client, alice_account)
    alice.send("<presence/>")
    assert _bodies(alice) == [friend_account[0]]
