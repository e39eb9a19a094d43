"""XEP-0163 PEP over the wire: publish, read, configure, notify, and the account's disco.

Scenarios follow the issue's list: an OMEMO device list published with open
access and read by a stranger; a presence-access node a non-subscriber
cannot read; +notify delivery on publish and at login; limits answering
resource-constraint / not-acceptable.
"""

from __future__ import annotations

import pytest
from support.client import clark, to_text
from support.im import AccountPool, login, online, settle, subscribe
from support.pep import (
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_EVENT,
    NS_PUBSUB,
    announce_caps,
    config_values,
    error_of,
    event_from,
    event_item_ids,
    interested_in,
    item_ids,
    items,
    owner_iq,
    publish,
)

DEVICES = "eu.siacs.conversations.axolotl.devicelist"
DEVICE_LIST = "<list xmlns='eu.siacs.conversations.axolotl'><device id='{}'/></list>"
MOOD = "http://jabber.org/protocol/mood"
MOOD_PAYLOAD = "<mood xmlns='http://jabber.org/protocol/mood'><{}/></mood>"


@pytest.fixture
def accounts(pool: AccountPool):
    return lambda n: pool.take(n)


def friends(make_client, accounts):
    """Alice and bob, online with a mutual presence subscription; and a stranger, carol."""
    alice_account, bob_account, carol_account = accounts(3)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    subscribe(alice, bob)
    subscribe(bob, alice)
    carol = online(make_client, carol_account)
    settle(alice, bob, carol)
    return alice, bob, carol


def test_omemo_device_list_open_access_read_by_stranger(make_client, accounts) -> None:
    (alice_account, stranger_account) = accounts(2)
    alice = login(make_client, alice_account)
    answer = publish(
        alice, DEVICES, DEVICE_LIST.format(42), "current", {"pubsub#access_model": "open"}
    )
    assert answer.get("type") == "result", to_text(answer)
    published = answer.find(f"{clark(NS_PUBSUB, 'pubsub')}/{clark(NS_PUBSUB, 'publish')}")
    assert published.get("node") == DEVICES
    assert published.find(clark(NS_PUBSUB, "item")).get("id") == "current"

    stranger = login(make_client, stranger_account)
    answer = items(stranger, alice.bare, DEVICES)
    assert item_ids(answer) == ["current"]
    device = answer.find(".//{eu.siacs.conversations.axolotl}device")
    assert device.get("id") == "42", to_text(answer)

    # Same options again: the precondition holds; other options: conflict.
    again = publish(
        alice, DEVICES, DEVICE_LIST.format(43), "current", {"pubsub#access_model": "open"}
    )
    assert again.get("type") == "result", to_text(again)
    clash = publish(
        alice, DEVICES, DEVICE_LIST.format(44), "current", {"pubsub#access_model": "presence"}
    )
    assert error_of(clash) == ("conflict", "precondition-not-met")
    assert "43" in to_text(items(stranger, alice.bare, DEVICES))


def test_presence_access_node_hidden_from_non_subscriber(make_client, accounts) -> None:
    alice, bob, carol = friends(make_client, accounts)
    assert publish(alice, MOOD, MOOD_PAYLOAD.format("happy")).get("type") == "result"
    assert len(item_ids(items(bob, alice.bare, MOOD))) == 1
    assert error_of(items(carol, alice.bare, MOOD)) == (
        "not-authorized",
        "presence-subscription-required",
    )
    # Nobody but the owner changes the node.
    forbidden = carol.iq(
        f"<iq type='set' to='{alice.bare}'><pubsub xmlns='{NS_PUBSUB}'>"
        f"<publish node='{MOOD}'><item>{MOOD_PAYLOAD.format('sad')}</item></publish></pubsub></iq>"
    )
    assert error_of(forbidden)[0] == "forbidden"


def test_whitelist_node_is_owner_only(make_client, accounts) -> None:
    alice, bob, _ = friends(make_client, accounts)
    node = "urn:example:secret"
    answer = publish(
        alice, node, "<x xmlns='urn:example'/>", "a", {"pubsub#access_model": "whitelist"}
    )
    assert answer.get("type") == "result", to_text(answer)
    assert item_ids(items(alice, alice.bare, node)) == ["a"]
    assert error_of(items(bob, alice.bare, node)) == ("not-allowed", "closed-node")


def test_notify_on_publish_and_at_login(make_client, accounts) -> None:
    alice, bob, carol = friends(make_client, accounts)
    # Bob's client wants mood notifications; carol's too, but she is no contact.
    announce_caps(bob, interested_in(MOOD))
    announce_caps(carol, [*interested_in(MOOD), "urn:example:carol"])
    settle(alice, bob, carol)

    publish(alice, MOOD, MOOD_PAYLOAD.format("happy"), "m1")
    note = bob.expect(event_from(alice.bare, MOOD))
    assert event_item_ids(note) == ["m1"]
    assert note.get("type") == "headline" and note.get("to") == bob.jid, to_text(note)
    assert note.find(f".//{{{MOOD}}}happy") is not None
    carol.assert_nothing(event_from(alice.bare, MOOD))
    alice.assert_nothing(event_from(alice.bare, MOOD))  # no +notify: no self-notification

    # A second resource of bob logs in later: its caps are known by ver already,
    # so no query, and it gets the last item at once.
    bob2 = login(make_client, (bob.bare, bob.password))
    bob2.roster()
    announce_caps(bob2, interested_in(MOOD), answer=False)
    late = bob2.expect(event_from(alice.bare, MOOD))
    assert event_item_ids(late) == ["m1"]

    # Retract with notify, then delete: both announced.
    answer = alice.iq(
        f"<iq type='set'><pubsub xmlns='{NS_PUBSUB}'><retract node='{MOOD}' notify='true'>"
        "<item id='m1'/></retract></pubsub></iq>"
    )
    assert answer.get("type") == "result", to_text(answer)
    retracted = bob.expect(event_from(alice.bare, MOOD))
    assert retracted.find(f".//{clark(NS_EVENT, 'retract')}").get("id") == "m1"
    assert owner_iq(alice, f"<delete node='{MOOD}'/>").get("type") == "result"
    deleted = bob.expect(event_from(alice.bare, MOOD))
    assert deleted.find(f".//{clark(NS_EVENT, 'delete')}") is not None
    assert error_of(items(alice, alice.bare, MOOD))[0] == "item-not-found"


def test_items_by_id_and_max_items_and_configure(make_client, accounts) -> None:
    (alice_account,) = accounts(1)
    alice = login(make_client, alice_account)
    node = "urn:example:log"
    publish(alice, node, "<e xmlns='urn:example'>1</e>", "one", {"pubsub#max_items": "max"})
    for item_id in ("two", "three", "four"):
        assert publish(alice, node, "<e xmlns='urn:example'/>", item_id).get("type") == "result"
    assert item_ids(items(alice, alice.bare, node)) == ["one", "two", "three", "four"]
    assert item_ids(items(alice, alice.bare, node, attrs=" max_items='2'")) == ["three", "four"]
    assert item_ids(items(alice, alice.bare, node, "<item id='two'/>")) == ["two"]
    # Publishing an existing id replaces it and makes it the newest.
    publish(alice, node, "<e xmlns='urn:example'>again</e>", "one")
    assert item_ids(items(alice, alice.bare, node)) == ["two", "three", "four", "one"]

    values = config_values(owner_iq(alice, f"<configure node='{node}'/>", "get"))
    assert values["pubsub#max_items"] == "max"
    assert values["pubsub#access_model"] == "presence"
    # Lowering max_items trims the oldest items.
    answer = owner_iq(
        alice,
        f"<configure node='{node}'><x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE' type='hidden'>"
        f"<value>{NS_PUBSUB}#node_config</value></field>"
        "<field var='pubsub#max_items'><value>2</value></field></x></configure>",
    )
    assert answer.get("type") == "result", to_text(answer)
    assert item_ids(items(alice, alice.bare, node)) == ["four", "one"]

    # Retract one; purge the rest.
    alice.iq(
        f"<iq type='set'><pubsub xmlns='{NS_PUBSUB}'><retract node='{node}'>"
        "<item id='four'/></retract></pubsub></iq>"
    )
    assert item_ids(items(alice, alice.bare, node)) == ["one"]
    assert owner_iq(alice, f"<purge node='{node}'/>").get("type") == "result"
    assert item_ids(items(alice, alice.bare, node)) == []

    bad = owner_iq(
        alice,
        f"<configure node='{node}'><x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE' type='hidden'>"
        f"<value>{NS_PUBSUB}#node_config</value></field>"
        "<field var='pubsub#access_model'><value>authorize</value></field></x></configure>",
    )
    assert error_of(bad) == ("not-acceptable", "unsupported-access-model")


def test_items_survive_a_restart(make_server, make_client) -> None:
    server = make_server()
    account = server.new_account()
    alice = login(make_client, account, target=server)
    publish(alice, "urn:example:keep", "<k xmlns='urn:example'/>", "k1", {"pubsub#max_items": "3"})
    server.restart()
    alice = login(make_client, account, target=server)
    assert item_ids(items(alice, alice.bare, "urn:example:keep")) == ["k1"]
    form = owner_iq(alice, "<configure node='urn:example:keep'/>", "get")
    assert config_values(form)["pubsub#max_items"] == "3"


def test_account_disco_shows_pep(make_client, accounts) -> None:
    (alice_account,) = accounts(1)
    alice = login(make_client, alice_account)
    info = alice.iq(f"<iq type='get' to='{alice.bare}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
    identities = {
        (i.get("category"), i.get("type")) for i in info.iter(clark(NS_DISCO_INFO, "identity"))
    }
    features = {f.get("var") for f in info.iter(clark(NS_DISCO_INFO, "feature"))}
    assert ("pubsub", "pep") in identities, to_text(info)
    for name in ("publish", "publish-options", "auto-create", "access-open", "retrieve-items"):
        assert f"{NS_PUBSUB}#{name}" in features, name
    assert "urn:xmpp:bookmarks:1#compat" in features

    publish(alice, "urn:example:a", "<a xmlns='urn:example'/>")
    publish(alice, "urn:example:b", "<b xmlns='urn:example'/>")
    listing = alice.iq(f"<iq type='get' to='{alice.bare}'><query xmlns='{NS_DISCO_ITEMS}'/></iq>")
    nodes = {(i.get("jid"), i.get("node")) for i in listing.iter(clark(NS_DISCO_ITEMS, "item"))}
    assert nodes == {(alice.bare, "urn:example:a"), (alice.bare, "urn:example:b")}


def test_bad_requests(make_client, accounts) -> None:
    (alice_account,) = accounts(1)
    alice = login(make_client, alice_account)
    empty = alice.iq(
        f"<iq type='set'><pubsub xmlns='{NS_PUBSUB}'><publish node='n'><item/></publish>"
        "</pubsub></iq>"
    )
    assert error_of(empty) == ("bad-request", "payload-required")
    two = publish(alice, "n", "<a xmlns='urn:x'/><b xmlns='urn:x'/>")
    assert error_of(two) == ("bad-request", "invalid-payload")
    no_node = alice.iq(
        f"<iq type='set'><pubsub xmlns='{NS_PUBSUB}'><publish><item><a xmlns='urn:x'/></item>"
        "</publish></pubsub></iq>"
    )
    assert error_of(no_node) == ("bad-request", "nodeid-required")
    missing = items(alice, alice.bare, "no-such-node")
    assert error_of(missing)[0] == "item-not-found"
    subscribe_ = alice.iq(
        f"<iq type='set'><pubsub xmlns='{NS_PUBSUB}'><subscribe node='n' jid='{alice.bare}'/>"
        "</pubsub></iq>"
    )
    assert error_of(subscribe_) == ("feature-not-implemented", "unsupported")
    # The stream is fine afterwards.
    assert publish(alice, "n", "<a xmlns='urn:x'/>").get("type") == "result"


def test_limits(make_server, make_client) -> None:
    server = make_server(
        plugin={"pep": {"max_nodes": 2, "max_items": 3, "max_item_bytes": 300, "max_bytes": 400}}
    )
    alice = login(make_client, server.new_account(), target=server)
    big = "<b xmlns='urn:x'>" + "x" * 400 + "</b>"
    assert error_of(publish(alice, "n1", big)) == ("not-acceptable", "payload-too-big")
    assert (
        publish(alice, "n1", "<a xmlns='urn:x'/>", "1", {"pubsub#max_items": "max"}).get("type")
        == "result"
    )
    assert publish(alice, "n2", "<a xmlns='urn:x'/>").get("type") == "result"
    assert error_of(publish(alice, "n3", "<a xmlns='urn:x'/>")) == (
        "resource-constraint",
        "max-nodes-exceeded",
    )
    assert publish(alice, "n1", "<a xmlns='urn:x'/>", "2").get("type") == "result"
    assert error_of(publish(alice, "n1", "<a xmlns='urn:x'/>", "3")) == (
        "resource-constraint",
        "max-items-exceeded",
    )
    # Replacing an item does not count twice; bytes are capped across nodes too.
    assert publish(alice, "n1", "<a xmlns='urn:x'/>", "2").get("type") == "result"
    medium = "<m xmlns='urn:x'>" + "y" * 200 + "</m>"
    assert publish(alice, "n2", medium).get("type") == "result"
    assert error_of(publish(alice, "n1", medium, "2"))[0] == "resource-constraint"
    too_many = publish(alice, "n2", "<a xmlns='urn:x'/>", None, {"pubsub#max_items": "9"})
    assert error_of(too_many) == ("conflict", "precondition-not-met")


def test_notifications_respect_blocking(make_client, accounts) -> None:
    """Notifications travel the dispatcher like any message: a block stops them."""
    alice, bob, _ = friends(make_client, accounts)
    node = "urn:example:blocked"
    announce_caps(bob, [*interested_in(node), "urn:example:blocking-test"])
    blocked = bob.iq(
        f"<iq type='set'><block xmlns='urn:xmpp:blocking'><item jid='{alice.bare}'/></block></iq>"
    )
    assert blocked.get("type") == "result", to_text(blocked)
    settle(alice, bob)
    assert publish(alice, node, "<b xmlns='urn:example'/>").get("type") == "result"
    bob.assert_nothing(event_from(alice.bare, node))


def test_last_item_when_a_subscription_is_approved_online(make_client, accounts) -> None:
    """Bob, interested and online, subscribes to alice: her approval brings her presence
    and, with it, the last item of the node bob wants; a status change does not repeat it."""
    alice_account, bob_account = accounts(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    node = "urn:example:later"
    announce_caps(bob, [*interested_in(node), "urn:example:later-test"])
    publish(alice, node, "<l xmlns='urn:example'/>", "last")
    settle(alice, bob)
    bob.assert_nothing(event_from(alice.bare, node))  # no subscription yet
    subscribe(bob, alice)
    note = bob.expect(event_from(alice.bare, node))
    assert event_item_ids(note) == ["last"]
    alice.send("<presence><show>away</show></presence>")
    bob.expect(lambda e: e.get("from") == alice.jid and e.tag.endswith("presence"))
    bob.assert_nothing(event_from(alice.bare, node))
