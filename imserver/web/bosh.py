"""XMPP over BOSH (XEP-0124, XEP-0206) at /http-bind.

No maintained BOSH server exists for Twisted, so this is ours. A session is
a L{BoshStream} (the c2s stream with BOSH framing) whose transport is its
L{BoshSession}: what the stream writes waits in the session until an HTTP
request is there to carry it, and the children of each request's <body/>
go to the stream as top-level elements.

The rules kept, with their XEP-0124 sections:

* rid (§14): requests are handled in rid order; one ahead of a gap waits for
  it; a rid more than C{requests} ahead of the last one handled, or one
  already answered and no longer kept, ends the session with item-not-found;
  a rid answered recently gets the same answer again, and one handled but
  not yet answered (its connection broke) waits in the old one's place: a
  client's retries.
* hold and wait (§7, §11): at most C{hold} requests are held; a newer one
  releases the oldest; a held request is answered empty after C{wait}.
* inactivity (§7): a session with no request held for C{inactivity} seconds ends.
* acknowledgements (§9): an answer to a request older than the newest one
  handled carries C{ack}; the answers kept for retries are bounded by the
  window and dropped once the client acknowledges them.
* bounded buffering: output waiting for a request counts as output the client
  has not read, so the c2s limit (max_output_buffer) ends a session that
  never collects it (policy-violation), and reading pauses meanwhile.
* terminate (§13, XEP-0206 §5): a stream error reaches the client inside a
  body with condition 'remote-stream-error'; BOSH errors use their own condition.

Not implemented: pause (§10), the report/time retry hints (§9.3), polling-rate
enforcement (§12; 'polling' is announced), multiple streams per session (XEP-0124 §19).
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.words.protocols.jabber.xmpp_stringprep import nameprep
from twisted.words.xish import domish

from imserver.stream import NS_CLIENT, NS_STREAMS
from imserver.stream.parser import ParserLimits, RestrictedElementStream, StreamViolation
from imserver.web.cors import allow_cross_origin
from imserver.web.framing import WebStream

if TYPE_CHECKING:
    from imserver.server import Server

log = Logger()

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
NS_XML = "http://www.w3.org/XML/1998/namespace"
VERSION = "1.11"
#: Seconds between requests a client with hold=0 is told to keep (announced only).
POLLING = 2
#: Output waiting for a request beyond this counts as unread (see FlowControl).
OUTPUT_PAUSE = 64 * 1024
_BODY_OPEN = (
    b"<body xmlns='http://jabber.org/protocol/httpbind'"
    b" xmlns:stream='http://etherx.jabber.org/streams'"
)
_TERMINATE = _BODY_OPEN + b" type='terminate'/>"


class BoshError(Exception):
    """End the session (or refuse the request) with a XEP-0124 §17 condition."""

    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition


class BoshStream(WebStream):
    """A client stream carried by BOSH bodies: no header bytes, no footer bytes."""

    def _initializeStream(self) -> None:
        # Elements come parsed from each request body; there is no byte stream.
        self.stream = None

    @property
    def awaiting_restart(self) -> bool:
        """SASL succeeded and the client has not restarted the stream yet (XEP-0206 §5)."""
        return not self._headerSent and self.authenticator.username is not None

    def start(self, to: str, lang: str | None) -> None:
        """The session's first body, or a restart: what a stream header is over TCP."""
        root = domish.Element((NS_STREAMS, "stream"), NS_CLIENT)
        root["to"] = to
        root["version"] = "1.0"
        if lang:
            root[(NS_XML, "lang")] = lang
        self.onDocumentStart(root)

    def elements_received(self, elements: list[domish.Element], size: int) -> None:
        """The children of one request body, in order (rate limits count the whole body)."""
        self._last_read = reactor.seconds()
        self.flow.received(size)
        for element in elements:
            if self.closed:
                return
            self.onElement(element)

    def sendHeader(self) -> None:
        # The session's attributes (sid, from, version) travel on the first <body/>.
        self._headerSent = True

    def sendFooter(self) -> None:
        """The terminate body is the footer (see L{BoshSession.loseConnection})."""

    def send(self, obj: domish.Element | str | bytes) -> None:
        if isinstance(obj, domish.Element) and obj.uri == NS_STREAMS and obj.name == "error":
            self.transport.stream_error = True  # the terminate body says remote-stream-error
        super().send(obj)


class _Address:
    """What getPeer() returns: the address of the HTTP client that opened the session."""

    def __init__(self, host: str) -> None:
        self.host = host


class BoshSession:
    """One BOSH session: the rid window, held requests, and the stream's transport."""

    def __init__(
        self, manager: BoshResource, sid: str, peer: str, wait: float, hold: int, to: str
    ) -> None:
        self.manager = manager
        self.sid = sid
        self.peer = _Address(peer)
        self.wait = wait
        self.hold = hold
        self.requests = hold + 1
        self.to = to
        self.inactivity = manager.settings.bosh_inactivity
        self.acks = False
        self.rid = 0
        #: Held requests, oldest first: (rid, request, wait timer).
        self.held: deque[tuple[int, server.Request, Any]] = deque()
        #: Requests ahead of a gap in the rids, by rid.
        self.early: dict[int, tuple[server.Request, domish.Element, list, int]] = {}
        #: Recent answers by rid, for a client that retries (bounded by the window).
        self.answers: dict[int, bytes] = {}
        #: Handled rids whose HTTP request went away before an answer (a retry may come).
        self.unanswered: set[int] = set()
        self.out: list[bytes] = []
        self.out_size = 0
        self.first_answer: bytes | None = None
        #: After terminating: the body the next request gets (None once delivered).
        self.final: bytes | None = None
        self.forgotten = False
        self.stream_error = False
        self.terminated = False
        self.producer = None
        self.output_paused = False
        self.input_paused = False
        self.input: deque[tuple[list, int]] = deque()
        self._flush_call = None
        self._inactivity_call = None
        self.stream: BoshStream | None = None

    # -- requests -------------------------------------------------------------

    def request(
        self, request: server.Request, rid: int, body: domish.Element, children: list, size: int
    ) -> None:
        """A request for this session, in whatever order it arrived."""
        self._cancel_inactivity()
        if rid in self.answers:
            _answer(request, self.answers[rid])
            self._idle_check()
            return
        if self.terminated:
            self._answer_final(request)
            self._idle_check()
            return
        if rid in self.unanswered or any(held[0] == rid for held in self.held):
            # A retry of a request handled but not answered (its connection broke):
            # it waits in the old one's place; its payload was already handled.
            self.unanswered.discard(rid)
            self._drop_held(rid)
            self._hold(rid, request)
            self._flush()
            return
        if rid <= self.rid or rid > self.rid + self.requests or rid in self.early:
            self.fail_session(request, "item-not-found")
            return
        if body.hasAttribute("ack"):
            self._acknowledged(body["ack"])
        self.early[rid] = (request, body, children, size)
        while self.rid + 1 in self.early and not self.terminated:
            self.rid += 1
            self._handle(self.rid, *self.early.pop(self.rid))

    def _handle(
        self, rid: int, request: server.Request, body: domish.Element, children: list, size: int
    ) -> None:
        stream = self.stream
        if body.getAttribute((NS_XBOSH, "restart")) == "true":
            if stream.closed or not stream.awaiting_restart:
                self.fail_session(request, "bad-request")
                return
            stream.start(self.to, body.getAttribute((NS_XML, "lang")))
        # Held first, so that what the input makes the server send can go with it.
        self._hold(rid, request)
        if children:
            self._input(children, size)
        if body.getAttribute("type") == "terminate" and not stream.closed:
            stream.onDocumentEnd()
        self._flush()

    def _input(self, children: list, size: int) -> None:
        if self.input_paused or self.input:
            self.input.append((children, size))
        else:
            self.stream.elements_received(children, size)

    def _hold(self, rid: int, request: server.Request) -> None:
        timer = reactor.callLater(self.wait, self._expired, rid)
        self.held.append((rid, request, timer))
        request.notifyFinish().addErrback(self._gone, rid)
        while len(self.held) > self.hold:
            self._respond_oldest()

    def _expired(self, rid: int) -> None:
        request = self._drop_held(rid)
        if request is not None:
            self._answer(rid, request, b"")
        self._idle_check()

    def _gone(self, _failure, rid: int) -> None:
        """The HTTP client gave up on a held request; what it would have carried waits."""
        if self._drop_held(rid) is not None:
            self.unanswered.add(rid)
        self._idle_check()

    def _drop_held(self, rid: int) -> server.Request | None:
        """Take the request held for C{rid} out of the queue (None when there is none)."""
        for index, (held_rid, request, timer) in enumerate(self.held):
            if held_rid == rid:
                del self.held[index]
                if timer.active():
                    timer.cancel()
                return request
        return None

    def _acknowledged(self, value: str) -> None:
        try:
            ack = int(value)
        except ValueError:
            return
        for rid in [r for r in self.answers if r <= ack]:
            del self.answers[rid]

    # -- answers --------------------------------------------------------------

    def _respond_oldest(self) -> None:
        rid, request, timer = self.held.popleft()
        if timer.active():
            timer.cancel()
        payload, self.out, self.out_size = b"".join(self.out), [], 0
        self._answer(rid, request, payload)
        self._output_taken()

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self.out and self.held:
            self._respond_oldest()
        self._idle_check()

    def _answer(self, rid: int, request: server.Request, payload: bytes) -> None:
        attributes = b""
        if self.first_answer is not None:
            attributes, self.first_answer = self.first_answer, None
        elif self.acks and rid < self.rid:
            attributes += b" ack='%d'" % self.rid
        data = _BODY_OPEN + attributes + (b">" + payload + b"</body>" if payload else b"/>")
        self.answers[rid] = data
        oldest = self.rid - self.requests
        for old in [r for r in self.answers if r <= oldest]:
            del self.answers[old]
        self.unanswered = {r for r in self.unanswered if r > oldest}
        _answer(request, data)

    def _idle_check(self) -> None:
        """Start the clock on a session nobody is talking to."""
        if self.forgotten or self._inactivity_call is not None:
            return
        if self.terminated:
            if self.final is None:
                self._forget()
            else:  # kept a while for the next request to collect the final body
                self._inactivity_call = reactor.callLater(self.wait + 5, self._forget)
        elif not self.held and not self.early:
            self._inactivity_call = reactor.callLater(self.inactivity, self._inactive)

    def _cancel_inactivity(self) -> None:
        if self._inactivity_call is not None:
            if self._inactivity_call.active():
                self._inactivity_call.cancel()
            self._inactivity_call = None

    def _inactive(self) -> None:
        self._inactivity_call = None
        log.info(
            "BOSH session {sid} from {peer} inactive; ending it", sid=self.sid, peer=self.peer.host
        )
        self.terminated = True
        self._stream_gone()
        self._forget()

    # -- ending ---------------------------------------------------------------

    def fail_session(self, request: server.Request, condition: str) -> None:
        """A BOSH-level error: this request gets the terminate body, and the stream ends."""
        self._terminate(f"type='terminate' condition='{condition}'".encode(), request)

    def _terminate(self, attributes: bytes, request: server.Request | None = None) -> None:
        """Answer every waiting request (the first with what was left to send); end the stream."""
        if self.terminated:
            if request is not None:
                _answer(request, _TERMINATE)
            return
        self.terminated = True
        payload, self.out, self.out_size = b"".join(self.out), [], 0
        self.final = (
            _BODY_OPEN + b" " + attributes + (b">" + payload + b"</body>" if payload else b"/>")
        )
        waiting = [] if request is None else [request]
        for _rid, held, timer in self.held:
            if timer.active():
                timer.cancel()
            waiting.append(held)
        waiting.extend(early for early, *_rest in self.early.values())
        self.held.clear()
        self.early.clear()
        for held in waiting:
            self._answer_final(held)
        self._stream_gone()
        self._idle_check()

    def _answer_final(self, request: server.Request) -> None:
        _answer(request, self.final or _TERMINATE)
        self.final = None

    def _stream_gone(self) -> None:
        """Tell the stream its 'connection' is gone: the resource unbinds."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connectionLost(Failure(ConnectionDone()))

    def _forget(self) -> None:
        self.forgotten = True
        self._cancel_inactivity()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self.manager.sessions.pop(self.sid, None)

    # -- the stream's transport --------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.terminated:
            return
        self.out.append(data)
        self.out_size += len(data)
        if self.out_size > OUTPUT_PAUSE and not self.output_paused and self.producer is not None:
            self.output_paused = True
            self.producer.pauseProducing()
        if self.held and self._flush_call is None:
            # Once per reactor turn: what a handler sends together leaves together.
            self._flush_call = reactor.callLater(0, self._flush)

    def _output_taken(self) -> None:
        if self.output_paused and self.producer is not None:
            self.output_paused = False
            self.producer.resumeProducing()

    def loseConnection(self) -> None:
        condition = b" condition='remote-stream-error'" if self.stream_error else b""
        self._terminate(b"type='terminate'" + condition)

    def abortConnection(self) -> None:
        self._terminate(b"type='terminate' condition='system-shutdown'")
        self._forget()

    def getPeer(self) -> _Address:
        return self.peer

    def getHost(self) -> _Address:
        return _Address("")

    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.input_paused = True

    def resumeProducing(self) -> None:
        self.input_paused = False
        while self.input and not self.input_paused and self.stream is not None:
            self.stream.elements_received(*self.input.popleft())


def _answer(request: server.Request, data: bytes) -> None:
    if request.finished or request.channel is None:  # answered, or the client left
        return
    request.setHeader(b"content-type", b"text/xml; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


class BoshResource(resource.Resource):
    """/http-bind: POSTed bodies to sessions; OPTIONS answers CORS preflights."""

    isLeaf = True

    def __init__(self, xmpp: Server) -> None:
        super().__init__()
        self.xmpp = xmpp
        self.settings = xmpp.settings.http
        self.sessions: dict[str, BoshSession] = {}
        limits = xmpp.limits
        self.parser_limits = ParserLimits(
            max_stanza_size=limits.max_stanza_size,
            max_depth=limits.max_depth,
            max_attributes=limits.max_attributes,
            max_namespaces=limits.max_namespaces,
            max_attribute_length=limits.max_attribute_length,
        )

    def render_OPTIONS(self, request: server.Request) -> bytes:
        allow_cross_origin(request, self.settings.cors_origins, b"POST, OPTIONS")
        return b""

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"XMPP over BOSH (XEP-0206): POST <body/> elements here.\n"

    def render_POST(self, request: server.Request) -> bytes | int:
        allow_cross_origin(request, self.settings.cors_origins, b"POST, OPTIONS")
        data = request.content.read()
        try:
            body, children = self._parse(data)
            rid = _rid(body)
            sid = body.getAttribute("sid")
            if sid is None:
                self._create(request, body, rid, children)
            else:
                session = self.sessions.get(sid)
                if session is None:
                    raise BoshError("item-not-found")
                session.request(request, rid, body, children, len(data))
        except BoshError as error:
            request.setHeader(b"content-type", b"text/xml; charset=utf-8")
            return _terminate_body(error.condition)
        return server.NOT_DONE_YET

    def _parse(self, data: bytes) -> tuple[domish.Element, list]:
        """One <body/>: its attributes and its children, parsed once with the c2s limits."""
        roots: list[domish.Element] = []
        children: list[domish.Element] = []
        ended: list[bool] = []
        parser = RestrictedElementStream(self.parser_limits)
        parser.DocumentStartEvent = roots.append
        parser.ElementEvent = children.append
        parser.DocumentEndEvent = lambda: ended.append(True)
        try:
            parser.parse(data)
        except StreamViolation as violation:
            log.info("bad BOSH body: {why}", why=violation)
            raise BoshError("bad-request") from None
        if not ended or roots[0].name != "body" or roots[0].uri != NS_HTTPBIND:
            raise BoshError("bad-request")
        return roots[0], children

    def _create(
        self, request: server.Request, body: domish.Element, rid: int, children: list
    ) -> None:
        """Session creation (XEP-0124 §7, XEP-0206 §4): the answer carries the stream features."""
        try:
            to = nameprep.prepare(body.getAttribute("to", ""))
        except UnicodeError:
            raise BoshError("host-unknown") from None
        if to not in self.xmpp.hosts:
            raise BoshError("host-unknown")
        peer = request.getClientAddress()
        host = getattr(peer, "host", "")
        if self.xmpp.connections.refusal(host, self.xmpp.limits):
            raise BoshError("policy-violation")
        settings = self.settings
        wait = min(_number(body, "wait", settings.bosh_max_wait), settings.bosh_max_wait)
        hold = min(int(_number(body, "hold", 1)), settings.bosh_max_hold)
        sid = secrets.token_urlsafe(18)
        session = BoshSession(self, sid, host, wait, hold, to)
        session.rid = rid - 1
        session.acks = body.hasAttribute("ack")
        self.sessions[sid] = session
        # No SCRAM-PLUS: a session's requests come over any number of TLS connections.
        secure = request.isSecure() or settings.behind_tls_proxy
        stream = session.stream = BoshStream(self.xmpp, secure)
        stream.makeConnection(session)
        stream.start(to, body.getAttribute((NS_XML, "lang")))
        attributes = (
            f" xmlns:xmpp='{NS_XBOSH}' sid='{sid}' wait='{wait:g}' requests='{hold + 1}'"
            f" hold='{hold}' inactivity='{session.inactivity:g}' polling='{POLLING}'"
            f" ver='{VERSION}' from='{to}' authid='{stream.sid}'"
            f" xmpp:version='1.0' xmpp:restartlogic='true'"
        )
        if session.acks:
            attributes += f" ack='{rid}'"
        session.first_answer = attributes.encode()
        session.early[rid] = (request, body, children, 0)
        session.rid = rid
        session._handle(rid, *session.early.pop(rid))


def _rid(body: domish.Element) -> int:
    try:
        rid = int(body.getAttribute("rid", ""))
    except ValueError:
        raise BoshError("bad-request") from None
    if not 0 < rid < 2**53:
        raise BoshError("bad-request")
    return rid


def _number(body: domish.Element, name: str, default: float) -> float:
    try:
        value = float(body.getAttribute(name, default))
    except ValueError:
        raise BoshError("bad-request") from None
    if not value >= 0:
        raise BoshError("bad-request")
    return value


def _terminate_body(condition: str) -> bytes:
    return _BODY_OPEN + f" type='terminate' condition='{condition}'/>".encode()
