"""Top-level elements as self-contained XML, for transports that frame each one.

Over TCP a stanza inherits C{jabber:client} and the C{stream} prefix from the
stream header. A WebSocket message (RFC 7395 §3.3.3) or a BOSH body child
(XEP-0206 §6) has no such header around it, so every element must declare
its own namespace. Stanzas are serialised once for any number of recipients
(L{imserver.router.Router.send_to_sessions}); L{namespaced} adds the
declaration to those bytes with one slice, not a new serialisation.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.words.xish import domish

from imserver.serialize import stanza_bytes
from imserver.stream import NS_STREAMS
from imserver.stream.c2s import C2SStream

if TYPE_CHECKING:
    from imserver.server import Server

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"

_CLIENT_DECLARATION = b" xmlns='jabber:client'"
_STREAM_DECLARATION = b" xmlns:stream='http://etherx.jabber.org/streams'"
#: The end of the root element's name: the first space, '/' or '>' after the '<'.
_NAME_END = re.compile(rb"[\s/>]")

# One-entry memo: a broadcast hands the same bytes object to every session.
_last: tuple[bytes, bytes] = (b"", b"")


def namespaced(data: bytes) -> bytes:
    """C{data}, one element serialised for a C{jabber:client} stream, with its namespace declared.

    L{stanza_bytes} (and the prebuilt SASL answers) write a default-namespace
    declaration first when the root is not in C{jabber:client}; otherwise
    there is none and we add it. A C{stream:} element (the prebuilt
    features) gets its prefix declared.
    """
    global _last
    if _last[0] is data:
        return _last[1]
    match = _NAME_END.search(data, 1)
    end = match.start() if match is not None else len(data)
    if data.startswith(b"<stream:"):
        result = data[:end] + _STREAM_DECLARATION + data[end:]
    elif data.startswith((b" xmlns='", b' xmlns="'), end):
        result = data
    else:
        result = data[:end] + _CLIENT_DECLARATION + data[end:]
    _last = (data, result)
    return result


def element_bytes(element: domish.Element) -> bytes:
    """One self-contained top-level element: a stanza, a SASL or stream element."""
    if element.uri == NS_STREAMS:
        # <stream:features/>, <stream:error/>: the prefix is declared on the element.
        xml = element.toXml(prefixes={NS_STREAMS: "stream"}, prefixesInScope=[])
        return xml.encode("utf-8")
    return namespaced(stanza_bytes(element))


class WebStream(C2SStream):
    """A c2s stream whose transport carries each top-level element on its own.

    The base of the WebSocket and BOSH streams: no STARTTLS (TLS is the HTTP
    layer's), every element written self-contained. C{secure} says whether
    SASL may run (HTTPS, or a TLS proxy in front). SCRAM-PLUS is offered only
    where the transport hands out our own TLS connection (see
    C{C2SAuthenticator._channel_bindings}).
    """

    can_starttls = False

    def __init__(self, server: Server, secure: bool) -> None:
        super().__init__(server, direct_tls=secure)

    def send(self, obj: domish.Element | str | bytes) -> None:
        """One top-level element: built (an Element) or already serialised (prebuilt bytes)."""
        if isinstance(obj, domish.Element):
            data = element_bytes(obj)
        else:
            data = namespaced(obj.encode("utf-8") if isinstance(obj, str) else obj)
        self.transport.write(data)

    def send_bytes(self, data: bytes) -> None:
        super().send_bytes(namespaced(data))
