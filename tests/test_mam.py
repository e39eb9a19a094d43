"""XEP-0313 message archive (mam:2) and XEP-0359 stanza ids, over the wire.

Each rule of the XEP gets a scenario: what is archived (once, with the id the
recipient saw), filters (with/start/end), RSM paging both ways across 1,000
messages, errors, preferences, the account's disco, offline delivery agreeing
with the archive, and retention.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from support.archive import (
    NS_MAM,
    NS_SID,
    QueryFailed,
    query,
    stanza_ids,
)
from support.client import RawClient, clark, stanza_error, to_text
from support.im import AccountPool, User, body_is, chat, login, message, online
from support.server import ServerProcess

from imserver.config import DEFAULT_PLUGINS

MakeClient = Callable[..., RawClient]
PLUGINS = [*DEFAULT_PLUGINS, "mam", "carbons"]
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("server"),
        server={"plugins": PLUGINS},
        limits={"offline_messages": 2000},
    )
    try:
        yield process.start()
    finally:
        process.kill()


def pair(make_client: MakeClient, pool: AccountPool) -> tuple[User, User]:
    alice_account, bob_account = pool.take(2)
    return online(make_client, alice_account), online(make_client, bob_account)


def test_account_disco_announces_the_archive(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = login(make_client, account)
    answer = alice.iq(f"<iq type='get' to='{alice.bare}'><query xmlns='{NS_DISCO_INFO}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)
    features = {f.get("var") for f in answer.iter(clark(NS_DISCO_INFO, "feature"))}
    assert {NS_MAM, f"{NS_MAM}#extended", NS_SID, NS_DISCO_INFO} <= features
    identities = [
        (i.get("category"), i.get("type")) for i in answer.iter(clark(NS_DISCO_INFO, "identity"))
    ]
    assert ("account", "registered") in identities  # PEP adds pubsub/pep beside it


def test_each_side_archives_once_and_the_recipient_sees_its_id(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice, bob = pair(make_client, pool)
    # A stanza-id by bob's archive that alice made up: bob's server must drop it.
    alice.send(
        f"<message to='{bob.bare}' type='chat' id='m1'><body>hello</body>"
        f"<stanza-id xmlns='{NS_SID}' by='{bob.bare}' id='forged'/>"
        f"<stanza-id xmlns='{NS_SID}' by='{alice.bare}' id='forged-too'/></message>"
    )
    got = bob.expect(message(alice.jid))
    assert stanza_ids(got, by=alice.bare) == [], "the sender's archive id never leaves"
    (bob_id,) = stanza_ids(got, by=bob.bare)
    assert bob_id != "forged"

    bob_page = query(bob)
    assert [r.archive_id for r in bob_page.results] == [bob_id]
    assert bob_page.bodies == ["hello"] and bob_page.complete
    archived = bob_page.results[0].message
    assert archived.get("from") == alice.jid and archived.get("to") == bob.bare
    assert archived.get("id") == "m1" and archived.get("type") == "chat"
    assert stanza_ids(archived) == [], "the archived copy holds no (forged or real) ids"

    alice_page = query(alice)
    assert alice_page.bodies == ["hello"]
    assert alice_page.results[0].archive_id != bob_id
    stamp = datetime.fromisoformat(alice_page.results[0].stamp)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 5


def test_what_is_not_archived(make_client: MakeClient, pool: AccountPool) -> None:
    """Headlines, body-less chat states and <no-store/> hints stay out; receipts go in."""
    alice, bob = pair(make_client, pool)
    alice.send(f"<message to='{bob.bare}' type='headline'><body>news</body></message>")
    alice.send(
        f"<message to='{bob.bare}' type='chat'>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
    alice.send(
        f"<message to='{bob.bare}' type='chat'><body>secret</body>"
        "<no-store xmlns='urn:xmpp:hints'/></message>"
    )
    alice.send(
        f"<message to='{bob.bare}' type='chat'><received xmlns='urn:xmpp:receipts' id='x'/>"
        "</message>"
    )
    alice.send(f"<message to='{bob.bare}' type='chat'><body>kept</body></message>")
    got = [bob.expect(message(alice.jid)) for _ in range(5)]
    assert [bool(stanza_ids(m, bob.bare)) for m in got] == [False, False, False, True, True]
    assert query(bob).bodies == [None, "kept"]
    assert query(alice).bodies == [None, "kept"]


def test_offline_delivery_carries_the_archive_id(
    make_client: MakeClient, pool: AccountPool
) -> None:
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account)
    alice.send(f"<message to='{bob_account[0]}' type='chat'><body>while away</body></message>")
    alice.sync()
    bob = online(make_client, bob_account)
    got = bob.expect(body_is("while away"))
    ids = stanza_ids(got, by=bob.bare)
    assert len(ids) == 1, to_text(got)
    page = query(bob)
    assert [r.archive_id for r in page.results] == ids


def test_paging_across_a_thousand_messages(make_client: MakeClient, pool: AccountPool) -> None:
    """Forward with <after/>, backward with <before/>: each message exactly once, in order."""
    alice, bob = pair(make_client, pool)
    count = 1000
    for n in range(count):
        alice.send(f"<message to='{bob.bare}' type='chat'><body>{n}</body></message>")
    delivered = [bob.expect(message(alice.jid)) for _ in range(count)]
    expected = [str(n) for n in range(count)]
    assert [m.findtext("{jabber:client}body") for m in delivered] == expected
    seen_ids = [stanza_ids(m, bob.bare)[0] for m in delivered]

    forward: list[str] = []
    ids: list[str] = []
    after = None
    pages = 0
    while True:
        page = query(bob, max_=50, after=after)
        pages += 1
        forward += page.bodies
        ids += [r.archive_id for r in page.results]
        if page.complete:
            break
        assert len(page.results) == 50 and page.last == page.results[-1].archive_id
        after = page.last
    assert forward == expected and ids == seen_ids
    assert pages == 20, "the last full page already says complete"

    backward: list[str] = []
    before = ""
    while True:
        page = query(bob, max_=64, before=before)
        backward = page.bodies + backward
        if page.complete:
            break
        assert page.first == page.results[0].archive_id
        before = page.first
    assert backward == expected

    # The sender's archive pages the same way, in the sender's own ids.
    alice_bodies: list[str] = []
    after = None
    while True:
        page = query(alice, max_=50, after=after)
        alice_bodies += page.bodies
        if page.complete:
            break
        after = page.last
    assert alice_bodies == expected


def test_server_caps_the_page(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob = pair(make_client, pool)
    for n in range(60):
        chat(alice, bob.bare, str(n))
    for n in range(60):
        bob.expect(body_is(str(n)))
    page = query(bob, max_=500)
    assert len(page.results) == 50 and not page.complete
    assert len(query(bob).results) == 20, "20 without <max/>"
    assert query(bob, max_=10, before="").bodies == [str(n) for n in range(50, 60)]


def test_filters_with_start_end(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account, carol_account = pool.take(3)
    alice = online(make_client, alice_account, resource="desk")
    bob = online(make_client, bob_account)
    carol = online(make_client, carol_account)
    chat(alice, bob.bare, "to bob 1")
    chat(alice, carol.bare, "to carol 1")
    bob.expect(body_is("to bob 1"))
    carol.expect(body_is("to carol 1"))
    between = datetime.now(UTC)
    chat(bob, alice.bare, "from bob")
    alice.expect(body_is("from bob"))  # archived before alice's next one is sent
    chat(alice, carol.jid, "to carol 2")
    carol.expect(body_is("to carol 2"))

    assert query(alice, fields={"with": bob.bare}).bodies == ["to bob 1", "from bob"]
    assert query(alice, fields={"with": carol.bare}).bodies == ["to carol 1", "to carol 2"]
    assert query(alice, fields={"with": carol.jid}).bodies == ["to carol 2"]
    assert query(bob, fields={"with": alice.jid}).bodies == ["to bob 1"]
    iso = between.isoformat()
    assert query(alice, fields={"start": iso}).bodies == ["from bob", "to carol 2"]
    assert query(alice, fields={"end": iso}).bodies == ["to bob 1", "to carol 1"]
    assert query(alice, fields={"start": iso, "with": bob.bare}).bodies == ["from bob"]
    assert query(alice, fields={"end": "2000-01-01T00:00:00Z"}).bodies == []


def test_extended_ids_flip_and_metadata(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob = pair(make_client, pool)
    for n in range(5):
        chat(alice, bob.bare, str(n))
    for n in range(5):
        bob.expect(body_is(str(n)))
    ids = [r.archive_id for r in query(bob).results]
    page = query(bob, fields={"after-id": ids[0], "before-id": ids[4]})
    assert page.bodies == ["1", "2", "3"] and page.complete
    assert query(bob, fields={"ids": [ids[3], ids[1]]}).bodies == ["1", "3"]
    flipped = query(bob, max_=3, before="", flip=True)
    assert flipped.bodies == ["4", "3", "2"] and flipped.first == ids[2]

    answer = bob.iq(f"<iq type='get'><metadata xmlns='{NS_MAM}'/></iq>")
    metadata = answer.find(clark(NS_MAM, "metadata"))
    assert metadata is not None, to_text(answer)
    assert metadata.find(clark(NS_MAM, "start")).get("id") == ids[0]
    assert metadata.find(clark(NS_MAM, "end")).get("id") == ids[4]
    assert metadata.find(clark(NS_MAM, "end")).get("timestamp", "").endswith("Z")


def pages_of(user: User, max_: int, **kwargs) -> list[tuple[int | None, int | None, int]]:
    """Page forwards through a query: (count, index, size) of each page, until complete."""
    seen, after = [], None
    while True:
        page = query(user, max_=max_, after=after, **kwargs)
        seen.append((page.count, page.index, len(page.results)))
        if page.complete:
            return seen
        after = page.last


def test_count_and_index(make_client: MakeClient, pool: AccountPool) -> None:
    """XEP-0059 §2.2: <count/> is the size of the set the filters match, whatever the page;
    'index' is where a forward page starts in it. Backward pages carry no index (slixmpp
    stops paging backwards at the first page that has one: see imserver.archive)."""
    alice_account, bob_account, carol_account = pool.take(3)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    carol = online(make_client, carol_account)

    def send(sender: User, bodies: range) -> None:
        for n in bodies:
            chat(sender, bob.bare, str(n))
        for n in bodies:
            bob.expect(body_is(str(n)))

    # bob's archive, in order: 30 from alice, 12 from carol, 8 from alice.
    send(alice, range(30))
    send(carol, range(30, 42))
    between = datetime.now(UTC)
    send(alice, range(42, 50))
    ids = [r.archive_id for r in query(bob, max_=50).results]
    assert len(ids) == 50

    assert pages_of(bob, 20) == [(50, 0, 20), (50, 20, 20), (50, 40, 10)]
    backward, before = [], ""
    while True:
        page = query(bob, max_=20, before=before)
        backward.append((page.count, page.index, len(page.results)))
        if page.complete:
            break
        before = page.first
    assert backward == [(50, None, 20), (50, None, 20), (50, None, 10)]

    with_alice = {"with": alice.bare}
    assert pages_of(bob, 15, fields=with_alice) == [(38, 0, 15), (38, 15, 15), (38, 30, 8)]
    assert query(bob, fields={"with": carol.bare}).count == 12
    assert query(bob, fields={"with": alice.jid}).count == 38
    assert query(bob, fields={"with": f"{alice.bare}/elsewhere"}).count == 0
    assert query(bob, fields={"start": between.isoformat()}).count == 8
    assert query(bob, fields={"end": between.isoformat(), "with": carol.bare}).count == 12
    assert query(bob, fields={"ids": [ids[3], ids[40], ids[7]]}).count == 3
    # after-id and before-id are filters too (XEP-0313 §4.1.3): they bound the set.
    ranged = {"after-id": ids[9], "before-id": ids[20]}
    assert pages_of(bob, 4, fields=ranged) == [(10, 0, 4), (10, 4, 4), (10, 8, 2)]

    # RSM <after/> only places the page: the count stays, the index follows it, also
    # when the id it names is not in the filtered set (ids[35] is from carol).
    page = query(bob, max_=10, after=ids[5], fields=with_alice)
    assert (page.count, page.index, page.bodies[0]) == (38, 6, "6")
    page = query(bob, max_=5, after=ids[35], fields=with_alice)
    assert (page.count, page.index, page.bodies) == (38, 30, ["42", "43", "44", "45", "46"])
    page = query(bob, max_=3, after=ids[35], fields={"with": carol.bare})
    assert (page.count, page.index, page.bodies) == (12, 6, ["36", "37", "38"])


def test_max_zero_is_the_item_count(make_client: MakeClient, pool: AccountPool) -> None:
    """XEP-0059 §2.7: <max>0</max> returns no messages, only the count."""
    alice, bob = pair(make_client, pool)
    for n in range(7):
        chat(alice, bob.bare, str(n))
    for n in range(7):
        bob.expect(body_is(str(n)))
    page = query(bob, max_=0)
    assert page.results == [] and page.count == 7
    assert page.first is None and page.last is None and not page.complete
    assert query(bob, max_=0, fields={"with": bob.bare}).count == 0
    assert query(alice, max_=0, fields={"with": bob.bare}).count == 7


def test_an_empty_archive(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    user = online(make_client, account)
    page = query(user, max_=10)
    assert page.results == [] and page.complete and page.first is None
    assert page.count == 0
    assert query(user, max_=0).count == 0
    answer = user.iq(f"<iq type='get'><metadata xmlns='{NS_MAM}'/></iq>")
    assert list(answer.find(clark(NS_MAM, "metadata"))) == []


@pytest.mark.parametrize(
    ("kwargs", "condition"),
    [
        ({"max_": 5, "after": "no-such-id"}, "item-not-found"),
        ({"max_": 5, "before": "no-such-id"}, "item-not-found"),
        ({"fields": {"urn:example:unknown": "x"}}, "feature-not-implemented"),
        ({"fields": {"start": "yesterday"}}, "bad-request"),
        ({"fields": {"start": "2010-06-07T00:00:00"}}, "bad-request"),
        ({"fields": {"with": "@@"}}, "jid-malformed"),
    ],
)
def test_bad_queries(make_client: MakeClient, pool: AccountPool, kwargs, condition) -> None:
    (account,) = pool.take(1)
    user = login(make_client, account)
    with pytest.raises(QueryFailed) as failed:
        query(user, **kwargs)
    assert failed.value.condition == condition


def test_another_users_archive_is_forbidden(make_client: MakeClient, pool: AccountPool) -> None:
    alice, bob = pair(make_client, pool)
    with pytest.raises(QueryFailed) as failed:
        query(alice, to=bob.bare)
    assert failed.value.condition == "forbidden"


def test_query_form(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    user = login(make_client, account)
    answer = user.iq(f"<iq type='get'><query xmlns='{NS_MAM}'/></iq>")
    fields = {f.get("var"): f.get("type") for f in answer.iter("{jabber:x:data}field")}
    assert fields["FORM_TYPE"] == "hidden"
    assert fields["with"] == "jid-single"
    assert fields["start"] == "text-single" and fields["end"] == "text-single"
    assert not list(answer.iter("{jabber:x:data}required")), "no field may be required"


def prefs(user: User, xml: str | None = None) -> tuple[str | None, list[str], list[str]]:
    if xml is None:
        answer = user.iq(f"<iq type='get'><prefs xmlns='{NS_MAM}'/></iq>")
    else:
        answer = user.iq(f"<iq type='set'>{xml}</iq>")
    assert answer.get("type") == "result", to_text(answer)
    element = answer.find(clark(NS_MAM, "prefs"))
    assert element is not None, to_text(answer)

    def jids(name: str) -> list[str]:
        return [j.text or "" for j in element.iterfind(f"{{{NS_MAM}}}{name}/{{{NS_MAM}}}jid")]

    return element.get("default"), jids("always"), jids("never")


def test_preferences(make_client: MakeClient, pool: AccountPool) -> None:
    alice_account, bob_account, carol_account = pool.take(3)
    alice = online(make_client, alice_account)
    bob = online(make_client, bob_account)
    carol = online(make_client, carol_account)
    assert prefs(alice) == ("always", [], [])
    stored = prefs(
        alice,
        f"<prefs xmlns='{NS_MAM}' default='never'><always><jid>{carol.bare}</jid></always>"
        "<never/></prefs>",
    )
    assert stored == ("never", [carol.bare], [])
    assert prefs(alice) == stored
    chat(alice, bob.bare, "not kept by alice")
    chat(alice, carol.bare, "kept")
    chat(bob, alice.bare, "not kept either")
    assert stanza_ids(alice.expect(body_is("not kept either")), alice.bare) == []
    bob.expect(body_is("not kept by alice"))
    carol.expect(body_is("kept"))
    assert query(alice).bodies == ["kept"]
    assert query(bob).bodies == ["not kept by alice", "not kept either"], "bob's own prefs"

    # 'roster': only contacts in the roster; never beats always.
    alice.set_item(bob.bare)
    prefs(
        alice,
        f"<prefs xmlns='{NS_MAM}' default='roster'><always/><never><jid>{carol.bare}</jid>"
        "</never></prefs>",
    )
    chat(carol, alice.bare, "from carol")
    chat(bob, alice.bare, "from bob")
    alice.expect(body_is("from carol"))
    alice.expect(body_is("from bob"))
    assert query(alice).bodies == ["kept", "from bob"]

    answer = alice.iq(f"<iq type='set'><prefs xmlns='{NS_MAM}' default='sometimes'/></iq>")
    assert stanza_error(answer)[1] == "bad-request"


def test_preferences_of_an_offline_recipient(make_client: MakeClient, pool: AccountPool) -> None:
    """Read from the store when the recipient has no session, before offline storage."""
    alice_account, bob_account = pool.take(2)
    bob = login(make_client, bob_account)
    prefs(bob, f"<prefs xmlns='{NS_MAM}' default='never'/>")
    bob.client.close()
    alice = online(make_client, alice_account)
    chat(alice, bob_account[0], "one")
    chat(alice, bob_account[0], "two")
    alice.sync()
    bob = online(make_client, bob_account)
    got = [bob.expect(message(alice.jid)) for _ in range(2)]
    assert [m.findtext("{jabber:client}body") for m in got] == ["one", "two"]
    assert all(stanza_ids(m) == [] for m in got)
    assert query(bob).bodies == []
    assert query(alice).bodies == ["one", "two"]


def test_message_to_oneself_is_archived_once(make_client: MakeClient, pool: AccountPool) -> None:
    (account,) = pool.take(1)
    alice = online(make_client, account)
    chat(alice, alice.bare, "note to self")
    got = alice.expect(body_is("note to self"))
    (archive_id,) = stanza_ids(got, alice.bare)
    page = query(alice, fields={"with": alice.bare})
    assert [r.archive_id for r in page.results] == [archive_id]


def test_message_to_unknown_user_is_not_archived_for_them(
    make_client: MakeClient, pool: AccountPool, server: ServerProcess
) -> None:
    (account,) = pool.take(1)
    alice = online(make_client, account)
    alice.send(f"<message to='nobody-here@{server.host}' type='chat'><body>x</body></message>")
    bounce = alice.expect(lambda e: e.get("type") == "error")
    assert stanza_error(bounce)[1] == "service-unavailable"
    assert query(alice).bodies == ["x"], "what alice sent is hers to keep"


def test_retention(make_server, make_client: MakeClient) -> None:
    """Messages older than expire_after_days go, for every user."""
    server = make_server(
        server={"plugins": PLUGINS}, plugin={"mam": {"expire_after_days": 1.5 / 86400}}
    )
    pool = AccountPool(server, batch=2)
    alice_account, bob_account = pool.take(2)
    alice = online(make_client, alice_account, target=server)
    bob = online(make_client, bob_account, target=server)
    chat(alice, bob.bare, "soon gone")
    bob.expect(body_is("soon gone"))
    assert query(bob).bodies == ["soon gone"]
    deadline = time.monotonic() + 10
    while query(bob).bodies and time.monotonic() < deadline:
        time.sleep(0.25)
    assert query(bob).bodies == [] and query(alice).bodies == []
    assert query(bob).count == 0 and query(alice, max_=0).count == 0, "expiry counts too"


def test_bad_options_refuse_to_start(make_server) -> None:
    server = make_server(
        start=False, server={"plugins": PLUGINS}, plugin={"mam": {"default_policy": "often"}}
    )
    with pytest.raises(Exception, match="default_policy"):
        server.start()


def test_nothing_lost_when_query_follows_messages(
    make_client: MakeClient, pool: AccountPool
) -> None:
    """A query sent right after messages sees them: it waits for queued archive writes."""
    alice, bob = pair(make_client, pool)
    for n in range(30):
        chat(alice, bob.bare, str(n))
    assert query(alice).bodies == [str(n) for n in range(20)]


def test_removed_account_takes_its_archive(make_server, make_client: MakeClient) -> None:
    """XEP-0077 removal deletes the archive; a new account of that name starts empty."""
    server = make_server(server={"plugins": [*PLUGINS, "register"], "allow_registration": True})
    alice_account, bob_account = AccountPool(server, batch=2).take(2)
    alice = online(make_client, alice_account, target=server)
    bob = online(make_client, bob_account, target=server)
    chat(alice, bob.bare, "before")
    bob.expect(body_is("before"))
    assert query(alice).bodies == ["before"]
    answer = alice.iq("<iq type='set'><query xmlns='jabber:iq:register'><remove/></query></iq>")
    assert answer.get("type") == "result", to_text(answer)
    created = server.adduser(*alice_account)
    assert created.returncode == 0, created.stderr
    again = online(make_client, alice_account, target=server)
    assert query(again).bodies == [] and query(again).count == 0
    assert query(bob).bodies == ["before"], "bob's archive is bob's"
    assert query(bob).count == 1
