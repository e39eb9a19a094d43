"""XEP-0160 offline messages: stored durably, delivered in order at the next login.

Claims the router's C{("message", "offline")} event, so it sees exactly the
chat and normal messages that found no available resource (to the bare JID,
or to a full JID that is gone). Each is stamped with a XEP-0203 delay (unless
it has one, such as stream management's for a message re-routed from an
ended session: see L{imserver.stanzas.add_delay}) and stored once; the
sender's next stanzas wait until the write is done. A full store bounces with
service-unavailable.
"""

import time

from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from zope.interface import implementer

from imserver.interfaces import IFeature
from imserver.jid import parse_jid
from imserver.router import OFFLINE
from imserver.stanzas import add_delay
from imserver.stream.parser import parse_stanza

NS_OFFLINE = "msgoffline"


@implementer(IPlugin, IFeature)
class Offline:
    name = "offline"
    disco_features = (NS_OFFLINE,)
    requires = ("presence",)  # fires reachable

    def attach(self, server) -> None:
        self.server = server
        self.store = server.store
        server.dispatcher.on(OFFLINE, self.store_message)
        server.dispatcher.hook("reachable", self.deliver_stored)

    @defer.inlineCallbacks
    def store_message(self, event):
        user, host = event.to.user, event.to.host
        if not (yield self.store.user_exists(user, host)):
            raise StanzaError("service-unavailable")
        stanza = event.stanza
        element = add_delay(stanza, time.time(), host, "Offline Storage")
        stored = yield self.store.store_offline(
            user,
            host,
            stanza.toXml(defaultUri="jabber:client"),
            self.server.limits.offline_messages,
        )
        if not stored:
            if element is not None:
                stanza.children.remove(element)
            raise StanzaError("service-unavailable", text="offline storage is full")
        return True

    @defer.inlineCallbacks
    def deliver_stored(self, session):
        """When a resource first becomes available with non-negative priority (XEP-0160 §3).

        One at a time, waiting for the client to read each: a flush of
        hundreds of messages must not trip the output limit of a client that
        reads normally. Whatever a closing stream did not get is stored again.

        The user's privacy rules as they are now decide, not those in force when
        a message was stored: a contact blocked since must not get through by
        way of the store. Such a message is dropped without an error: an error
        now would tell the blocked sender the moment the user came online.
        The rules are loaded before anything is taken from the store, so a
        failure to load them leaves the messages stored.
        """
        privacy = self.server.privacy
        yield privacy.ready(session)
        stored = yield self.store.pop_offline(session.user, session.host)
        for index, xml in enumerate(stored):
            if not session.connected:
                yield self._store_again(session, stored[index:])
                return
            stanza = parse_stanza(xml)
            sender = parse_jid(stanza.getAttribute("from") or session.host)
            type_ = stanza.getAttribute("type") or "normal"
            if not privacy.admits(session, sender, "message", type_):
                continue
            session.send(stanza)
            yield session.drained()

    @defer.inlineCallbacks
    def _store_again(self, session, stanzas: list[str]):
        # Each passed the limit when first stored: room is made for all of them.
        limit = self.server.limits.offline_messages + len(stanzas)
        for xml in stanzas:
            yield self.store.store_offline(session.user, session.host, xml, limit)


feature = Offline()
