"""Per-connection flow limits: input rate, output backlog, and caps at accept.

One client must not be able to grow server memory or starve the others:

* L{TokenBucket} and L{FlowControl} stop reading a socket while its client
  sends faster than C{input_rate} (after a C{input_burst}), so a flood waits in
  the client's own kernel buffers rather than in ours.
* L{FlowControl} is also the transport's push producer, which is how it learns
  that the client is not reading (see its docstring), and it cuts off a
  closing connection that will not drain (L{CLOSE_GRACE}).
* L{ConnectionTally} counts open connections per source address and the
  unauthenticated ones overall, so the factory can refuse a connection at
  accept, before it costs a parser or a TLS handshake.
* L{InOrder} keeps a peer's stanzas in order across asynchronous handlers,
  and stops reading while too many wait behind a slow one.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from imserver.config import Limits

log = Logger()

#: Seconds a closing connection gets to flush its last bytes before it is cut off.
CLOSE_GRACE = 5.0
#: At most one log line per this many seconds about refused connections.
REFUSAL_LOG_INTERVAL = 10.0


class TokenBucket:
    """Bytes a client may send: C{burst} at once, C{rate} per second sustained.

    Taking more than is left puts the bucket in debt instead of refusing: the
    bytes have already been read, and the debt is how long reading must pause.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self, amount: int) -> float:
        """Spend C{amount} bytes; return the seconds until the bucket is out of debt."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        return max(0.0, -self._tokens / self.rate)


@implementer(IPushProducer)
class FlowControl:
    """Reading and writing limits of one client connection.

    Reading stops while any reason to pause holds ("rate": the token bucket is
    in debt; "output": the client is not reading what we send; "queue": the
    stream's own backlog of stanzas waiting for a slow handler).

    Writing: the bytes waiting for a client live in the transport, and for TLS
    partly inside the TLS layer, so there is no one buffer to measure. Instead
    this object is registered as the transport's streaming producer. The TCP
    transport calls C{pauseProducing} once its buffer holds more than its
    C{bufferSize} (64 KiB), i.e. the kernel would not take more, and
    C{resumeProducing} once it has written everything; TLS passes both on
    from the TCP transport underneath. So every byte written between the two
    is a byte the server holds for a client that is not keeping up: L{wrote}
    counts them and reports when they pass C{max_output_buffer}.

    A transport with a producer registered does not close until the producer
    is unregistered: L{closing} does that, and aborts the connection if it
    still has not closed after L{CLOSE_GRACE} seconds.
    """

    def __init__(self, transport: Any, limits: Limits, clock: Any = reactor) -> None:
        self.transport = transport
        self.max_output = limits.max_output_buffer
        self.bucket = TokenBucket(limits.input_rate, limits.input_burst)
        self.output_blocked = False
        self._clock = clock
        self._pauses: set[str] = set()
        self._backlog = 0
        self._refill = None
        self._abort = None
        self._registered = False
        self._drain_waiters: list[Deferred] = []

    def start(self) -> None:
        """Become the transport's producer (call once the connection is made)."""
        self.transport.registerProducer(self, True)
        self._registered = True

    # -- reading --------------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        if not self._pauses:
            self.transport.pauseProducing()
        self._pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._pauses:
            self._pauses.discard(reason)
            if not self._pauses:
                self.transport.resumeProducing()

    def received(self, size: int) -> None:
        """Charge C{size} bytes just read; pause reading while the bucket is in debt."""
        wait = self.bucket.take(size)
        if wait > 0 and self._refill is None:
            self.pause_reading("rate")
            self._refill = self._clock.callLater(wait, self._refilled)

    def _refilled(self) -> None:
        wait = self.bucket.take(0)
        if wait > 0:
            self._refill = self._clock.callLater(wait, self._refilled)
            return
        self._refill = None
        self.resume_reading("rate")

    # -- writing --------------------------------------------------------------

    def wrote(self, size: int) -> bool:
        """Count C{size} bytes just written; True once the client's backlog is over the limit."""
        if not self.output_blocked:
            return False
        self._backlog += size
        return self._backlog > self.max_output

    def pauseProducing(self) -> None:
        # Called by the transport on every write while its buffer is full.
        if not self.output_blocked:
            self.output_blocked = True
            self._backlog = 0
            self.pause_reading("output")

    def resumeProducing(self) -> None:
        self.output_blocked = False
        self._backlog = 0
        self.resume_reading("output")
        self._wake_drain_waiters()

    def drained(self) -> Deferred:
        """Fire once the client has taken what we wrote (at once when it has).

        Bulk senders (the offline flush) wait on it between stanzas, so a
        large backlog never builds up for a client that reads normally.
        """
        if not self.output_blocked:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def stopProducing(self) -> None:
        self.output_blocked = False

    # -- closing --------------------------------------------------------------

    def closing(self) -> None:
        """The stream is closing: let the transport close, but not take forever."""
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        if self._abort is None:
            self._abort = self._clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def stop(self) -> None:
        """The connection is gone: cancel every timer."""
        for call in (self._refill, self._abort):
            if call is not None and call.active():
                call.cancel()
        self._refill = self._abort = None
        self._wake_drain_waiters()


class ConnectionTally:
    """Open client connections per source address, and unauthenticated ones overall.

    Kept in step with C{server.streams} by the streams themselves (opened and
    closed where they join and leave that set), so admitting a connection
    costs a dictionary lookup rather than a walk over every stream.
    """

    def __init__(self) -> None:
        self.per_address: Counter[str] = Counter()
        self.unauthenticated = 0
        self._refused = 0
        self._logged = float("-inf")

    def refusal(self, address: str, limits: Limits) -> str | None:
        """Why a new connection from C{address} must be refused, or None to accept it."""
        if self.unauthenticated >= limits.max_unauthenticated:
            reason = "too many unauthenticated connections"
        elif self.per_address[address] >= limits.max_connections_per_address and not (
            limits.exempt_loopback and is_loopback(address)
        ):
            reason = "too many connections from one address"
        else:
            return None
        self._log_refusal(address, reason)
        return reason

    def opened(self, address: str) -> None:
        self.per_address[address] += 1
        self.unauthenticated += 1

    def authenticated(self) -> None:
        self.unauthenticated -= 1

    def closed(self, address: str, authenticated: bool) -> None:
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]
        if not authenticated:
            self.unauthenticated -= 1

    def _log_refusal(self, address: str, reason: str) -> None:
        # A connection flood must not become a log flood.
        self._refused += 1
        now = time.monotonic()
        if now - self._logged >= REFUSAL_LOG_INTERVAL:
            log.warn(
                "refused a connection from {peer}: {reason} ({count} refused since last said)",
                peer=address,
                reason=reason,
                count=self._refused,
            )
            self._logged = now
            self._refused = 0


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


#: Elements waiting behind an asynchronous handler before the stream stops reading.
MAX_QUEUED = 64


class InOrder:
    """Hands a stream's elements to C{handle} one at a time, in the order they came.

    While a handler's Deferred is pending, later elements wait; past
    L{MAX_QUEUED} of them the socket stops being read until half are handled.
    C{ready()} says whether waiting elements may still be handled (the
    stream's session or link is still there); C{idle()}, when given, runs
    each time the queue stops waiting on a handler.
    """

    def __init__(
        self,
        flow: FlowControl,
        handle: Callable[..., Deferred | None],
        ready: Callable[[], bool],
        idle: Callable[[], None] | None = None,
    ) -> None:
        self.flow = flow
        self.handle = handle
        self.ready = ready
        self.idle = idle
        #: The pending handler's Deferred, or None.
        self.busy: Deferred | None = None
        self._waiting: deque[tuple] = deque()

    def push(self, *item: Any) -> None:
        if self.busy is not None:
            self._waiting.append(item)
            if len(self._waiting) >= MAX_QUEUED:
                self.flow.pause_reading("queue")
            return
        self._run(item)

    def _run(self, item: tuple) -> None:
        pending = self.handle(*item)
        if pending is not None:
            self.busy = pending
            pending.addBoth(self._next)

    def _next(self, _) -> None:
        self.busy = None
        while self._waiting and self.busy is None and self.ready():
            self._run(self._waiting.popleft())
        if self.busy is None and self.idle is not None:
            self.idle()
        if len(self._waiting) < MAX_QUEUED // 2:
            self.flow.resume_reading("queue")
