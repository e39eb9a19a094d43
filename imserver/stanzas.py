"""Builders for the stanzas the server itself makes, so each is built one way."""

from __future__ import annotations

from twisted.words.xish import domish


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
