"""XEP-0030 Service Discovery for the server and for the user's own account.

The server's features are those the loaded plugins declare; the answer is
built once, on the first query, when every plugin has attached.
"""

from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from tx_xmpp.disco import NS_DISCO_INFO, NS_DISCO_ITEMS, DiscoFeature, DiscoIdentity, DiscoInfo
from zope.interface import implementer

from imserver.interfaces import IFeature


@implementer(IPlugin, IFeature)
class Disco:
    name = "disco"
    disco_features = (NS_DISCO_INFO, NS_DISCO_ITEMS)

    def attach(self, server) -> None:
        self.server = server
        self._server_info = None
        dispatcher = server.dispatcher
        dispatcher.on(("iq", "get", NS_DISCO_INFO, "host"), self.server_info)
        dispatcher.on(("iq", "get", NS_DISCO_INFO, "self"), self.account_info)
        for target in ("host", "self"):
            dispatcher.on(("iq", "get", NS_DISCO_ITEMS, target), self.items)

    def server_info(self, event) -> bool:
        _no_node(event)
        if self._server_info is None:
            info = DiscoInfo()
            info.append(DiscoIdentity("server", "im", "imserver"))
            for namespace in sorted(self.server.disco_features):
                info.append(DiscoFeature(namespace))
            self._server_info = info.toElement()
        return event.answer(self._server_info)

    def account_info(self, event) -> bool:
        _no_node(event)
        info = DiscoInfo()
        for category, type_ in sorted(self.server.account_identities):
            info.append(DiscoIdentity(category, type_))
        for namespace in sorted({NS_DISCO_INFO, *self.server.account_features}):
            info.append(DiscoFeature(namespace))
        return event.answer(info.toElement())

    def items(self, event) -> bool:
        _no_node(event)
        return event.answer(domish.Element((NS_DISCO_ITEMS, "query")))


def _no_node(event) -> None:
    if event.stanza.firstChildElement().getAttribute("node"):
        raise StanzaError("item-not-found")


feature = Disco()
