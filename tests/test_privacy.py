"""RFC 3921 §10 / XEP-0016 privacy lists over the wire.

Managing lists (names, one list, create/replace/remove, active and default,
pushes, conflicts, errors) and what the rules do to stanzas between real
clients. Every test uses fresh accounts.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

from support.client import IQ, MESSAGE, RawClient, clark, stanza_error, to_text
from support.im import (
    BLOCKED,
    AccountPool,
    User,
    body_is,
    chat,
    from_,
    login,
    online,
    presence,
    settle,
    subscribe,
)

MakeClient = Callable[..., RawClient]

NS_PRIVACY = "jabber:iq:privacy"
QUERY = clark(NS_PRIVACY, "query")


# -- helpers ----------------------------------------------------------------------------


def privacy(user: User, inner: str, type_: str = "set") -> tuple[str | None, str | None]:
    """One jabber:iq:privacy request; (None, None) for a result, else (error type, condition)."""
    answer = user.iq(f"<iq type='{type_}'><query xmlns='{NS_PRIVACY}'>{inner}</query></iq>")
    if answer.get("type") == "result":
        return None, None
    assert answer.get("type") == "error", to_text(answer)
    return stanza_error(answer)


def put(user: User, name: str, items: str) -> None:
    assert privacy(user, f"<list name='{name}'>{items}</list>") == (None, None)


def activate(user: User, name: str | None) -> None:
    inner = "<active/>" if name is None else f"<active name='{name}'/>"
    assert privacy(user, inner) == (None, None)


def make_default(user: User, name: str | None) -> None:
    inner = "<default/>" if name is None else f"<default name='{name}'/>"
    assert privacy(user, inner) == (None, None)


def names(user: User) -> dict:
    """The names answer as {'active': name, 'default': name, 'lists': [names]}."""
    answer = user.iq(f"<iq type='get'><query xmlns='{NS_PRIVACY}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    query = answer.find(QUERY)
    assert query is not None, to_text(answer)
    view: dict = {"lists": []}
    for child in query:
        local = child.tag.rpartition("}")[2]
        if local == "list":
            view["lists"].append(child.get("name"))
        else:
            assert local not in view, to_text(answer)
            view[local] = child.get("name")
    return view


def get_list(user: User, name: str) -> list[dict]:
    """One list's items: their attributes plus 'kinds' (the stanza kinds named)."""
    answer = user.iq(
        f"<iq type='get'><query xmlns='{NS_PRIVACY}'><list name='{name}'/></query></iq>"
    )
    assert answer.get("type") == "result", to_text(answer)
    lists = answer.find(QUERY).findall(clark(NS_PRIVACY, "list"))
    assert [lst.get("name") for lst in lists] == [name], to_text(answer)
    items = []
    for item in lists[0]:
        view = dict(item.attrib)
        kinds = [k.tag.rpartition("}")[2] for k in item]
        if kinds:
            view["kinds"] = kinds
        items.append(view)
    return items


def is_privacy_push(name: str) -> Callable[[ET.Element], bool]:
    def match(e: ET.Element) -> bool:
        if e.tag != IQ or e.get("type") != "set":
            return False
        query = e.find(QUERY)
        return query is not None and [(c.tag, c.get("name"), len(c)) for c in query] == [
            (clark(NS_PRIVACY, "list"), name, 0)
        ]

    match.__name__ = f"privacy_push({name!r})"
    return match


def bounced(sender: User, condition: str, kind: str = "message") -> ET.Element:
    """The error the sender got back; asserts its condition (type cancel)."""
    error = sender.expect(
        lambda e: e.tag == clark("jabber:client", kind) and e.get("type") == "error"
    )
    assert stanza_error(error) == ("cancel", condition), to_text(error)
    return error


def friends(a: User, b: User) -> None:
    """Mutual subscription between two online users, then a clean slate."""
    subscribe(a, b)
    subscribe(b, a)
    settle(a, b)


# -- managing lists -----------------------------------------------------------------------


def test_names_carry_active_and_default_markers(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    orchard = login(make_client, account, "orchard")
    home = login(make_client, account, "home")
    assert names(orchard) == {"lists": []}

    put(orchard, "public", "<item type='jid' value='tybalt@example.com' action='deny' order='1'/>")
    put(orchard, "private", "<item type='subscription' value='both' action='allow' order='10'/>")
    put(orchard, "special", "<item action='deny' order='666'/>")
    make_default(orchard, "public")
    activate(orchard, "private")

    assert names(orchard) == {
        "active": "private",
        "default": "public",
        "lists": ["private", "public", "special"],
    }
    # The active list is the session's own; the default is the user's.
    assert names(home) == {"default": "public", "lists": ["private", "public", "special"]}


def test_get_one_list_returns_items_in_order_with_normalised_jids(
    make_client: MakeClient, pool: AccountPool
):
    (account,) = pool.take(1)
    user = login(make_client, account)
    user.set_item("tybalt@example.com", groups=("Enemies",))
    put(
        user,
        "mixed",
        "<item action='allow' order='68'/>"
        "<item type='jid' value='Tybalt@Example.COM/PDA' action='deny' order='3'>"
        "<presence-in/><message/></item>"
        "<item type='group' value='Enemies' action='deny' order='5'><presence-out/></item>"
        "<item type='subscription' value='none' action='deny' order='4'><iq/></item>",
    )
    assert get_list(user, "mixed") == [
        {
            "type": "jid",
            "value": "tybalt@example.com/PDA",
            "action": "deny",
            "order": "3",
            "kinds": ["message", "presence-in"],
        },
        {"type": "subscription", "value": "none", "action": "deny", "order": "4", "kinds": ["iq"]},
        {
            "type": "group",
            "value": "Enemies",
            "action": "deny",
            "order": "5",
            "kinds": ["presence-out"],
        },
        {"action": "allow", "order": "68"},
    ]
    # Replacing takes the new definition whole (not a delta).
    put(user, "mixed", "<item action='deny' order='1'><message/></item>")
    assert get_list(user, "mixed") == [{"action": "deny", "order": "1", "kinds": ["message"]}]


def test_unknown_lists_and_malformed_requests(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    user = login(make_client, account)
    put(user, "a", "<item action='allow' order='1'/>")
    put(user, "b", "<item action='deny' order='1'/>")
    absent = "<list name='The Empty Set'/>"
    assert privacy(user, absent, "get") == ("cancel", "item-not-found")
    assert privacy(user, "<active name='The Empty Set'/>") == ("cancel", "item-not-found")
    assert privacy(user, "<default name='The Empty Set'/>") == ("cancel", "item-not-found")
    assert privacy(user, absent) == ("cancel", "item-not-found")  # removing it
    # One list per get, one element per set.
    assert privacy(user, "<list name='a'/><list name='b'/>", "get") == ("modify", "bad-request")
    assert privacy(user, "<active name='a'/><default name='a'/>") == ("modify", "bad-request")
    assert privacy(user, "<list name='a'/><list name='b'/>") == ("modify", "bad-request")
    assert privacy(user, "") == ("modify", "bad-request")
    # Malformed items are refused and change nothing.
    for item in (
        "<item action='deny'/>",
        "<item action='deny' order='1'/><item action='allow' order='1'/>",
        "<item action='deny' order='x'/>",
        "<item order='1'/>",
        "<item action='reject' order='1'/>",
        "<item type='resource' value='x' action='deny' order='1'/>",
        "<item type='jid' value='bad jid@example.com' action='deny' order='1'/>",
        "<item type='subscription' value='pending' action='deny' order='1'/>",
        "<item action='deny' order='1'><presence/></item>",
    ):
        assert privacy(user, f"<list name='a'>{item}</list>") == ("modify", "bad-request"), item
    assert privacy(
        user, "<list name='a'><item type='group' value='Nobody' action='deny' order='1'/></list>"
    ) == (
        "cancel",
        "item-not-found",
    )
    assert get_list(user, "a") == [{"action": "allow", "order": "1"}]
    assert names(user) == {"lists": ["a", "b"]}


def test_changes_are_pushed_to_every_resource(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    orchard = login(make_client, account, "orchard")
    home = login(make_client, account, "home")
    put(orchard, "public", "<item action='allow' order='1'/>")  # create
    put(orchard, "public", "<item action='deny' order='2'/>")  # replace
    assert privacy(orchard, "<list name='public'/>") == (None, None)  # remove
    for resource in (orchard, home):
        for _ in range(3):
            push = resource.expect(is_privacy_push("public"))
            assert push.get("to") == resource.jid and push.get("id"), to_text(push)
            resource.send(f"<iq type='result' id='{push.get('id')}'/>")
    # Activating or changing the default changes no list: no push.
    put(orchard, "other", "<item action='allow' order='1'/>")
    for resource in (orchard, home):
        resource.expect(is_privacy_push("other"))
    activate(orchard, "other")
    make_default(orchard, "other")
    for resource in (orchard, home):
        resource.assert_nothing(lambda e: e.tag == IQ and e.find(QUERY) is not None)
    assert names(home)["lists"] == ["other"]


def test_lists_and_default_survive_a_restart(make_server, make_client: MakeClient):
    target = make_server()
    pool = AccountPool(target, batch=2)
    alice_account, bob_account = pool.take(2)
    alice = login(make_client, alice_account, target=target)
    put(
        alice,
        "shield",
        f"<item type='jid' value='{bob_account[0]}' action='deny' order='1'><message/></item>",
    )
    make_default(alice, "shield")
    activate(alice, "shield")
    alice.client.close()
    target.restart()

    # Alice is offline: her default list still turns Bob away (nothing is stored for her).
    bob = login(make_client, bob_account, target=target)
    chat(bob, alice_account[0], "while you were out")
    bounced(bob, "service-unavailable")

    alice = login(make_client, alice_account, target=target)
    assert names(alice) == {
        "default": "shield",
        "lists": ["shield"],
    }  # the active list was per session
    assert get_list(alice, "shield") == [
        {
            "type": "jid",
            "value": bob_account[0],
            "action": "deny",
            "order": "1",
            "kinds": ["message"],
        }
    ]
    alice.available()
    alice.assert_nothing(body_is("while you were out"))
    chat(bob, alice.jid, "now?")
    bounced(bob, "service-unavailable")


def test_conflicts_follow_rfc_3921(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    orchard = login(make_client, account, "orchard")
    home = login(make_client, account, "home")
    put(orchard, "one", "<item action='allow' order='1'/>")
    put(orchard, "two", "<item action='allow' order='1'/>")
    put(orchard, "three", "<item action='allow' order='1'/>")

    # Removing a list another resource uses as active: conflict.
    activate(home, "one")
    assert privacy(orchard, "<list name='one'/>") == ("cancel", "conflict")
    assert "one" in names(orchard)["lists"]
    # The resource that uses it may remove it; its active list is then gone.
    assert privacy(home, "<list name='one'/>") == (None, None)
    assert names(home) == {"lists": ["three", "two"]}

    # With no default, setting one is no change of a list in use.
    make_default(orchard, "two")
    # Home has no active list: the default applies to it, so it cannot change
    # under it (§10.6), neither to another list nor declined; nor be removed.
    assert privacy(orchard, "<default name='three'/>") == ("cancel", "conflict")
    assert privacy(orchard, "<default/>") == ("cancel", "conflict")
    assert privacy(orchard, "<list name='two'/>") == ("cancel", "conflict")
    assert names(orchard)["default"] == "two"
    # Once home uses another list, the default applies to no other resource.
    activate(home, "three")
    make_default(orchard, "three")
    assert names(orchard)["default"] == "three"
    # Home's active list is also the default now: declining it would conflict.
    assert privacy(orchard, "<default/>") == ("cancel", "conflict")
    activate(home, None)
    home.client.close()
    orchard.sync()
    # Alone, a resource may remove the default list: the default is declined.
    assert privacy(orchard, "<list name='three'/>") == (None, None)
    assert names(orchard) == {"lists": ["two"]}


# -- enforcement ----------------------------------------------------------------------------


def test_active_list_is_per_session_and_can_be_declined(make_client: MakeClient, pool: AccountPool):
    alice_account, bob_account = pool.take(2)
    orchard = online(make_client, alice_account, "orchard")
    home = online(make_client, alice_account, "home")
    bob = online(make_client, bob_account)
    put(
        orchard,
        "quiet",
        f"<item type='jid' value='{bob.bare}' action='deny' order='1'><message/></item>",
    )
    activate(orchard, "quiet")

    chat(bob, orchard.jid, "to orchard")
    error = bounced(bob, "service-unavailable")
    assert error.get("from") == orchard.jid, to_text(error)
    chat(bob, home.jid, "to home")
    home.expect(body_is("to home"))

    activate(orchard, None)
    chat(bob, orchard.jid, "again")
    orchard.expect(body_is("again"))
    orchard.assert_nothing(body_is("to orchard"))


def test_first_matching_item_by_order_decides(make_client: MakeClient, pool: AccountPool):
    alice_account, bob_account, carol_account = pool.take(3)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    carol = online(make_client, carol_account)
    put(
        alice,
        "ordered",
        f"<item type='jid' value='{bob.bare}' action='allow' order='10'/>"
        f"<item type='jid' value='{bob.bare}' action='deny' order='5'><message/></item>"
        "<item action='deny' order='20'><message/></item>",
    )
    activate(alice, "ordered")
    chat(bob, alice.jid, "denied at 5")
    bounced(bob, "service-unavailable")
    chat(carol, alice.jid, "denied at 20")
    bounced(carol, "service-unavailable")
    # Bob's iq is not a message: order 10 allows it, and it reaches the client.
    bob.send(f"<iq type='get' id='v1' to='{alice.jid}'><query xmlns='jabber:iq:version'/></iq>")
    iq = alice.expect(lambda e: e.tag == IQ and e.get("id") == "v1")
    assert iq.get("from") == bob.jid, to_text(iq)
    alice.assert_nothing(lambda e: e.tag == MESSAGE)


def test_group_and_subscription_rules(make_client: MakeClient, pool: AccountPool):
    alice_account, bob_account, carol_account, dave_account = pool.take(4)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    carol = online(make_client, carol_account)
    dave = online(make_client, dave_account)
    subscribe(alice, carol)  # alice: carol is 'to'
    settle(alice, carol)
    alice.set_item(bob.bare, groups=("Enemies",))
    put(
        alice,
        "sorted",
        "<item type='group' value='Enemies' action='deny' order='1'><message/></item>"
        "<item type='subscription' value='none' action='deny' order='2'><message/></item>",
    )
    activate(alice, "sorted")
    chat(bob, alice.bare, "enemy")  # in group Enemies
    bounced(bob, "service-unavailable")
    chat(dave, alice.bare, "stranger")  # not in the roster: subscription none
    bounced(dave, "service-unavailable")
    chat(carol, alice.bare, "subscribed")  # 'to': allowed
    alice.expect(body_is("subscribed"))

    # A change of the roster is taken into account at once (§10 rule 9).
    alice.set_item(bob.bare, groups=("Friends",))
    alice.set_item(dave.bare, groups=("Enemies",))
    put(
        alice,
        "sorted",
        "<item type='group' value='Enemies' action='deny' order='1'><message/></item>",
    )
    chat(bob, alice.bare, "friend now")
    alice.expect(body_is("friend now"))
    chat(dave, alice.bare, "enemy now")
    bounced(dave, "service-unavailable")


def test_blocked_message_and_iq_look_like_an_unavailable_user(
    make_client: MakeClient, pool: AccountPool
):
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    put(
        alice,
        "all",
        f"<item type='jid' value='{bob.bare}' action='deny' order='1'><message/><iq/></item>",
    )
    make_default(alice, "all")

    bob.send(f"<message id='m1' to='{alice.bare}'><body>hi</body></message>")
    error = bounced(bob, "service-unavailable")
    assert (error.get("id"), error.get("from")) == ("m1", alice.bare), to_text(error)
    for type_, to in (("get", alice.jid), ("set", alice.bare)):
        answer = bob.iq(f"<iq type='{type_}' to='{to}'><query xmlns='jabber:iq:version'/></iq>")
        assert stanza_error(answer) == ("cancel", "service-unavailable"), to_text(answer)
    # Results and errors are dropped without a word.
    bob.send(f"<iq type='result' id='r1' to='{alice.jid}'/>")
    bob.send(f"<message type='error' to='{alice.jid}'><body>x</body></message>")
    alice.assert_nothing(from_(bob.bare))
    bob.assert_nothing(from_(alice.bare))


def test_outbound_stanza_to_a_denied_entity_is_not_acceptable(
    make_client: MakeClient, pool: AccountPool
):
    alice_account, bob_account, carol_account = pool.take(3)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    carol = online(make_client, carol_account)
    alice.set_item(carol.bare, groups=("Muted",))
    put(
        alice,
        "out",
        f"<item type='jid' value='{bob.bare}' action='deny' order='1'/>"
        "<item type='group' value='Muted' action='deny' order='2'/>",
    )
    activate(alice, "out")

    chat(alice, bob.bare, "to bob")
    error = bounced(alice, "not-acceptable")
    # A jid/deny/everything item is a block: XEP-0191's condition is added.
    assert error.find(BLOCKED) is not None
    chat(alice, carol.jid, "to carol")
    error = bounced(alice, "not-acceptable")
    assert error.find(BLOCKED) is None
    answer = alice.iq(f"<iq type='get' to='{bob.jid}'><query xmlns='jabber:iq:version'/></iq>")
    assert stanza_error(answer) == ("cancel", "not-acceptable"), to_text(answer)
    bob.assert_nothing(from_(alice.bare))
    carol.assert_nothing(from_(alice.bare))


def test_presence_out_rule_withdraws_and_restores_presence(
    make_client: MakeClient, pool: AccountPool
):
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    friends(alice, bob)
    alice.send("<presence><show>away</show></presence>")
    bob.expect(presence(alice.jid))
    put(
        alice,
        "invisible",
        f"<item type='jid' value='{bob.bare}' action='deny' order='1'><presence-out/></item>",
    )
    activate(alice, "invisible")
    bob.expect(presence(alice.jid, "unavailable"))

    alice.send("<presence><show>dnd</show></presence>")
    alice.expect(presence(alice.jid))
    bob.assert_nothing(from_(alice.bare))
    # Bob still gets messages: only presence-out was denied.
    chat(alice, bob.bare, "psst")
    bob.expect(body_is("psst"))

    activate(alice, None)
    shown = bob.expect(presence(alice.jid))
    assert shown.findtext("{jabber:client}show") == "dnd", to_text(shown)


def test_presence_in_rule_hides_a_contact(make_client: MakeClient, pool: AccountPool):
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    friends(alice, bob)
    put(
        alice,
        "deaf",
        f"<item type='jid' value='{bob.bare}' action='deny' order='1'><presence-in/></item>",
    )
    make_default(alice, "deaf")
    # Bob was available: alice is told he is gone (XEP-0016 §2.11 note).
    alice.expect(presence(bob.jid, "unavailable"))
    bob.send("<presence><show>chat</show></presence>")
    bob.expect(presence(bob.jid))
    bob.send(f"<presence to='{alice.jid}'><show>xa</show></presence>")
    alice.assert_nothing(presence(bob.jid))
    # Alice's own presence still reaches Bob.
    alice.send("<presence><show>away</show></presence>")
    bob.expect(presence(alice.jid))
    make_default(alice, None)
    shown = alice.expect(presence(bob.jid))
    assert shown.findtext("{jabber:client}show") == "chat", to_text(shown)


def test_a_list_change_applies_to_every_resource_using_it(
    make_client: MakeClient, pool: AccountPool
):
    alice_account, bob_account = pool.take(2)
    orchard = online(make_client, alice_account, "orchard")
    home = online(make_client, alice_account, "home")
    bob = online(make_client, bob_account)
    put(orchard, "shared", "<item action='allow' order='1'/>")
    activate(orchard, "shared")
    activate(home, "shared")
    put(orchard, "shared", f"<item type='jid' value='{bob.bare}' action='deny' order='1'/>")
    for resource in (orchard, home):
        chat(bob, resource.jid, "hello " + resource.resource)
        bounced(bob, "service-unavailable")


def test_presence_in_does_not_cover_subscription_requests(
    make_client: MakeClient, pool: AccountPool
):
    """XEP-0016 §2.1: presence notifications do not include subscriptions."""
    alice_account, carol_account, dave_account = pool.take(3)
    alice = online(make_client, alice_account)
    carol = online(make_client, carol_account)
    dave = online(make_client, dave_account)
    put(alice, "deaf", "<item action='deny' order='1'><presence-in/></item>")
    activate(alice, "deaf")
    carol.send(f"<presence to='{alice.jid}'/>")
    alice.assert_nothing(presence(carol.jid))
    carol.send(f"<presence to='{alice.bare}' type='subscribe'/>")
    alice.expect(presence(carol.bare, "subscribe"))
    # An item naming no kind covers them.
    put(alice, "deaf", "<item action='deny' order='1'/>")
    dave.send(f"<presence to='{alice.bare}' type='subscribe'/>")
    alice.assert_nothing(from_(dave.bare))


def test_a_users_own_resources_are_never_blocked(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    orchard = online(make_client, account, "orchard")
    home = online(make_client, account, "home")
    put(orchard, "nobody", "<item action='deny' order='1'/>")
    make_default(orchard, "nobody")
    chat(home, orchard.jid, "note to self")
    orchard.expect(body_is("note to self"))
    home.send("<presence><show>away</show></presence>")
    orchard.expect(presence(home.jid))
