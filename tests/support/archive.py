"""Client side of XEP-0313 (mam:2), XEP-0359 and XEP-0280 for the raw wire tests.

Written from the XEPs' examples with the standard library only: queries are
built as text and results read from what came over the wire.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from support.client import MESSAGE, NS_CLIENT, clark, stanza_error, to_text
from support.im import User

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_SID = "urn:xmpp:sid:0"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_HINTS = "urn:xmpp:hints"
NS_DELAY = "urn:xmpp:delay"

STANZA_ID = clark(NS_SID, "stanza-id")
BODY = clark(NS_CLIENT, "body")


@dataclass
class Result:
    """One archived message as a query returned it."""

    archive_id: str
    stamp: str
    message: ET.Element
    wrapper: ET.Element

    @property
    def body(self) -> str | None:
        return self.message.findtext(BODY)


@dataclass
class Page:
    results: list[Result]
    fin: ET.Element

    @property
    def complete(self) -> bool:
        return self.fin.get("complete") in ("true", "1")

    @property
    def first(self) -> str | None:
        return self.fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}first")

    @property
    def last(self) -> str | None:
        return self.fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}last")

    @property
    def count(self) -> int | None:
        """The RSM <count/>: how many messages match the query's filters (None: absent)."""
        text = self.fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}count")
        return None if text is None else int(text)

    @property
    def index(self) -> int | None:
        """The 'index' of the RSM <first/>: where the page starts in the full set."""
        first = self.fin.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}first")
        if first is None or first.get("index") is None:
            return None
        return int(first.get("index"))

    @property
    def bodies(self) -> list[str | None]:
        return [r.body for r in self.results]


class QueryFailed(AssertionError):
    def __init__(self, answer: ET.Element) -> None:
        super().__init__(f"query failed: {to_text(answer)}")
        self.condition = stanza_error(answer)[1]
        self.answer = answer


def query_xml(
    fields: dict[str, str | list[str]] | None = None,
    max_: int | None = None,
    after: str | None = None,
    before: str | None = None,
    query_id: str | None = None,
    flip: bool = False,
    to: str | None = None,
) -> str:
    """An iq set with a mam:2 <query/>: form fields, then RSM (before='' is the last page)."""
    parts = []
    if fields:
        parts.append(
            "<x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"
        )
        for var, value in fields.items():
            values = value if isinstance(value, list) else [value]
            inner = "".join(f"<value>{escape(v)}</value>" for v in values)
            parts.append(f"<field var={quoteattr(var)}>{inner}</field>")
        parts.append("</x>")
    if max_ is not None or after is not None or before is not None:
        rsm = "" if max_ is None else f"<max>{max_}</max>"
        if after is not None:
            rsm += f"<after>{escape(after)}</after>"
        if before is not None:
            rsm += f"<before>{escape(before)}</before>" if before else "<before/>"
        parts.append(f"<set xmlns='{NS_RSM}'>{rsm}</set>")
    if flip:
        parts.append("<flip-page/>")
    qid = f" queryid={quoteattr(query_id)}" if query_id is not None else ""
    to_attr = f" to={quoteattr(to)}" if to else ""
    return f"<iq type='set'{to_attr}><query xmlns='{NS_MAM}'{qid}>{''.join(parts)}</query></iq>"


def query(user: User, **kwargs) -> Page:
    """Run one archive query; every result must carry this query's id and come before the iq."""
    query_id = kwargs.pop("query_id", None) or "q" + secrets.token_hex(4)
    answer = user.iq(query_xml(query_id=query_id, **kwargs))
    if answer.get("type") != "result":
        raise QueryFailed(answer)
    fin = answer.find(clark(NS_MAM, "fin"))
    assert fin is not None, to_text(answer)
    # The server sends the results before the iq result: all are queued now.
    results, others = [], []
    for element in user.client.drain():
        result = element.find(clark(NS_MAM, "result"))
        if element.tag != MESSAGE or result is None:
            others.append(element)
            continue
        assert result.get("queryid") == query_id, to_text(element)
        assert element.get("from") in (None, user.bare), to_text(element)
        forwarded = result.find(clark(NS_FORWARD, "forwarded"))
        assert forwarded is not None, to_text(element)
        delay = forwarded.find(clark(NS_DELAY, "delay"))
        message = forwarded.find(MESSAGE)
        assert delay is not None and message is not None, to_text(element)
        results.append(Result(result.get("id") or "", delay.get("stamp") or "", message, element))
    user.client._queue.extend(others)  # put back what was not ours, for the test to expect
    return Page(results, fin)


def stanza_ids(stanza: ET.Element, by: str | None = None) -> list[str]:
    """The XEP-0359 ids on a message (only those by C{by}, when given)."""
    return [e.get("id") or "" for e in stanza.findall(STANZA_ID) if by is None or e.get("by") == by]


def carbons(user: User, enable: bool = True) -> None:
    action = "enable" if enable else "disable"
    answer = user.iq(f"<iq type='set'><{action} xmlns='{NS_CARBONS}'/></iq>")
    assert answer.get("type") == "result", to_text(answer)


def forwarded_message(carbon: ET.Element, direction: str) -> ET.Element:
    """The original message inside a <sent/> or <received/> carbon."""
    inner = carbon.find(f"{{{NS_CARBONS}}}{direction}/{{{NS_FORWARD}}}forwarded/{MESSAGE}")
    assert inner is not None, to_text(carbon)
    return inner


def is_carbon(direction: str | None = None):
    def match(e: ET.Element) -> bool:
        if e.tag != MESSAGE:
            return False
        names = ("sent", "received") if direction is None else (direction,)
        return any(e.find(clark(NS_CARBONS, n)) is not None for n in names)

    match.__name__ = f"carbon({direction})"
    return match
