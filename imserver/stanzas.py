"""Builders for the stanzas the server itself makes, so each is built one way."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.words.xish import domish
from tx_xmpp.delay import NS_DELAY, Delay

from imserver.jid import parse_jid


def presence(type_: str | None = None, sender: str | None = None, to: str | None = None):
    """A <presence/> with the given type (None: available) and addresses."""
    stanza = domish.Element((None, "presence"))
    if type_ is not None:
        stanza["type"] = type_
    if sender is not None:
        stanza["from"] = sender
    if to is not None:
        stanza["to"] = to
    return stanza


def readdressed(stanza: domish.Element, to: str, sender: str | None = None) -> domish.Element:
    """A copy of C{stanza} with new addresses, sharing (not copying) its children.

    Broadcasts send the same payload to many JIDs; only the envelope differs.
    """
    copy = domish.Element((stanza.uri, stanza.name), stanza.defaultUri)
    copy.attributes = dict(stanza.attributes)
    copy.children = stanza.children
    copy["to"] = to
    if sender is not None:
        copy["from"] = sender
    return copy


def add_delay(
    stanza: domish.Element, when: float, host: str, reason: str | None = None
) -> domish.Element | None:
    """Stamp C{stanza} with a XEP-0203 <delay/> from C{host} at C{when} (a Unix time).

    A stanza that already has one keeps it and gets none (XEP-0203 §2: one
    and only one; the one there says when it was first sent). Returns the
    element added, or None.
    """
    if any(c.name == "delay" and c.uri == NS_DELAY for c in stanza.elements()):
        return None
    element = Delay(datetime.fromtimestamp(when, UTC), sender=parse_jid(host)).toElement()
    if reason:
        element.addContent(reason)
    stanza.addChild(element)
    return element
