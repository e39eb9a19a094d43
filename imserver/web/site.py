"""The web resources of one server, and the twisted.web Site that serves them alone.

Embedders mount L{xmpp_resources} under their own site (see etc/embedded.tac);
`imserver run` serves L{make_site} on the [http] ports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.web import resource, server

from imserver.web.bosh import BoshResource
from imserver.web.hostmeta import HostMeta
from imserver.web.websocket import websocket_resource

if TYPE_CHECKING:
    from imserver.server import Server


class XMPPResources:
    """/xmpp-websocket, /http-bind and the two /.well-known documents, ready to mount."""

    def __init__(self, xmpp: Server) -> None:
        settings = xmpp.settings.http
        self.websocket = websocket_resource(xmpp)
        self.bosh = BoshResource(xmpp)
        self.host_meta = HostMeta(settings, as_json=False)
        self.host_meta_json = HostMeta(settings, as_json=True)

    def mount(self, root: resource.Resource) -> None:
        """Put every endpoint at its usual path under C{root} (a site's root resource)."""
        root.putChild(b"xmpp-websocket", self.websocket)
        root.putChild(b"http-bind", self.bosh)
        well_known = root.children.get(b".well-known")
        if well_known is None:
            well_known = resource.Resource()
            root.putChild(b".well-known", well_known)
        well_known.putChild(b"host-meta", self.host_meta)
        well_known.putChild(b"host-meta.json", self.host_meta_json)


def xmpp_resources(xmpp: Server) -> XMPPResources:
    """The resources of C{xmpp}; C{xmpp} is C{makeService(...).server}."""
    return XMPPResources(xmpp)


class _Root(resource.Resource):
    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"imserver: XMPP over /xmpp-websocket and /http-bind\n"


def make_site(resources: XMPPResources, max_body: int) -> server.Site:
    """A site with only the XMPP endpoints; request bodies over C{max_body} bytes are cut off."""
    root = _Root()
    resources.mount(root)
    request_factory = type("Request", (_BoundedRequest,), {"max_body": max_body})
    site = _QuietSite(root, requestFactory=request_factory)
    site.displayTracebacks = False
    site.noisy = False
    return site


class _QuietSite(server.Site):
    """No access log: a BOSH client makes a request every few seconds; streams log themselves.

    Nagle is off on its connections as on any twisted.web site's: HTTPChannel
    sets TCP_NODELAY itself (tests/test_tls_transport.py checks it, and
    tests/test_service.py on an embedding application's own site).
    """

    def log(self, request: server.Request) -> None:
        pass


class _BoundedRequest(server.Request):
    """A request whose body may not grow past what one BOSH body can legitimately hold."""

    max_body = 0  # set by make_site

    def handleContentChunk(self, data: bytes) -> None:
        self._body_size = getattr(self, "_body_size", 0) + len(data)
        if self._body_size > self.max_body:
            if self.channel is not None and self.channel.transport is not None:
                self.channel.transport.abortConnection()
            return
        super().handleContentChunk(data)
