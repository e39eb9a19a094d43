"""RFC 6121 §4 presence: initial presence, broadcasts, probes, directed presence.

Broadcasts go through the dispatcher one contact at a time, so every rule
that applies to routed presence (privacy lists among them) applies to them
too; each contact's copy is serialised once for all of its resources.
"""

from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.interfaces import IFeature
from imserver.jid import parse_jid
from imserver.stanzas import presence, readdressed

NS_CLIENT = "jabber:client"
#: RFC 6121 §4.7.2.1: the only values of <show/>.
SHOW_VALUES = frozenset(("away", "chat", "dnd", "xa"))
#: Key in Session.extra: bare JIDs that answered this session's presence with an error.
ERRORS_KEY = "presence-errors"


def _check_available(stanza: domish.Element) -> int:
    """Validate an available presence's <show/> and <priority/>; return the priority.

    RFC 6121 §4.7.2.1 and §4.7.2.3: at most one of each, show without
    attributes and one of L{SHOW_VALUES}. Anything else is bad-request.
    """
    shows = list(stanza.elements(NS_CLIENT, "show"))
    if len(shows) > 1:
        raise StanzaError("bad-request", text="at most one show")
    if shows and (shows[0].attributes or str(shows[0]).strip() not in SHOW_VALUES):
        raise StanzaError("bad-request", text="show must be away, chat, dnd or xa")
    if sum(1 for _ in stanza.elements(NS_CLIENT, "priority")) > 1:
        raise StanzaError("bad-request", text="at most one priority")
    return _priority(stanza)


def _priority(stanza: domish.Element) -> int:
    element = next(stanza.elements(NS_CLIENT, "priority"), None)
    if element is None:
        return 0
    try:
        value = int(str(element).strip())
    except ValueError:
        raise StanzaError("bad-request", text="priority must be an integer") from None
    if not -128 <= value <= 127:
        raise StanzaError("bad-request", text="priority must be in -128..127")
    return value


@implementer(IPlugin, IFeature)
class Presence:
    name = "presence"
    disco_features = ()

    def attach(self, server) -> None:
        self.server = server
        self.router = server.router
        dispatcher = self.dispatcher = server.dispatcher
        for type_ in ("available", "unavailable"):
            dispatcher.on(("out", "presence", type_), self.outbound)
        for target in ("bare", "full"):
            dispatcher.on(("presence", "probe", target), self.probe)
        dispatcher.on(("presence", "error", "full"), self.inbound_error)
        dispatcher.hook("session-ended", self.session_ended)

    # -- the user's own presence -------------------------------------------

    def outbound(self, event):
        if event.type == "available":
            _check_available(event.stanza)
        if event.stanza.getAttribute("to") is None:
            return self.broadcast(event.origin, event.stanza, event.type)
        # Directed presence (RFC 6121 §4.6): remember who must hear we left, also
        # when sent before initial presence (RFC 3921 §5.1.4 rule 3).
        if event.type == "available":
            event.origin.directed.add(event.to.full())
        else:
            event.origin.directed.discard(event.to.full())
        return False

    @defer.inlineCallbacks
    def broadcast(self, session, stanza: domish.Element, type_: str):
        """Send the user's presence to subscribers and own resources (RFC 6121 §4.2, §4.4, §4.5).

        Subscribers that answered this session's presence with an error get no
        more of it (RFC 3921 §5.1.2, condition 3). A resource that never was
        available tells only the recipients of its directed presence that it left.
        """
        if type_ == "unavailable" and not session.available:
            session.send(readdressed(stanza, session.full))
            self._end_directed(session, stanza, set())
            return True
        initial = False
        was_reachable = session.available and session.priority >= 0
        if type_ == "available":
            session.priority = _check_available(stanza)
            initial = not session.available
            session.available = True
            session.presence = stanza
        else:
            session.available = False
            session.presence = None
        roster = yield self.server.rosters.get(session.user, session.host, keep=True)
        refused = session.extra.get(ERRORS_KEY, ())
        subscribers = [
            item.jid
            for item in roster.items.values()
            if item.subscribed_from and item.jid not in refused
        ]
        for contact in subscribers:
            self._send(readdressed(stanza, contact), session.jid, contact)
        for own in self.server.sessions.of(session.bare):
            if own.available or own is session:
                own.send(readdressed(stanza, own.full))
        if type_ == "unavailable":
            self._end_directed(session, stanza, set(subscribers))
        if initial:
            self._probe_contacts(session, roster)
            yield self.dispatcher.fire("initial-presence", session)
        if session.available and session.priority >= 0 and not was_reachable:
            # Now a recipient of bare-JID messages: at initial presence, or on
            # raising a negative priority (XEP-0160 §3 offline delivery hooks here).
            yield self.dispatcher.fire("reachable", session)
        return True

    def _end_directed(self, session, stanza: domish.Element, told: set[str]) -> None:
        """Tell directed-presence recipients not in C{told} (bare JIDs) we left; forget them."""
        for jid in session.directed:
            # A subscriber had it from the broadcast, whichever of its JIDs got presence.
            if parse_jid(jid).userhost() not in told:
                self._send(readdressed(stanza, jid), session.jid, jid)
        session.directed.clear()

    def _probe_contacts(self, session, roster) -> None:
        """Ask each contact we are subscribed to for its presence (RFC 6121 §4.2.2)."""
        for own in self.server.sessions.of(session.bare):
            if own is not session and own.available:
                session.send(readdressed(own.presence, session.full))
        for item in roster.items.values():
            if not item.subscribed_to:
                continue
            contact = parse_jid(item.jid)
            # A local contact with no session has nothing to report: skip the probe.
            if contact.host in self.server.hosts and not self.server.sessions.of(item.jid):
                continue
            probe = presence("probe", session.full, item.jid)
            self.dispatcher.route(probe, session.jid, contact)

    def session_ended(self, session) -> None:
        """A stream closed: its resource goes unavailable if it had not said so (§4.5.2)."""
        if session.available or session.directed:
            self.broadcast(session, presence("unavailable", session.full), "unavailable")

    def _send(self, stanza: domish.Element, sender, to: str) -> None:
        self.dispatcher.route(stanza, sender, parse_jid(to))

    # -- presence addressed to a local user ---------------------------------
    # Available, unavailable and error presence is delivered by the router
    # (RFC 6121 §8.5); probes are answered here, and errors noted on their way.

    def inbound_error(self, event) -> bool:
        """A presence error for a resource: it broadcasts no more to that contact.

        Returns False: the router still delivers it (a bare-JID one is dropped,
        RFC 6121 §8.5.2.1.2).
        """
        session = self.server.sessions.get(event.to.userhost(), event.to.resource)
        if session is not None:
            session.extra.setdefault(ERRORS_KEY, set()).add(event.sender.userhost())
        return False

    @defer.inlineCallbacks
    def probe(self, event):
        """Answer a probe from a subscriber with the last presence of each resource (§4.3.2).

        Probes from anyone not subscribed get no answer, which reveals nothing.
        """
        bare = event.to.userhost()
        available = self.router.available(bare)
        if not available:
            return True
        roster = yield self.server.rosters.get(event.to.user, event.to.host, keep=True)
        item = roster.items.get(event.sender.userhost())
        if item is None or not item.subscribed_from:
            return True
        prober = event.sender.full()
        for session in available:
            self._send(readdressed(session.presence, prober), session.jid, prober)
        return True


feature = Presence()
