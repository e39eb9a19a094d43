"""Client-to-server streams: header checks, STARTTLS, SASL, resource binding.

Built on Twisted Words' XmlStream and ListenAuthenticator: the stream owns
parsing, limits, sending and lifecycle; the authenticator owns negotiation
(RFC 6120 §4-§7). Once a resource is bound, every stanza goes straight to the
dispatcher, keeping the order in which the client sent them.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from functools import lru_cache
from typing import TYPE_CHECKING

from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, task
from twisted.logger import Logger
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StanzaError, StreamError
from twisted.words.protocols.jabber.xmpp_stringprep import nameprep, resourceprep
from twisted.words.xish import domish
from zope.interface import implementer

from imserver import lang
from imserver.interfaces import ISessionStream
from imserver.jid import prepared_jid
from imserver.serialize import escape_attribute, stanza_bytes
from imserver.session import Session
from imserver.stream import NS_CLIENT, NS_SASL, NS_STREAMS, NS_TLS, STANZAS, sasl
from imserver.stream.limits import FlowControl, InOrder, is_loopback
from imserver.stream.parser import ParserLimits, RestrictedElementStream, StreamViolation
from imserver.stream.tcp import no_delay

if TYPE_CHECKING:
    from imserver.server import Server

log = Logger()

NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"
NS_REGISTER = "jabber:iq:register"


class C2SAuthenticator(xmlstream.ListenAuthenticator):
    """Negotiates one client stream up to a bound resource.

    States: "tls" (before STARTTLS when it is required), "sasl", "bind" and
    finally "bound", when the stream hands stanzas to the dispatcher.
    """

    namespace = NS_CLIENT

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server
        self.host: str | None = None
        self.username: str | None = None
        self.restarts = 0
        self.failures = 0
        self.mechanism = None
        self.offer = sasl.Offer((), {})
        self.busy = False

    @property
    def xs(self) -> C2SStream:
        return self.xmlstream

    # -- stream header -----------------------------------------------------

    def streamStarted(self, rootElement: domish.Element) -> None:
        xs = self.xs
        xs.namespace = NS_CLIENT
        xs.sid = secrets.token_hex(8)
        self.restarts += 1
        if self.username is None and self.restarts > self.server.limits.max_stream_restarts + 1:
            return xs.fail("policy-violation", "too many stream restarts")
        if rootElement.uri != NS_STREAMS or rootElement.name != "stream":
            return xs.fail("invalid-namespace", "the root must be <stream:stream>")
        if rootElement.defaultUri != NS_CLIENT:
            return xs.fail("invalid-namespace", "the content namespace must be jabber:client")
        to = rootElement.getAttribute("to")
        if not to:
            return xs.fail("host-unknown", "the stream header needs a 'to'")
        if to in self.server.hosts:
            host = to  # served hosts are stored prepared: nothing to prepare again
        else:
            try:
                host = nameprep.prepare(to)
            except UnicodeError:
                return xs.fail("host-unknown")
        if host not in self.server.hosts or (self.host is not None and host != self.host):
            return xs.fail("host-unknown", f"{to} is not served here")
        self.host = host
        xs.thisEntity = prepared_jid(None, host, None)
        version = rootElement.getAttribute("version", "0.0")
        try:
            major = int(version.split(".")[0])
        except ValueError:
            return xs.fail("unsupported-version")
        if major < 1:
            return xs.fail("unsupported-version", "XMPP 1.0 is required")
        xs.version = (1, 0)
        xs.lang = lang.preferred(rootElement.getAttribute(lang.XML_LANG))
        xs.sendHeader()
        xs.send(self.features())

    def features(self) -> bytes:
        """<stream:features/>: ours, then the plugins' (both made once per kind of stream)."""
        xs = self.xs
        plugins = b""
        if self.username is None:
            starttls = not xs.secure and self.server.tls is not None and xs.can_starttls
            if not (xs.secure or xs.plaintext_allowed):
                ours = _preauth_features(starttls, True, None, ())
            else:
                self.offer = offer = sasl.make_offer(True, self._channel_bindings())
                ours = _preauth_features(
                    starttls, not xs.plaintext_allowed, offer.mechanisms, tuple(offer.bindings)
                )
                plugins = self.server.feature_bytes("preauth", xs, offer.mechanisms)
        else:
            ours, plugins = _BIND_FEATURE, self.server.feature_bytes("bound", xs)
        return b"".join((b"<stream:features>", ours, plugins, b"</stream:features>"))

    def _channel_bindings(self) -> dict[str, bytes]:
        """What SCRAM-*-PLUS can bind to: the TLS connection under this stream.

        A stream whose transport does not hand out its OpenSSL connection (a
        WebSocket adapter, TLS ended by a proxy) has nothing to bind to, so it
        offers neither -PLUS nor XEP-0440.
        """
        if not self.xs.secure or self.server.tls is None:
            return {}
        get_handle = getattr(self.xs.transport, "getHandle", None)
        connection = get_handle() if get_handle is not None else None
        if not isinstance(connection, SSL.Connection):
            return {}
        return sasl.channel_bindings(connection, self.server.tls.server_end_point)

    # -- negotiation -------------------------------------------------------

    def negotiate(self, element: domish.Element) -> None:
        """Handle a top-level element received before a resource is bound."""
        if self.busy:
            return self.xs.fail("policy-violation", "wait for the answer")
        uri, name = element.uri, element.name
        if self.username is None:
            if uri == NS_TLS and name == "starttls":
                return self.starttls()
            if uri == NS_SASL:
                return self.sasl(element)
            if uri == NS_CLIENT and name == "iq" and self._is_register(element):
                return self.server.dispatcher.dispatch_preauth(element, self.xs)
        elif uri == NS_CLIENT and name == "iq" and element.getAttribute("type") == "set":
            bind = next(element.elements(NS_BIND, "bind"), None)
            if bind is not None:
                return self.bind(element, bind)
        # A feature's element (XEP-0198 <resume/>, XEP-0388 <authenticate/>): its
        # handler may authenticate this stream or give it a session (see
        # C2SStream.session); otherwise refused. The next element waits for it.
        pending = self.server.dispatcher.dispatch_negotiation(element, self.xs)
        if pending is False:
            text = None if self.username is None else "bind a resource first"
            self.xs.fail("not-authorized", text)
        elif pending is not None:
            self.busy = True
            pending.addBoth(self._not_busy)

    @staticmethod
    def _is_register(iq: domish.Element) -> bool:
        return next(iq.elements(NS_REGISTER, "query"), None) is not None

    def starttls(self) -> None:
        xs = self.xs
        if xs.secure or self.server.tls is None or not xs.can_starttls:
            xs.send(domish.Element((NS_TLS, "failure")))
            xs.sendFooter()
            xs.close_transport()
            return
        xs.send(domish.Element((NS_TLS, "proceed")))
        xs.transport.startTLS(self.server.tls.options)
        xs.secure = True
        xs.reset()

    def sasl(self, element: domish.Element) -> None:
        xs = self.xs
        if element.name == "abort":
            self.mechanism = None
            return self.sasl_failure(sasl.SASLFailure("aborted"))
        if not (xs.secure or xs.plaintext_allowed):
            return self.sasl_failure(sasl.SASLFailure("encryption-required"))
        try:
            data = _decode_sasl(element)
        except sasl.SASLFailure as failure:
            return self.sasl_failure(failure)
        if element.name == "auth":
            try:
                self.mechanism = self.make_mechanism(element.getAttribute("mechanism", ""))
            except sasl.SASLFailure as failure:
                return self.sasl_failure(failure)
            step = self.mechanism.start
        elif element.name == "response" and self.mechanism is not None:
            step = self.mechanism.step
        else:
            return self.sasl_failure(sasl.SASLFailure("malformed-request"))
        self.busy = True
        d = self.run_step(step, data)
        d.addCallbacks(self.sasl_step, self.sasl_error)
        d.addBoth(self._not_busy)

    # -- steps shared with SASL2 (XEP-0388, a plugin) -------------------------

    def make_mechanism(self, name: str):
        """A server mechanism from this stream's offer; or SASLFailure."""
        return sasl.make_mechanism(name, self._lookup, self.host, self.offer)

    def run_step(self, step, data: bytes | None) -> defer.Deferred:
        """Run one mechanism step, after the delay earned by this address's failures."""
        delay = self.server.auth_throttle.delay(self.xs.peer_address)
        if delay == 0:
            return defer.maybeDeferred(step, data)
        return _later(delay).addCallback(lambda _: step(data))

    def authenticated_as(self, username: str) -> None:
        """The client proved it is C{username}: the stream is now authenticated."""
        self.mechanism = None
        self.username = username
        self.server.auth_throttle.succeeded(self.xs.peer_address)
        log.info(
            "{peer} authenticated as {user}@{host}",
            peer=self.xs.peer_address,
            user=username,
            host=self.host,
        )
        self.xs.authenticated()

    def count_failure(self, condition: str) -> None:
        """A failed attempt (already answered): slow this address; end a stream failing often."""
        self.mechanism = None
        if condition in ("aborted", "encryption-required", "invalid-mechanism"):
            return
        self.failures += 1
        self.server.auth_throttle.failed(self.xs.peer_address)
        log.info(
            "{peer} failed to authenticate: {condition}",
            peer=self.xs.peer_address,
            condition=condition,
        )
        if self.failures >= self.server.limits.max_auth_failures_per_stream:
            self.xs.fail("policy-violation", "too many failed authentication attempts")

    def _not_busy(self, _) -> None:
        self.busy = False

    def _lookup(self, username: str) -> defer.Deferred:
        d = self.server.when_ready()
        d.addCallback(lambda _: self.server.store.get_credentials(username, self.host))
        return d

    def sasl_step(self, result: sasl.Challenge | sasl.Success) -> None:
        xs = self.xs
        if xs.transport is None or xs.closed:
            return
        if isinstance(result, sasl.Challenge):
            xs.send(_sasl_bytes("challenge", result.data))
            return
        xs.send(_sasl_bytes("success", result.data))
        self.authenticated_as(result.username)
        xs.reset()

    def sasl_error(self, failure) -> None:
        if failure.check(sasl.SASLFailure):
            return self.sasl_failure(failure.value)
        log.failure("SASL mechanism failed", failure)
        self.sasl_failure(sasl.SASLFailure("temporary-auth-failure"))

    def sasl_failure(self, failure: sasl.SASLFailure) -> None:
        xs = self.xs
        if xs.transport is None or xs.closed:
            return
        element = domish.Element((NS_SASL, "failure"))
        element.addElement(failure.condition)
        if failure.text:
            element.addElement("text", content=failure.text)[lang.XML_LANG] = lang.DEFAULT
        xs.send(element)
        self.count_failure(failure.condition)

    def bind(self, iq: domish.Element, bind: domish.Element) -> None:
        xs = self.xs
        requested = str(next(bind.elements(NS_BIND, "resource"), "") or "").strip()
        try:
            resource = resourceprep.prepare(requested) if requested else ""
        except UnicodeError:
            resource = None
        if resource is None or len(resource.encode()) > 1023:
            error = lang.labelled(StanzaError("bad-request", text="invalid resource"))
            return xs.send_stanza(error.toResponse(iq))
        session = self.bind_resource(resource or secrets.token_hex(6))
        result = xmlstream.toResponse(iq, "result")
        result.addElement((NS_BIND, "bind")).addElement("jid", content=session.full)
        xs.send_stanza(result)

    def bind_resource(self, resource: str) -> Session:
        """Bind a valid, prepared resource to this stream, replacing a session that had it."""
        jid = prepared_jid(self.username, self.host, resource)
        previous = self.server.sessions.get(jid.userhost(), resource)
        if previous is not None:
            previous.stream.fail("conflict", "replaced by a new session")
        session = Session(jid, self.xs)
        self.xs.session = session
        self.server.bind(session)
        return session


@implementer(ISessionStream)
class C2SStream(xmlstream.XmlStream):
    """One client connection: parsing with limits, timeouts, ordered dispatch.

    Flow limits (input rate, a client that does not read) are in L{FlowControl}.
    WebSocket and BOSH streams (L{imserver.web}) are subclasses that change
    only the framing: what goes in and out around the same elements.
    """

    #: STARTTLS can upgrade this transport (not a WebSocket's or a BOSH session's).
    can_starttls = True

    def __init__(self, server: Server, direct_tls: bool) -> None:
        super().__init__(C2SAuthenticator(server))
        self.server = server
        self.secure = direct_tls
        #: The client's preferred language (its header's xml:lang), if it gave one.
        self.lang: str | None = None
        #: The bound session this stream carries. A feature may hand it over
        #: to another stream (XEP-0198 resumption sets it on the new stream
        #: and to None on the old one, which then ends no session).
        self.session: Session | None = None
        self.closed = False
        self.peer_address = ""
        self.plaintext_allowed = False
        self._timeout = None
        self._last_read = 0.0
        self._pinged_at: float | None = None
        self.flow: FlowControl | None = None
        self._in_order: InOrder | None = None
        #: Set by fail() after an output overflow: end the session once the queue is handled.
        self._draining = False
        #: The stream error condition we closed with (what a drained session ends with).
        self._ended_by = ""
        self._overflow = None
        self._tally = server.connections
        self._counted_unauthenticated = False
        #: Fires when the connection is gone (shutdown waits for it).
        self.lost: defer.Deferred = defer.Deferred()
        limits = server.limits
        self._parser_limits = ParserLimits(
            max_stanza_size=limits.max_stanza_size,
            max_depth=limits.max_depth,
            max_attributes=limits.max_attributes,
            max_namespaces=limits.max_namespaces,
            max_attribute_length=limits.max_attribute_length,
        )

    # -- connection lifecycle ---------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.peer_address = getattr(self.transport.getPeer(), "host", "")
        loopback = is_loopback(self.peer_address)
        self.plaintext_allowed = loopback and self.server.settings.c2s.allow_plaintext_on_loopback
        self.server.streams.add(self)
        self._tally.opened(self.peer_address)
        self._counted_unauthenticated = True
        self.flow = FlowControl(self.transport, self.server.limits)
        self.flow.start()
        self._in_order = InOrder(
            self.flow, self._dispatch, lambda: self.session is not None, self._drained_queue
        )
        self._timeout = reactor.callLater(
            self.server.limits.unauthenticated_timeout, self.fail, "connection-timeout"
        )
        super().connectionMade()

    def authenticated(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = reactor.callLater(self.server.limits.idle_timeout, self._idle_check)
        if self._counted_unauthenticated:
            self._counted_unauthenticated = False
            self._tally.authenticated()

    def connectionLost(self, reason) -> None:
        self.closed = True
        if self in self.server.streams:
            self.server.streams.discard(self)
            self._tally.closed(self.peer_address, not self._counted_unauthenticated)
        if self.flow is not None:
            self.flow.stop()
        if self._overflow is not None and self._overflow.active():
            self._overflow.cancel()
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._end_session("lost")
        log.info(
            "c2s connection from {peer} ({user}) closed",
            peer=self.peer_address,
            user=self.authenticator.username or "not authenticated",
        )
        super().connectionLost(reason)
        self.lost.callback(None)

    def _initializeStream(self) -> None:
        # Twisted's hook for a (re)started stream: our parser instead of domish's.
        self.stream = RestrictedElementStream(self._parser_limits)
        self.stream.DocumentStartEvent = self.onDocumentStart
        self.stream.ElementEvent = self.onElement
        self.stream.DocumentEndEvent = self.onDocumentEnd

    def _idle_check(self) -> None:
        """Ping a client that went quiet; close one that stays quiet (RFC 6120 §4.6)."""
        limits = self.server.limits
        now = reactor.seconds()
        if self._pinged_at is not None:
            if self._last_read < self._pinged_at:
                self.fail("connection-timeout")
                return
            self._pinged_at = None
        quiet = now - self._last_read
        if quiet < limits.idle_timeout:
            self._timeout = reactor.callLater(limits.idle_timeout - quiet, self._idle_check)
            return
        ping = domish.Element((None, "iq"))
        ping["type"] = "get"
        ping["id"] = "idle-" + secrets.token_hex(4)
        ping["from"] = self.authenticator.host
        ping.addElement(("urn:xmpp:ping", "ping"))
        # Through the session's stream when bound: a wrapper (XEP-0198) counts every stanza.
        (self.session.stream if self.session is not None else self).send_stanza(ping)
        self._pinged_at = now
        self._timeout = reactor.callLater(limits.idle_ping_timeout, self._idle_check)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self._last_read = reactor.seconds()
        self.flow.received(len(data))
        try:
            self.stream.parse(data)
        except StreamViolation as violation:
            self.fail(violation.condition, violation.text or None)

    def onDocumentStart(self, rootElement: domish.Element) -> None:
        # Twisted's version would watch for stream errors with an XPath observer;
        # we look at each element ourselves (see onElement).
        self.authenticator.streamStarted(rootElement)

    def onDocumentEnd(self) -> None:
        """The client closed its stream: close ours too (RFC 6120 §4.4)."""
        if not self.closed:
            self.sendFooter()
        self.closed = True
        self._end_session("closed")
        self.close_transport()

    def close_transport(self) -> None:
        """Close the connection once our last bytes are out (cut off if they never go)."""
        self.flow.closing()
        self.transport.loseConnection()

    def fail(
        self,
        condition: str,
        text: str | None = None,
        drain: bool = False,
        app_condition: domish.Element | None = None,
    ) -> None:
        """Close with a stream error (RFC 6120 §4.9); the session ends at once.

        With C{drain}, stanzas already read but waiting behind a slow handler
        are still handled, and the session ends after them. C{app_condition}
        is an application-specific condition element (§4.9.4).
        """
        if self.closed:
            return
        self.closed = True
        if self.namespace == "invalid":
            self.namespace = NS_CLIENT
        self._ended_by = condition
        if drain and self._in_order.busy is not None and self.session is not None:
            self._draining = True
        else:
            self._end_session(condition)
        self.flow.closing()
        self.sendStreamError(
            lang.labelled(StreamError(condition, text=text, appCondition=app_condition))
        )

    def sendHeader(self) -> None:
        """The response stream header, with the language we answer in (RFC 6120 §4.7.4).

        Twisted's header has no xml:lang; this is the same header with it.
        """
        attributes = f" xmlns='{self.namespace}' xmlns:stream='{NS_STREAMS}'"
        if self.thisEntity:
            attributes += f" from='{escape_attribute(self.thisEntity.userhost())}'"
        if self.sid:
            attributes += f" id='{self.sid}'"
        if self.version >= (1, 0):
            attributes += " version='{}.{}'".format(*self.version)
        attributes += f" xml:lang='{lang.lookup(self.lang)}'"
        self.send(f"<stream:stream{attributes}>")
        self._headerSent = True

    def _end_session(self, reason: str) -> None:
        """The session loses this stream; the server ends it unless a feature keeps it."""
        session, self.session = self.session, None
        if session is not None:
            self.server.stream_gone(session, reason)

    # -- stanzas -----------------------------------------------------------

    def onElement(self, element: domish.Element) -> None:
        if self.closed:
            return
        if element.uri == NS_STREAMS and element.name == "error":
            self.closed = True
            self.close_transport()
            return
        if self.session is None:
            self.authenticator.negotiate(element)
            return
        if (
            self.lang is not None
            and element.name in STANZAS
            and lang.XML_LANG not in element.attributes
        ):
            # RFC 6120 §4.7.4: the stream's language goes with the stanza (never
            # replacing one the client gave).
            element.attributes[lang.XML_LANG] = self.lang
        self._in_order.push(element)

    def _dispatch(self, element: domish.Element) -> defer.Deferred | None:
        dispatcher = self.server.dispatcher
        try:
            if element.uri == NS_CLIENT and element.name in STANZAS:
                pending = dispatcher.dispatch(element, self.session)
            else:
                pending = dispatcher.dispatch_element(element, self.session)
                if pending is False:  # no feature takes it (RFC 6120 §4.9.3.12, §4.9.3.24)
                    self.fail(
                        "unsupported-stanza-type"
                        if element.uri == NS_CLIENT
                        else "invalid-namespace"
                    )
                    return None
        except Exception:
            # Name, type and id only: a payload may hold a password (XEP-0077).
            log.failure(
                "dispatching <{name} type={type} id={id}> failed",
                name=element.name,
                type=element.getAttribute("type"),
                id=element.getAttribute("id"),
            )
            self.server.dispatcher.bounce(element, StanzaError("internal-server-error"))
            return None
        return pending

    def _drained_queue(self) -> None:
        """After fail(drain=True): the session ends once what was read is handled."""
        if self._draining:
            self._draining = False
            self._end_session(self._ended_by)

    def send_stanza(self, stanza: domish.Element) -> None:
        if not self.closed:
            self.send_bytes(stanza_bytes(stanza))

    def drained(self) -> defer.Deferred:
        """Fire once the client has read what was sent (see L{FlowControl.drained})."""
        if self.flow is None or self.closed:
            return defer.succeed(None)
        return self.flow.drained()

    def send_bytes(self, data: bytes) -> None:
        """Write to the client; one that lets too much pile up is disconnected."""
        if self.closed or self._overflow is not None:
            return
        self.transport.write(data)
        if self.flow.wrote(len(data)):
            # On the next turn, not inside the caller's loop over sessions.
            self._overflow = reactor.callLater(
                0, self.fail, "policy-violation", "too much unread data for this client", True
            )


class C2SFactory(protocol.ServerFactory):
    """Builds client streams; C{direct_tls} for the XEP-0368 port."""

    noisy = False  # one log line per connection comes from the stream itself

    def __init__(self, server: Server, direct_tls: bool = False) -> None:
        self.server = server
        self.direct_tls = direct_tls

    def buildProtocol(self, addr) -> protocol.Protocol | None:
        """A stream, or a refusal when a connection cap is reached (before any byte)."""
        if self.server.connections.refusal(getattr(addr, "host", ""), self.server.limits):
            # Plain TCP closes the socket at once on None; the TLS wrapper needs a protocol.
            return _Refused() if self.direct_tls else None
        stream = C2SStream(self.server, self.direct_tls)
        stream.factory = self
        return stream


class _Refused(protocol.Protocol):
    """Drops a connection as soon as it is made: nothing is read or written."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


def _decode_sasl(element: domish.Element) -> bytes | None:
    """The base64 payload of a SASL element: None when absent, b'' for '='."""
    text = str(element).strip()
    if not text:
        return None
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise sasl.SASLFailure("incorrect-encoding") from None


def _sasl_bytes(name: str, data: bytes | None) -> bytes:
    """<challenge/> or <success/> with its base64 payload, without building an element."""
    payload = base64.b64encode(data) if data else b""
    return b"<%s xmlns='%s'>%s</%s>" % (name.encode(), NS_SASL.encode(), payload, name.encode())


_BIND_FEATURE = f"<bind xmlns='{NS_BIND}'/>".encode()


@lru_cache(maxsize=64)
def _preauth_features(
    starttls: bool, required: bool, mechanisms: tuple[str, ...] | None, bindings: tuple[str, ...]
) -> bytes:
    """STARTTLS, SASL mechanisms and XEP-0440 bindings; the same for every stream alike."""
    parts = []
    if starttls:
        inner = "<required/>" if required else ""
        parts.append(f"<starttls xmlns='{NS_TLS}'>{inner}</starttls>")
    if mechanisms is not None:
        names = "".join(f"<mechanism>{name}</mechanism>" for name in mechanisms)
        parts.append(f"<mechanisms xmlns='{NS_SASL}'>{names}</mechanisms>")
        if bindings:
            types = "".join(f"<channel-binding type='{t}'/>" for t in bindings)
            parts.append(
                f"<sasl-channel-binding xmlns='{NS_SASL_CB}'>{types}</sasl-channel-binding>"
            )
    return "".join(parts).encode()


def _later(delay: float) -> defer.Deferred:
    return task.deferLater(reactor, delay, lambda: None)
