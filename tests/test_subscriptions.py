"""RFC 6121 §3 (RFC 3921 §6, §8, §9) presence subscriptions between two local users.

Alice is the user and bob the contact, as in the RFC's examples. Each flow is
checked on both sides: the stanzas each resource receives, in order where the
RFC gives one, and the roster pushes that record every state change.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

from support.client import NS_CLIENT, RawClient, to_text
from support.im import (
    AccountPool,
    User,
    any_presence,
    login,
    online,
    presence,
    settle,
    subscribe,
)

MakeClient = Callable[..., RawClient]

NS_NICK = "http://jabber.org/protocol/nick"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def pair(make_client: MakeClient, pool: AccountPool) -> tuple[User, User]:
    """Alice and bob, each with one resource that asked for the roster and is available."""
    alice_account, bob_account = pool.take(2)
    return online(make_client, alice_account), online(make_client, bob_account)


def test_subscribe_and_approve(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob1 = online(make_client, bob_account, "one")
    bob2 = login(make_client, bob_account, "two")  # available, never asked for the roster
    bob2.available(extra="<show>dnd</show>")
    bob1.expect(presence(bob2.jid))
    bob2.expect(presence(bob1.jid))  # §4.2.2: its other resources' presence
    bob3 = login(make_client, bob_account, "three")  # interested, not available
    bob3.roster()

    alice.send(f"<presence id='sub1' to='{bob1.bare}' type='subscribe'/>")
    _, item = alice.expect_push(bob1.bare)
    assert item == {"jid": bob1.bare, "subscription": "none", "ask": "subscribe"}
    # The request goes to the available resources, stamped with alice's bare JID.
    for resource in (bob1, bob2):
        request = resource.expect(presence(alice.bare, "subscribe"))
        assert (request.get("to"), request.get("id")) == (bob1.bare, "sub1")
    bob3.assert_nothing()
    # A request alone creates no roster item at the contact's side (A.1).
    assert bob1.roster_items() == {}

    bob1.send(f"<presence id='ok1' to='{alice.bare}' type='subscribed'/>")
    for resource in (bob1, bob3):  # the interested ones
        _, item = resource.expect_push(alice.bare)
        assert item == {"jid": alice.bare, "subscription": "from"}
    _, item = alice.expect_push(bob1.bare)
    assert item == {"jid": bob1.bare, "subscription": "to"}
    # §3.1.5-3.1.6: the approval, then the contact's presence from each available resource.
    approval = alice.expect(any_presence(bob1.bare))
    assert (approval.get("type"), approval.get("from"), approval.get("id")) == (
        "subscribed",
        bob1.bare,
        "ok1",
    )
    got = {}
    for _ in range(2):
        stanza = alice.expect(any_presence(bob1.bare))
        assert stanza.get("type") is None, to_text(stanza)
        got[stanza.get("from")] = stanza.findtext("{jabber:client}show")
    assert got == {bob1.jid: None, bob2.jid: "dnd"}
    bob2.assert_nothing()  # no push for a resource that never asked for the roster

    assert alice.roster_items() == {bob1.bare: {"jid": bob1.bare, "subscription": "to"}}
    assert bob1.roster_items() == {alice.bare: {"jid": alice.bare, "subscription": "from"}}


def test_mutual_subscription(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob = pair(make_client, pool)
    subscribe(alice, bob)
    settle(alice, bob)

    bob.send(f"<presence to='{alice.bare}' type='subscribe'/>")
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "from", "ask": "subscribe"}
    alice.expect(presence(bob.bare, "subscribe"))
    alice.send(f"<presence to='{bob.bare}' type='subscribed'/>")
    _, item = alice.expect_push(bob.bare)
    assert item == {"jid": bob.bare, "subscription": "both"}
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "both"}
    bob.expect(presence(alice.bare, "subscribed"))
    bob.expect(presence(alice.jid))
    settle(alice, bob)

    # Presence now flows both ways.
    alice.send("<presence><show>away</show></presence>")
    assert bob.expect(presence(alice.jid)).findtext("{jabber:client}show") == "away"
    bob.send("<presence><show>xa</show></presence>")
    assert alice.expect(presence(bob.jid)).findtext("{jabber:client}show") == "xa"


def test_unsubscribe(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob = pair(make_client, pool)
    subscribe(alice, bob)
    settle(alice, bob)

    alice.send(f"<presence to='{bob.bare}' type='unsubscribe'/>")
    _, item = alice.expect_push(bob.bare)
    assert item == {"jid": bob.bare, "subscription": "none"}
    request = bob.expect(presence(alice.bare, "unsubscribe"))
    assert request.get("to") == bob.bare
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "none"}
    # §3.3.3: the contact's server tells the user the contact is gone for it.
    alice.expect(presence(bob.jid, "unavailable"))
    settle(alice, bob)
    bob.send("<presence><show>away</show></presence>")
    bob.expect(presence(bob.jid))
    alice.assert_nothing()


def test_cancel_subscription(make_client: MakeClient, pool: AccountPool) -> None:
    """The contact sends unsubscribed to take back a subscription it granted (§3.2)."""
    alice, bob = pair(make_client, pool)
    subscribe(alice, bob)
    settle(alice, bob)

    bob.send(f"<presence to='{alice.bare}' type='unsubscribed'/>")
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "none"}
    # §3.2.2: unavailable first, while alice is still subscribed, then the cancellation.
    first = alice.expect(any_presence(bob.bare))
    second = alice.expect(any_presence(bob.bare))
    assert [(p.get("type"), p.get("from")) for p in (first, second)] == [
        ("unavailable", bob.jid),
        ("unsubscribed", bob.bare),
    ]
    _, item = alice.expect_push(bob.bare)
    assert item == {"jid": bob.bare, "subscription": "none"}
    settle(alice, bob)
    bob.send("<presence><show>away</show></presence>")
    bob.expect(presence(bob.jid))
    alice.assert_nothing()


def test_refuse_a_request(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob = pair(make_client, pool)
    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    alice.expect_push(bob.bare)
    bob.expect(presence(alice.bare, "subscribe"))

    bob.send(f"<presence to='{alice.bare}' type='unsubscribed'/>")
    alice.expect(presence(bob.bare, "unsubscribed"))
    _, item = alice.expect_push(bob.bare)
    assert item == {"jid": bob.bare, "subscription": "none"}
    # Nothing was shared, so no unavailable; bob never had an item for alice.
    alice.assert_nothing()
    bob.assert_nothing()
    assert bob.roster_items() == {}
    # The refused request is not delivered again at bob's next login.
    online(make_client, (bob.bare, bob.password)).assert_nothing(presence(alice.bare, "subscribe"))


def test_pending_request_is_redelivered_at_login(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    alice.send(f"<presence to='{bob_account[0]}' type='subscribe'/>")  # bob is offline
    _, item = alice.expect_push(bob_account[0])
    assert item == {"jid": bob_account[0], "subscription": "none", "ask": "subscribe"}

    # Connected and interested but not yet available: not yet.
    bob = login(make_client, bob_account)
    assert bob.roster_items() == {}
    bob.assert_nothing()
    bob.send("<presence/>")
    request = bob.expect(presence(alice.bare, "subscribe"))
    assert request.get("to") == bob.bare
    # Still unanswered: every later login gets it again.
    second = online(make_client, bob_account)
    second.expect(presence(alice.bare, "subscribe"))
    second.send(f"<presence to='{alice.bare}' type='subscribed'/>")
    alice.expect(presence(bob.bare, "subscribed"))
    # Answered: no more.
    online(make_client, bob_account).assert_nothing(presence(alice.bare, "subscribe"))


def test_redelivered_request_is_the_request_the_contact_sent(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """Issue 9: id, status, XEP-0172 nick and unknown children survive storage."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    alice.send(
        f"<presence to='{bob_account[0]}' type='subscribe' id='sub-42' xml:lang='fr'>"
        "<status>C'est Alice, du bal</status>"
        f"<nick xmlns='{NS_NICK}'>Alice &amp; co</nick>"
        "<x xmlns='urn:example:extra' a='1'><y>kept</y></x>"
        "</presence>"
    )
    alice.expect_push(bob_account[0])

    def check(request: ET.Element) -> None:
        assert request.get("id") == "sub-42", to_text(request)
        assert request.get("to") == bob_account[0]
        assert request.get(XML_LANG) == "fr"
        assert [c.tag for c in request] == [
            f"{{{NS_CLIENT}}}status",
            f"{{{NS_NICK}}}nick",
            "{urn:example:extra}x",
        ]
        assert request.findtext(f"{{{NS_CLIENT}}}status") == "C'est Alice, du bal"
        assert request.findtext(f"{{{NS_NICK}}}nick") == "Alice & co"
        assert request.findtext("{urn:example:extra}x/{urn:example:extra}y") == "kept"

    check(online(make_client, bob_account).expect(presence(alice.bare, "subscribe")))
    # Every login gets the same stanza while the request is unanswered.
    check(online(make_client, bob_account).expect(presence(alice.bare, "subscribe")))


def test_repeated_request_is_not_delivered_twice(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice, bob = pair(make_client, pool)
    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    bob.expect(presence(alice.bare, "subscribe"))
    alice.expect_push(bob.bare)
    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    bob.assert_nothing()
    alice.assert_nothing()  # the state did not change: no push either


def test_request_when_already_subscribed_does_not_reach_the_contact(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """§3.1.3: the contact's server answers for the contact (A.3.1), and the user's
    server, already subscribed, ignores that answer (A.3.3): nobody sees anything."""
    alice, bob = pair(make_client, pool)
    subscribe(alice, bob)
    settle(alice, bob)
    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    bob.assert_nothing()
    alice.assert_nothing()
    assert alice.roster_items()[bob.bare] == {"jid": bob.bare, "subscription": "to"}
    assert bob.roster_items()[alice.bare] == {"jid": alice.bare, "subscription": "from"}


def test_subscribed_without_request_when_already_granted_is_ignored(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice, bob = pair(make_client, pool)
    subscribe(alice, bob)
    settle(alice, bob)
    bob.send(f"<presence to='{alice.bare}' type='subscribed'/>")
    alice.assert_nothing()
    bob.assert_nothing()


def test_pre_approval(make_client: MakeClient, pool: AccountPool) -> None:
    """§3.4: the contact approves before the user asks; the request is then auto-approved."""
    alice, bob = pair(make_client, pool)
    features = bob.client.features
    assert features is not None
    assert features.find("{urn:xmpp:features:pre-approval}sub") is not None, to_text(features)

    bob.send(f"<presence to='{alice.bare}' type='subscribed'/>")
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "none", "approved": "true"}
    alice.assert_nothing()  # a pre-approval is not routed

    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    _, item = alice.expect_push(bob.bare)
    assert item == {"jid": bob.bare, "subscription": "none", "ask": "subscribe"}
    approval = alice.expect(any_presence(bob.bare))
    assert (approval.get("type"), approval.get("from")) == ("subscribed", bob.bare)
    _, item = alice.expect_push(bob.bare)
    assert item == {"jid": bob.bare, "subscription": "to"}
    alice.expect(presence(bob.jid))
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "from"}
    bob.assert_nothing(presence(alice.bare, "subscribe"))


def test_pre_approval_can_be_cancelled(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob = pair(make_client, pool)
    bob.send(f"<presence to='{alice.bare}' type='subscribed'/>")
    bob.expect_push(alice.bare)
    bob.send(f"<presence to='{alice.bare}' type='unsubscribed'/>")
    _, item = bob.expect_push(alice.bare)
    assert item == {"jid": alice.bare, "subscription": "none"}
    alice.assert_nothing()  # neither is routed

    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    bob.expect(presence(alice.bare, "subscribe"))  # asked again, not auto-approved
    alice.assert_nothing(presence(bob.bare, "subscribed"))


def test_subscribe_to_nonexistent_user_is_answered_unsubscribed(
    make_client: MakeClient, pool: AccountPool
) -> None:
    (account,) = pool.take(1)
    alice = online(make_client, account)
    ghost = "nobody-here@localhost"
    alice.send(f"<presence to='{ghost}' type='subscribe'/>")
    _, item = alice.expect_push(ghost)
    assert item == {"jid": ghost, "subscription": "none", "ask": "subscribe"}
    answer = alice.expect(presence(ghost, "unsubscribed"))
    assert answer.get("to") == alice.bare
    _, item = alice.expect_push(ghost)
    assert item == {"jid": ghost, "subscription": "none"}


def test_withdrawing_a_pending_request(make_client: MakeClient, pool: AccountPool) -> None:
    """The user sends unsubscribe before the contact answered: the request is gone."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    alice.send(f"<presence to='{bob_account[0]}' type='subscribe'/>")
    alice.expect_push(bob_account[0])
    alice.send(f"<presence to='{bob_account[0]}' type='unsubscribe'/>")
    _, item = alice.expect_push(bob_account[0])
    assert item == {"jid": bob_account[0], "subscription": "none"}
    bob = online(make_client, bob_account)
    bob.assert_nothing()  # no request to redeliver any more


def test_changes_reach_an_offline_contact(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob = pair(make_client, pool)
    subscribe(alice, bob)
    subscribe(bob, alice)
    settle(alice, bob)
    bob.client.close()
    alice.expect(presence(bob.jid, "unavailable"))

    alice.send(f"<presence to='{bob.bare}' type='unsubscribe'/>")
    _, item = alice.expect_push(bob.bare)
    assert item == {"jid": bob.bare, "subscription": "from"}
    back = login(make_client, (bob.bare, bob.password))
    assert back.roster_items() == {alice.bare: {"jid": alice.bare, "subscription": "to"}}
