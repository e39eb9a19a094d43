"""RawClient: a small blocking XMPP client that shows tests exactly what came over the wire.

It shares no code with the server (standard library XML and ssl, scramp for
SCRAM), so a bug on one side cannot hide a bug on the other. Incoming XML is
parsed incrementally: the stream root is kept in C{root}, each complete
top-level child goes into a queue, and C{expect()} takes the first queued
element that matches, leaving the rest for later, so nothing is skipped
silently. Failures raise AssertionError with the tail of the transcript.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from cryptography import x509
from scramp import ScramClient, ScramException

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"

STREAM_ERROR = f"{{{NS_STREAMS}}}error"
FEATURES = f"{{{NS_STREAMS}}}features"
IQ = f"{{{NS_CLIENT}}}iq"
MESSAGE = f"{{{NS_CLIENT}}}message"
PRESENCE = f"{{{NS_CLIENT}}}presence"

Matcher = str | Callable[[ET.Element], bool]


def clark(namespace: str, local: str) -> str:
    """ElementTree's '{namespace}local' name."""
    return f"{{{namespace}}}{local}"


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def to_text(element: ET.Element) -> str:
    """An element as XML text, for assertion messages."""
    return ET.tostring(element, encoding="unicode")


def stanza_error(stanza: ET.Element) -> tuple[str | None, str | None]:
    """(error type, defined condition) of an error stanza; (None, None) if it has no <error/>."""
    error = stanza.find(clark(NS_CLIENT, "error"))
    if error is None:
        return None, None
    conditions = [
        local_name(child.tag)
        for child in error
        if child.tag.startswith(f"{{{NS_STANZA_ERRORS}}}") and local_name(child.tag) != "text"
    ]
    return error.get("type"), conditions[0] if len(conditions) == 1 else None


def stream_error_condition(error: ET.Element) -> str | None:
    """The single defined condition of a <stream:error/> (None if there is not exactly one)."""
    conditions = [
        local_name(child.tag)
        for child in error
        if child.tag.startswith(f"{{{NS_STREAM_ERRORS}}}") and local_name(child.tag) != "text"
    ]
    return conditions[0] if len(conditions) == 1 else None


def tls_server_end_point(der: bytes) -> bytes:
    """RFC 5929 §4.1 channel binding: hash of the certificate with its signature hash.

    MD5 and SHA-1 are replaced by SHA-256, as the RFC says.
    """
    certificate = x509.load_der_x509_certificate(der)
    algorithm = certificate.signature_hash_algorithm
    name = algorithm.name if algorithm is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, der).digest()


class AuthFailed(AssertionError):
    """SASL ended in <failure/>; C{condition} names it."""

    def __init__(self, condition: str | None, element: ET.Element) -> None:
        super().__init__(f"SASL failure {condition!r}: {to_text(element)}")
        self.condition = condition
        self.element = element


class RawClient:
    """One client connection to a server, driven step by step by a test."""

    def __init__(
        self,
        port: int,
        *,
        tls_port: int = 0,
        address: str = "127.0.0.1",
        domain: str = "localhost",
        timeout: float = 5.0,
        alpn: list[str] | None = None,
        tls_wrapper: Callable[[socket.socket, str], Any] | None = None,
    ) -> None:
        self.address = address
        #: ALPN protocols to offer in the TLS handshake (RFC 7301), if any.
        self.alpn = alpn
        self.port = port
        self.tls_port = tls_port
        self.domain = domain
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.secure = False
        #: The server's current <stream:stream> element (None before its header arrives).
        self.root: ET.Element | None = None
        #: The server sent </stream:stream> for the current stream.
        self.stream_ended = False
        #: The server closed the TCP connection.
        self.closed = False
        self.jid: str | None = None
        #: The xml:lang of our stream headers (None: no xml:lang at all).
        self.lang: str | None = "en"
        self.features: ET.Element | None = None
        self.transcript: list[tuple[str, bytes]] = []
        #: Makes the TLS socket from (TCP socket, server name); None: Python's ssl.
        self.tls_wrapper = tls_wrapper
        self._queue: deque[ET.Element] = deque()
        self._new_parser()

    @classmethod
    def for_server(cls, server: Any, **kwargs: Any) -> RawClient:
        """A client for anything with interface/port/tls_port/host (a ServerProcess)."""
        return cls(
            server.port,
            tls_port=server.tls_port,
            address=server.interface,
            domain=server.host,
            **kwargs,
        )

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connection -----------------------------------------------------------

    def connect(self, direct_tls: bool = False) -> RawClient:
        """Open TCP (or, with C{direct_tls}, XEP-0368 TLS on the server's TLS port)."""
        port = self.tls_port if direct_tls else self.port
        if direct_tls and not port:
            raise ValueError("this server has no direct TLS port")
        sock = socket.create_connection((self.address, port), timeout=self.timeout)
        self.sock = self._tls_wrap(sock) if direct_tls else sock
        self.secure = direct_tls
        return self

    def send(self, data: str | bytes) -> None:
        """Send raw bytes (str is encoded as UTF-8), exactly as given."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.sock is None:
            raise RuntimeError("not connected")
        self.transcript.append(("sent", data))
        self.sock.sendall(data)

    def close(self) -> None:
        """Close our side (with </stream:stream> when the stream is still up)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            if not self.closed and self.root is not None and not self.stream_ended:
                sock.settimeout(0.5)
                sock.sendall(b"</stream:stream>")
        with contextlib.suppress(OSError):
            sock.close()

    # -- stream negotiation -------------------------------------------------------

    def stream_header(self, to: str | None = None, version: str | None = "1.0") -> str:
        """The opening tag a well-behaved client sends."""
        attributes = f" to='{to or self.domain}'"
        if version is not None:
            attributes += f" version='{version}'"
        if self.lang is not None:
            attributes += f" xml:lang='{self.lang}'"
        return (
            "<?xml version='1.0'?>"
            f"<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'{attributes}>"
        )

    def open_stream(self, to: str | None = None, timeout: float | None = None) -> ET.Element:
        """Send a stream header and return the server's <stream:features/>."""
        self._new_parser()
        self.send(self.stream_header(to))
        deadline = self._deadline(timeout)
        while self.root is None:
            if self.closed or not self._receive(deadline):
                self._fail("no stream header from the server")
        self.features = self.expect(
            lambda e: e.tag in (FEATURES, STREAM_ERROR), self._left(deadline)
        )
        if self.features.tag == STREAM_ERROR:
            self._fail(f"stream error instead of features: {to_text(self.features)}")
        return self.features

    def starttls(self) -> None:
        """RFC 6120 §5: ask for TLS, wait for <proceed/>, then handshake (no cert checks)."""
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        answer = self.expect(lambda e: e.tag.startswith(f"{{{NS_TLS}}}"))
        if answer.tag != clark(NS_TLS, "proceed"):
            self._fail(f"STARTTLS refused: {to_text(answer)}")
        self._new_parser()
        self.sock = self._tls_wrap(self.sock)
        self.secure = True

    def auth_plain(
        self, user: str, password: str, *, authzid: str = "", check: bool = True
    ) -> ET.Element:
        """SASL PLAIN; returns <success/> (or <failure/> when C{check} is false)."""
        message = f"{authzid}\0{_localpart(user)}\0{password}".encode()
        self.send(sasl_xml("auth", message, mechanism="PLAIN"))
        return self._sasl_outcome(self.expect_sasl(), check)

    def auth_scram(
        self,
        user: str,
        password: str,
        mechanism: str = "SCRAM-SHA-256",
        *,
        check: bool = True,
    ) -> ET.Element:
        """SCRAM (RFC 5802/7677), -PLUS with tls-server-end-point; verifies the server too."""
        binding = None
        if mechanism.endswith("-PLUS"):
            der = self.sock.getpeercert(binary_form=True)
            binding = ("tls-server-end-point", tls_server_end_point(der))
        scram = ScramClient([mechanism], _localpart(user), password, channel_binding=binding)
        self.send(sasl_xml("auth", scram.get_client_first().encode(), mechanism=mechanism))
        answer = self.expect_sasl()
        if answer.tag != clark(NS_SASL, "challenge"):
            return self._sasl_outcome(answer, check)
        scram.set_server_first(sasl_data(answer).decode())
        self.send(sasl_xml("response", scram.get_client_final().encode()))
        answer = self.expect_sasl()
        if answer.tag == clark(NS_SASL, "challenge"):
            # RFC 6120 §6.3.10 allows the server-final message in a last challenge.
            self._verify_server_final(scram, answer)
            self.send(sasl_xml("response", b""))
            answer = self.expect_sasl()
            return self._sasl_outcome(answer, check)
        if answer.tag == clark(NS_SASL, "success"):
            self._verify_server_final(scram, answer)
        return self._sasl_outcome(answer, check)

    def bind(self, resource: str | None = None) -> str:
        """RFC 6120 §7: bind a resource (server-generated when None); returns the full JID."""
        inner = f"<resource>{_escape(resource)}</resource>" if resource is not None else ""
        answer = self.iq(f"<iq type='set'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>")
        if answer.get("type") != "result":
            self._fail(f"bind failed: {to_text(answer)}")
        jid = answer.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        if not jid:
            self._fail(f"bind result without a JID: {to_text(answer)}")
        self.jid = jid
        return jid

    def session(self) -> ET.Element:
        """RFC 3921 session establishment (optional today); asserts a result."""
        answer = self.iq(f"<iq type='set'><session xmlns='{NS_SESSION}'/></iq>")
        if answer.get("type") != "result":
            self._fail(f"session failed: {to_text(answer)}")
        return answer

    def login(
        self,
        user: str,
        password: str,
        resource: str | None = None,
        mechanism: str = "SCRAM-SHA-256",
        *,
        direct_tls: bool = False,
    ) -> str:
        """Connect if needed, TLS, SASL, bind; returns the full JID. C{user} may be a JID."""
        if "@" in user:
            self.domain = user.partition("@")[2]
        if self.sock is None:
            self.connect(direct_tls=direct_tls)
        features = self.open_stream()
        if not self.secure and features.find(clark(NS_TLS, "starttls")) is not None:
            self.starttls()
            self.open_stream()
        if mechanism == "PLAIN":
            self.auth_plain(user, password)
        else:
            self.auth_scram(user, password, mechanism)
        self.open_stream()
        return self.bind(resource)

    # -- receiving ------------------------------------------------------------------

    def expect(self, match: Matcher, timeout: float | None = None) -> ET.Element:
        """The first received top-level element matching a Clark tag or a predicate.

        Elements that do not match stay queued for later calls.
        """
        predicate = (lambda e: e.tag == match) if isinstance(match, str) else match
        deadline = self._deadline(timeout)
        while True:
            for element in self._queue:
                if predicate(element):
                    self._queue.remove(element)
                    return element
            if self.closed or self.stream_ended:
                self._fail(f"the stream ended while waiting for {_describe(match)}")
            if not self._receive(deadline):
                self._fail(f"nothing matching {_describe(match)} within the timeout")

    def drain(self, wait: float = 0.0) -> list[ET.Element]:
        """Everything received and not yet taken (reading for up to C{wait} seconds more)."""
        deadline = time.monotonic() + wait
        while not self.closed and self._receive(deadline, poll=True):
            pass
        elements = list(self._queue)
        self._queue.clear()
        return elements

    def iq(self, xml: str, timeout: float | None = None) -> ET.Element:
        """Send an iq (an id is added when it has none) and return its result or error."""
        match = re.match(r"\s*<iq\b[^>]*?\sid=(['\"])(.*?)\1", xml)
        if match:
            iq_id = match.group(2)
        else:
            iq_id = "t-" + secrets.token_hex(4)
            xml = re.sub(r"^\s*<iq\b", f"<iq id='{iq_id}'", xml, count=1)
        self.send(xml)
        return self.expect(
            lambda e: e.tag == IQ and e.get("id") == iq_id and e.get("type") in ("result", "error"),
            timeout,
        )

    def expect_stream_error(self, condition: str, timeout: float | None = None) -> ET.Element:
        """Assert a <stream:error/> with C{condition}, then </stream:stream> and a close."""
        error = self.expect(STREAM_ERROR, timeout)
        found = stream_error_condition(error)
        if found != condition:
            self._fail(f"expected stream error {condition!r}, got {found!r}: {to_text(error)}")
        self.expect_closed(timeout)
        return error

    def expect_closed(self, timeout: float | None = None) -> None:
        """Assert that the server sends </stream:stream> and closes the connection."""
        deadline = self._deadline(timeout)
        while not self.closed:
            if not self._receive(deadline) and not self.closed:
                what = "closed the connection" if self.stream_ended else "sent </stream:stream>"
                self._fail(f"the server never {what}")
        if not self.stream_ended:
            self._fail("the connection closed without </stream:stream>")

    # -- internals -------------------------------------------------------------------

    def _new_parser(self) -> None:
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.root = None
        self.stream_ended = False

    def _tls_wrap(self, sock: socket.socket) -> Any:
        if self.tls_wrapper is not None:
            return self.tls_wrapper(sock, self.domain)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
        if self.alpn is not None:
            context.set_alpn_protocols(self.alpn)
        return context.wrap_socket(sock, server_hostname=self.domain)

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.0)

    def _receive(self, deadline: float, poll: bool = False) -> bool:
        """Read once (until C{deadline}); False on timeout or when closed."""
        if self.sock is None or self.closed:
            return False
        left = deadline - time.monotonic()
        if left <= 0 and not poll:
            return False
        self.sock.settimeout(max(left, 0.01))
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        if not data:
            self.closed = True
            self.transcript.append(("closed", b""))
            return False
        self.transcript.append(("received", data))
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        if self.stream_ended:
            return  # anything after </stream:stream> is not ours to parse
        try:
            self._parser.feed(data)
            events = list(self._parser.read_events())
        except ET.ParseError as e:
            self._fail(f"the server sent XML that is not well-formed: {e}")
        for event, element in events:
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self.root = element
            else:
                self._depth -= 1
                if self._depth == 1:
                    self._queue.append(element)
                    self.root.remove(element)
                elif self._depth == 0:
                    self.stream_ended = True

    def expect_sasl(self) -> ET.Element:
        return self.expect(lambda e: e.tag.startswith(f"{{{NS_SASL}}}"))

    def _sasl_outcome(self, answer: ET.Element, check: bool) -> ET.Element:
        if answer.tag == clark(NS_SASL, "success"):
            self._new_parser()  # RFC 6120 §6.4.6: a new stream follows
            return answer
        if answer.tag == clark(NS_SASL, "failure"):
            if check:
                conditions = [local_name(c.tag) for c in answer if local_name(c.tag) != "text"]
                raise AuthFailed(conditions[0] if conditions else None, answer)
            return answer
        self._fail(f"unexpected SASL answer: {to_text(answer)}")

    @staticmethod
    def _verify_server_final(scram: ScramClient, answer: ET.Element) -> None:
        try:
            scram.set_server_final(sasl_data(answer).decode())
        except ScramException as e:
            raise AssertionError(f"the server's SCRAM signature is wrong: {e}") from None

    def _fail(self, message: str) -> None:
        received = b"".join(d for kind, d in self.transcript if kind == "received")
        tail = received[-1500:].decode("utf-8", errors="replace")
        queued = [to_text(e)[:300] for e in self._queue]
        raise AssertionError(
            f"{message}\n  queued: {queued}\n  last bytes received: {tail!r}"
            f"\n  closed={self.closed} stream_ended={self.stream_ended}"
        )


def _localpart(user: str) -> str:
    return user.partition("@")[0] if "@" in user else user


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def sasl_xml(name: str, data: bytes, mechanism: str | None = None) -> str:
    """A SASL element; empty data is sent as '=' (RFC 6120 §6.4.2)."""
    payload = base64.b64encode(data).decode("ascii") if data else "="
    attribute = f" mechanism='{mechanism}'" if mechanism else ""
    return f"<{name} xmlns='{NS_SASL}'{attribute}>{payload}</{name}>"


def sasl_data(element: ET.Element) -> bytes:
    text = (element.text or "").strip()
    return b"" if text in ("", "=") else base64.b64decode(text, validate=True)


def _describe(match: Matcher) -> str:
    return match if isinstance(match, str) else getattr(match, "__name__", repr(match))


def closed_after(build: Callable[..., RawClient]) -> Iterator[Callable[..., RawClient]]:
    """For a fixture: yield a factory of the clients C{build} makes; close each at teardown."""
    made: list[RawClient] = []

    def make(*args: Any, **kwargs: Any) -> RawClient:
        made.append(build(*args, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()
