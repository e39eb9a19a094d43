"""imserver embedded in an existing Twisted application, beside a web site.

    twistd -n -y etc/embedded.tac

The host application's site also carries imserver's web endpoints
(/xmpp-websocket, /http-bind, /.well-known/host-meta[.json]): browsers reach
XMPP through the application's own port, whatever [http] says.

IMSERVER_CONFIG and WEB_PORT (environment) override the defaults, so the
tests can run this very file on ports of their own.
"""

import os

from twisted.application import service, strports
from twisted.web import resource, server

from imserver import config
from imserver.errors import ConfigError
from imserver.service import makeService
from imserver.web.site import xmpp_resources


class Status(resource.Resource):
    """The host application's own page: here, how many XMPP sessions are bound."""

    isLeaf = True

    def __init__(self, xmpp):
        super().__init__()
        self.xmpp = xmpp

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"sessions: {len(self.xmpp.server.sessions)}\n".encode()


here = os.path.dirname(os.path.abspath(__file__))
try:
    settings = config.load(os.environ.get("IMSERVER_CONFIG", os.path.join(here, "imserver.toml")))
    xmpp = makeService(settings)
except ConfigError as e:  # one line naming the key, not a traceback
    raise SystemExit(f"imserver: {e}") from None

application = service.Application("web site with XMPP")
xmpp.setServiceParent(application)
root = resource.Resource()
root.putChild(b"", Status(xmpp))
xmpp_resources(xmpp.server).mount(root)
web = strports.service(
    f"tcp:{os.environ.get('WEB_PORT', '8080')}:interface=127.0.0.1", server.Site(root)
)
web.setServiceParent(application)
