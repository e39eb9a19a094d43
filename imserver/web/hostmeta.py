"""XEP-0156 connection discovery: /.well-known/host-meta (XRD) and host-meta.json (JRD).

Web clients (Converse.js by default) fetch these from the XMPP domain to find
the WebSocket and BOSH endpoints. The links are absolute: from [http]
public_url when set, else from the scheme and Host of the request itself,
which is what a client reached.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

from twisted.web import resource, server

from imserver.config import HTTPSettings
from imserver.web.cors import allow_cross_origin

REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"
WEBSOCKET_PATH = "/xmpp-websocket"
BOSH_PATH = "/http-bind"


def endpoints(request: server.Request, settings: HTTPSettings) -> list[tuple[str, str]]:
    """(rel, href) of each endpoint as the client that asked can reach it."""
    if settings.public_url:
        base = settings.public_url
    else:
        secure = request.isSecure() or settings.behind_tls_proxy
        host = (request.getHeader(b"host") or b"localhost").decode("latin-1").strip()
        base = ("https://" if secure else "http://") + host
    ws_base = "ws" + base.removeprefix("http")
    return [(REL_WEBSOCKET, ws_base + WEBSOCKET_PATH), (REL_BOSH, base + BOSH_PATH)]


class HostMeta(resource.Resource):
    """One document, in XRD (host-meta) or JRD (host-meta.json) form."""

    isLeaf = True

    def __init__(self, settings: HTTPSettings, as_json: bool) -> None:
        super().__init__()
        self.settings = settings
        self.as_json = as_json

    def render_GET(self, request: server.Request) -> bytes:
        allow_cross_origin(request, self.settings.cors_origins, b"GET")
        links = endpoints(request, self.settings)
        if self.as_json:
            request.setHeader(b"content-type", b"application/json")
            document = {"links": [{"rel": rel, "href": href} for rel, href in links]}
            return json.dumps(document, indent=1).encode()
        request.setHeader(b"content-type", b"application/xrd+xml")
        lines = [
            "<?xml version='1.0' encoding='utf-8'?>",
            "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>",
            *(f"  <Link rel={quoteattr(rel)} href={quoteattr(href)}/>" for rel, href in links),
            "</XRD>",
            "",
        ]
        return "\n".join(lines).encode()
