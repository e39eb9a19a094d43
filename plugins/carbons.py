"""XEP-0280 Message Carbons (carbons:2): every device of an account sees the conversation.

A resource turns carbons on or off for itself with an iq set of <enable/> or
<disable/>. Then, for each message eligible under L{eligible} (XEP-0280 §6's
suggested rules, with XEP-0334's <no-copy/> hint):

- "sent" copies (§8): what a resource sends goes, wrapped in <sent><forwarded>
  (XEP-0297), to every other carbons-enabled resource of the sender;
- "received" copies (§7): what arrives for the account goes, wrapped in
  <received><forwarded>, to every carbons-enabled resource that RFC 6121 §8.5
  delivery does not give the original to.

A <private/> message is not copied, and the <private/> element is removed
before the recipient gets it (§9). The handlers run after the archive's
(plugins/mam.py), so copies carry the account's <stanza-id/> when one was
assigned: a client can match a carbon with what it later finds in the archive.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from tx_xmpp.mam import NS_FORWARD
from zope.interface import implementer

from imserver.carbons import ENABLED, NS_CARBONS, eligible
from imserver.interfaces import IFeature
from imserver.serialize import stanza_bytes
from imserver.stanzas import readdressed

NS_CARBONS_RULES = "urn:xmpp:carbons:rules:0"
#: After the archive (priority 100), before delivery (0) and offline storage (-10).
PRIORITY = 50
MESSAGE_TYPES = ("normal", "chat", "groupchat", "headline", "error")


def remove_private(stanza: domish.Element) -> None:
    """Drop <private/> before delivery to the recipient (XEP-0280 §9)."""
    children = stanza.children
    if any(_is_private(c) for c in children):
        stanza.children = [c for c in children if not _is_private(c)]


def _is_private(child: object) -> bool:
    return isinstance(child, domish.Element) and child.name == "private" and child.uri == NS_CARBONS


def carbon(stanza: domish.Element, direction: str, bare: str) -> domish.Element:
    """The copy: <message from=bare><sent|received><forwarded>the original</...></message>.

    The original is serialised once, as it is now (with its own xmlns), and
    the one wrapper is readdressed per resource: the payload is not serialised
    again per device, and later changes to the stanza do not reach the copies.
    """
    wrapper = domish.Element((None, "message"))
    wrapper["from"] = bare
    wrapper["type"] = stanza.getAttribute("type") or "normal"
    holder = wrapper.addElement((NS_CARBONS, direction))
    forwarded = holder.addElement((NS_FORWARD, "forwarded"))
    forwarded.addChild(domish.SerializedXML(stanza_bytes(stanza, "").decode("utf-8")))
    return wrapper


def _bind2_feature(stream) -> domish.Element:
    feature = domish.Element(("urn:xmpp:bind:0", "feature"))
    feature["var"] = NS_CARBONS
    return feature


@implementer(IPlugin, IFeature)
class Carbons:
    name = "carbons"
    disco_features = (NS_CARBONS, NS_CARBONS_RULES)

    def attach(self, server) -> None:
        self.server = server
        self.sessions = server.sessions
        self.router = server.router
        dispatcher = server.dispatcher
        dispatcher.on(("iq", "set", NS_CARBONS, "self"), self.toggle)
        # XEP-0386: <enable/> may come inside a Bind2 request (nothing goes in <bound/>).
        dispatcher.on(("inline", NS_CARBONS, "enable"), self.enable_inline)
        server.add_stream_feature("bind2", _bind2_feature)
        for type_ in MESSAGE_TYPES:
            dispatcher.on(("out", "message", type_), self.sent, priority=PRIORITY)
            dispatcher.on(("message", type_, "bare"), self.received_bare, priority=PRIORITY)
            dispatcher.on(("message", type_, "full"), self.received_full, priority=PRIORITY)

    def toggle(self, event) -> bool:
        """<enable/> or <disable/> for the sending resource; repeating either is fine (§10.1)."""
        payload = event.stanza.firstChildElement()
        if payload.name == "enable":
            event.origin.extra[ENABLED] = True
        elif payload.name == "disable":
            event.origin.extra.pop(ENABLED, None)
        else:
            raise StanzaError("bad-request")
        return event.answer()

    def enable_inline(self, event) -> bool:
        event.origin.extra[ENABLED] = True
        return True

    def sent(self, event) -> bool:
        """Copy what a resource sends to the account's other carbons-enabled resources."""
        bare = event.sender.userhost()
        others = [
            s
            for s in self.sessions.of(bare)
            if s is not event.origin and s.extra.get(ENABLED) and s.full != event.to.full()
        ]
        if others and eligible(event.stanza, inbound=False):
            self._send(carbon(event.stanza, "sent", bare), others)
        return False

    def received_bare(self, event) -> bool:
        """A message for the account: copies for those RFC 6121 delivery passes over."""
        bare = event.to.userhost()
        recipients = self.router.message_recipients(bare, event.type)
        self._received(event, bare, recipients)
        return False

    def received_full(self, event) -> bool:
        """A message for one resource: copies for the others.

        When that resource is gone, delivery treats chat and normal messages
        as sent to the bare JID (RFC 6121 §8.5.3.2.1), and so do the copies.
        """
        bare = event.to.userhost()
        target = self.sessions.get(bare, event.to.resource)
        if target is not None:
            self._received(event, bare, [target])
        elif event.type in ("chat", "normal"):
            self._received(event, bare, self.router.message_recipients(bare, event.type))
        else:
            remove_private(event.stanza)
        return False

    def _received(self, event, bare: str, recipients: list) -> None:
        stanza = event.stanza
        if not eligible(stanza, inbound=True):
            remove_private(stanza)
            return
        others = [s for s in self.sessions.of(bare) if s.extra.get(ENABLED) and s not in recipients]
        if others:
            self._send(carbon(stanza, "received", bare), others)

    @staticmethod
    def _send(wrapper: domish.Element, sessions: list) -> None:
        for session in sessions:
            session.send(readdressed(wrapper, session.full))


feature = Carbons()
