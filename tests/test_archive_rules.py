"""The archive's and carbons' pure rules, in memory: what is kept, copied, parsed, written."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.words.protocols.jabber.error import StanzaError

from imserver.archive import (
    ArchiveClock,
    ArchiveIds,
    ArchivePrefs,
    ArchiveRecord,
    parse_prefs,
    parse_query,
    should_archive,
    stanza_id_element,
    strip_stanza_ids,
)
from imserver.carbons import eligible
from imserver.stream.parser import parse_stanza
from plugins.carbons import remove_private
from plugins.mam import ArchiveWriter

MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"


def message(inner: str = "", **attributes: str):
    attrs = "".join(f" {k.rstrip('_')}='{v}'" for k, v in attributes.items())
    return parse_stanza(f"<message{attrs}>{inner}</message>")


@pytest.mark.parametrize(
    ("type_", "inner", "to", "kept"),
    [
        ("chat", "<body>hi</body>", "b@x", True),
        ("normal", "<body>hi</body>", "b@x", True),
        (None, "<subject>s</subject>", "b@x", True),
        ("chat", "<composing xmlns='http://jabber.org/protocol/chatstates'/>", "b@x", False),
        ("chat", "<received xmlns='urn:xmpp:receipts' id='1'/>", "b@x", True),
        ("chat", "<displayed xmlns='urn:xmpp:chat-markers:0' id='1'/>", "b@x", True),
        ("chat", "<encryption xmlns='urn:xmpp:eme:0' namespace='x'/>", "b@x", True),
        ("headline", "<body>news</body>", "b@x", False),
        ("groupchat", "<body>room</body>", "b@x", False),
        ("error", "<body>bounced</body>", "b@x/r", True),
        ("error", "<body>bounced</body>", "b@x", False),
        ("chat", "<body>hi</body><no-store xmlns='urn:xmpp:hints'/>", "b@x", False),
        ("chat", "<body>hi</body><no-permanent-store xmlns='urn:xmpp:hints'/>", "b@x", False),
        ("chat", "<store xmlns='urn:xmpp:hints'/>", "b@x", True),
        ("chat", "<x xmlns='urn:example'/>", "b@x", False),
    ],
)
def test_should_archive(type_, inner, to, kept) -> None:
    attrs = {"to": to} | ({"type": type_} if type_ else {})
    assert should_archive(message(inner, **attrs)) is kept


def test_strip_only_ids_by_that_archive() -> None:
    stanza = message("<body>x</body>", to="b@x")
    stanza.addChild(stanza_id_element("1", "b@x"))
    stanza.addChild(stanza_id_element("2", "c@x"))
    strip_stanza_ids(stanza, "b@x")
    ids = [(e["id"], e["by"]) for e in stanza.elements("urn:xmpp:sid:0", "stanza-id")]
    assert ids == [("2", "c@x")]
    assert stanza.body is not None


def test_clock_strictly_increases_even_when_time_does_not() -> None:
    times = iter([5_000_000, 5_000_000, 4_000_000, 9_000_000])
    clock = ArchiveClock(lambda: next(times))
    assert [clock() for _ in range(4)] == [5000, 5001, 5002, 9000]


def test_prefs_never_beats_always() -> None:
    prefs = ArchivePrefs("roster", frozenset({"a@x", "b@x"}), frozenset({"b@x"}))
    assert [prefs.rule_for(j) for j in ("a@x", "b@x", "c@x")] == ["always", "never", "roster"]


def test_parse_prefs() -> None:
    element = parse_stanza(
        f"<iq type='set' id='1'><prefs xmlns='{MAM}' default='never'>"
        "<always><jid>A@X/res</jid></always></prefs></iq>"
    ).firstChildElement()
    assert parse_prefs(element) == ArchivePrefs("never", frozenset({"a@x"}), frozenset())
    element["default"] = "sometimes"
    with pytest.raises(StanzaError):
        parse_prefs(element)


def query(inner: str = "", **attrs: str):
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return parse_stanza(
        f"<iq type='set' id='1'><query xmlns='{MAM}'{extra}>{inner}</query></iq>"
    ).firstChildElement()


def form(**fields: str) -> str:
    inner = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
        f"<value>{MAM}</value></field>{inner}</x>"
    )


def test_parse_query_defaults_and_caps() -> None:
    request = parse_query(query(queryid="f27"), 20, 50)
    assert (request.query_id, request.max, request.query.limit) == ("f27", 20, 20)
    assert not request.query.reverse and request.query.with_jid is None
    capped = parse_query(query(f"<set xmlns='{RSM}'><max>1000</max></set>"), 20, 50)
    assert capped.max == 50


def test_parse_query_filters_and_paging() -> None:
    request = parse_query(
        query(
            form(**{"with": "Juliet@Capulet.lit", "start": "2010-08-07T00:00:00Z"})
            + f"<set xmlns='{RSM}'><max>10</max><before/></set><flip-page/>"
        ),
        20,
        50,
    )
    q = request.query
    assert q.with_jid == "juliet@capulet.lit" and q.start == 1281139200000000
    assert q.reverse and q.before is None and request.flip
    both = parse_query(
        query(f"<set xmlns='{RSM}'><max>5</max><after>a</after><before>b</before></set>"), 20, 50
    )
    assert (both.query.after, both.query.before, both.query.reverse) == ("a", "b", True)


def test_id_fields_filter_and_rsm_ids_page() -> None:
    """after-id/before-id define the result set (XEP-0313 §4.1.3), RSM ids only the page:
    <count/> counts the first, so the two are kept apart, and both apply."""
    request = parse_query(
        query(
            form(**{"after-id": "x", "before-id": "y"})
            + f"<set xmlns='{RSM}'><max>0</max><after>a</after></set>"
        ),
        20,
        50,
    )
    q = request.query
    assert (q.after_id, q.before_id, q.after, q.before) == ("x", "y", "a", None)
    assert (q.limit, q.reverse) == (0, False)


@pytest.mark.parametrize(
    ("inner", "condition"),
    [
        (form(**{"urn:x:unknown": "1"}), "feature-not-implemented"),
        (form(start="2010-08-07T00:00:00"), "bad-request"),
        (form(end="soon"), "bad-request"),
        (form(**{"with": "@bad"}), "jid-malformed"),
        (f"<set xmlns='{RSM}'><max>x</max></set>", "bad-request"),
        (f"<set xmlns='{RSM}'><max>1</max><index>3</index></set>", "feature-not-implemented"),
        (
            "<x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE'>"
            f"<value>{MAM}</value></field></x>",
            "bad-request",
        ),
    ],
)
def test_parse_query_errors(inner: str, condition: str) -> None:
    with pytest.raises(StanzaError) as raised:
        parse_query(query(inner), 20, 50)
    assert raised.value.condition == condition


@pytest.mark.parametrize(
    ("type_", "inner", "inbound", "copied"),
    [
        ("chat", "", False, True),
        ("normal", "<body>x</body>", False, True),
        ("normal", "<received xmlns='urn:xmpp:receipts' id='1'/>", True, False),
        ("headline", "<body>x</body>", True, False),
        ("groupchat", "<body>x</body>", True, False),
        ("chat", "<private xmlns='urn:xmpp:carbons:2'/>", False, False),
        ("chat", "<no-copy xmlns='urn:xmpp:hints'/>", True, False),
        ("chat", "<x xmlns='http://jabber.org/protocol/muc#user'/>", True, False),
        ("chat", "<received xmlns='urn:xmpp:carbons:2'/>", True, False),
    ],
)
def test_carbons_eligible(type_, inner, inbound, copied) -> None:
    assert eligible(message(inner, type=type_, to="a@x"), inbound=inbound) is copied


def test_bounce_from_bare_jid_is_copied_inbound() -> None:
    assert eligible(message(type="error", from_="b@x"), inbound=True)
    assert not eligible(message(type="error", from_="b@x/r"), inbound=True)


def test_remove_private() -> None:
    stanza = message("<body>x</body><private xmlns='urn:xmpp:carbons:2'/>", type="chat")
    remove_private(stanza)
    assert [c.name for c in stanza.elements()] == ["body"]


class FakeStore:
    """Records each append_archive batch; the test fires each write when it likes."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.pending: list = []

    def append_archive(self, records):
        self.batches.append([r.archive_id for r in records])
        d = defer.Deferred()
        self.pending.append(d)
        return d


def record(archive_id: str) -> ArchiveRecord:
    return ArchiveRecord("u", "x", archive_id, 1, "v@x", "<message/>")


def test_writer_batches_per_turn_in_order_and_flushed_waits() -> None:
    store, clock = FakeStore(), Clock()
    writer = ArchiveWriter(store, clock)
    assert writer.flushed().called, "nothing queued: flushed at once"
    writer.add(record("a"))
    writer.add(record("b"))
    first = writer.flushed()
    clock.advance(0)
    assert store.batches == [["a", "b"]] and not first.called
    writer.add(record("c"))  # queued while the first batch is being written
    second = writer.flushed()
    clock.advance(0)
    assert store.batches == [["a", "b"]], "one batch at a time"
    store.pending[0].callback(None)
    assert first.called and not second.called
    assert store.batches == [["a", "b"], ["c"]]
    store.pending[1].errback(RuntimeError("disk full"))  # logged, not raised
    assert second.called


def test_archive_ids_are_unique_and_urlsafe() -> None:
    new_id = ArchiveIds()
    ids = [new_id() for _ in range(3 * ArchiveIds.BLOCK // 12)]  # across three refills
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and "=" not in i and "/" not in i and "+" not in i for i in ids)
