"""Privacy-list evaluation (RFC 3921 §10 / XEP-0016) as pure functions, table-driven.

No server: items, a roster, a stanza kind and the other party's JID in, a
decision out. The wire tests check that the engine applies these on every path.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import succeed
from twisted.words.protocols.jabber.error import StanzaError

from imserver.jid import parse_jid
from imserver.privacy import (
    PrivacyEngine,
    PrivacyItem,
    PrivacySettings,
    blocklist_of,
    effective_list,
    first_match,
    is_allowed,
    is_block_item,
    jid_matches,
    normalized,
    parse_order,
    stanza_kind,
    with_blocked,
    without_blocked,
)
from imserver.roster import Roster, RosterItem
from imserver.session import Session, SessionRegistry
from imserver.stream.parser import parse_stanza
from plugins.privacy import parse_items

ALL = frozenset(("message", "iq", "presence-in", "presence-out"))


def roster(*items: RosterItem) -> Roster:
    return Roster(items={item.jid: item for item in items})


ROSTER = roster(
    RosterItem("tybalt@example.com", subscription="from", groups=("Enemies", "Capulets")),
    RosterItem("juliet@example.com", subscription="both", groups=("Lovers",)),
    RosterItem("nurse@example.com", subscription="to"),
    RosterItem("paris@example.org", subscription="none", ask=True),
)


@pytest.mark.parametrize(
    ("value", "other", "expected"),
    [
        # user@domain/resource: only that resource
        ("juliet@capulet.com/balcony", "juliet@capulet.com/balcony", True),
        ("juliet@capulet.com/balcony", "juliet@capulet.com/chamber", False),
        ("juliet@capulet.com/balcony", "juliet@capulet.com", False),
        # user@domain: any resource, and the bare JID
        ("juliet@capulet.com", "juliet@capulet.com/chamber", True),
        ("juliet@capulet.com", "juliet@capulet.com", True),
        ("juliet@capulet.com", "nurse@capulet.com/chamber", False),
        ("juliet@capulet.com", "juliet@montague.net", False),
        ("juliet@capulet.com", "capulet.com", False),
        # domain/resource: only that resource, of any entity at the domain
        ("capulet.com/balcony", "capulet.com/balcony", True),
        ("capulet.com/balcony", "juliet@capulet.com/balcony", True),
        ("capulet.com/balcony", "capulet.com/chamber", False),
        ("capulet.com/balcony", "capulet.com", False),
        ("capulet.com/balcony", "juliet@capulet.com", False),
        # domain: the domain, anything at it, and its subdomains
        ("capulet.com", "capulet.com", True),
        ("capulet.com", "capulet.com/balcony", True),
        ("capulet.com", "juliet@capulet.com", True),
        ("capulet.com", "juliet@capulet.com/balcony", True),
        ("capulet.com", "chat.capulet.com", True),
        ("capulet.com", "juliet@chat.capulet.com/x", True),
        ("capulet.com", "notcapulet.com", False),
        ("capulet.com", "capulet.com.evil.example", False),
        ("capulet.com", "montague.net", False),
        # values and JIDs are compared after stringprep
        ("JULIET@Capulet.COM", "juliet@capulet.com/x", True),
    ],
)
def test_jid_matching_order_of_xep_0016(value: str, other: str, expected: bool) -> None:
    assert jid_matches(value, parse_jid(other)) is expected


@pytest.mark.parametrize(
    ("item", "other", "expected"),
    [
        (PrivacyItem(1, "deny", "group", "Enemies"), "tybalt@example.com/x", True),
        (PrivacyItem(1, "deny", "group", "Capulets"), "tybalt@example.com", True),
        (PrivacyItem(1, "deny", "group", "Enemies"), "juliet@example.com", False),
        (PrivacyItem(1, "deny", "group", "Enemies"), "stranger@example.com", False),
        (PrivacyItem(1, "deny", "subscription", "both"), "juliet@example.com", True),
        (PrivacyItem(1, "deny", "subscription", "from"), "tybalt@example.com", True),
        (PrivacyItem(1, "deny", "subscription", "to"), "nurse@example.com", True),
        (PrivacyItem(1, "deny", "subscription", "to"), "juliet@example.com", False),
        (PrivacyItem(1, "deny", "subscription", "none"), "paris@example.org", True),
        # "none" includes entities that are not in the roster at all
        (PrivacyItem(1, "deny", "subscription", "none"), "stranger@example.com/r", True),
        (PrivacyItem(1, "deny", "subscription", "none"), "juliet@example.com", False),
        # fall-through: everyone
        (PrivacyItem(1, "deny"), "anyone@anywhere.example", True),
    ],
)
def test_group_subscription_and_fall_through_items(
    item: PrivacyItem, other: str, expected: bool
) -> None:
    found = first_match([item], ROSTER, "message", parse_jid(other))
    assert (found is item) is expected


def test_group_and_subscription_items_without_a_roster_see_a_stranger() -> None:
    other = parse_jid("tybalt@example.com")
    assert first_match([PrivacyItem(1, "deny", "group", "Enemies")], None, "iq", other) is None
    none = PrivacyItem(1, "deny", "subscription", "none")
    assert first_match([none], None, "iq", other) is none


@pytest.mark.parametrize(
    ("kind", "type_", "inbound", "expected"),
    [
        ("message", "chat", True, "message"),
        ("message", "chat", False, None),
        ("iq", "get", True, "iq"),
        ("iq", "result", True, "iq"),
        ("iq", "set", False, None),
        ("presence", "available", True, "presence-in"),
        ("presence", "unavailable", True, "presence-in"),
        ("presence", "available", False, "presence-out"),
        ("presence", "unavailable", False, "presence-out"),
        # subscriptions and probes are not presence notifications
        ("presence", "subscribe", True, None),
        ("presence", "subscribed", False, None),
        ("presence", "probe", True, None),
        ("presence", "probe", False, None),
        ("presence", "error", True, None),
    ],
)
def test_stanza_kinds(kind: str, type_: str, inbound: bool, expected: str | None) -> None:
    assert stanza_kind(kind, type_, inbound) == expected


TYBALT = parse_jid("tybalt@example.com/pda")
DENY_MESSAGES = PrivacyItem(5, "deny", "jid", "tybalt@example.com", frozenset({"message"}))
ALLOW_TYBALT = PrivacyItem(10, "allow", "jid", "tybalt@example.com")
DENY_ALL = PrivacyItem(20, "deny")
DENY_PRESENCE_OUT = PrivacyItem(3, "deny", "group", "Enemies", frozenset({"presence-out"}))


@pytest.mark.parametrize(
    ("items", "kind", "expected"),
    [
        # no list, or nothing matching: allowed (RFC 3921 §10 rule 7)
        ([], "message", None),
        ([PrivacyItem(1, "deny", "jid", "juliet@example.com")], "message", None),
        # the lowest order wins, whatever the order items are given in
        ([ALLOW_TYBALT, DENY_MESSAGES], "message", DENY_MESSAGES),
        ([DENY_ALL, ALLOW_TYBALT, DENY_MESSAGES], "message", DENY_MESSAGES),
        ([DENY_ALL, ALLOW_TYBALT, DENY_MESSAGES], "iq", ALLOW_TYBALT),
        ([DENY_ALL, DENY_MESSAGES], "iq", DENY_ALL),
        # an item naming kinds applies to those kinds only
        ([DENY_MESSAGES], "presence-in", None),
        ([DENY_MESSAGES], None, None),
        ([DENY_PRESENCE_OUT, DENY_ALL], "presence-out", DENY_PRESENCE_OUT),
        ([DENY_PRESENCE_OUT], "presence-in", None),
        # an item naming no kind applies to everything, subscriptions and probes too
        ([DENY_ALL], None, DENY_ALL),
        ([DENY_ALL], "presence-out", DENY_ALL),
        (
            [PrivacyItem(1, "deny", "jid", "tybalt@example.com", ALL)],
            "presence-in",
            PrivacyItem(1, "deny", "jid", "tybalt@example.com", ALL),
        ),
    ],
)
def test_first_match_by_ascending_order_and_kind(
    items: list[PrivacyItem], kind: str | None, expected: PrivacyItem | None
) -> None:
    assert first_match(items, ROSTER, kind, TYBALT) == expected
    assert is_allowed(items, ROSTER, kind, TYBALT) is (
        expected is None or expected.action == "allow"
    )


def test_effective_list_is_the_active_one_else_the_default_without_layering() -> None:
    public = (PrivacyItem(1, "deny", "jid", "tybalt@example.com"),)
    private = (PrivacyItem(1, "allow", "subscription", "both"), PrivacyItem(2, "deny"))
    settings = PrivacySettings(default="public", lists={"public": public, "private": private})
    assert effective_list(settings, None) == public
    assert effective_list(settings, "private") == private
    assert effective_list(PrivacySettings(lists={"private": private}), None) is None
    assert effective_list(PrivacySettings(), None) is None


def test_normalized_sorts_items_and_drops_a_dangling_default() -> None:
    items = [PrivacyItem(9, "allow"), PrivacyItem(2, "deny", "jid", "a@b")]
    settings = normalized(PrivacySettings(default="gone", lists={"x": items}))
    assert settings.default is None
    assert [i.order for i in settings.lists["x"]] == [2, 9]
    assert normalized(PrivacySettings(default="x", lists={"x": items})).default == "x"


# -- the blocklist as deny items --------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (PrivacyItem(1, "deny", "jid", "a@b"), True),
        (PrivacyItem(1, "deny", "jid", "a@b", ALL), True),
        (PrivacyItem(1, "deny", "jid", "a@b", frozenset({"message"})), False),
        (PrivacyItem(1, "allow", "jid", "a@b"), False),
        (PrivacyItem(1, "deny", "group", "a@b"), False),
        (PrivacyItem(1, "deny"), False),
    ],
)
def test_block_items(item: PrivacyItem, expected: bool) -> None:
    assert is_block_item(item) is expected


def test_blocklist_of_lists_block_items_once_in_order() -> None:
    items = [
        PrivacyItem(7, "deny", "jid", "c@x"),
        PrivacyItem(1, "deny", "jid", "a@x"),
        PrivacyItem(3, "deny", "jid", "b@x", frozenset({"iq"})),
        PrivacyItem(4, "allow", "jid", "d@x"),
        PrivacyItem(9, "deny", "jid", "a@x", ALL),
    ]
    assert blocklist_of(items) == ["a@x", "c@x"]
    assert blocklist_of(None) == []


@pytest.mark.parametrize(
    ("items", "jids", "expected"),
    [
        # into an empty list
        ([], ["a@x", "b@x"], [(0, "deny", "a@x"), (1, "deny", "b@x")]),
        # room below the lowest order: nothing else is renumbered
        (
            [PrivacyItem(10, "allow", "jid", "c@x"), PrivacyItem(20, "deny")],
            ["a@x"],
            [(9, "deny", "a@x"), (10, "allow", "c@x"), (20, "deny", None)],
        ),
        # no room: the rest moves up, keeping its sequence
        (
            [PrivacyItem(0, "allow", "jid", "a@x"), PrivacyItem(1, "deny")],
            ["a@x"],
            [(0, "deny", "a@x"), (1, "allow", "a@x"), (2, "deny", None)],
        ),
        # blocking again moves the block to the front, where it wins
        (
            [PrivacyItem(5, "allow", "jid", "a@x"), PrivacyItem(8, "deny", "jid", "a@x")],
            ["a@x"],
            [(4, "deny", "a@x"), (5, "allow", "a@x")],
        ),
    ],
)
def test_with_blocked_puts_blocks_first(
    items: list[PrivacyItem], jids: list[str], expected: list[tuple]
) -> None:
    result = with_blocked(items, jids)
    assert [(i.order, i.action, i.value) for i in result] == expected
    assert len({i.order for i in result}) == len(result)
    for jid in jids:
        assert not is_allowed(result, None, None, parse_jid(jid))


def test_without_blocked_removes_only_block_items() -> None:
    items = [
        PrivacyItem(1, "deny", "jid", "a@x"),
        PrivacyItem(2, "deny", "jid", "b@x"),
        PrivacyItem(3, "deny", "jid", "a@x", frozenset({"message"})),
        PrivacyItem(4, "deny"),
    ]
    assert [i.order for i in without_blocked(items, ["a@x"])] == [2, 3, 4]
    assert [i.order for i in without_blocked(items, None)] == [3, 4]
    assert without_blocked(items, ["nobody@x"]) == tuple(items)


# -- the wire form of items -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("17", 17), ("4294967295", 4294967295)],
)
def test_order_values(value: str, expected: int) -> None:
    assert parse_order(value) == expected


@pytest.mark.parametrize("value", [None, "", "-1", "+1", "1.5", " 1", "x", "4294967296", "²"])
def test_bad_order_values(value: str | None) -> None:
    with pytest.raises(StanzaError) as caught:
        parse_order(value)
    assert caught.value.condition == "bad-request"


def items_of(xml: str) -> list:
    stanza = parse_stanza(
        "<iq xmlns='jabber:client' type='set' id='x'><query xmlns='jabber:iq:privacy'>"
        f"<list name='l'>{xml}</list></query></iq>"
    )
    return list(stanza.firstChildElement().firstChildElement().elements())


def test_parse_items_normalises_jids_and_reads_kinds() -> None:
    items = parse_items(
        items_of(
            "<item type='jid' value='Tybalt@Example.COM/PDA' action='deny' order='3'>"
            "<message/><presence-in/></item>"
            "<item type='group' value='Enemies' action='deny' order='1'/>"
            "<item type='subscription' value='none' action='allow' order='2'><iq/></item>"
            "<item action='allow' order='68'/>"
        ),
        ROSTER,
    )
    assert items == [
        PrivacyItem(
            3, "deny", "jid", "tybalt@example.com/PDA", frozenset({"message", "presence-in"})
        ),
        PrivacyItem(1, "deny", "group", "Enemies"),
        PrivacyItem(2, "allow", "subscription", "none", frozenset({"iq"})),
        PrivacyItem(68, "allow"),
    ]


@pytest.mark.parametrize(
    ("xml", "condition"),
    [
        ("<item action='deny'/>", "bad-request"),  # no order
        ("<item action='deny' order='-1'/>", "bad-request"),
        ("<item action='deny' order='1'/><item action='allow' order='1'/>", "bad-request"),
        ("<item order='1'/>", "bad-request"),  # no action
        ("<item action='block' order='1'/>", "bad-request"),
        ("<item type='resource' value='x' action='deny' order='1'/>", "bad-request"),
        ("<item type='jid' action='deny' order='1'/>", "bad-request"),  # no value
        ("<item type='jid' value='' action='deny' order='1'/>", "bad-request"),
        ("<item type='jid' value='bad jid@example.com' action='deny' order='1'/>", "bad-request"),
        ("<item type='jid' value='a@b@c' action='deny' order='1'/>", "bad-request"),
        ("<item type='subscription' value='pending' action='deny' order='1'/>", "bad-request"),
        ("<item action='deny' order='1'><presence/></item>", "bad-request"),
        ("<foo action='deny' order='1'/>", "bad-request"),
        # a group that is not in the roster (XEP-0016 §2.1)
        ("<item type='group' value='Friends' action='deny' order='1'/>", "item-not-found"),
    ],
)
def test_malformed_items(xml: str, condition: str) -> None:
    with pytest.raises(StanzaError) as caught:
        parse_items(items_of(xml), ROSTER)
    assert caught.value.condition == condition


# -- the engine's helper for stanzas handed to a session directly ----------------------------


class _Stub:
    """Just enough of a server for the engine to load one user's rules."""

    def __init__(self, settings: PrivacySettings, roster: Roster) -> None:
        self.hooks: dict[str, object] = {}
        self.dispatcher = self
        self.sessions = SessionRegistry()
        self.hosts = frozenset(["example.net"])
        self._settings = settings
        self._roster = roster
        self.store = self
        self.rosters = self

    def hook(self, name: str, callback: object, priority: int = 0) -> None:
        self.hooks[name] = callback

    def add_filter(self, direction: str, check: object) -> None:
        pass

    def get_privacy(self, user: str, host: str):
        return succeed(self._settings)

    def cached(self, user: str, host: str) -> Roster:
        return self._roster


def test_admits_applies_the_sessions_list_to_stanzas_handed_over_directly() -> None:
    lists = {
        "public": [PrivacyItem(1, "deny", "group", "Enemies")],
        "open": [PrivacyItem(1, "allow")],
    }
    stub = _Stub(PrivacySettings(default="public", lists=lists), ROSTER)
    engine = PrivacyEngine(stub)
    romeo = Session(parse_jid("romeo@example.net/orchard"), stream=None)
    tybalt, juliet = parse_jid("tybalt@example.com"), parse_jid("juliet@example.com")
    assert engine.admits(romeo, tybalt, "presence", "subscribe"), "not enabled: a no-op"

    engine.enable()
    assert not engine.admits(romeo, tybalt, "presence", "subscribe"), "rules not loaded yet"
    stub.sessions.add(romeo)
    stub.hooks["session-bound"](romeo)
    assert not engine.admits(romeo, tybalt, "presence", "subscribe")
    assert engine.admits(romeo, juliet, "presence", "subscribe")
    romeo.extra["privacy"] = "open"  # an active list replaces the default
    assert engine.admits(romeo, tybalt, "presence", "subscribe")
