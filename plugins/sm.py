"""XEP-0198 stream management (urn:xmpp:sm:3): acks both ways, and stream resumption.

After <enable/>, an L{AckedStream} goes directly above the session's
transport, under any other wrapper (client state holds stanzas back above
it), so it sees exactly what reaches the wire: each stanza for the client is
counted and kept, serialised once, until the client acknowledges it; the
server asks with one <r/> at a time, once C{request_after} stanzas wait (at
the end of the burst) or C{ack_delay} seconds after the first.
The client's count is the session's C{stanzas_in}.

When the connection drops or goes silent (not when the client closes its
stream), a resumable session stays bound, and available to its contacts, for
up to C{resume_timeout} seconds while stanzas for it are queued. <resume/>
(after SASL, before bind: a C{("negotiate", ...)} event) moves it onto the new
stream and re-sends what the client did not acknowledge, then fires the
C{session-resumed} hook; a second resume takes it from the first new stream,
which gets a conflict stream error.

When a managed session ends for good, the unacknowledged stanzas are treated
as stanzas for an unavailable resource (XEP-0198 §4): see
L{StreamManagement.redeliver}. Nothing is silently lost, and nothing reaches
a resource twice.

Stanzas sent again, on resumption or to another resource or offline storage
after the session ended, carry a XEP-0203 <delay/> stamped with the time the
server first queued them (XEP-0198 §4: "servers SHOULD add a delay element
with the original (failed) delivery timestamp"); iq stanzas are re-sent as
they were. The queue keeps that time with each stanza.

The client state (XEP-0352) is not carried over a resumption: a resumed
stream starts active (XEP-0352 §5.2, "the CSI state is not restored"); the
client state plugin, on C{session-resumed}, sends what it held on the new
stream at once.
"""

from __future__ import annotations

import secrets
import time
from collections import deque

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.carbons import ENABLED as CARBONS_ENABLED
from imserver.carbons import eligible as carbon_copied
from imserver.interfaces import IFeature, ISessionStream
from imserver.jid import InvalidFormat, parse_jid
from imserver.serialize import stanza_bytes
from imserver.stanzas import add_delay
from imserver.stream.parser import parse_stanza

log = Logger()

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
#: Counters wrap at 2^32 (XEP-0198 §4).
MOD = 2**32
#: Why a stream ended when its session waits for resumption: the connection
#: dropped, or the client stopped answering. A closed stream, a conflict, a
#: shutdown or a policy violation end the session at once.
KEEP_REASONS = frozenset(("lost", "connection-timeout"))
#: Key in Session.extra: when the resource last became reachable (got bare-JID messages).
REACHABLE_SINCE = "sm-reachable-since"
#: Key in Session.extra: when the resource was bound (carbon copies may reach it from then).
BOUND_SINCE = "sm-bound-since"

_R = f"<r xmlns='{NS_SM}'/>".encode()
_A = f"<a xmlns='{NS_SM}' h='".encode()  # + h + "'/>": answered for every <r/>, built cheaply


def _element(name: str, **attributes: str) -> domish.Element:
    element = domish.Element((NS_SM, name))
    for key, value in attributes.items():
        element[key] = value
    return element


def _failed(condition: str, h: int | None = None) -> domish.Element:
    failed = _element("failed")
    if h is not None:
        failed["h"] = str(h)
    failed.addElement((NS_STANZAS, condition))
    return failed


def _inline_feature(namespace: str) -> domish.Element:
    """A Bind2 inline feature (XEP-0386): the client may put this request in its <bind/>."""
    feature = domish.Element(("urn:xmpp:bind:0", "feature"))
    feature["var"] = namespace
    return feature


def _send(stream, element: domish.Element) -> None:
    """Send a stream management element on a transport, outside the stanza count."""
    stream.send_bytes(element.toXml().encode("utf-8"))


def _counter(element: domish.Element) -> int | None:
    """The 'h' attribute as an unsigned 32-bit number, or None when absent or malformed."""
    try:
        value = int(element.getAttribute("h", ""))
    except ValueError:
        return None
    return value if 0 <= value < MOD else None


def resent(data: bytes, queued: float, host: str) -> bytes:
    """A queued stanza as it is sent again: messages and presence stamped, iq unchanged."""
    if data.startswith(b"<iq"):
        return data
    stanza = parse_stanza(data.decode("utf-8"))
    add_delay(stanza, queued, host)
    return stanza_bytes(stanza)


@implementer(ISessionStream)
class AckedStream:
    """A session's stream under stream management: counts and keeps what it sends.

    C{inner} is the transport (or a wrapper of it) while connected, None while
    the session waits for resumption; stanzas are queued either way. C{closed}
    is only true once the session has ended, so routing keeps delivering to a
    waiting session.
    """

    def __init__(self, manager: StreamManagement, session, inner) -> None:
        self.manager = manager
        self.session = session
        self.inner = inner
        #: Serialised stanzas sent and not yet acknowledged, oldest first, each
        #: with the time it was first queued.
        self.queue: deque[tuple[bytes, float]] = deque()
        #: The client's last 'h': how many stanzas it has handled (mod 2^32).
        self.acked = 0
        self.base_in = session.stanzas_in
        self.token: str | None = None
        self.max = 0
        self.ended = False
        self.awaiting_ack = False
        self.overflowing = False
        self._ask = None
        self._ask_soon = False
        self.timer = None
        self.secure = inner.secure
        self.peer_address = inner.peer_address

    # -- ISessionStream ------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.ended

    def send_stanza(self, stanza: domish.Element) -> None:
        self.send_bytes(stanza_bytes(stanza))

    def send_bytes(self, data: bytes) -> None:
        if self.ended:
            return
        self.queue.append((data, time.time()))
        if self.inner is not None:
            self.inner.send_bytes(data)
            if not self.awaiting_ack:
                self._plan_request()
        if len(self.queue) > self.manager.max_unacked and not self.overflowing:
            self.overflowing = True
            reactor.callLater(0, self.manager.overflowed, self)

    def drained(self) -> defer.Deferred:
        if self.inner is None:
            return defer.succeed(None)
        return self.inner.drained()

    def fail(self, condition: str, text: str | None = None, app_condition=None) -> None:
        if self.inner is not None:
            self.inner.fail(condition, text, app_condition=app_condition)
        else:
            self.manager.end(self)  # waiting: no stream to close, the session just ends

    # -- counting ------------------------------------------------------------

    @property
    def handled(self) -> int:
        """How many stanzas of the client's we handled (the 'h' we report)."""
        return (self.session.stanzas_in - self.base_in) % MOD

    @property
    def sent(self) -> int:
        return (self.acked + len(self.queue)) % MOD

    def ack(self, h: int) -> bool:
        """Forget the stanzas up to the client's C{h}; False when it claims more than we sent."""
        count = (h - self.acked) % MOD
        if count > len(self.queue):
            return False
        for _ in range(count):
            self.queue.popleft()
        self.acked = h
        return True

    def _plan_request(self) -> None:
        """Ask for an ack once C{request_after} stanzas are unacknowledged (at the end
        of this turn, so a burst costs one <r/>), or else after C{ack_delay} seconds."""
        if len(self.queue) >= self.manager.request_after:
            if not self._ask_soon:
                if self._ask is not None:
                    self._ask.cancel()
                self._ask = reactor.callLater(0, self.request_ack)
                self._ask_soon = True
        elif self._ask is None:
            self._ask = reactor.callLater(self.manager.ack_delay, self.request_ack)

    def request_ack(self) -> None:
        """Ask for an ack of everything sent so far; one <r/> in flight at a time."""
        self._cancel_ask()
        if self.inner is not None and self.queue and not self.awaiting_ack:
            self.awaiting_ack = True
            self.inner.send_bytes(_R)

    def acknowledged(self) -> None:
        self.awaiting_ack = False
        if self.queue and self.inner is not None:
            self._plan_request()

    # -- the transport -------------------------------------------------------

    def detach(self) -> None:
        """The connection is gone: queue from now on, until resumed or timed out."""
        self.inner = None
        self.awaiting_ack = False
        self._cancel_ask()

    def attach(self, transport) -> None:
        """Carry on over C{transport}: re-send what the client has not acknowledged.

        Each is re-sent with a <delay/> from when it was first queued. Asking
        for an ack is left to the caller (after what others send on resumption).
        """
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.inner = transport
        self.secure = transport.secure
        self.peer_address = transport.peer_address
        self.awaiting_ack = False
        host = self.session.host
        for data, queued in self.queue:
            transport.send_bytes(resent(data, queued, host))

    def close(self) -> list[tuple[bytes, float]]:
        """Stop for good; return what was never acknowledged, with when it was queued."""
        self.ended = True
        self.inner = None
        self._cancel_ask()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        unacked, self.queue = list(self.queue), deque()
        return unacked

    def _cancel_ask(self) -> None:
        if self._ask is not None and self._ask.active():
            self._ask.cancel()
        self._ask, self._ask_soon = None, False


@implementer(IPlugin, IFeature)
class StreamManagement:
    name = "sm"
    disco_features = ()

    def attach(self, server) -> None:
        self.server = server
        options = server.options(self.name)
        #: Seconds a dropped session waits for <resume/> (the 'max' we advertise).
        self.resume_timeout = options.positive_int("resume_timeout", 300)
        #: Unacknowledged stanzas kept per session before it is closed (and they re-routed).
        self.max_unacked = options.positive_int("max_unacked", 500)
        #: The server asks for an ack (<r/>) once this many stanzas are unacknowledged...
        #: Each request costs the client a write and us a read and a parse: 100
        #: rather than 20 made routing to SM clients 4% faster in bench/compare.
        self.request_after = min(
            options.positive_int("request_after", 100), max(1, self.max_unacked // 2)
        )
        #: ...or when fewer have waited this many seconds.
        self.ack_delay = options.number("ack_delay", 1.0)
        self.resumable: dict[str, AckedStream] = {}
        #: Re-deliveries still being stored (shutdown waits for them).
        self.pending: set[defer.Deferred] = set()
        server.add_stream_feature("bound", lambda stream: _element("sm"))
        server.add_stream_feature("sasl2", lambda stream: _element("sm"))  # <resume/> inline
        server.add_stream_feature("bind2", lambda stream: _inline_feature(NS_SM))
        dispatcher = server.dispatcher
        dispatcher.on(("stream", NS_SM, "enable"), self.enable)
        dispatcher.on(("stream", NS_SM, "r"), self.answer_request)
        dispatcher.on(("stream", NS_SM, "a"), self.take_ack)
        dispatcher.on(("stream", NS_SM, "resume"), self.resume_too_late)
        dispatcher.on(("negotiate", NS_SM, "resume"), self.resume)
        dispatcher.on(("negotiate", NS_SM, "enable"), self.enable_too_early)
        dispatcher.on(("inline", NS_SM, "enable"), self.enable_inline)
        dispatcher.on(("inline", NS_SM, "resume"), self.resume_inline)
        dispatcher.hook("session-bound", self.bound)
        dispatcher.hook("reachable", self.reachable)
        dispatcher.hook("pre-session-ended", self.stream_gone)
        dispatcher.hook("session-ended", self.session_ended)
        dispatcher.hook("server-stopping", self.stopping)

    def bound(self, session) -> None:
        session.extra[BOUND_SINCE] = time.time()

    def reachable(self, session) -> None:
        session.extra[REACHABLE_SINCE] = time.time()

    # -- enabling and acks ---------------------------------------------------

    def enable(self, event) -> bool:
        session = event.origin
        answer = self._enable(session, event.stanza)
        _send(session.transport, answer)
        return True

    def enable_inline(self, event) -> bool:
        """<enable/> inside a Bind2 request (XEP-0386): the answer goes in <bound/>."""
        event.result = self._enable(event.origin, event.stanza)
        return True

    def _enable(self, session, enable: domish.Element) -> domish.Element:
        """Start managing C{session}'s stream; the <enabled/> (or <failed/>) to answer with."""
        if "sm" in session.extra:
            return _failed("unexpected-request")
        acked = AckedStream(self, session, session.transport)
        session.extra["sm"] = acked
        session.wrap_transport(acked)
        enabled = _element("enabled")
        if enable.getAttribute("resume") in ("true", "1"):
            acked.token = secrets.token_urlsafe(18)
            acked.max = self._max(enable)
            self.resumable[acked.token] = acked
            enabled["id"] = acked.token
            enabled["resume"] = "true"
            enabled["max"] = str(acked.max)
        return enabled

    def _max(self, enable: domish.Element) -> int:
        """The client's preferred resumption time, within ours."""
        try:
            wanted = int(enable.getAttribute("max", ""))
        except ValueError:
            return self.resume_timeout
        return min(wanted, self.resume_timeout) if wanted > 0 else self.resume_timeout

    def enable_too_early(self, event) -> bool:
        _send(event.stream, _failed("unexpected-request"))  # XEP-0198 §3: only after bind
        return True

    def resume_too_late(self, event) -> bool:
        _send(event.origin.transport, _failed("unexpected-request"))  # this stream has a session
        return True

    def answer_request(self, event) -> bool:
        acked = event.origin.extra.get("sm")
        if acked is None:
            event.origin.stream.fail("unsupported-stanza-type", "stream management is not enabled")
        else:
            acked.inner.send_bytes(b"%s%d'/>" % (_A, acked.handled))
        return True

    def take_ack(self, event) -> bool:
        acked = event.origin.extra.get("sm")
        if acked is None:
            event.origin.stream.fail("unsupported-stanza-type", "stream management is not enabled")
            return True
        h = _counter(event.stanza)
        if h is None:
            acked.fail("bad-format", "'h' must be a number from 0 to 2^32-1")
        elif not acked.ack(h):
            self._too_high(acked, h)
        else:
            acked.acknowledged()
        return True

    @staticmethod
    def _too_high(acked: AckedStream, h: int) -> None:
        """XEP-0198 §4: an ack for more than was sent closes the stream."""
        condition = _element("handled-count-too-high", h=str(h), **{"send-count": str(acked.sent)})
        text = f"you acknowledged {h} stanzas but were sent {acked.sent}"
        acked.fail("undefined-condition", text, app_condition=condition)

    # -- resumption ----------------------------------------------------------

    def resume(self, event) -> bool:
        stream = event.stream
        if stream.authenticator.username is None:
            stream.fail("not-authorized", "authenticate first")
            return True
        answer, acked = self._resume(stream, event.stanza, event.sender.userhost())
        _send(stream, answer)
        if acked is not None:
            self._attach(acked, stream)
        return True

    def resume_inline(self, event) -> bool:
        """<resume/> inside a SASL2 <authenticate/> (XEP-0388): the answer goes in <success/>.

        The unacknowledged stanzas are re-sent on the next turn, after the
        <success/> that carries the <resumed/>.
        """
        answer, acked = self._resume(event.stream, event.stanza, event.sender.userhost())
        event.result = answer
        if acked is not None:
            reactor.callLater(0, self._attach_later, acked, event.stream)
        return True

    def _attach_later(self, acked: AckedStream, stream) -> None:
        if not acked.ended and stream.session is acked.session:
            self._attach(acked, stream)

    def _attach(self, acked: AckedStream, stream) -> None:
        """Carry the session on over C{stream}; then what the session-resumed
        hook sends (what the client state held), then an <r/> for all of it."""
        acked.attach(stream)
        self.server.dispatcher.fire("session-resumed", acked.session)
        acked.request_ack()

    def _resume(self, stream, element: domish.Element, bare: str):
        """Take a waiting (or still connected) session onto C{stream}.

        Returns the answer, <resumed/> or <failed/>, and the session's
        L{AckedStream} when it is to be attached to C{stream}. The session is
        the stream's from now on; it queues until attached.
        """
        acked = self.resumable.get(element.getAttribute("previd", ""))
        if acked is None or acked.session.bare != bare:
            return _failed("item-not-found"), None
        h = _counter(element)
        if h is None:
            return _failed("bad-request", acked.handled), None
        old = acked.inner
        if old is not None:
            old.session = None  # the old stream closes without ending the session
            old.fail("conflict", "the session was resumed on another stream")
        if not acked.ack(h):
            failed = _failed("undefined-condition", acked.handled)
            too_high = failed.addElement((NS_SM, "handled-count-too-high"))
            too_high["h"] = str(h)
            too_high["send-count"] = str(acked.sent)
            self.end(acked)  # the client's state cannot be trusted: re-route what it lacks
            return failed, None
        acked.detach()
        if acked.timer is not None and acked.timer.active():
            acked.timer.cancel()
        session = acked.session
        stream.session = session
        log.info("{jid} resumed from {peer}", jid=session.full, peer=stream.peer_address)
        return _element("resumed", h=str(acked.handled), previd=acked.token), acked

    def stream_gone(self, session, reason: str) -> bool:
        """pre-session-ended: wait for a resumption, or end now and re-route what is unacked."""
        acked = session.extra.get("sm")
        if acked is None or acked.ended:
            return False
        if acked.token is not None and reason in KEEP_REASONS:
            acked.detach()
            acked.timer = reactor.callLater(acked.max, self.expire, acked)
            log.info(
                "{jid} lost its stream ({reason}); kept {max} s for resumption",
                jid=session.full,
                reason=reason,
                max=acked.max,
            )
            return True
        self.end(acked)
        return True

    def expire(self, acked: AckedStream) -> None:
        log.info("{jid} was not resumed in time", jid=acked.session.full)
        self.end(acked)

    def overflowed(self, acked: AckedStream) -> None:
        if not acked.ended:
            acked.fail("policy-violation", "too many unacknowledged stanzas")

    # -- the end -------------------------------------------------------------

    def end(self, acked: AckedStream) -> None:
        """End a managed session for good: unbind, then re-route what the client lacks."""
        if acked.ended:
            return
        unacked = acked.close()
        self.resumable.pop(acked.token, None)
        self.server.unbind(acked.session)
        self.redeliver(acked.session, unacked)

    def session_ended(self, session) -> None:
        """Someone else unbound a managed session: re-route its queue once it is gone."""
        acked = session.extra.get("sm")
        if acked is not None and not acked.ended:
            self.resumable.pop(acked.token, None)
            reactor.callLater(0, self.redeliver, session, acked.close())

    def redeliver(self, session, unacked: list[tuple[bytes, float]]) -> None:
        """Treat what an ended session never acknowledged as stanzas for an unavailable
        resource (XEP-0198 §4: an error, an alternate resource or offline storage).

        The session is unbound by now. An iq request bounces; presence is
        dropped (the session it described is gone), as are errors and
        headlines (RFC 6121 §8.5.3.2.1: ignored for a resource that is gone;
        a headline to the bare JID reached every resource anyway), and what
        the server made for this session from the account's own bare JID
        (carbon copies, archive results: the originals are elsewhere).

        A chat or normal message that another resource of the account already
        has is not delivered again (XEP-0198 §4 warns that re-sending makes
        duplicates; L{_held_elsewhere} says who has it). Any other message is
        routed again, stamped with when it was first queued, by RFC 6121 §8.5.3.2.1:
        chat and normal as if sent to the bare JID (§8.5.2.1.1: the
        highest-priority available resources, else offline storage, else an
        error), groupchat bounces. All are routed at once, in the order they
        were sent, so a client logging in again meanwhile cannot get them out
        of order. Prosody 0.12's mod_smacks chooses more bluntly: offline
        storage when the session was the account's last, else an error.
        """
        router, dispatcher = self.server.router, self.server.dispatcher
        for data, queued in unacked:
            stanza = parse_stanza(data.decode("utf-8"))
            type_ = stanza.getAttribute("type") or "normal"
            if stanza.name == "iq" and type_ in ("get", "set"):
                router.bounce(stanza, StanzaError("service-unavailable"))
                continue
            if stanza.name != "message" or type_ in ("error", "headline"):
                continue
            origin = stanza.getAttribute("from")
            if origin in (None, session.bare):
                continue
            if type_ in ("chat", "normal") and self._held_elsewhere(session, stanza, queued):
                continue
            try:
                sender, to = parse_jid(origin), parse_jid(stanza.getAttribute("to", ""))
            except InvalidFormat:
                log.error("cannot re-deliver {xml!r}: bad address", xml=data[:200])
                continue
            add_delay(stanza, queued, session.host)
            pending = router.deliver(dispatcher.event_for(stanza, sender, to))
            if isinstance(pending, defer.Deferred):
                self.pending.add(pending)
                pending.addErrback(lambda f: log.failure("re-delivering a message failed", f))
                pending.addBoth(lambda _, d=pending: self.pending.discard(d))

    def _held_elsewhere(self, session, message: domish.Element, queued: float) -> bool:
        """Whether another resource of the account got C{message} when C{session} did.

        Sent to the bare JID, it went to every available resource of the top
        priority, C{session}'s (RFC 6121 §8.5.2.1.1): those with a priority as
        high that were reachable before it was queued have it (offline
        messages, flushed to the first resource to come online, are not held
        by those that came later). With carbons, every enabled resource bound
        before it was queued has a <received/> copy (XEP-0280 §7), whatever
        the address. Priorities are taken as they are now.
        """
        to_bare = "/" not in message.getAttribute("to", "")
        copied: bool | None = None
        for other in self.server.sessions.of(session.bare):
            if other is session:
                continue
            since = other.extra.get(REACHABLE_SINCE)
            if (
                to_bare
                and other.available
                and other.priority >= max(0, session.priority)
                and since is not None
                and since <= queued
            ):
                return True
            if other.extra.get(CARBONS_ENABLED) and other.extra.get(BOUND_SINCE, queued) <= queued:
                if copied is None:
                    copied = carbon_copied(message, inbound=True)
                if copied:
                    return True
        return False

    def stopping(self):
        """server-stopping: end the sessions waiting for resumption; wait for the writes."""
        for acked in list(self.resumable.values()):
            if acked.inner is None:
                self.end(acked)
        if not self.pending:
            return None
        return defer.DeferredList(list(self.pending), consumeErrors=True)


feature = StreamManagement()
