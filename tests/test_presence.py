"""RFC 6121 §4 (RFC 3921 §5) presence: initial presence, broadcasts, probes, directed presence.

Subscriptions are set up over the wire (support.im.subscribe) and every test
uses fresh accounts. Who must *not* receive a stanza is checked as carefully as
who must.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from support.client import RawClient, stanza_error, to_text
from support.im import AccountPool, User, login, online, presence, settle, subscribe

MakeClient = Callable[..., RawClient]
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def show(stanza) -> str | None:
    return stanza.findtext("{jabber:client}show")


def status(stanza) -> str | None:
    return stanza.findtext("{jabber:client}status")


def circle(make_client: MakeClient, pool: AccountPool) -> tuple[User, User, User, User, User]:
    """Alice and her contacts: bob has 'from' (he sees her), carol 'to' (she sees carol),
    dave 'both', eve nothing. Everyone is online with one resource."""
    alice, bob, carol, dave, eve = (online(make_client, a) for a in pool.take(5))
    subscribe(bob, alice)
    subscribe(alice, carol)
    subscribe(alice, dave)
    subscribe(dave, alice)
    settle(alice, bob, carol, dave, eve)
    return alice, bob, carol, dave, eve


def drop(user: User) -> None:
    """Cut the TCP connection without </stream:stream> or unavailable presence."""
    sock, user.client.sock = user.client.sock, None
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_initial_presence_gets_presence_of_subscribed_contacts(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account, carol_account, eve_account = pool.take(4)
    alice = online(make_client, alice_account, "desk")
    bob1 = online(make_client, bob_account, "one")
    carol = online(make_client, carol_account)
    eve = online(make_client, eve_account)
    subscribe(alice, bob1)  # alice sees bob
    subscribe(carol, alice)  # carol sees alice, not the other way round
    bob2 = login(make_client, bob_account, "two")
    bob2.send(
        "<presence><show>away</show><status>on the phone</status><priority>5</priority></presence>"
    )
    bob1.send("<presence><show>dnd</show></presence>")
    settle(alice, bob1, bob2, carol, eve)

    phone = login(make_client, alice_account, "phone")
    phone.roster()
    phone.send("<presence/>")
    got = {}
    for _ in range(4):  # its own echo, alice/desk, bob/one, bob/two
        stanza = phone.expect(lambda e: e.tag == "{jabber:client}presence")
        assert stanza.get("type") is None and stanza.get("to") == phone.jid, to_text(stanza)
        got[stanza.get("from")] = (
            show(stanza),
            status(stanza),
            stanza.findtext("{jabber:client}priority"),
        )
    assert got == {
        phone.jid: (None, None, None),
        alice.jid: (None, None, None),
        bob1.jid: ("dnd", None, None),
        bob2.jid: ("away", "on the phone", "5"),
    }
    phone.assert_nothing()  # nothing from carol (alice has no subscription to her) nor eve
    # Alice's new resource is announced to carol (who has 'from') and alice's other resource.
    carol.expect(presence(phone.jid))
    alice.expect(presence(phone.jid))
    bob1.assert_nothing()
    eve.assert_nothing()


def test_broadcast_reaches_from_and_both_only(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob, carol, dave, eve = circle(make_client, pool)
    other = online(make_client, (alice.bare, alice.password), "other")
    other.expect(presence(alice.jid))
    alice.expect(presence(other.jid))
    bob.expect(presence(other.jid))
    dave.expect(presence(other.jid))

    alice.send(
        "<presence xml:lang='en'><show>chat</show><status>free for chat</status>"
        "<priority>1</priority></presence>"
    )
    for contact in (bob, dave):
        update = contact.expect(presence(alice.jid))
        assert update.get("to") == contact.bare
        assert (show(update), status(update)) == ("chat", "free for chat")
        assert update.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert show(other.expect(presence(alice.jid))) == "chat"
    assert show(alice.expect(presence(alice.jid))) == "chat"
    carol.assert_nothing()
    eve.assert_nothing()

    alice.send("<presence type='unavailable'><status>gone to bed</status></presence>")
    for contact in (bob, dave, other):
        gone = contact.expect(presence(alice.jid, "unavailable"))
        assert status(gone) == "gone to bed"
    carol.assert_nothing()
    eve.assert_nothing()


def test_directed_presence_is_delivered_and_remembered(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice, bob, carol, dave, eve = circle(make_client, pool)
    eve2 = online(make_client, (eve.bare, eve.password))
    eve.expect(presence(eve2.jid))
    eve2.expect(presence(eve.jid))

    alice.send(f"<presence to='{eve.jid}'><show>chat</show></presence>")
    directed = eve.expect(presence(alice.jid))
    assert (directed.get("to"), show(directed)) == (eve.jid, "chat")
    eve2.assert_nothing()  # a full JID: only that resource
    bob.assert_nothing()  # directed presence is not broadcast

    alice.client.close()  # a clean close, without unavailable presence first
    for contact in (eve, bob, dave):  # eve got directed presence; bob and dave subscribe
        contact.expect(presence(alice.jid, "unavailable"))
    carol.assert_nothing()
    eve2.assert_nothing()


def test_directed_presence_to_bare_jid_reaches_available_resources(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, eve_account = pool.take(2)
    alice = online(make_client, alice_account)
    eve1 = online(make_client, eve_account)
    eve2 = online(make_client, eve_account)
    eve3 = login(make_client, eve_account)  # connected, not available
    settle(eve1, eve2)
    alice.send(f"<presence to='{eve1.bare}'><status>hi</status></presence>")
    for resource in (eve1, eve2):
        assert status(resource.expect(presence(alice.jid))) == "hi"
    eve3.assert_nothing()


def test_directed_unavailable_is_not_repeated(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, eve_account = pool.take(2)
    alice = online(make_client, alice_account)
    eve = online(make_client, eve_account)
    alice.send(f"<presence to='{eve.jid}'/>")
    eve.expect(presence(alice.jid))
    alice.send(f"<presence to='{eve.jid}' type='unavailable'/>")
    eve.expect(presence(alice.jid, "unavailable"))
    alice.send("<presence type='unavailable'/>")
    alice.expect(presence(alice.jid, "unavailable"))
    eve.assert_nothing()  # the server forgot eve once told


def test_abrupt_disconnect_broadcasts_unavailable(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice, bob, carol, dave, eve = circle(make_client, pool)
    other = online(make_client, (alice.bare, alice.password), "other")
    settle(alice, bob, dave)
    alice.send(f"<presence to='{eve.jid}'/>")
    eve.expect(presence(alice.jid))

    drop(alice)
    for watcher in (bob, dave, eve, other):
        gone = watcher.expect(presence(alice.jid, "unavailable"))
        assert list(gone) == [], to_text(gone)
    carol.assert_nothing()


def test_stream_error_broadcasts_unavailable(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob, carol, dave, eve = circle(make_client, pool)
    alice.send("<not-a-stanza/>")
    alice.client.expect_stream_error("unsupported-stanza-type")
    bob.expect(presence(alice.jid, "unavailable"))
    dave.expect(presence(alice.jid, "unavailable"))
    carol.assert_nothing()


def test_replaced_session_broadcasts_unavailable(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account, "home")
    bob = online(make_client, bob_account)
    subscribe(bob, alice)
    settle(alice, bob)
    login(make_client, alice_account, "home")
    alice.client.expect_stream_error("conflict")
    bob.expect(presence(alice.jid, "unavailable"))


def test_probe_from_subscriber_is_answered(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob, carol, dave, eve = circle(make_client, pool)
    alice.send("<presence><status>probe me</status></presence>")
    alice.expect(presence(alice.jid))
    settle(bob, dave)

    bob.send(f"<presence type='probe' to='{alice.bare}'/>")
    answer = bob.expect(presence(alice.jid))
    assert (answer.get("to"), status(answer)) == (bob.jid, "probe me")


def test_probe_from_non_subscriber_gets_no_answer(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice, bob, carol, dave, eve = circle(make_client, pool)
    for stranger in (eve, carol):  # carol: alice is subscribed to her, not she to alice
        stranger.send(f"<presence type='probe' to='{alice.bare}'/>")
        stranger.assert_nothing()
    alice.assert_nothing()


def test_presence_error_to_bare_jid_is_dropped(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    error = f"<error type='cancel'><remote-server-not-found xmlns='{NS_STANZAS}'/></error>"
    bob.send(f"<presence type='error' to='{alice.bare}'>{error}</presence>")
    alice.assert_nothing()
    bob.assert_nothing()
    # To a full JID it is delivered (§8.5.3.1).
    bob.send(f"<presence type='error' to='{alice.jid}'>{error}</presence>")
    delivered = alice.expect(presence(bob.jid, "error"))
    assert stanza_error(delivered) == ("cancel", "remote-server-not-found")


@pytest.mark.parametrize("type_attr", ["", " type='unavailable'"])
def test_presence_to_nonexistent_user_is_dropped(
    make_client: MakeClient, pool: AccountPool, type_attr: str
) -> None:
    (account,) = pool.take(1)
    alice = online(make_client, account)
    alice.send(f"<presence to='nobody-here@localhost'{type_attr}/>")
    alice.send(f"<presence to='nobody-here@localhost/res'{type_attr}/>")
    alice.assert_nothing()


@pytest.mark.parametrize("value", ["128", "-129", "high"])
def test_invalid_priority_is_bad_request(
    make_client: MakeClient, pool: AccountPool, value: str
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    subscribe(bob, alice)
    settle(alice, bob)
    alice.send(f"<presence id='p1'><priority>{value}</priority></presence>")
    error = alice.expect(presence(None, "error"))
    assert error.get("id") == "p1"
    assert stanza_error(error) == ("modify", "bad-request")
    bob.assert_nothing()


def test_directed_presence_to_a_subscriber_ends_with_one_unavailable(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    subscribe(bob, alice)
    settle(alice, bob)
    alice.send(f"<presence to='{bob.jid}'><status>just for you</status></presence>")
    assert status(bob.expect(presence(alice.jid))) == "just for you"
    alice.send("<presence type='unavailable'/>")
    bob.expect(presence(alice.jid, "unavailable"))
    bob.assert_nothing()


# -- issue 9 round-offs: show values, directed presence before initial, presence errors --------


@pytest.mark.parametrize(
    "inner",
    [
        "<show>busy</show>",
        "<show></show>",
        "<show>away</show><show>xa</show>",
        "<show mood='x'>away</show>",
        "<priority>1</priority><priority>2</priority>",
    ],
    ids=["unknown-value", "empty", "two-shows", "attribute", "two-priorities"],
)
def test_invalid_show_or_priority_is_bad_request_and_not_broadcast(
    make_client: MakeClient, pool: AccountPool, inner: str
) -> None:
    """RFC 6121 §4.7.2.1: show is one of away, chat, dnd, xa; at most one show and priority."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    subscribe(bob, alice)
    settle(alice, bob)
    alice.send(f"<presence id='p1'>{inner}</presence>")
    error = alice.expect(presence(None, "error"))
    assert (error.get("id"), stanza_error(error)) == ("p1", ("modify", "bad-request"))
    bob.assert_nothing()
    # Directed presence is held to the same rules.
    alice.send(f"<presence id='p2' to='{bob.jid}'>{inner}</presence>")
    error = alice.expect(presence(None, "error"))
    assert (error.get("id"), stanza_error(error)) == ("p2", ("modify", "bad-request"))
    bob.assert_nothing()
    # Every valid value passes.
    for value in ("away", "chat", "dnd", "xa"):
        alice.send(f"<presence><show>{value}</show></presence>")
        assert show(bob.expect(presence(alice.jid))) == value


def test_directed_presence_before_initial_presence(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """RFC 3921 §5.1.4 rule 3 / RFC 6121 §4.6: a resource that is not available may send
    directed presence; only its recipients hear that it left, not the subscribers."""
    alice, bob, carol, dave, eve = circle(make_client, pool)
    quiet = login(make_client, (alice.bare, alice.password), "quiet")  # never available
    quiet.send(f"<presence to='{eve.jid}'><status>only eve</status></presence>")
    assert status(eve.expect(presence(quiet.jid))) == "only eve"
    quiet.client.close()
    eve.expect(presence(quiet.jid, "unavailable"))
    for user in (alice, bob, dave):  # never told it was available: nothing to withdraw
        user.assert_nothing(presence(quiet.jid, "unavailable"))
    eve.assert_nothing()


def test_no_more_broadcasts_to_a_contact_that_answered_with_an_error(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """RFC 3921 §5.1.2 (3): broadcasts go to subscribers "from whom the server has not
    received a presence error during the user's session"."""
    alice, bob, carol, dave, eve = circle(make_client, pool)
    error = f"<error type='cancel'><service-unavailable xmlns='{NS_STANZAS}'/></error>"
    bob.send(f"<presence type='error' to='{alice.jid}'>{error}</presence>")
    alice.expect(presence(bob.jid, "error"))
    alice.send("<presence><show>away</show></presence>")
    assert show(dave.expect(presence(alice.jid))) == "away"
    bob.assert_nothing()
    alice.client.close()
    dave.expect(presence(alice.jid, "unavailable"))
    bob.assert_nothing()
    # "During the user's session": a new session broadcasts to bob again.
    again = online(make_client, (alice.bare, alice.password))
    bob.expect(presence(again.jid))
