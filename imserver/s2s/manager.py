"""The route to every remote domain: s2s connections made on demand and reused.

A stanza for a remote domain goes out on the authenticated stream of its
(local domain, remote domain) pair. Without one, it waits in that pair's
bounded queue while a connection is found (L{imserver.s2s.resolver}), opened
and authenticated (L{imserver.s2s.stream}). When every target failed, or
C{connect_timeout} passed, every queued stanza bounces with
remote-server-not-found or remote-server-timeout (RFC 6120 §8.3.3.15-16), so
nothing waits for ever; a full queue bounces new stanzas with
resource-constraint. Connections per remote domain and in total are capped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from twisted.application import service
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.config import S2SSettings
from imserver.interfaces import IRoute
from imserver.s2s.dialback import DialbackKeys
from imserver.s2s.resolver import DomainResolver, Target
from imserver.s2s.stream import NegotiationFailed, S2SStream
from imserver.s2s.tls import S2SClientTLS, S2SServerTLS

if TYPE_CHECKING:
    from imserver.server import Server

log = Logger()

#: How long shutdown waits for peers to close their side.
SHUTDOWN_GRACE = 2.0


@dataclass
class _Pending:
    """A pair being connected: its queue, dialback checks waiting for it, the deadline."""

    local: str
    remote: str
    queue: list[domish.Element] = field(default_factory=list)
    verifies: list[tuple[str, str, defer.Deferred]] = field(default_factory=list)
    stream: S2SStream | None = None
    timer: object = None
    #: No longer waiting (connected, or a bidi stream from the peer took over).
    done: bool = False
    #: Given up: the queue bounced.
    failed: bool = False


@implementer(IRoute)
class S2SManager:
    """The default route for remote domains (see L{route}) and the owner of s2s streams."""

    def __init__(self, server: Server, settings: S2SSettings, certificate, key) -> None:
        self.server = server
        self.settings = settings
        #: What s2s streams run under: the [limits] of client streams, except the
        #: input rate, which is [s2s]'s (a peer carries many users' traffic).
        self.limits = replace(
            server.limits, input_rate=settings.input_rate, input_burst=settings.input_burst
        )
        self.keys = DialbackKeys(settings.dialback_secret)
        self.resolver = DomainResolver(settings.resolvers, settings.hosts)
        self.server_tls = S2SServerTLS(certificate, key, settings.ca_file)
        self.client_tls = S2SClientTLS(certificate, key, settings.ca_file)
        self.streams: set[S2SStream] = set()
        #: (local, remote) -> the authenticated stream stanzas for that pair go out on.
        self.routes: dict[tuple[str, str], S2SStream] = {}
        self.connecting: dict[tuple[str, str], _Pending] = {}

    # -- the route ----------------------------------------------------------

    def route(self, event) -> None:
        """IRoute: send an event's stanza to its remote domain."""
        self.send(event.stanza, event.sender.host, event.to.host)

    def send(self, stanza: domish.Element, local: str, remote: str) -> None:
        stream = self.routes.get((local, remote))
        if stream is not None and not stream.closed:
            stream.send_stanza(stanza)
            return
        if local not in self.server.hosts:
            log.warn(
                "s2s: refused to relay a stanza from {local} to {remote}",
                local=local,
                remote=remote,
            )
            self._bounce(stanza, "not-allowed", f"{local} is not served here")
            return
        pending = self.connecting.get((local, remote)) or self._connect(local, remote)
        if pending is None:
            self._bounce(stanza, "resource-constraint", "too many server-to-server connections")
        elif len(pending.queue) >= self.settings.max_queue:
            self._bounce(stanza, "resource-constraint", f"too many stanzas waiting for {remote}")
        else:
            pending.queue.append(stanza)

    def _bounce(self, stanza: domish.Element, condition: str, text: str) -> None:
        self.server.dispatcher.bounce(stanza, StanzaError(condition, text=text))

    # -- connecting -----------------------------------------------------------

    def _connect(self, local: str, remote: str) -> _Pending | None:
        if not self._room_for(remote):
            return None
        pending = _Pending(local, remote)
        self.connecting[(local, remote)] = pending
        pending.timer = reactor.callLater(
            self.settings.connect_timeout,
            self._give_up,
            pending,
            "remote-server-timeout",
            f"no connection to {remote} within {self.settings.connect_timeout:g} s",
        )
        self._attempt(pending)
        return pending

    def _room_for(self, remote: str) -> bool:
        if len(self.streams) >= self.settings.max_connections:
            log.warn("s2s: refused a connection to {remote}: connection cap", remote=remote)
            return False
        if self.count(remote) >= self.settings.max_connections_per_domain:
            log.warn("s2s: refused a connection to {remote}: per-domain cap", remote=remote)
            return False
        return True

    def count(self, remote: str) -> int:
        """Open streams (both directions) with C{remote}."""
        return sum(1 for s in self.streams if s.remote == remote)

    @defer.inlineCallbacks
    def _attempt(self, pending: _Pending):
        why = "no address found"
        targets = yield self.resolver.targets(pending.remote)
        for target in targets:
            addresses = yield self.resolver.addresses(target.host)
            for address in addresses:
                if pending.failed:
                    return
                try:
                    stream = yield self._open(pending, target, address)
                except (NegotiationFailed, OSError, defer.CancelledError) as e:
                    why = f"{address}:{target.port}: {e}"
                    log.info(
                        "s2s: connecting to {remote} at {address}:{port} failed: {why}",
                        remote=pending.remote,
                        address=address,
                        port=target.port,
                        why=str(e) or e.__class__.__name__,
                    )
                    continue
                except Exception as e:  # a refused TCP connection and the like
                    why = f"{address}:{target.port}: {e.__class__.__name__}: {e}"
                    log.info(
                        "s2s: connecting to {remote} failed: {why}", remote=pending.remote, why=why
                    )
                    continue
                if pending.failed:
                    stream.close()
                    return
                self._connected(pending, stream)
                return
        if pending.done and not pending.failed:
            return  # a bidi stream from the peer serves this pair already
        self._give_up(pending, "remote-server-not-found", f"cannot reach {pending.remote}: {why}")

    @defer.inlineCallbacks
    def _open(self, pending: _Pending, target: Target, address: str):
        endpoint_class = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint = endpoint_class(
            reactor, address, target.port, timeout=max(1, int(self.settings.connect_timeout))
        )
        if target.direct_tls:
            endpoint = wrapClientTLS(self.client_tls.creator(pending.remote, alpn=True), endpoint)
        factory = _Factory(
            lambda: S2SStream(self, True, pending.local, pending.remote, target.direct_tls)
        )
        stream = yield endpoint.connect(factory)
        pending.stream = stream
        for stream_id, key, waiter in pending.verifies:
            stream.request_verify(pending.local, pending.remote, stream_id, key).chainDeferred(
                waiter
            )
        pending.verifies.clear()
        yield stream.ready
        return stream

    def _connected(self, pending: _Pending, stream: S2SStream) -> None:
        log.info("s2s: {local} -> {remote} ready", local=pending.local, remote=pending.remote)
        self.stream_ready(stream, pending.local, pending.remote)

    def _give_up(self, pending: _Pending, condition: str, why: str) -> None:
        if pending.done:
            return
        self._finish(pending)
        pending.failed = True
        log.info(
            "s2s: giving up on {remote} ({condition}): {why}; {count} stanzas bounce",
            remote=pending.remote,
            condition=condition,
            why=why,
            count=len(pending.queue),
        )
        if pending.stream is not None and not pending.stream.closed:
            pending.stream.fail("remote-connection-failed", why)
        for stanza in pending.queue:
            self._bounce(stanza, condition, why)
        for _, _, waiter in pending.verifies:
            waiter.callback(False)

    def _finish(self, pending: _Pending) -> None:
        pending.done = True
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        if self.connecting.get((pending.local, pending.remote)) is pending:
            del self.connecting[(pending.local, pending.remote)]

    # -- dialback verification (we are the receiving server) --------------------

    def verify_dialback(self, local: str, remote: str, stream_id: str, key: str) -> defer.Deferred:
        """Ask C{remote}'s authoritative server whether C{key} is valid (XEP-0220 §2.2)."""
        for stream in self.streams:
            if stream.initiating and stream.remote == remote and stream._can_verify:
                return stream.request_verify(local, remote, stream_id, key)
        pending = self.connecting.get((local, remote)) or self._connect(local, remote)
        if pending is None:
            return defer.succeed(False)
        if pending.stream is not None:
            return pending.stream.request_verify(local, remote, stream_id, key)
        waiter: defer.Deferred = defer.Deferred()
        pending.verifies.append((stream_id, key, waiter))
        return waiter

    # -- stream bookkeeping ---------------------------------------------------

    def stream_opened(self, stream: S2SStream) -> None:
        self.streams.add(stream)

    def stream_ready(self, stream: S2SStream, local: str, remote: str) -> None:
        """C{stream} may now carry stanzas from C{local} to C{remote}: flush what waits."""
        current = self.routes.get((local, remote))
        if current is None or current.closed:
            self.routes[(local, remote)] = stream
        pending = self.connecting.get((local, remote))
        if pending is not None:
            # Our own connection, or a bidi stream from the peer that got there
            # first; our attempt then goes on and becomes a second route.
            self._finish(pending)
        queue = pending.queue if pending is not None else []
        route = self.routes[(local, remote)]
        for stanza in queue:
            route.send_stanza(stanza)
        queue.clear()

    def stream_closed(self, stream: S2SStream) -> None:
        self.streams.discard(stream)
        for pair in [p for p, s in self.routes.items() if s is stream]:
            del self.routes[pair]

    def accepts(self) -> bool:
        """Whether another incoming connection fits under the total cap."""
        return len(self.streams) < self.settings.max_connections

    def stop(self) -> defer.Deferred:
        streams = list(self.streams)
        for stream in streams:
            stream.fail("system-shutdown")
        for pending in list(self.connecting.values()):
            self._give_up(pending, "remote-server-timeout", "shutting down")
        if not streams:
            return defer.succeed(None)
        closed = defer.DeferredList([s.lost for s in streams], consumeErrors=True)
        closed.addTimeout(SHUTDOWN_GRACE, reactor)

        def abort(_):
            for stream in streams:
                if stream.transport is not None:
                    stream.transport.abortConnection()

        return closed.addErrback(abort)


class _Factory(protocol.Factory):
    noisy = False

    def __init__(self, build: Callable[[], S2SStream]) -> None:
        self.build = build

    def buildProtocol(self, addr):
        stream = self.build()
        stream.factory = self
        return stream


class S2SFactory(protocol.ServerFactory):
    """Incoming s2s connections (C{direct_tls} for the XEP-0368 port)."""

    noisy = False

    def __init__(self, manager: S2SManager, direct_tls: bool = False) -> None:
        self.manager = manager
        self.direct_tls = direct_tls

    def buildProtocol(self, addr):
        if not self.manager.accepts():
            log.warn("s2s: refused a connection from {peer}: connection cap", peer=addr.host)
            return None
        stream = S2SStream(self.manager, False, direct_tls=self.direct_tls)
        stream.factory = self
        return stream


class S2SService(service.Service):
    """Closes every s2s stream when the server stops, after the client streams.

    Client streams closing make their users' unavailable presence go to remote
    contacts (RFC 6121 §4.5.2): those must leave on the s2s streams before
    these end. MultiService stops its children all at once, so this one waits
    for the client streams itself.
    """

    def __init__(self, manager: S2SManager) -> None:
        self.manager = manager

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        clients = [s.lost for s in self.manager.server.streams]
        if clients:
            waiting = defer.DeferredList(clients, consumeErrors=True)
            waiting.addTimeout(SHUTDOWN_GRACE, reactor)
            waiting.addErrback(lambda _: None)  # ServerService aborts the stragglers
            yield waiting
        yield self.manager.stop()
