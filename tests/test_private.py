"""XEP-0049 private storage and the XEP-0411 bookmark bridge to XEP-0402, over the wire."""

from __future__ import annotations

from support.client import clark, to_text
from support.im import login
from support.pep import announce_caps, error_of, event_from, interested_in, item_ids, items, publish

NS_PRIVATE = "jabber:iq:private"
LEGACY = "storage:bookmarks"
BOOKMARKS = "urn:xmpp:bookmarks:1"


def private_get(user, element: str):
    answer = user.iq(f"<iq type='get'><query xmlns='{NS_PRIVATE}'>{element}</query></iq>")
    assert answer.get("type") == "result", to_text(answer)
    return answer.find(clark(NS_PRIVATE, "query"))[0]


def private_set(user, element: str):
    return user.iq(f"<iq type='set'><query xmlns='{NS_PRIVATE}'>{element}</query></iq>")


def test_store_and_read_back(make_client, pool) -> None:
    alice_account, bob_account = pool.take(2)
    alice = login(make_client, alice_account)
    assert len(private_get(alice, "<prefs xmlns='urn:example:prefs'/>")) == 0
    stored = private_set(alice, "<prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs>")
    assert stored.get("type") == "result", to_text(stored)
    prefs = private_get(alice, "<prefs xmlns='urn:example:prefs'/>")
    assert prefs.findtext(clark("urn:example:prefs", "theme")) == "dark"

    refused = private_set(alice, "<query xmlns='jabber:iq:roster'/>")
    assert error_of(refused)[0] == "not-acceptable"
    two = private_set(alice, "<a xmlns='urn:x'/><b xmlns='urn:x'/>")
    assert error_of(two)[0] == "bad-request"
    bob = login(make_client, bob_account)
    other = bob.iq(
        f"<iq type='get' to='{alice.bare}'><query xmlns='{NS_PRIVATE}'>"
        "<prefs xmlns='urn:example:prefs'/></query></iq>"
    )
    assert error_of(other)[0] == "forbidden"


def test_legacy_bookmarks_become_pep_bookmarks(make_client, pool) -> None:
    (alice_account,) = pool.take(1)
    alice = login(make_client, alice_account)
    modern = login(make_client, alice_account)
    modern.roster()
    announce_caps(modern, interested_in(BOOKMARKS))
    answer = private_set(
        alice,
        f"<storage xmlns='{LEGACY}'>"
        "<conference jid='room@muc.example.net' name='The Room' autojoin='1'>"
        "<nick>al</nick></conference>"
        "<conference jid='other@muc.example.net'/></storage>",
    )
    assert answer.get("type") == "result", to_text(answer)
    # The modern resource is told, item by item (XEP-0402 §4).
    seen = {modern.expect(event_from(alice.bare, BOOKMARKS)) for _ in range(2)}
    assert len(seen) == 2
    found = items(alice, alice.bare, BOOKMARKS)
    assert sorted(item_ids(found)) == ["other@muc.example.net", "room@muc.example.net"]
    room = next(
        i
        for i in found.iter("{http://jabber.org/protocol/pubsub}item")
        if i.get("id") == "room@muc.example.net"
    )
    conference = room.find(clark(BOOKMARKS, "conference"))
    assert conference.get("name") == "The Room" and conference.get("autojoin") == "true"
    assert conference.findtext(clark(BOOKMARKS, "nick")) == "al"

    # Dropping a room in legacy storage retracts it.
    private_set(
        alice,
        f"<storage xmlns='{LEGACY}'><conference jid='room@muc.example.net' "
        "name='The Room' autojoin='true'><nick>al</nick></conference></storage>",
    )
    assert item_ids(items(alice, alice.bare, BOOKMARKS)) == ["room@muc.example.net"]


def test_pep_bookmarks_seen_by_legacy_client(make_client, pool) -> None:
    (alice_account,) = pool.take(1)
    alice = login(make_client, alice_account)
    payload = (
        f"<conference xmlns='{BOOKMARKS}' name='Coven' autojoin='true'><nick>w</nick></conference>"
    )
    answer = publish(
        alice,
        BOOKMARKS,
        payload,
        "coven@muc.example.net",
        {
            "pubsub#persist_items": "true",
            "pubsub#max_items": "max",
            "pubsub#send_last_published_item": "never",
            "pubsub#access_model": "whitelist",
        },
    )
    assert answer.get("type") == "result", to_text(answer)
    storage = private_get(alice, f"<storage xmlns='{LEGACY}'/>")
    conferences = storage.findall(clark(LEGACY, "conference"))
    assert [(c.get("jid"), c.get("name"), c.get("autojoin")) for c in conferences] == [
        ("coven@muc.example.net", "Coven", "true")
    ]
    assert conferences[0].findtext(clark(LEGACY, "nick")) == "w"


def test_limits(make_server, make_client) -> None:
    server = make_server(plugin={"private": {"max_bytes": 200, "max_documents": 2}})
    alice = login(make_client, server.new_account(), target=server)
    big = private_set(alice, "<big xmlns='urn:x'>" + "x" * 300 + "</big>")
    assert error_of(big)[0] == "not-acceptable"
    for name in ("a", "b"):
        assert private_set(alice, f"<{name} xmlns='urn:x'/>").get("type") == "result"
    assert error_of(private_set(alice, "<c xmlns='urn:x'/>"))[0] == "resource-constraint"
    # Replacing a stored element is always possible.
    assert private_set(alice, "<a xmlns='urn:x'>new</a>").get("type") == "result"
    assert private_get(alice, "<a xmlns='urn:x'/>").text == "new"
