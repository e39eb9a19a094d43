"""XEP-0191 blocking command: the urn:xmpp:blocking protocol face.

The blocklist is stored as deny items of the user's default privacy list;
L{imserver.privacy} explains how the two combine and makes every change
(presence, enforcement). This module speaks the protocol and pushes the
blocklist's changes, from either protocol, to resources that retrieved it.
"""

from collections.abc import Iterable

from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.interfaces import IFeature
from imserver.jid import InvalidFormat, parse_jid
from imserver.privacy import BLOCKLIST_KEY, NS_BLOCKING, PrivacyChange, PrivacyChanges


@implementer(IPlugin, IFeature)
class Blocking:
    name = "blocking"
    disco_features = (NS_BLOCKING,)

    def attach(self, server) -> None:
        self.server = server
        self.engine = server.privacy
        self.engine.enable()
        self.changes = PrivacyChanges(self.engine)
        server.dispatcher.on(("iq", "get", NS_BLOCKING, "self"), self.get)
        server.dispatcher.on(("iq", "set", NS_BLOCKING, "self"), self.set)
        server.dispatcher.hook("privacy-changed", self.push)

    @defer.inlineCallbacks
    def get(self, event):
        """Blocklist retrieval (§3.2); from now on this resource gets block pushes."""
        payload = event.stanza.firstChildElement()
        if payload.name != "blocklist":
            raise StanzaError("bad-request", text="get the blocklist")
        jids = yield self.engine.blocklist(event.origin)
        event.origin.extra[BLOCKLIST_KEY] = True
        return event.answer(blocking_element("blocklist", jids))

    @defer.inlineCallbacks
    def set(self, event):
        """Block (§3.3), unblock (§3.4) or, with no item, unblock all (§3.5)."""
        payload = event.stanza.firstChildElement()
        jids = _jids(payload)
        if payload.name == "block":
            if not jids:
                raise StanzaError("bad-request", text="block at least one JID")
            yield self.changes.block(event.origin, jids, event.answer)
        elif payload.name == "unblock":
            yield self.changes.unblock(event.origin, jids or None, event.answer)
        else:
            raise StanzaError("bad-request", text="block or unblock")
        return True

    def push(self, change: PrivacyChange) -> None:
        """The blocklist's difference, to the resources that retrieved it (§3.3-§3.5).

        An unblock-all command is pushed as such (an empty <unblock/>); any
        other change as the JIDs it unblocked and blocked.
        """
        old, new = change.blocked_before, change.blocked_after
        targets = [s for s in self.server.sessions.of(change.bare) if s.extra.get(BLOCKLIST_KEY)]
        if not targets or old == new:
            return
        payloads = []
        if change.unblock_all:
            payloads.append(blocking_element("unblock", ()))
        else:
            removed = [j for j in old if j not in new]
            added = [j for j in new if j not in old]
            if removed:
                payloads.append(blocking_element("unblock", removed))
            if added:
                payloads.append(blocking_element("block", added))
        for payload in payloads:
            for session in targets:
                session.push(payload)


def blocking_element(name: str, jids: Iterable[str]) -> domish.Element:
    """<blocklist/>, <block/> or <unblock/> with one item per JID."""
    element = domish.Element((NS_BLOCKING, name))
    for jid in jids:
        element.addElement("item")["jid"] = jid
    return element


def _jids(payload: domish.Element) -> list[str]:
    """The items' JIDs, stringprepped (jid-malformed when one is not a JID)."""
    jids = []
    for item in payload.elements():
        if item.uri != NS_BLOCKING or item.name != "item":
            raise StanzaError("bad-request", text="only items")
        value = item.getAttribute("jid")
        try:
            if not value:
                raise InvalidFormat("no jid")
            jids.append(parse_jid(value).full())
        except InvalidFormat:
            raise StanzaError("jid-malformed") from None
    return list(dict.fromkeys(jids))


feature = Blocking()
