"""The message archive's rules (XEP-0313 mam:2, XEP-0359 stanza ids), without I/O.

Which messages a user archive keeps, what a stored copy looks like, the
archiving preferences, and a query as the store needs it. The protocol face is
plugins/mam.py; the store is L{imserver.interfaces.IArchiveStore}. Everything
here is plain data and functions, so it is tested in memory.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from tx_xmpp import data_form, rsm
from tx_xmpp.mam import NS_MAM

from imserver.jid import InvalidFormat, parse_jid

NS_SID = "urn:xmpp:sid:0"
NS_HINTS = "urn:xmpp:hints"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_MARKERS = "urn:xmpp:chat-markers:0"
NS_EME = "urn:xmpp:eme:0"

POLICIES = ("always", "never", "roster")

#: Form fields a query may carry (XEP-0313 §4.1; the last three are #extended).
QUERY_FIELDS = ("FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids")


# -- what to archive ---------------------------------------------------------------


def should_archive(stanza: domish.Element) -> bool:
    """Whether a user archive keeps this message (XEP-0313 §7.1.1, XEP-0334 hints).

    Conversation messages (chat and normal with a body) are kept, and so are
    the payloads a conversation needs to make sense later: receipts, markers,
    encrypted bodies, subjects. Headlines and groupchat (the room archives
    those) are not; an error only when it reports a failed delivery to one of
    the user's resources. A <no-store/> or <no-permanent-store/> hint wins over
    everything, a <store/> hint over the defaults.
    """
    type_ = stanza.getAttribute("type") or "normal"
    if type_ in ("headline", "groupchat"):
        return False
    if type_ == "error":
        return "/" in (stanza.getAttribute("to") or "")
    keep = False
    for child in stanza.elements():
        uri, name = child.uri, child.name
        if uri == NS_HINTS:
            if name in ("no-store", "no-permanent-store"):
                return False
            if name == "store":
                keep = True
        elif uri == "jabber:client":
            keep = keep or name in ("body", "subject")
        elif uri in (NS_RECEIPTS, NS_MARKERS, NS_EME):
            keep = True
    return keep


# -- stanza ids (XEP-0359) ---------------------------------------------------------


class ArchiveIds:
    """Archive UIDs: unpredictable and never reused (XEP-0313 §3), 96 random bits each.

    Random bytes come from the OS in blocks: one getrandom() call per message
    showed up in profiles of the archive's hot path.
    """

    BLOCK = 12 * 1024

    def __init__(self) -> None:
        self._pool = b""
        self._offset = 0

    def __call__(self) -> str:
        if self._offset >= len(self._pool):
            self._pool, self._offset = os.urandom(self.BLOCK), 0
        chunk = self._pool[self._offset : self._offset + 12]
        self._offset += 12
        return base64.urlsafe_b64encode(chunk).decode("ascii")


def strip_stanza_ids(stanza: domish.Element, *archives: str) -> None:
    """Remove every <stanza-id/> claiming to be from one of C{archives} (XEP-0359 §7).

    Only the server that owns an archive may say what is in it; anything a
    sender put there is a forgery. Most messages have no stanza-id at all,
    and that is found in one pass.
    """
    children = stanza.children
    for child in children:
        if getattr(child, "name", None) == "stanza-id":
            break
    else:
        return
    stanza.children = [c for c in children if not _is_stanza_id(c, archives)]


def _is_stanza_id(child: object, archives: tuple[str, ...]) -> bool:
    return (
        isinstance(child, domish.Element)
        and child.name == "stanza-id"
        and child.uri == NS_SID
        and child.getAttribute("by") in archives
    )


def stanza_id_element(archive_id: str, by: str) -> domish.Element:
    element = domish.Element((NS_SID, "stanza-id"))
    element["id"] = archive_id
    element["by"] = by
    return element


# -- time ---------------------------------------------------------------------------


class ArchiveClock:
    """Microseconds since the epoch, strictly increasing within this process.

    Archive order is the order messages were handled; two in the same
    microsecond (or a clock stepping back) must still sort as they came.
    """

    def __init__(self, now: Callable[[], int] = time.time_ns) -> None:
        self._now = now
        self._last = 0

    def __call__(self) -> int:
        value = max(self._now() // 1000, self._last + 1)
        self._last = value
        return value


def to_datetime(microseconds: int) -> datetime:
    return datetime.fromtimestamp(microseconds / 1_000_000, UTC)


def to_microseconds(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


# -- stored copies --------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveRecord:
    """One message in one user's archive, as the store writes it.

    C{with_jid} is the other party's JID as addressed (full or bare): the
    recipient of an outgoing message, the sender of an incoming one.
    """

    user: str
    host: str
    archive_id: str
    when: int
    with_jid: str
    xml: str

    @property
    def with_bare(self) -> str:
        return self.with_jid.partition("/")[0]


class UnknownArchiveId(LookupError):
    """A query named an archive id (RSM after/before) that the archive does not hold."""


@dataclass(frozen=True)
class ArchivedMessage:
    """One result of a query: the archive id, when it was archived, the stanza's XML."""

    archive_id: str
    when: int
    xml: str


@dataclass(frozen=True)
class ArchivePage:
    """What a query returned, oldest first; C{complete} when nothing further matched.

    C{count} is the size of the full result set (XEP-0059 §2.2): every message
    the query's filters match, whatever page was asked for. C{index} is the
    position of the page's first message in it, for a forward page only: None
    for an empty page (no <first/> to carry it) and for a backward one (RSM
    <before/>). slixmpp's RSM iterator (1.17) stops paging once index + page
    size reaches the count, whichever way it pages: with an index, a client
    paging back from the newest message would get one page of its history.
    XEP-0313 §4.3.2 leaves both <count/> and the index to the server.
    """

    messages: list[ArchivedMessage]
    complete: bool
    count: int
    index: int | None


# -- preferences ---------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivePrefs:
    """A user's archiving preferences (XEP-0313 prefs, now XEP-0441): JIDs are bare."""

    default: str = "always"
    always: frozenset[str] = frozenset()
    never: frozenset[str] = frozenset()

    def rule_for(self, with_bare: str) -> str:
        """'always', 'never' or 'roster' for messages with C{with_bare}; never wins."""
        if with_bare in self.never:
            return "never"
        if with_bare in self.always:
            return "always"
        return self.default


def parse_prefs(element: domish.Element) -> ArchivePrefs:
    """A <prefs/> set; missing <always/>/<never/> lists mean empty ones."""
    default = element.getAttribute("default")
    if default not in POLICIES:
        raise StanzaError("bad-request", text="default must be always, never or roster")
    lists: dict[str, frozenset[str]] = {}
    for name in ("always", "never"):
        jids = set()
        for holder in element.elements(NS_MAM, name):
            for item in holder.elements(NS_MAM, "jid"):
                try:
                    jid = parse_jid(str(item).strip())
                except InvalidFormat:
                    raise StanzaError("jid-malformed") from None
                jids.add(jid.userhost())
        lists[name] = frozenset(jids)
    return ArchivePrefs(default, lists["always"], lists["never"])


# -- queries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveQuery:
    """One page request against one user's archive, as the store runs it.

    The filters (C{with_jid}, C{start}, C{end}, C{after_id}, C{before_id},
    C{ids}: the form fields of XEP-0313 §4.1) define the full result set that
    RSM's <count/> and 'index' describe. C{after}/C{before} (RSM) only place the
    page in it: archive ids bounding the page (exclusive); C{reverse} takes the
    newest C{limit} matches instead of the oldest (RSM <before/>). The store
    returns them oldest first either way.
    """

    with_jid: str | None = None
    start: int | None = None
    end: int | None = None
    after_id: str | None = None
    before_id: str | None = None
    ids: tuple[str, ...] | None = None
    after: str | None = None
    before: str | None = None
    limit: int = 20
    reverse: bool = False

    @property
    def with_is_full(self) -> bool:
        return self.with_jid is not None and "/" in self.with_jid


@dataclass(frozen=True)
class QueryRequest:
    """A parsed <query/>: what to ask the store and how to answer."""

    query: ArchiveQuery
    max: int
    query_id: str | None = None
    flip: bool = False


def parse_query(element: domish.Element, default_max: int, max_max: int) -> QueryRequest:
    """Read a mam:2 <query/> (filters in a XEP-0004 form, paging in XEP-0059 RSM).

    <max>0</max> is a page of no messages: the answer is the count alone (XEP-0059 §2.7).

    Raises L{StanzaError}: bad-request for malformed input, feature-not-implemented
    for a field or RSM index we do not serve (XEP-0313 §4.1.5).
    """
    values: dict[str, object] = {}
    forms = list(element.elements(data_form.NS_X_DATA, "x"))
    if len(forms) > 1:
        raise StanzaError("bad-request", text="more than one form")
    if forms:
        form = data_form.Form.fromElement(forms[0])
        if form.formType != "submit" or form.formNamespace != NS_MAM:
            raise StanzaError("bad-request", text=f"expected a {NS_MAM} form of type submit")
        for var in form.fields:
            if var not in QUERY_FIELDS:
                raise StanzaError("feature-not-implemented", text=f"unknown field {var!r}")
        values = {var: form.fields[var].values for var in form.fields}

    with_jid = None
    if values.get("with"):
        try:
            with_jid = parse_jid(_single(values, "with")).full()
        except InvalidFormat:
            raise StanzaError("jid-malformed", text="'with' is not a JID") from None

    page = _rsm_request(element)
    limit = min(page.max if page is not None else default_max, max_max)
    after = page.after if page is not None else None
    before = page.before if page is not None else None
    reverse = before is not None
    ids = tuple(str(v) for v in values["ids"]) if values.get("ids") else None

    query = ArchiveQuery(
        with_jid=with_jid,
        start=_timestamp(values, "start"),
        end=_timestamp(values, "end"),
        after_id=_optional(values, "after-id"),
        before_id=_optional(values, "before-id"),
        ids=ids,
        after=after,
        before=before or None,
        limit=limit,
        reverse=reverse,
    )
    flip = any(True for _ in element.elements(NS_MAM, "flip-page"))
    return QueryRequest(query, limit, element.getAttribute("queryid"), flip)


@dataclass(frozen=True)
class _Page:
    max: int
    after: str | None
    before: str | None


def _rsm_request(element: domish.Element) -> _Page | None:
    """The RSM <set/> of a query, read by tx-xmpp where it can.

    tx-xmpp's RSMRequest refuses a <set/> without <max/> (optional in XEP-0059
    §2.1) and asserts on <after/> together with <before/> (a range in mam:2
    servers such as Prosody), so those two cases are read here.
    """
    sets = list(element.elements(rsm.NS_RSM, "set"))
    if not sets:
        return None
    node = sets[0]
    names = {c.name for c in node.elements() if c.uri == rsm.NS_RSM}
    if "index" in names:
        raise StanzaError("feature-not-implemented", text="RSM <index/> is not supported")
    if "max" in names and not ("after" in names and "before" in names):
        try:
            request = rsm.RSMRequest.fromElement(node)
        except rsm.RSMError as e:
            raise StanzaError("bad-request", text=e.text) from None
        if request.max < 0:
            raise StanzaError("bad-request", text="negative <max/>")
        return _Page(request.max, request.after, request.before)
    after = _child_text(node, "after")
    if after == "":
        raise StanzaError("bad-request", text="empty <after/>")
    maximum = _child_text(node, "max")
    try:
        count = int(maximum) if maximum is not None else 1_000_000
    except ValueError:
        raise StanzaError("bad-request", text="bad value for <max/>") from None
    if count < 0:
        raise StanzaError("bad-request", text="negative <max/>")
    return _Page(count, after, _child_text(node, "before"))


def _child_text(node: domish.Element, name: str) -> str | None:
    for child in node.elements(rsm.NS_RSM, name):
        return str(child).strip()
    return None


def _single(values: dict[str, object], name: str) -> str:
    found = values[name]
    if not isinstance(found, list) or len(found) != 1:
        raise StanzaError("bad-request", text=f"{name!r} needs one value")
    return str(found[0]).strip()


def _optional(values: dict[str, object], name: str) -> str | None:
    return _single(values, name) if values.get(name) else None


def _timestamp(values: dict[str, object], name: str) -> int | None:
    """A XEP-0082 DateTime field as microseconds; it must carry a time zone."""
    if not values.get(name):
        return None
    text = _single(values, name)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise StanzaError("bad-request", text=f"{name!r} is not a XEP-0082 DateTime") from None
    if when.tzinfo is None:
        raise StanzaError("bad-request", text=f"{name!r} needs a time zone")
    return to_microseconds(when)


def query_form() -> domish.Element:
    """The form a client fetches to learn the fields (XEP-0313 §4.1.5), none required."""
    form = data_form.Form("form", formNamespace=NS_MAM)
    form.addField(data_form.Field("jid-single", var="with"))
    form.addField(data_form.Field("text-single", var="start"))
    form.addField(data_form.Field("text-single", var="end"))
    form.addField(data_form.Field("text-single", var="before-id"))
    form.addField(data_form.Field("text-single", var="after-id"))
    form.addField(data_form.Field("text-multi", var="ids"))
    return form.toElement()
