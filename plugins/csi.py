"""XEP-0352 client state indication (urn:xmpp:csi:0): quiet while the app is in the background.

After <inactive/>, presence updates and chat-state-only messages for the
client are held, only the latest per sender kept; every other stanza (a
message with a body, an iq, a subscription request) first flushes what is
held, so order is kept where it matters. <active/> flushes too, as does
reaching C{max_held} senders: nothing is held without bound, nothing dropped
but superseded presence and chat states.

The holding is done by a L{HeldStream} put just above the transport, under
any other wrapper (stream management counts a held stanza as sent, and on
resumption re-sends it over the new transport, where the client starts
active again: XEP-0352 §5.2, the state is not restored on resumption).
"""

from __future__ import annotations

import re

from twisted.plugin import IPlugin
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.interfaces import IFeature, ISessionStream
from imserver.serialize import stanza_bytes

NS_CSI = "urn:xmpp:csi:0"
NS_CHATSTATES = b"http://jabber.org/protocol/chatstates"
#: Presence types that only report availability (subscription stanzas are never held).
_HELD_PRESENCE = (None, b"unavailable")
_START_TAG = re.compile(rb"<(presence|message)\b([^>]*)>")
_ATTRIBUTE = re.compile(rb"([\w:-]+)='([^']*)'")


def hold_key(data: bytes) -> tuple[bytes, bytes] | None:
    """What a serialised stanza may be held under: (kind, sender), or None to send it now.

    Presence with no type or 'unavailable' is held per sender; so is a
    message with a chat state and no body. Stanzas reach streams serialised
    by L{imserver.serialize} (single-quoted attributes), so the start tag is
    read with a regular expression instead of a parser.
    """
    match = _START_TAG.match(data)
    if match is None:
        return None
    kind = match.group(1)
    attributes = dict(_ATTRIBUTE.findall(match.group(2)))
    sender = attributes.get(b"from", b"")
    if kind == b"presence":
        return (kind, sender) if attributes.get(b"type") in _HELD_PRESENCE else None
    if NS_CHATSTATES in data and b"<body" not in data:
        return (b"chatstate", sender)
    return None


@implementer(ISessionStream)
class HeldStream:
    """Holds what an inactive client does not need yet; passes everything else on."""

    def __init__(self, inner, max_held: int) -> None:
        self.inner = inner
        self.max_held = max_held
        #: Held stanzas by (kind, sender); insertion order is the order they are flushed in.
        self.held: dict[tuple[bytes, bytes], bytes] = {}

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def secure(self) -> bool:
        return self.inner.secure

    @property
    def peer_address(self) -> str:
        return self.inner.peer_address

    def send_stanza(self, stanza: domish.Element) -> None:
        self.send_bytes(stanza_bytes(stanza))

    def send_bytes(self, data: bytes) -> None:
        key = hold_key(data)
        if key is None:
            if data.startswith((b"<message", b"<presence", b"<iq")):
                self.flush()  # an important stanza: what came before goes first
            self.inner.send_bytes(data)
            return
        self.held.pop(key, None)  # the latest goes last
        self.held[key] = data
        if len(self.held) > self.max_held:
            self.flush()

    def flush(self) -> None:
        held, self.held = self.held, {}
        for data in held.values():
            self.inner.send_bytes(data)

    def drained(self):
        return self.inner.drained()

    def fail(self, condition: str, text: str | None = None, app_condition=None) -> None:
        self.inner.fail(condition, text, app_condition=app_condition)


def _inline_feature(stream) -> domish.Element:
    """<inactive/> may come inside a Bind2 request (XEP-0386)."""
    feature = domish.Element(("urn:xmpp:bind:0", "feature"))
    feature["var"] = NS_CSI
    return feature


def _chain(session):
    """(parent, stream) pairs from the session's stream down to the transport."""
    parent, stream = None, session.stream
    while stream is not None:
        yield parent, stream
        parent, stream = stream, getattr(stream, "inner", None)


def _replace(session, parent, new) -> None:
    if parent is None:
        session.stream = new
    else:
        parent.inner = new


@implementer(IPlugin, IFeature)
class ClientStateIndication:
    name = "csi"
    disco_features = ()

    def attach(self, server) -> None:
        #: How many senders' presence and chat states are held before a flush.
        self.max_held = server.options(self.name).positive_int("max_held", 100)
        server.add_stream_feature("bound", lambda stream: domish.Element((NS_CSI, "csi")))
        server.add_stream_feature("bind2", _inline_feature)
        for kind in ("stream", "inline"):  # inline: in a Bind2 request (XEP-0386)
            server.dispatcher.on((kind, NS_CSI, "inactive"), self.inactive)
            server.dispatcher.on((kind, NS_CSI, "active"), self.active)

    def inactive(self, event) -> bool:
        pairs = list(_chain(event.origin))
        if any(isinstance(stream, HeldStream) for _, stream in pairs):
            return True  # already inactive
        parent, transport = pairs[-1]
        _replace(event.origin, parent, HeldStream(transport, self.max_held))
        return True

    def active(self, event) -> bool:
        for parent, stream in _chain(event.origin):
            if isinstance(stream, HeldStream):
                stream.flush()
                _replace(event.origin, parent, stream.inner)
                break
        return True


feature = ClientStateIndication()
