"""One server-to-server connection, either direction (RFC 6120 §4-§9, §13).

Built on Twisted Words' XmlStream with the same restricted parser, limits and
flow control as client streams. Negotiation, for the initiating side:

    header -> features -> STARTTLS -> header -> features
           -> [bidi (XEP-0288)] -> SASL EXTERNAL (XEP-0178) -> header -> features
                                or dialback db:result (XEP-0220)

and the receiving side answers each step. Which of SASL EXTERNAL, dialback or
refusal applies follows the certificate and the domain's policy
(L{imserver.config.S2SPolicy}); every refusal is logged with its reason.

A stream carries stanzas for pairs of domains it authenticated: C{sendable}
(local, remote) pairs we may send on it, C{receivable} (remote, local) pairs
we accept from it. A bidi stream has both. A stanza whose domains are not an
authenticated pair is a stream error: invalid-from (§4.9.3.9) or, when the
sender is known but the addressee is not ours, host-unknown.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import TYPE_CHECKING

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StanzaError, StreamError
from twisted.words.protocols.jabber.xmpp_stringprep import nameprep
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.jid import InvalidFormat, parse_jid
from imserver.s2s.dialback import NS_DIALBACK, NS_DIALBACK_FEATURE
from imserver.s2s.tls import names_domain, peer_certificate
from imserver.serialize import stanza_bytes
from imserver.stream import NS_CLIENT, NS_SASL, NS_STREAMS, NS_TLS, STANZAS
from imserver.stream.limits import FlowControl, InOrder
from imserver.stream.parser import ParserLimits, RestrictedElementStream, StreamViolation
from imserver.stream.tcp import no_delay

if TYPE_CHECKING:
    from imserver.s2s.manager import S2SManager

log = Logger()

NS_SERVER = "jabber:server"
NS_BIDI = "urn:xmpp:bidi"
NS_BIDI_FEATURE = "urn:xmpp:features:bidi"

#: Domain pairs one incoming stream may ask to authenticate by dialback (each
#: costs a connection to the claimed domain's server).
MAX_DIALBACK_REQUESTS = 16


class NegotiationFailed(Exception):
    """An outgoing stream could not authenticate; the message says why."""


@implementer(IHandshakeListener)
class S2SStream(xmlstream.XmlStream):
    """One s2s TCP connection. C{initiating}: we connected (local -> remote).

    The initiating side writes nothing while a TLS handshake runs: Twisted's
    TLS layer pauses the transport's producer (our L{FlowControl}, which then
    stops reading) when data is written mid-handshake, and the handshake
    could never finish. L{handshakeCompleted} sends the header instead.
    """

    def __init__(
        self,
        manager: S2SManager,
        initiating: bool,
        local: str | None = None,
        remote: str | None = None,
        direct_tls: bool = False,
    ) -> None:
        super().__init__(xmlstream.Authenticator())
        self.manager = manager
        self.settings = manager.settings
        self.initiating = initiating
        self.namespace = NS_SERVER
        self.prefixes[NS_DIALBACK] = "db"
        #: For an outgoing stream: the pair it was opened for.
        self.local = local
        self.remote = remote
        self.secure = direct_tls
        self.closed = False
        self.peer_address = ""
        self.certificate = None
        self.chain_ok = False
        self.bidi = False
        self.authenticated = False
        self.sendable: set[tuple[str, str]] = set()
        self.receivable: set[tuple[str, str]] = set()
        #: Fires with this stream once it may send (outgoing), or fails with the reason.
        self.ready: defer.Deferred = defer.Deferred()
        #: Fires when the connection is gone.
        self.lost: defer.Deferred = defer.Deferred()
        #: Dialback verifications we asked the peer for: stream id -> Deferred(bool).
        self._verifying: dict[str, list[defer.Deferred]] = {}
        self._pending_verify: list[domish.Element] = []
        self._can_verify = False
        self._sasl_tried = False
        self._dialback_requests: set[tuple[str, str]] = set()
        self._restarts = 0
        self.flow: FlowControl | None = None
        self._timeout = None
        self._idle = None
        self._overflow = None
        self._in_order: InOrder | None = None
        limits = manager.limits
        self._parser_limits = ParserLimits(
            max_stanza_size=limits.max_stanza_size,
            max_depth=limits.max_depth,
            max_attributes=limits.max_attributes,
            max_namespaces=limits.max_namespaces,
            max_attribute_length=limits.max_attribute_length,
        )

    def __repr__(self) -> str:
        direction = "out" if self.initiating else "in"
        return f"<S2SStream {direction} {self.local}->{self.remote} {self.peer_address}>"

    # -- lifecycle ----------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.peer_address = getattr(self.transport.getPeer(), "host", "")
        self.flow = FlowControl(self.transport, self.manager.limits)
        self.flow.start()
        self._in_order = InOrder(self.flow, self._deliver, lambda: not self.closed)
        self._timeout = reactor.callLater(
            self.manager.limits.unauthenticated_timeout,
            self.fail,
            "connection-timeout",
            "not authenticated in time",
        )
        self._touch()
        self.manager.stream_opened(self)
        log.info("s2s {stream!r} connected", stream=self)
        super().connectionMade()
        if self.initiating and not self.secure:
            self._send_header()

    def handshakeCompleted(self) -> None:
        """TLS is up (STARTTLS or direct TLS): the initiating side (re)starts the stream."""
        if self.initiating and not self.closed:
            self._send_header()

    def _initializeStream(self) -> None:
        self.stream = RestrictedElementStream(self._parser_limits)
        self.stream.DocumentStartEvent = self.onDocumentStart
        self.stream.ElementEvent = self.onElement
        self.stream.DocumentEndEvent = self.onDocumentEnd

    def connectionLost(self, reason) -> None:
        self.closed = True
        for call in (self._timeout, self._idle, self._overflow):
            if call is not None and call.active():
                call.cancel()
        if self.flow is not None:
            self.flow.stop()
        for waiters in self._verifying.values():
            for waiter in waiters:
                waiter.callback(False)
        self._verifying.clear()
        if not self.ready.called:
            self.ready.errback(NegotiationFailed(f"connection lost: {reason.getErrorMessage()}"))
        self.manager.stream_closed(self)
        log.info("s2s {stream!r} closed", stream=self)
        super().connectionLost(reason)
        self.lost.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self._touch()
        self.flow.received(len(data))
        try:
            self.stream.parse(data)
        except StreamViolation as violation:
            self.fail(violation.condition, violation.text or None)

    def _touch(self) -> None:
        """Traffic: restart the idle timer (a connection unused for idle_timeout closes)."""
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.settings.idle_timeout)
        else:
            self._idle = reactor.callLater(self.settings.idle_timeout, self._idle_close)

    def _idle_close(self) -> None:
        log.info("s2s {stream!r} idle: closing", stream=self)
        self.close()

    def close(self) -> None:
        """End the stream politely (RFC 6120 §4.4)."""
        if self.closed:
            return
        self.closed = True
        self.sendFooter()
        self.flow.closing()
        self.transport.loseConnection()

    def fail(self, condition: str, text: str | None = None) -> None:
        """Close with a stream error (RFC 6120 §4.9) and say why in the log."""
        if self.closed:
            return
        log.info(
            "s2s {stream!r} closed with {condition}: {text}",
            stream=self,
            condition=condition,
            text=text or "",
        )
        self.closed = True
        if not self.ready.called:
            self.ready.errback(NegotiationFailed(f"{condition}: {text or ''}"))
        if self.flow is not None:
            self.flow.closing()
        self.sendStreamError(StreamError(condition, text=text))

    def onDocumentEnd(self) -> None:
        if not self.closed:
            self.closed = True
            self.sendFooter()
        self.flow.closing()
        self.transport.loseConnection()

    # -- headers --------------------------------------------------------------

    def _send_header(self) -> None:
        root = domish.Element((NS_STREAMS, "stream"), NS_SERVER, localPrefixes={"db": NS_DIALBACK})
        if self.initiating:
            root["from"], root["to"] = self.local, self.remote
        else:
            root["id"] = self.sid
            if self.local:
                root["from"] = self.local
            if self.remote:
                root["to"] = self.remote
        root["version"] = "1.0"
        self.send(root.toXml(prefixes=self.prefixes, closeElement=0))
        self._headerSent = True

    def onDocumentStart(self, root: domish.Element) -> None:
        self._restarts += 1
        if self._restarts > self.manager.limits.max_stream_restarts + 1:
            return self.fail("policy-violation", "too many stream restarts")
        if root.uri != NS_STREAMS or root.name != "stream" or root.defaultUri != NS_SERVER:
            return self.fail("invalid-namespace", "expected a jabber:server stream")
        version = root.getAttribute("version", "0.0")
        if not version.startswith("1."):
            return self.fail("unsupported-version", "XMPP 1.0 is required")
        if self.initiating:
            self.sid = root.getAttribute("id", "")
            return
        self.sid = secrets.token_hex(12)
        to = _domain(root.getAttribute("to"))
        sender = _domain(root.getAttribute("from"))
        if to is None or to not in self.manager.server.hosts:
            self.local = to
            return self.fail("host-unknown", f"{root.getAttribute('to')} is not served here")
        if self.local is not None and to != self.local:
            return self.fail("host-unknown", "the stream changed its 'to'")
        self.local, self.remote = to, sender or self.remote
        if (
            self.remote
            and self.manager.count(self.remote) > self.settings.max_connections_per_domain
        ):
            return self.fail("policy-violation", f"too many connections from {self.remote}")
        if self.secure and self.certificate is None:
            self._after_tls()  # the handshake is over once the peer's new header arrives
        self._send_header()
        self.send(self._features())

    def _features(self) -> domish.Element:
        """What the receiving side offers at this point of the negotiation."""
        features = domish.Element((NS_STREAMS, "features"))
        if self.authenticated:
            return features
        policy = self.settings.policy(self.remote or "")
        if not self.secure:
            starttls = features.addElement((NS_TLS, "starttls"))
            if policy.require_encryption:
                starttls.addElement("required")
        if self.secure and self.remote and self._certificate_names(self.remote):
            mechanisms = features.addElement((NS_SASL, "mechanisms"))
            mechanisms.addElement("mechanism", content="EXTERNAL")
        if (self.secure or not policy.require_encryption) and not policy.secure_auth:
            features.addElement((NS_DIALBACK_FEATURE, "dialback")).addElement("errors")
        if self.settings.bidi and (self.secure or not policy.require_encryption):
            features.addElement((NS_BIDI_FEATURE, "bidi"))
        return features

    def _certificate_names(self, domain: str) -> bool:
        return (
            self.certificate is not None
            and self.chain_ok
            and names_domain(self.certificate, domain)
        )

    def _after_tls(self) -> None:
        self.certificate, self.chain_ok = peer_certificate(self.transport)

    # -- elements -------------------------------------------------------------

    def onElement(self, element: domish.Element) -> None:
        if self.closed:
            return
        uri, name = element.uri, element.name
        if uri == NS_STREAMS and name == "error":
            log.info("s2s {stream!r} got a stream error: {xml}", stream=self, xml=element.toXml())
            self.closed = True
            if not self.ready.called:
                self.ready.errback(NegotiationFailed("the peer sent a stream error"))
            self.flow.closing()
            self.transport.loseConnection()
            return
        if uri == NS_SERVER and name in STANZAS:
            return self._stanza(element)
        if uri == NS_DIALBACK:
            return self._dialback(element)
        if self.initiating:
            return self._negotiate_out(element)
        return self._negotiate_in(element)

    # -- the receiving side ---------------------------------------------------

    def _negotiate_in(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == NS_TLS and name == "starttls" and not self.secure:
            self.send(domish.Element((NS_TLS, "proceed")))
            self.transport.startTLS(self.manager.server_tls)
            self.secure = True
            self.reset()
            return
        if uri == NS_BIDI and name == "bidi" and self.settings.bidi and not self.authenticated:
            self.bidi = True
            return
        if uri == NS_SASL and name == "auth" and not self.authenticated:
            return self._sasl_external_in(element)
        self.fail("unsupported-stanza-type", f"unexpected <{name}/> from the peer")

    def _sasl_external_in(self, element: domish.Element) -> None:
        def failure(condition: str, why: str) -> None:
            log.info("s2s {stream!r}: SASL EXTERNAL refused: {why}", stream=self, why=why)
            answer = domish.Element((NS_SASL, "failure"))
            answer.addElement(condition)
            self.send(answer)

        if not self.secure:
            return failure("encryption-required", "no TLS")
        if element.getAttribute("mechanism") != "EXTERNAL":
            return failure("invalid-mechanism", "only EXTERNAL is offered")
        text = str(element).strip()
        try:
            authzid = (
                base64.b64decode(text, validate=True).decode() if text not in ("", "=") else ""
            )
        except (binascii.Error, UnicodeDecodeError):
            return failure("incorrect-encoding", "bad base64")
        domain = _domain(authzid) if authzid else self.remote
        if domain is None or (self.remote is not None and domain != self.remote):
            return failure("invalid-authzid", f"authzid {authzid!r} is not the stream's 'from'")
        if self.certificate is None:
            return failure("not-authorized", f"{domain} presented no certificate")
        if not self.chain_ok:
            return failure("not-authorized", f"the certificate of {domain} is not trusted")
        if not names_domain(self.certificate, domain):
            return failure("not-authorized", f"the certificate is not for {domain}")
        self.remote = domain
        self.send(domish.Element((NS_SASL, "success")))
        log.info(
            "s2s {stream!r}: {domain} authenticated by certificate", stream=self, domain=domain
        )
        self._accept_domain(domain, self.local)
        self.authenticated = True
        self.reset()

    def _accept_domain(self, remote: str, local: str) -> None:
        """The peer proved it is C{remote}: take its stanzas for C{local} (and send, with bidi)."""
        self.receivable.add((remote, local))
        self._authenticated_now()
        if self.bidi:
            self.sendable.add((local, remote))
            self.manager.stream_ready(self, local, remote)

    def _authenticated_now(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()

    # -- dialback (XEP-0220) --------------------------------------------------

    def _dialback(self, element: domish.Element) -> None:
        if element.name == "result" and not self.initiating and not element.getAttribute("type"):
            return self._dialback_request(element)
        if element.name == "result" and self.initiating:
            return self._dialback_answer(element)
        if element.name == "verify" and not element.getAttribute("type"):
            return self._verify_request(element)
        if element.name == "verify":
            return self._verify_answer(element)
        self.fail("unsupported-stanza-type", "unexpected dialback element")

    def _dialback_request(self, element: domish.Element) -> None:
        """The peer (originating) asks us (receiving) to accept it for a domain."""
        sender = _domain(element.getAttribute("from"))
        to = _domain(element.getAttribute("to"))
        if sender is None or to is None:
            return self.fail("improper-addressing", "db:result needs 'from' and 'to'")
        if to not in self.manager.server.hosts:
            return self._dialback_error(to, sender, "item-not-found", "cancel")
        policy = self.settings.policy(sender)
        if policy.secure_auth:
            log.info(
                "s2s {stream!r}: dialback from {domain} refused: policy requires a certificate",
                stream=self,
                domain=sender,
            )
            return self._dialback_error(to, sender, "not-acceptable", "cancel")
        if policy.require_encryption and not self.secure:
            log.info(
                "s2s {stream!r}: dialback from {domain} refused: policy requires TLS",
                stream=self,
                domain=sender,
            )
            return self._dialback_error(to, sender, "policy-violation", "auth")
        if len(self._dialback_requests) >= MAX_DIALBACK_REQUESTS:
            return self.fail("policy-violation", "too many dialback requests")
        self._dialback_requests.add((sender, to))
        d = self.manager.verify_dialback(to, sender, self.sid, str(element))
        d.addCallback(self._dialback_checked, to, sender)

    def _dialback_checked(self, valid: bool, local: str, remote: str) -> None:
        if self.closed:
            return
        answer = domish.Element((NS_DIALBACK, "result"))
        answer["from"], answer["to"] = local, remote
        answer["type"] = "valid" if valid else "invalid"
        self.send(answer)
        if valid:
            log.info(
                "s2s {stream!r}: {domain} authenticated by dialback", stream=self, domain=remote
            )
            self.remote = self.remote or remote
            self._accept_domain(remote, local)
        else:
            log.info(
                "s2s {stream!r}: dialback from {domain} failed: its server said the key is invalid",
                stream=self,
                domain=remote,
            )

    def _dialback_error(self, local: str, remote: str, condition: str, type_: str) -> None:
        answer = domish.Element((NS_DIALBACK, "result"))
        answer["from"], answer["to"], answer["type"] = local, remote, "error"
        answer.addChild(StanzaError(condition, type_).getElement())
        self.send(answer)

    def _verify_request(self, element: domish.Element) -> None:
        """We are the authoritative server: is this key one we made? (XEP-0220 §2.3)."""
        receiving = element.getAttribute("from", "")
        originating = element.getAttribute("to", "")
        stream_id = element.getAttribute("id", "")
        valid = originating in self.manager.server.hosts and self.manager.keys.check(
            str(element), receiving, originating, stream_id
        )
        answer = domish.Element((NS_DIALBACK, "verify"))
        answer["from"], answer["to"], answer["id"] = originating, receiving, stream_id
        answer["type"] = "valid" if valid else "invalid"
        self.send(answer)

    def request_verify(self, local: str, remote: str, stream_id: str, key: str) -> defer.Deferred:
        """Ask this peer (the authoritative server) whether C{key} is its own."""
        d: defer.Deferred = defer.Deferred()
        self._verifying.setdefault(stream_id, []).append(d)
        element = domish.Element((NS_DIALBACK, "verify"))
        element["from"], element["to"], element["id"] = local, remote, stream_id
        element.addContent(key)
        if self._can_verify:
            self.send(element)
        else:
            self._pending_verify.append(element)
        return d

    def _verify_answer(self, element: domish.Element) -> None:
        waiters = self._verifying.pop(element.getAttribute("id", ""), [])
        for waiter in waiters:
            waiter.callback(element.getAttribute("type") == "valid")

    def _dialback_answer(self, element: domish.Element) -> None:
        """The receiving server's verdict on our db:result."""
        type_ = element.getAttribute("type")
        if type_ == "valid":
            log.info("s2s {stream!r}: accepted by dialback", stream=self)
            self._outgoing_authenticated()
            return
        reason = "invalid key" if type_ == "invalid" else f"error {element.toXml()}"
        self.fail(
            "not-authorized" if type_ == "invalid" else "undefined-condition",
            f"dialback refused: {reason}",
        )

    # -- the initiating side --------------------------------------------------

    def _negotiate_out(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == NS_STREAMS and name == "features":
            return self._features_out(element)
        if uri == NS_TLS and name == "proceed":
            self.transport.startTLS(self.manager.client_tls.creator(self.remote, alpn=False))
            self.secure = True
            self.reset()  # the header goes out in handshakeCompleted
            return
        if uri == NS_SASL and name == "success":
            log.info("s2s {stream!r}: authenticated by certificate (SASL EXTERNAL)", stream=self)
            self.authenticated = True
            self.reset()
            self._send_header()
            return
        if uri == NS_SASL and name == "failure":
            return self._try_dialback("SASL EXTERNAL failed: " + element.toXml())
        self.fail("unsupported-stanza-type", f"unexpected <{name}/> from the peer")

    def _features_out(self, features: domish.Element) -> None:
        if self.authenticated:
            return self._outgoing_authenticated()
        policy = self.settings.policy(self.remote)
        offered = {(c.uri, c.name): c for c in features.elements()}
        if not self.secure:
            if (NS_TLS, "starttls") in offered:
                self.send(domish.Element((NS_TLS, "starttls")))
                return
            if policy.require_encryption:
                return self.fail("policy-violation", f"{self.remote} does not offer TLS")
        else:
            self._after_tls()
            if not self._certificate_names(self.remote):
                why = (
                    "no certificate"
                    if self.certificate is None
                    else "certificate not trusted"
                    if not self.chain_ok
                    else "certificate not for this domain"
                )
                if policy.secure_auth:
                    return self.fail(
                        "policy-violation", f"refused {self.remote}: {why} (secure_auth)"
                    )
                log.info(
                    "s2s {stream!r}: {why} for {domain}; dialback decides",
                    stream=self,
                    why=why,
                    domain=self.remote,
                )
        self._can_verify = True
        for verify in self._pending_verify:
            self.send(verify)
        self._pending_verify.clear()
        if self.settings.bidi and (NS_BIDI_FEATURE, "bidi") in offered:
            self.send(domish.Element((NS_BIDI, "bidi")))
            self.bidi = True
        mechanisms = offered.get((NS_SASL, "mechanisms"))
        if (
            self.secure
            and mechanisms is not None
            and "EXTERNAL" in [str(m).strip() for m in mechanisms.elements(NS_SASL, "mechanism")]
            and not self._sasl_tried
        ):
            self._sasl_tried = True
            auth = domish.Element((NS_SASL, "auth"))
            auth["mechanism"] = "EXTERNAL"
            auth.addContent(base64.b64encode(self.local.encode()).decode())
            self.send(auth)
            return
        self._try_dialback("the peer does not offer SASL EXTERNAL")

    def _try_dialback(self, why: str) -> None:
        policy = self.settings.policy(self.remote)
        if policy.secure_auth:
            return self.fail("policy-violation", f"{why}; dialback not allowed (secure_auth)")
        result = domish.Element((NS_DIALBACK, "result"))
        result["from"], result["to"] = self.local, self.remote
        result.addContent(self.manager.keys.make(self.remote, self.local, self.sid))
        self.send(result)

    def _outgoing_authenticated(self) -> None:
        self.authenticated = True
        self._authenticated_now()
        self.sendable.add((self.local, self.remote))
        if self.bidi:
            self.receivable.add((self.remote, self.local))
        if not self.ready.called:
            self.ready.callback(self)

    # -- stanzas --------------------------------------------------------------

    def _stanza(self, element: domish.Element) -> None:
        sender = element.getAttribute("from")
        to = element.getAttribute("to")
        if not sender or not to:
            return self.fail("improper-addressing", "s2s stanzas need 'from' and 'to'")
        try:
            sender_jid, to_jid = parse_jid(sender), parse_jid(to)
        except InvalidFormat:
            return self.fail("invalid-from", "malformed address")
        pair = (sender_jid.host, to_jid.host)
        if pair not in self.receivable:
            if any(r == sender_jid.host for r, _ in self.receivable):
                return self.fail("host-unknown", f"{to_jid.host} is not served here")
            return self.fail("invalid-from", f"{sender_jid.host} is not authenticated here")
        to_client_namespace(element)
        self._in_order.push(element, sender_jid, to_jid)

    def _deliver(self, element, sender, to) -> defer.Deferred | None:
        try:
            return self.manager.server.dispatcher.route(element, sender, to)
        except Exception:
            log.failure("routing a stanza from {stream!r} failed", stream=self)
            return None

    def send_stanza(self, stanza: domish.Element) -> None:
        """Write one stanza (its jabber:client content becomes jabber:server's by default)."""
        if self.closed or self._overflow is not None:
            return
        self._touch()
        # Our stanzas are jabber:client (or have no namespace): written without an
        # xmlns, they read as jabber:server, the stream's default (RFC 6120 §4.8.3).
        data = stanza_bytes(stanza, NS_CLIENT if stanza.uri in (None, NS_CLIENT) else NS_SERVER)
        self.transport.write(data)
        if self.flow.wrote(len(data)):
            self._overflow = reactor.callLater(
                0, self.fail, "policy-violation", "the peer does not read what we send"
            )


def to_client_namespace(element: domish.Element) -> None:
    """Re-label jabber:server as jabber:client in a received stanza, in place, without recursion.

    Everything past this point (plugins, client streams) speaks jabber:client.
    """
    stack = [element]
    while stack:
        node = stack.pop()
        if node.uri == NS_SERVER:
            node.uri = NS_CLIENT
        if node.defaultUri == NS_SERVER:
            node.defaultUri = NS_CLIENT
        stack.extend(c for c in node.children if isinstance(c, domish.Element))


def _domain(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return nameprep.prepare(value)
    except UnicodeError:
        return None
