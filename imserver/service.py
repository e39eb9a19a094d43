"""makeService(settings): the embedding API, and what twistd and `imserver run` use.

The returned MultiService opens the store, makes the certificate when it is
missing, and listens for clients; stopping it closes every stream with a
system-shutdown stream error and </stream:stream>, then closes the store.
"""

from __future__ import annotations

import gc

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.logger import Logger

from imserver import tls
from imserver.config import Settings, TLSSettings
from imserver.s2s.manager import S2SFactory, S2SManager, S2SService
from imserver.server import Server
from imserver.storage import open_store
from imserver.stream.c2s import C2SFactory
from imserver.stream.tcp import StreamServer
from imserver.web.site import XMPPResources, make_site

log = Logger()

#: How long shutdown waits for clients to close their side.
SHUTDOWN_GRACE = 2.0


class ServerService(service.Service):
    """Owns the L{Server}: opens its store on start, closes streams and store on stop."""

    name = "imserver"

    def __init__(self, server: Server) -> None:
        self.server = server

    def startService(self) -> None:
        super().startService()
        d = self.server.store.start()
        d.addCallbacks(self._ready, self._store_failed)

    def _ready(self, _) -> None:
        log.info("imserver serving {hosts}", hosts=", ".join(sorted(self.server.hosts)))
        self.server.ready.callback(None)

    def _store_failed(self, failure) -> None:
        log.failure("cannot open the store; stopping", failure)
        if reactor.running:
            reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        streams = list(self.server.streams)
        for stream in streams:
            stream.fail("system-shutdown")
        if streams:
            closed = defer.DeferredList([s.lost for s in streams], consumeErrors=True)
            closed.addTimeout(SHUTDOWN_GRACE, reactor)
            try:
                yield closed
            except defer.TimeoutError:
                for stream in streams:
                    if stream.transport is not None:
                        stream.transport.abortConnection()
        # Sessions no stream carries (XEP-0198 waiting for resumption) end now;
        # the store closes once their last writes are done.
        yield self.server.dispatcher.fire("server-stopping")
        yield self.server.store.stop()


def tune_garbage_collector() -> None:
    """Spare the cyclic collector from walking what lives for ever.

    Everything loaded at start (modules, plugins, config) is frozen, so full
    collections only look at what the server made since. The thresholds stay
    Python's: raising them (10,000 for the first generation) cost 4 KiB more
    per idle session in bench/compare's idle scenario for no clear gain in
    message cost. Not called by makeService: an embedding application owns
    its GC.
    """
    gc.collect()
    gc.freeze()


def makeService(settings: Settings) -> service.MultiService:
    """Build the whole server as one IService to run alone or beside others."""
    server = Server(settings, open_store(settings.storage_url))  # checks the plugin list
    tls.ensure_certificate(settings.tls, settings.hosts)
    server.tls = server_tls = tls.load(settings.tls)

    top = service.MultiService()
    ServerService(server).setServiceParent(top)
    c2s = settings.c2s
    if c2s.port:
        StreamServer(c2s.port, C2SFactory(server), c2s.interface).setServiceParent(top)
    if c2s.direct_tls_port:
        StreamServer(
            c2s.direct_tls_port,
            C2SFactory(server, direct_tls=True),
            c2s.interface,
            tls=server_tls.options,
        ).setServiceParent(top)
    http = settings.http
    if http.enabled:
        site = make_site(XMPPResources(server), max_body=2 * settings.limits.max_stanza_size)
        if http.port:
            StreamServer(http.port, site, http.interface).setServiceParent(top)
        if http.tls_port:
            options = server_tls.options
            if http.certificate is not None:
                options = tls.load(TLSSettings(http.certificate, http.key)).options
            StreamServer(http.tls_port, site, http.interface, tls=options).setServiceParent(top)
    s2s = settings.s2s
    if s2s.enabled:
        manager = S2SManager(server, s2s, settings.tls.certificate, settings.tls.key)
        server.router.set_default_route(manager)
        S2SService(manager).setServiceParent(top)
        if s2s.port:
            StreamServer(s2s.port, S2SFactory(manager), s2s.interface).setServiceParent(top)
        if s2s.direct_tls_port:
            StreamServer(
                s2s.direct_tls_port,
                S2SFactory(manager, direct_tls=True),
                s2s.interface,
                tls=manager.server_tls,
            ).setServiceParent(top)
    top.server = server  # for embedders and tests that want to look inside
    return top
