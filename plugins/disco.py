"""XEP-0030 Service Discovery for the server and for accounts.

The server's features are those the loaded plugins declare; the answer is
built once, on the first query, when every plugin has attached. An account's
bare JID is answered by the server on the account's behalf (XEP-0030 §3,
XEP-0163 §4): to the account itself, and to contacts subscribed to its
presence, with what plugins put in C{server.account_identities} and
C{server.account_features} (the archive, PEP). Anyone else gets
service-unavailable, which reveals nothing about the account. The server's
XEP-0115 node#ver (C{server.host_info_nodes}) is answered like the server.
"""

from twisted.internet import defer
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
        self._account_info = None
        server.host_info = self.host_info
        dispatcher = server.dispatcher
        dispatcher.on(("iq", "get", NS_DISCO_INFO, "host"), self.server_info)
        dispatcher.on(("iq", "get", NS_DISCO_INFO, "self"), self.account_info)
        dispatcher.on(("iq", "get", NS_DISCO_INFO, "bare"), self.contact_info)
        for target in ("host", "self"):
            # Low priority: PEP lists an account's nodes first.
            dispatcher.on(("iq", "get", NS_DISCO_ITEMS, target), self.items, priority=-10)

    def host_info(self) -> domish.Element:
        """The server's disco#info <query/> (built once, after every plugin attached)."""
        if self._server_info is None:
            info = DiscoInfo()
            info.append(DiscoIdentity("server", "im", "imserver"))
            for namespace in sorted(self.server.disco_features):
                info.append(DiscoFeature(namespace))
            self._server_info = info.toElement()
        return self._server_info

    def server_info(self, event) -> bool:
        node = event.stanza.firstChildElement().getAttribute("node")
        if not node:
            return event.answer(self.host_info())
        if node not in self.server.host_info_nodes:
            raise StanzaError("item-not-found")
        query = domish.Element((NS_DISCO_INFO, "query"))
        query["node"] = node
        query.children = self.host_info().children
        return event.answer(query)

    def account_info(self, event) -> bool:
        _no_node(event)
        if self._account_info is None:
            info = DiscoInfo()
            for category, type_, name in sorted(
                self.server.account_identities, key=lambda i: (i[0], i[1], i[2] or "")
            ):
                info.append(DiscoIdentity(category, type_, name))
            for namespace in sorted(self.server.account_features | {NS_DISCO_INFO}):
                info.append(DiscoFeature(namespace))
            self._account_info = info.toElement()
        return event.answer(self._account_info)

    @defer.inlineCallbacks
    def contact_info(self, event):
        """Another account's disco#info: for its presence subscribers only."""
        roster = yield self.server.rosters.get(event.to.user, event.to.host)
        item = roster.items.get(event.sender.userhost())
        if item is None or not item.subscribed_from:
            raise StanzaError("service-unavailable")
        return self.account_info(event)

    def items(self, event) -> bool:
        _no_node(event)
        return event.answer(domish.Element((NS_DISCO_ITEMS, "query")))


def _no_node(event) -> None:
    if event.stanza.firstChildElement().getAttribute("node"):
        raise StanzaError("item-not-found")


feature = Disco()
