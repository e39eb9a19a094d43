"""A deliberately thin XMPP client for load generation: asyncio sockets and bytes, no DOM.

A load generator written with a full client library would measure itself. Here
each connection is an asyncio Protocol that, during negotiation, splits the
stream into top-level elements by counting tags with bytes.find (enough for
what servers send; no entity, namespace or attribute parsing), and during a
measured phase hands raw socket reads to a callback that only counts markers.
SASL PLAIN and SCRAM-SHA-1/SCRAM-SHA-256 are done by hand so nothing but the
standard library is needed and the salted password is derived once per user.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
)
STREAM_FOOTER = b"</stream:stream>"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
#: Sentinel element queued when the server closes its stream.
STREAM_END = b"</stream:stream>"

_resources = itertools.count()
#: hashlib name per SCRAM mechanism the generator speaks.
SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
#: Salted-password keys per (hash, password, salt, iterations): derived once, like a real client.
_scram_cache: dict[str, tuple[bytes, bytes, bytes]] = {}


class XMPPError(Exception):
    """The server refused or broke off a step the generator relies on."""


@dataclass(frozen=True)
class Target:
    """Where the server under test listens and how to log in to it."""

    host: str
    port: int
    domain: str
    password: str
    #: An RFC 7395 endpoint (ws://host:port/xmpp-websocket) to use instead of TCP.
    websocket: str | None = None

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"


def attribute(element: bytes, name: str) -> str | None:
    """The value of an attribute of an element's start tag (either quote style)."""
    start_tag = element[: element.find(b">") + 1]
    match = re.search(rb"\s" + name.encode() + rb"=(['\"])(.*?)\1", start_tag)
    return match.group(2).decode() if match else None


def text_of(element: bytes, tag: bytes) -> str | None:
    """Text between <tag ...> and </tag> (the first one), without unescaping."""
    opening = element.find(b"<" + tag)
    if opening < 0:
        return None
    content = element.find(b">", opening) + 1
    if element[content - 2 : content] == b"/>":
        return ""
    closing = element.find(b"</" + tag, content)
    return element[content:closing].decode() if closing >= 0 else None


class Conn(asyncio.Protocol):
    """One client connection: an element queue while negotiating, a raw sink when measuring."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self._scan = 0
        self._depth = 0
        self._start = 0
        self.elements: deque[bytes] = deque()
        self._waiter: asyncio.Future | None = None
        #: Called with every read instead of splitting, once set (see set_sink).
        self.sink: Callable[[bytes], None] | None = None
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.jid = ""

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
            return
        self.buf += data
        self._split()
        if self.elements:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- element splitting -------------------------------------------------------

    def _split(self) -> None:
        """Queue each complete child of the stream root; tags are counted, not parsed."""
        buf = self.buf
        i = self._scan
        while True:
            lt = buf.find(b"<", i)
            if lt < 0:
                i = len(buf)
                break
            gt = buf.find(b">", lt)
            if gt < 0:
                i = lt
                break
            kind = buf[lt + 1]
            if kind == 0x2F:  # '/': an end tag
                self._depth -= 1
                if self._depth == 1:
                    self.elements.append(bytes(buf[self._start : gt + 1]))
                elif self._depth == 0:
                    self.elements.append(STREAM_END)
            elif kind not in (0x3F, 0x21):  # not '<?' or '<!'
                if self._depth == 0:
                    self._depth = 1
                    self.elements.append(bytes(buf[lt : gt + 1]))  # the stream header
                elif buf[gt - 1] == 0x2F:  # '/>'
                    if self._depth == 1:
                        self.elements.append(bytes(buf[lt : gt + 1]))
                else:
                    if self._depth == 1:
                        self._start = lt
                    self._depth += 1
            i = gt + 1
        if self._depth <= 1:
            del buf[:i]
            self._scan = 0
        else:
            del buf[: self._start]
            self._scan = i - self._start
            self._start = 0

    def set_sink(self, sink: Callable[[bytes], None]) -> None:
        """Switch to raw mode: every further read (and what is buffered) goes to C{sink}."""
        self.sink = sink
        rest = bytes(self.buf)
        self.buf.clear()
        self._scan = 0
        if rest:
            sink(rest)

    # -- waiting for elements ------------------------------------------------------

    async def next(self, timeout: float = 30.0) -> bytes:
        """The next top-level element (or STREAM_END); XMPPError on timeout or close."""
        while not self.elements:
            if self.lost.done():
                raise XMPPError(f"{self.jid or 'connection'}: closed by the server")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                raise XMPPError(f"{self.jid or 'connection'}: no answer in {timeout}s") from None
        return self.elements.popleft()

    async def expect(self, match: Callable[[bytes], bool], timeout: float = 30.0) -> bytes:
        """The first element that C{match}es; others are dropped (roster pushes, presence)."""
        while True:
            element = await self.next(timeout)
            if element == STREAM_END or element.startswith(b"<stream:error"):
                raise XMPPError(f"{self.jid or 'connection'}: stream closed: {element[:200]!r}")
            if match(element):
                return element

    async def iq_result(self, iq_id: str, timeout: float = 30.0) -> bytes:
        """Wait for the answer to our iq; XMPPError carrying the element if it is an error."""
        quoted = (f"id='{iq_id}'".encode(), f'id="{iq_id}"'.encode())

        def answer(element: bytes) -> bool:
            head = element[: element.find(b">")]
            return element.startswith(b"<iq") and (quoted[0] in head or quoted[1] in head)

        element = await self.expect(answer, timeout)
        if attribute(element, "type") != "result":
            raise XMPPError(f"iq {iq_id} failed: {element[:300]!r}")
        return element

    # -- sending -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def send_many(self, element: bytes, count: int) -> None:
        """C{count} copies of one element, in one write where the transport allows it."""
        self.send(element * count)

    def close(self) -> None:
        """Close our stream and the socket without waiting for the server."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(STREAM_FOOTER)
            self.transport.close()

    # -- negotiation ---------------------------------------------------------------

    async def open_stream(self, domain: str) -> bytes:
        """Send a stream header; return the server's <stream:features/>."""
        self._depth = 0
        self.send(STREAM_HEADER.format(domain=domain).encode())
        header = await self.next()
        if not header.startswith(b"<stream:stream"):
            raise XMPPError(f"expected a stream header, got {header[:200]!r}")
        features = await self.next()
        if b"features" not in features[:40]:
            raise XMPPError(f"expected stream features, got {features[:200]!r}")
        return features

    async def authenticate(
        self, user: str, password: str, mechanism: str, sasl2: bytes | None = None
    ) -> bytes:
        """SASL1, or with C{sasl2} (the inline requests) XEP-0388 SASL2; returns the success."""
        if mechanism == "PLAIN":
            payload = f"\0{user}\0{password}".encode()
            self.send(_auth(mechanism, payload, sasl2))
            return await self._sasl_success(None, sasl2 is not None)
        digest = SCRAM_HASHES.get(mechanism)
        if digest is None:
            raise XMPPError(f"unsupported mechanism {mechanism}")
        nonce = secrets.token_urlsafe(18)
        client_first_bare = f"n={_scram_name(user)},r={nonce}"
        self.send(_auth(mechanism, f"n,,{client_first_bare}".encode(), sasl2))
        challenge = await self.next()
        if not challenge.startswith(b"<challenge"):
            raise XMPPError(f"{user}: SCRAM refused: {challenge[:300]!r}")
        server_first = base64.b64decode(text_of(challenge, b"challenge") or "").decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        if not fields["r"].startswith(nonce):
            raise XMPPError(f"{user}: the server changed our SCRAM nonce")
        salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
        client_key, stored_key, server_key = _scram_keys(digest, password, salt, iterations)
        final_bare = f"c=biws,r={fields['r']}"
        auth_message = f"{client_first_bare},{server_first},{final_bare}".encode()
        signature = hmac.digest(stored_key, auth_message, digest)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = f"{final_bare},p={base64.b64encode(proof).decode()}"
        if sasl2 is None:
            self.send(_sasl("response", final.encode()))
        else:
            self.send(_sasl2_element("response", final.encode()))
        expected = base64.b64encode(hmac.digest(server_key, auth_message, digest)).decode()
        return await self._sasl_success(f"v={expected}", sasl2 is not None)

    async def fast(self, user: str, token: str, agent: str, inline: bytes) -> bytes:
        """XEP-0484 FAST: HT-SHA-256-NONE with a token, in SASL2; returns the success."""
        proof = hmac.digest(token.encode(), b"Initiator", "sha256")
        payload = user.encode() + b"\0" + proof
        extra = f"<user-agent id='{agent}'/><fast xmlns='urn:xmpp:fast:0'/>".encode() + inline
        self.send(_auth("HT-SHA-256-NONE", payload, extra))
        success = await self.next()
        if not success.startswith(b"<success"):
            raise XMPPError(f"FAST refused: {success[:300]!r}")
        expected = hmac.digest(token.encode(), b"Responder", "sha256")
        if base64.b64decode(text_of(success, b"additional-data") or "") != expected:
            raise XMPPError("the server's HT proof does not verify")
        return success

    async def _sasl_success(self, verifier: str | None, sasl2: bool = False) -> bytes:
        element = await self.next()
        if element.startswith(b"<challenge") and verifier is not None and not sasl2:
            # RFC 6120 allows the server's final data as a last challenge.
            data = base64.b64decode(text_of(element, b"challenge") or "").decode()
            if data != verifier:
                raise XMPPError("the server's SCRAM signature does not verify")
            self.send(_sasl("response", b""))
            element = await self.next()
            verifier = None
        if not element.startswith(b"<success"):
            raise XMPPError(f"authentication failed: {element[:300]!r}")
        data = text_of(element, b"additional-data" if sasl2 else b"success")
        if verifier is not None and data and base64.b64decode(data).decode() != verifier:
            raise XMPPError("the server's SCRAM signature does not verify")
        return element

    async def bind(self, resource: str) -> str:
        self.send(
            b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            b"<resource>" + resource.encode() + b"</resource></bind></iq>"
        )
        result = await self.iq_result("bind")
        self.jid = text_of(result, b"jid") or ""
        return self.jid

    async def roster(self, iq_id: str = "roster") -> bytes:
        self.send(f"<iq type='get' id='{iq_id}'><query xmlns='jabber:iq:roster'/></iq>".encode())
        return await self.iq_result(iq_id)

    async def ping(self, domain: str, iq_id: str = "ping") -> None:
        """XEP-0199 ping of the server, answered once everything sent before it was handled."""
        self.send(
            f"<iq type='get' id='{iq_id}' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>".encode()
        )
        await self.iq_result(iq_id)

    async def enable_sm(self) -> str:
        """XEP-0198 <enable resume='true'/>; returns the resumption id."""
        self.send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        enabled = await self.expect(lambda e: e.startswith((b"<enabled", b"<failed")))
        previd = attribute(enabled, "id")
        if not enabled.startswith(b"<enabled") or not previd:
            raise XMPPError(f"stream management refused: {enabled[:300]!r}")
        return previd

    async def resume(self, previd: str, h: int = 0) -> None:
        """XEP-0198 <resume/> (after SASL and the stream restart)."""
        self.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>".encode())
        answer = await self.expect(lambda e: e.startswith((b"<resumed", b"<failed")))
        if not answer.startswith(b"<resumed"):
            raise XMPPError(f"resumption refused: {answer[:300]!r}")

    async def initial_presence(self) -> None:
        """Send available presence; both servers reflect it, which marks the end of login."""
        self.send(b"<presence/>")
        own = (f"from='{self.jid}'".encode(), f'from="{self.jid}"'.encode())

        def reflected(element: bytes) -> bool:
            head = element[: element.find(b">")]
            return element.startswith(b"<presence") and (own[0] in head or own[1] in head)

        await self.expect(reflected)


def _auth(mechanism: str, payload: bytes, sasl2: bytes | None) -> bytes:
    """The first SASL message: SASL1 <auth/>, or SASL2 <authenticate/> with inline requests."""
    if sasl2 is None:
        return _sasl("auth", payload, mechanism)
    return (
        f"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{mechanism}'><initial-response>"
        f"{base64.b64encode(payload).decode()}</initial-response>".encode()
        + sasl2
        + b"</authenticate>"
    )


def _sasl2_element(name: str, payload: bytes) -> bytes:
    data = base64.b64encode(payload).decode() if payload else "="
    return f"<{name} xmlns='urn:xmpp:sasl:2'>{data}</{name}>".encode()


def _sasl(name: str, payload: bytes, mechanism: str | None = None) -> bytes:
    data = base64.b64encode(payload).decode() if payload else "="
    mech = f" mechanism='{mechanism}'" if mechanism else ""
    return f"<{name} xmlns='{NS_SASL}'{mech}>{data}</{name}>".encode()


def _scram_name(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")


def _scram_keys(
    digest: str, password: str, salt: bytes, iterations: int
) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey), cached: a real client also keeps them."""
    key = _cache_key(digest, password, salt, iterations)
    if key not in _scram_cache:
        salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", digest)
        _scram_cache[key] = (
            client_key,
            hashlib.new(digest, client_key).digest(),
            hmac.digest(salted, b"Server Key", digest),
        )
    return _scram_cache[key]


def _cache_key(digest: str, password: str, salt: bytes, iterations: int) -> str:
    secret = hashlib.sha256(password.encode()).hexdigest()[:16]
    # SHA-1 entries keep their old key, so an existing cache file stays valid.
    prefix = "" if digest == "sha1" else f"{digest}:"
    return f"{prefix}{secret}:{salt.hex()}:{iterations}"


def load_scram_cache(path: Path) -> None:
    """Reuse salted-password keys derived by an earlier run, as a real client would."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for key, (client_key, stored_key, server_key) in entries.items():
        _scram_cache[key] = (
            bytes.fromhex(client_key),
            bytes.fromhex(stored_key),
            bytes.fromhex(server_key),
        )


def save_scram_cache(path: Path) -> None:
    entries = {key: [v.hex() for v in keys] for key, keys in _scram_cache.items()}
    path.write_text(json.dumps(entries))


async def connect(target: Target) -> Conn:
    if target.websocket:
        return await WSConn.connect(target.websocket)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, target.host, target.port)
    return conn


class WSConn(Conn):
    """The same client over RFC 7395: one element per WebSocket message, both ways.

    Each message is already one element, so nothing is split; <open/> stands
    for the stream header and <close/> for its end. The `websockets` library
    does the WebSocket framing (and the masking a client must do).
    """

    FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"

    @classmethod
    async def connect(cls, url: str) -> WSConn:
        from websockets.asyncio.client import connect as ws_connect

        conn = cls()
        conn.ws = await ws_connect(url, subprotocols=["xmpp"], max_size=None, compression=None)
        conn.reader = asyncio.get_running_loop().create_task(conn._read())
        return conn

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                message = await self.ws.recv(decode=False)
                if self.sink is not None:
                    self.sink(message)
                    continue
                self.elements.append(STREAM_END if message.startswith(b"<close") else message)
                self._wake()
        except ConnectionClosed:
            pass
        finally:
            self.connection_lost(None)

    def send(self, data: bytes) -> None:
        asyncio.get_running_loop().create_task(self.ws.send(data, text=True))

    def send_many(self, element: bytes, count: int) -> None:
        for _ in range(count):
            self.send(element)

    def set_sink(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        while self.elements:
            sink(self.elements.popleft())

    def close(self) -> None:
        if self.ws.state.name == "OPEN":
            self.send(f"<close xmlns='{self.FRAMING}'/>".encode())
            asyncio.get_running_loop().create_task(self.ws.close())

    async def open_stream(self, domain: str) -> bytes:
        self.send(f"<open xmlns='{self.FRAMING}' to='{domain}' version='1.0'/>".encode())
        opened = await self.next()
        if not opened.startswith(b"<open"):
            raise XMPPError(f"expected <open/>, got {opened[:200]!r}")
        features = await self.next()
        if b"features" not in features[:40]:
            raise XMPPError(f"expected stream features, got {features[:200]!r}")
        return features


async def offered_mechanisms(target: Target) -> set[str]:
    """The SASL mechanisms the server offers on a fresh stream."""
    conn = await connect(target)
    try:
        features = await conn.open_stream(target.domain)
    finally:
        conn.close()
    return {m.decode() for m in re.findall(rb"<mechanism>([^<]+)</mechanism>", features)}


async def login(
    target: Target,
    user: str,
    mechanism: str = "SCRAM-SHA-1",
    *,
    roster: bool = False,
    presence: bool = True,
) -> Conn:
    """Connect, authenticate, bind, optionally get the roster, send initial presence."""
    conn = await connect(target)
    try:
        features = await conn.open_stream(target.domain)
        if f"<mechanism>{mechanism}</mechanism>".encode() not in features:
            raise XMPPError(f"{mechanism} not offered: {features[:400]!r}")
        await conn.authenticate(user, target.password, mechanism)
        await conn.open_stream(target.domain)
        await conn.bind(f"b{next(_resources)}")
        if roster:
            await conn.roster()
        if presence:
            await conn.initial_presence()
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()
        raise
    return conn


async def register(target: Target, user: str) -> bool:
    """XEP-0077 sign-up on a fresh stream; False when the account already exists."""
    conn = await connect(target)
    try:
        await conn.open_stream(target.domain)
        conn.send(
            b"<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>"
            + user.encode()
            + b"</username><password>"
            + target.password.encode()
            + b"</password></query></iq>"
        )
        try:
            await conn.iq_result("reg")
        except XMPPError as e:
            if "conflict" in str(e):
                return False
            raise
        return True
    finally:
        conn.close()
