"""RFC 6121 §8.5 message delivery to local users; thread, subject and payloads untouched.

A chat or normal message that finds no recipient falls through to the next
handler (offline storage, when loaded) and otherwise bounces with
service-unavailable.
"""

from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from zope.interface import implementer

from imserver.interfaces import IFeature

TYPES = ("normal", "chat", "groupchat", "headline", "error")


@implementer(IPlugin, IFeature)
class Messages:
    name = "messages"
    disco_features = ()

    def attach(self, server) -> None:
        self.server = server
        self.router = server.router
        self.dispatcher = server.dispatcher
        for type_ in TYPES:
            self.dispatcher.on(("message", type_, "bare"), self.to_bare)
            self.dispatcher.on(("message", type_, "full"), self.to_full)

    def to_bare(self, event) -> bool:
        """§8.5.2: highest-priority resources for chat/normal, all non-negative for headline."""
        type_ = event.type
        if type_ == "error":
            return True  # §8.5.2.1.3: dropped
        if type_ == "groupchat":
            raise StanzaError("service-unavailable")
        recipients = self.router.message_recipients(event.to.userhost(), type_)
        if recipients:
            self.router.send_to_sessions(recipients, event.stanza)
            return True
        return type_ == "headline"  # §8.5.2.2.2: no one to show it to, silently dropped

    def to_full(self, event) -> bool:
        """§8.5.3: that resource, or per type as if sent to the bare JID."""
        session = self.server.sessions.get(event.to.userhost(), event.to.resource)
        if session is not None:
            session.send(event.stanza)
            return True
        if event.type in ("normal", "chat"):
            event.target = "bare"
            self.dispatcher.route(event)
            return True
        if event.type == "groupchat":
            raise StanzaError("service-unavailable")
        return True  # headline and error: silently dropped


feature = Messages()
