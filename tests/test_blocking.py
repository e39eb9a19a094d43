"""XEP-0191 blocking command over the wire, and how it shows in privacy lists.

Fresh accounts per test; RawClients speak the raw protocol so every push and
error is checked element by element.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable

from support.client import IQ, MESSAGE, PRESENCE, RawClient, clark, stanza_error, to_text
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

NS_BLOCKING = "urn:xmpp:blocking"
NS_PRIVACY = "jabber:iq:privacy"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


# -- helpers ----------------------------------------------------------------------------


def blocklist(user: User) -> list[str]:
    """Retrieve the blocklist (which subscribes this resource to block pushes)."""
    answer = user.iq(f"<iq type='get'><blocklist xmlns='{NS_BLOCKING}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    element = answer.find(clark(NS_BLOCKING, "blocklist"))
    assert element is not None, to_text(answer)
    return [item.get("jid") for item in element.findall(clark(NS_BLOCKING, "item"))]


def command(user: User, name: str, *jids: str) -> tuple[str | None, str | None]:
    items = "".join(f"<item jid='{jid}'/>" for jid in jids)
    answer = user.iq(f"<iq type='set'><{name} xmlns='{NS_BLOCKING}'>{items}</{name}></iq>")
    if answer.get("type") == "result":
        assert list(answer) == [], to_text(answer)
        return None, None
    return stanza_error(answer)


def block(user: User, *jids: str) -> None:
    assert command(user, "block", *jids) == (None, None)


def unblock(user: User, *jids: str) -> None:
    assert command(user, "unblock", *jids) == (None, None)


def is_block_push(name: str) -> Callable[[ET.Element], bool]:
    def match(e: ET.Element) -> bool:
        return (
            e.tag == IQ and e.get("type") == "set" and e.find(clark(NS_BLOCKING, name)) is not None
        )

    match.__name__ = f"{name}_push"
    return match


def push_items(user: User, name: str) -> list[str]:
    """The next <block/> or <unblock/> push: its JIDs (the iq is acknowledged)."""
    push = user.expect(is_block_push(name))
    assert push.get("to") == user.jid and push.get("id"), to_text(push)
    user.send(f"<iq type='result' id='{push.get('id')}'/>")
    return [i.get("jid") for i in push.find(clark(NS_BLOCKING, name))]


def is_blocking_push(e: ET.Element) -> bool:
    return e.tag == IQ and any(
        e.find(clark(NS_BLOCKING, n)) is not None for n in ("block", "unblock")
    )


def error_of(user: User, kind: str = MESSAGE) -> ET.Element:
    return user.expect(lambda e: e.tag == kind and e.get("type") == "error")


def privacy_get(user: User, inner: str = "") -> ET.Element:
    answer = user.iq(f"<iq type='get'><query xmlns='{NS_PRIVACY}'>{inner}</query></iq>")
    assert answer.get("type") == "result", to_text(answer)
    return answer.find(clark(NS_PRIVACY, "query"))


# -- protocol ------------------------------------------------------------------------------


def test_disco_announces_blocking(make_client: MakeClient, pool: AccountPool, server):
    (account,) = pool.take(1)
    user = login(make_client, account)
    answer = user.iq(f"<iq type='get' to='{server.host}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
    features = {f.get("var") for f in answer.iter(clark(NS_DISCO_INFO, "feature"))}
    assert {NS_BLOCKING, NS_PRIVACY} <= features, to_text(answer)


def test_block_unblock_and_pushes_to_resources_that_retrieved_the_list(
    make_client: MakeClient, pool: AccountPool
):
    (account,) = pool.take(1)
    chamber = login(make_client, account, "chamber")
    balcony = login(make_client, account, "balcony")
    garden = login(make_client, account, "garden")  # never asks for the blocklist
    assert blocklist(chamber) == []
    assert blocklist(balcony) == []

    block(chamber, "romeo@montague.net", "Iago@Shakespeare.lit")
    for resource in (chamber, balcony):
        assert push_items(resource, "block") == ["romeo@montague.net", "iago@shakespeare.lit"]
    assert blocklist(balcony) == ["romeo@montague.net", "iago@shakespeare.lit"]
    assert blocklist(garden) == ["romeo@montague.net", "iago@shakespeare.lit"]

    unblock(balcony, "romeo@montague.net")
    for resource in (chamber, balcony, garden):
        assert push_items(resource, "unblock") == ["romeo@montague.net"]
    assert blocklist(chamber) == ["iago@shakespeare.lit"]

    block(chamber, "mercutio@verona.lit")
    for resource in (chamber, balcony, garden):
        assert push_items(resource, "block") == ["mercutio@verona.lit"]
    unblock(chamber)  # everyone
    for resource in (chamber, balcony, garden):
        assert push_items(resource, "unblock") == []
    assert blocklist(chamber) == []


def test_garden_without_the_blocklist_gets_no_push(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    chamber = login(make_client, account, "chamber")
    garden = login(make_client, account, "garden")
    blocklist(chamber)
    block(chamber, "romeo@montague.net")
    push_items(chamber, "block")
    garden.assert_nothing(is_blocking_push)


def test_malformed_commands(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    user = login(make_client, account)
    assert command(user, "block") == ("modify", "bad-request")  # no item
    assert command(user, "block", "bad jid@example.com") == ("modify", "jid-malformed")
    assert command(user, "unblock", "a@b@c") == ("modify", "jid-malformed")
    answer = user.iq(f"<iq type='get'><block xmlns='{NS_BLOCKING}'/></iq>")
    assert stanza_error(answer) == ("modify", "bad-request"), to_text(answer)
    # Unblocking what is not blocked is harmless.
    unblock(user, "nobody@example.com")
    assert blocklist(user) == []


# -- enforcement ------------------------------------------------------------------------------


def test_blocked_contact_cannot_reach_the_user(make_client: MakeClient, pool: AccountPool):
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    block(alice, bob.bare)

    chat(bob, alice.bare, "hello?")
    error = error_of(bob)
    assert stanza_error(error) == ("cancel", "service-unavailable"), to_text(error)
    assert error.find(BLOCKED) is None, "the block itself stays secret"
    answer = bob.iq(f"<iq type='get' to='{alice.jid}'><query xmlns='jabber:iq:version'/></iq>")
    assert stanza_error(answer) == ("cancel", "service-unavailable"), to_text(answer)
    bob.send(f"<presence to='{alice.jid}'/>")
    bob.send(f"<presence to='{alice.bare}' type='subscribe'/>")
    alice.assert_nothing(from_(bob.bare))
    bob.assert_nothing(lambda e: e.tag == PRESENCE and e.get("type") == "error")


def test_user_cannot_reach_a_blocked_contact(make_client: MakeClient, pool: AccountPool):
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    block(alice, bob.bare)

    chat(alice, bob.jid, "are you there?")
    error = error_of(alice)
    assert stanza_error(error) == ("cancel", "not-acceptable"), to_text(error)
    assert error.find(BLOCKED) is not None, to_text(error)
    answer = alice.iq(f"<iq type='get' to='{bob.jid}'><query xmlns='jabber:iq:version'/></iq>")
    assert stanza_error(answer) == ("cancel", "not-acceptable"), to_text(answer)
    assert answer.find(BLOCKED) is not None, to_text(answer)
    alice.send(f"<presence to='{bob.jid}'/>")
    error = error_of(alice, PRESENCE)
    assert stanza_error(error) == ("cancel", "not-acceptable"), to_text(error)
    bob.assert_nothing(from_(alice.bare))


def test_subscription_request_to_a_blocked_contact_is_refused_and_changes_nothing(
    make_client: MakeClient, pool: AccountPool
):
    """XEP-0191 §3.5: not routed, not-acceptable with <blocked/>; the roster stays as it was."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    block(alice, bob.bare)
    alice.received()

    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    error = error_of(alice, PRESENCE)
    assert stanza_error(error) == ("cancel", "not-acceptable"), to_text(error)
    assert error.find(BLOCKED) is not None, to_text(error)
    assert bob.bare not in alice.roster_items()
    bob.assert_nothing(from_(alice.bare))


def test_blocking_withdraws_presence_and_unblocking_restores_it(
    make_client: MakeClient, pool: AccountPool
):
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    subscribe(alice, bob)
    subscribe(bob, alice)
    settle(alice, bob)
    alice.send("<presence><status>reading</status></presence>")
    bob.expect(presence(alice.jid))

    block(alice, bob.bare)
    bob.expect(presence(alice.jid, "unavailable"))
    # Alice stops seeing Bob too.
    alice.expect(presence(bob.jid, "unavailable"))
    alice.send("<presence><status>still here</status></presence>")
    bob.send("<presence><status>me too</status></presence>")
    bob.assert_nothing(from_(alice.bare))
    alice.assert_nothing(from_(bob.bare))

    unblock(alice, bob.bare)
    shown = bob.expect(presence(alice.jid))
    assert shown.findtext("{jabber:client}status") == "still here", to_text(shown)
    seen = alice.expect(presence(bob.jid))
    assert seen.findtext("{jabber:client}status") == "me too", to_text(seen)
    chat(bob, alice.bare, "back")
    alice.expect(body_is("back"))


def test_a_blocked_domain_covers_its_users(make_client: MakeClient, pool: AccountPool, server):
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    block(alice, server.host)  # bob lives there too
    chat(bob, alice.bare, "from the domain")
    assert stanza_error(error_of(bob)) == ("cancel", "service-unavailable")
    unblock(alice, server.host)
    chat(bob, alice.bare, "free again")
    alice.expect(body_is("free again"))


def test_block_persists_for_new_sessions_and_offline(make_client: MakeClient, pool: AccountPool):
    alice_account, bob_account = pool.take(2)
    alice = login(make_client, alice_account)
    block(alice, bob_account[0])
    alice.client.close()
    bob = online(make_client, bob_account)
    chat(bob, alice_account[0], "stored?")  # alice is offline: not stored, refused
    assert stanza_error(error_of(bob)) == ("cancel", "service-unavailable")
    alice = online(make_client, alice_account)
    assert blocklist(alice) == [bob.bare]
    alice.assert_nothing(body_is("stored?"))


# -- one store: the blocklist as privacy deny rules ----------------------------------------------


def test_blocklist_is_the_default_privacy_list(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    user = login(make_client, account)
    blocklist(user)
    block(user, "romeo@montague.net")
    push_items(user, "block")
    query = privacy_get(user)
    defaults = query.findall(clark(NS_PRIVACY, "default"))
    assert [d.get("name") for d in defaults] == ["blocklist"], to_text(query)
    items = privacy_get(user, "<list name='blocklist'/>").find(clark(NS_PRIVACY, "list"))
    assert [dict(i.attrib) for i in items] == [
        {"type": "jid", "value": "romeo@montague.net", "action": "deny", "order": "0"}
    ]
    assert [len(i) for i in items] == [0]  # no stanza kind: everything

    # A privacy client edits the default list: the blocklist follows, with pushes.
    answer = user.iq(
        f"<iq type='set'><query xmlns='{NS_PRIVACY}'><list name='blocklist'>"
        "<item type='jid' value='tybalt@capulet.lit' action='deny' order='1'/>"
        "<item type='jid' value='nurse@capulet.lit' action='deny' order='2'><message/></item>"
        "<item action='allow' order='3'/>"
        "</list></query></iq>"
    )
    assert answer.get("type") == "result", to_text(answer)
    assert push_items(user, "unblock") == ["romeo@montague.net"]
    assert push_items(user, "block") == ["tybalt@capulet.lit"]
    assert blocklist(user) == ["tybalt@capulet.lit"]  # nurse is only denied messages

    # Blocking into an existing default list puts the block first.
    block(user, "nurse@capulet.lit")
    push_items(user, "block")
    items = privacy_get(user, "<list name='blocklist'/>").find(clark(NS_PRIVACY, "list"))
    assert [(i.get("value"), i.get("order"), len(i)) for i in items] == [
        ("nurse@capulet.lit", "0", 0),
        ("tybalt@capulet.lit", "1", 0),
        ("nurse@capulet.lit", "2", 1),
        (None, "3", 0),
    ]
    unblock(user)
    assert push_items(user, "unblock") == []
    items = privacy_get(user, "<list name='blocklist'/>").find(clark(NS_PRIVACY, "list"))
    assert [i.get("order") for i in items] == ["2", "3"]  # the rest of the list stays

    # Declining the default list empties the blocklist.
    block(user, "iago@shakespeare.lit")
    push_items(user, "block")
    answer = user.iq(f"<iq type='set'><query xmlns='{NS_PRIVACY}'><default/></query></iq>")
    assert answer.get("type") == "result", to_text(answer)
    assert push_items(user, "unblock") == ["iago@shakespeare.lit"]
    assert blocklist(user) == []


def test_unblocking_the_last_item_removes_the_list(make_client: MakeClient, pool: AccountPool):
    (account,) = pool.take(1)
    user = login(make_client, account)
    block(user, "romeo@montague.net")
    unblock(user, "romeo@montague.net")
    query = privacy_get(user)
    assert list(query) == [], to_text(query)


def test_an_active_list_overrides_the_blocklist(make_client: MakeClient, pool: AccountPool):
    """XEP-0191 §3 item 5: a session with another active list is not covered by the block."""
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    block(alice, bob.bare)
    answer = alice.iq(
        f"<iq type='set'><query xmlns='{NS_PRIVACY}'><list name='open'>"
        "<item action='allow' order='1'/></list></query></iq>"
    )
    assert answer.get("type") == "result", to_text(answer)
    answer = alice.iq(
        f"<iq type='set'><query xmlns='{NS_PRIVACY}'><active name='open'/></query></iq>"
    )
    assert answer.get("type") == "result", to_text(answer)
    chat(bob, alice.jid, "through the open list")
    alice.expect(body_is("through the open list"))


# -- one transaction per change -------------------------------------------------------------------


def test_a_failed_store_write_keeps_neither_the_list_nor_the_default(
    make_client: MakeClient, pool: AccountPool, server
):
    """Blocking without a default list creates a list and makes it the default: one
    transaction. The database refuses the default's row; neither half may remain."""
    (account,) = pool.take(1)
    username = account[0].partition("@")[0]
    database = server.data_dir / "imserver.sqlite"
    _sql(
        database,
        f"CREATE TRIGGER refuse_{username} BEFORE INSERT ON privacy_default"
        f" WHEN NEW.username = '{username}' BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    user = login(make_client, account)
    assert command(user, "block", "romeo@montague.net")[1] == "internal-server-error"
    assert _sql(database, f"SELECT name FROM privacy_lists WHERE username = '{username}'") == []
    assert _sql(database, f"SELECT name FROM privacy_default WHERE username = '{username}'") == []
    # Nor does the server believe otherwise: nothing blocked, no list.
    assert blocklist(user) == []
    assert list(privacy_get(user)) == []

    _sql(database, f"DROP TRIGGER refuse_{username}")
    block(user, "romeo@montague.net")
    assert _sql(database, f"SELECT name FROM privacy_default WHERE username = '{username}'") == [
        ("blocklist",)
    ]


def _sql(database, statement: str) -> list[tuple]:
    """One statement on the running server's SQLite file (WAL: safe alongside it)."""
    connection = sqlite3.connect(database, timeout=10)
    try:
        with connection:
            return connection.execute(statement).fetchall()
    finally:
        connection.close()
