"""XEP-0199 XMPP Ping: the server answers pings addressed to it or to the account."""

from twisted.plugin import IPlugin
from zope.interface import implementer

from imserver.interfaces import IFeature

NS_PING = "urn:xmpp:ping"


@implementer(IPlugin, IFeature)
class Ping:
    name = "ping"
    disco_features = (NS_PING,)

    def attach(self, server) -> None:
        for target in ("host", "self"):
            server.dispatcher.on(("iq", "get", NS_PING, target), lambda event: event.answer())


feature = Ping()
