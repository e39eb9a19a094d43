"""XMPP over WebSocket (RFC 7395) at /xmpp-websocket.

The WebSocket layer is autobahn's, not C{twisted.web.websocket}: Twisted
26.10's C{WebSocketResource} cannot answer the C{xmpp} subprotocol (its
C{render_GET} sends wsproto's accept with none, and overriding it needs
C{_WebSocketWireProtocol} and C{HTTPChannel._protocolUpgradeForWebsockets},
both private), and it reassembles a fragmented message without a size bound
before handing it over. autobahn selects the subprotocol in C{onConnect},
refuses an oversized message while it arrives, and takes bytes to send, so a
broadcast stanza is framed without being decoded or serialised again.

L{WebSocketStream} is a L{C2SStream} whose input is one element per message
and whose output is one message per element; everything between (SASL,
bind, limits, idle pings, flow control) is the c2s code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from imserver import lang
from imserver.stream import NS_CLIENT, NS_STREAMS
from imserver.web.cors import origin_allowed
from imserver.web.framing import NS_FRAMING, WebStream

if TYPE_CHECKING:
    from imserver.server import Server

log = Logger()

SUBPROTOCOL = "xmpp"
_CLOSE = b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
#: What the c2s parser is given first: the root that framed elements become children of.
_ROOT = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
#: Slack over max_stanza_size for a message's own bytes (whitespace, the framing element).
_MESSAGE_SLACK = 4096


class WebSocketStream(WebStream):
    """A client stream framed by RFC 7395: <open/>, one element per message, <close/>."""

    def __init__(self, server: Server, secure: bool) -> None:
        super().__init__(server, secure)
        self._opened = False
        #: Elements parsed from the current message (one, unless it breaks the framing).
        self._framed: list[domish.Element] = []

    # -- input ---------------------------------------------------------------

    def _initializeStream(self) -> None:
        # One parser per stream (and per restart), as for TCP; its root is ours.
        super()._initializeStream()
        self.stream.DocumentStartEvent = _ignore
        self.stream.ElementEvent = self._framed.append
        self.stream.parse(_ROOT)
        self._opened = False

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        """One WebSocket message: exactly one whole element (whitespace alone is a keepalive).

        The message is checked whole before its element is acted on, so a
        message holding two stanzas has neither of them handled.
        """
        if self.closed:
            return
        if is_binary:
            self.fail("bad-format", "XMPP over WebSocket uses text messages")
            return
        parser, framed = self.stream, self._framed
        framed.clear()
        self.dataReceived(payload)
        if self.closed:
            return
        if len(framed) > 1:
            self.fail("bad-format", "one element per WebSocket message")
        elif not parser.between_elements or (not framed and payload.strip()):
            self.fail("not-well-formed", "a WebSocket message must hold one whole element")
        elif framed:
            self._handle(framed.pop())

    def _handle(self, element: domish.Element) -> None:
        if element.uri == NS_FRAMING:
            if element.name == "open" and not self._opened:
                self._open(element)
            elif element.name == "close" and self._opened:
                self.onDocumentEnd()
            else:
                self.fail("bad-format", f"unexpected <{element.name}/>")
            return
        if not self._opened:
            self.fail("bad-format", "the stream starts with <open/>")
            return
        self.onElement(element)

    def _open(self, element: domish.Element) -> None:
        """<open/> starts (or restarts) the stream as a TCP stream header would."""
        self._opened = True
        root = domish.Element((NS_STREAMS, "stream"), NS_CLIENT)
        for name in ("to", "version"):
            if element.hasAttribute(name):
                root[name] = element[name]
        if element.hasAttribute(lang.XML_LANG):
            root[lang.XML_LANG] = element[lang.XML_LANG]
        self.onDocumentStart(root)

    # -- output: one message per element -----------------------------------------

    def sendHeader(self) -> None:
        opening = domish.Element((NS_FRAMING, "open"))
        if self.thisEntity is not None:
            opening["from"] = self.thisEntity.userhost()
        if self.sid:
            opening["id"] = self.sid
        opening["version"] = "1.0"
        opening[lang.XML_LANG] = lang.lookup(self.lang)
        self.transport.write(opening.toXml().encode("utf-8"))
        self._headerSent = True

    def sendFooter(self) -> None:
        self.transport.write(_CLOSE)


def _ignore(*args: object) -> None:
    """The synthetic root's start event: the real start is <open/>."""


class _MessageTransport:
    """What the stream writes to: each write() is one WebSocket text message.

    Reading pauses and the output producer live on the TCP (or TLS)
    transport underneath, so L{FlowControl} works exactly as for c2s.
    """

    def __init__(self, protocol: XMPPWebSocketProtocol, bindable: bool) -> None:
        self.protocol = protocol
        self.raw = protocol.transport
        self.bindable = bindable

    def getHandle(self):
        """The OpenSSL connection, for SCRAM-PLUS: only when it ends at us with the [tls] cert."""
        return self.raw.getHandle() if self.bindable else None

    def write(self, data: bytes) -> None:
        if self.protocol.state == WebSocketServerProtocol.STATE_OPEN:
            self.protocol.sendMessage(data)

    def loseConnection(self) -> None:
        if self.protocol.state == WebSocketServerProtocol.STATE_OPEN:
            self.protocol.sendClose(1000)
        elif self.protocol.state != WebSocketServerProtocol.STATE_CLOSED:
            self.raw.loseConnection()

    def abortConnection(self) -> None:
        self.protocol.dropConnection(abort=True)

    def getPeer(self):
        return self.raw.getPeer()

    def getHost(self):
        return self.raw.getHost()

    def registerProducer(self, producer, streaming: bool) -> None:
        self.raw.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.raw.unregisterProducer()

    def pauseProducing(self) -> None:
        self.raw.pauseProducing()

    def resumeProducing(self) -> None:
        self.raw.resumeProducing()


class XMPPWebSocketProtocol(WebSocketServerProtocol):
    """The WebSocket connection: the handshake's checks, then messages to the stream."""

    factory: XMPPWebSocketFactory
    stream: WebSocketStream | None = None

    def onConnect(self, request) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(
                ConnectionDeny.BAD_REQUEST, "the 'xmpp' WebSocket subprotocol is required"
            )
        server = self.factory.server
        origins = server.settings.http.cors_origins
        if request.origin is not None and not origin_allowed(request.origin, origins):
            # RFC 6455 §4.2.2: a page from an origin we do not serve; browsers send
            # Origin, other clients need not.
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "this page's origin is not allowed")
        refusal = server.connections.refusal(
            getattr(self.transport.getPeer(), "host", ""), server.limits
        )
        if refusal:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, refusal)
        return SUBPROTOCOL

    def onOpen(self) -> None:
        # twisted.web's HTTP channel was the transport's producer until the upgrade.
        self.transport.unregisterProducer()
        ours = ISSLTransport.providedBy(self.transport)
        server = self.factory.server
        self.stream = WebSocketStream(server, secure=ours or self.factory.behind_tls_proxy)
        # The tls-server-end-point binding is the [tls] certificate's: not another one's.
        bindable = ours and server.settings.http.certificate is None
        self.stream.makeConnection(_MessageTransport(self, bindable))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.stream is not None:
            self.stream.message_received(payload, isBinary)

    def onClose(self, wasClean: bool, code, reason) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connectionLost(Failure(ConnectionDone()))


class XMPPWebSocketFactory(WebSocketServerFactory):
    protocol = XMPPWebSocketProtocol

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server
        http = server.settings.http
        self.behind_tls_proxy = http.behind_tls_proxy
        limits = server.limits
        self.setProtocolOptions(
            maxMessagePayloadSize=limits.max_stanza_size + _MESSAGE_SLACK,
            maxFramePayloadSize=limits.max_stanza_size + _MESSAGE_SLACK,
            openHandshakeTimeout=limits.unauthenticated_timeout,
            closeHandshakeTimeout=5,
            # Origins are checked in onConnect, exactly as for CORS: autobahn's own
            # check compares "scheme://host:port" with the default port spelled out,
            # so "https://chat.example" would never match, and it answers 400.
            allowedOrigins=["*"],
            # No permessage-deflate: compressing attacker-influenced text next to
            # secrets is what CRIME/BREACH exploit, and it costs CPU per message.
            perMessageCompressionAccept=lambda offers: None,
        )


def websocket_resource(server: Server) -> WebSocketResource:
    """The /xmpp-websocket resource, to mount under any twisted.web site."""
    return WebSocketResource(XMPPWebSocketFactory(server))
