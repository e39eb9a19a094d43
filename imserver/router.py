"""Routing by domain (stage 4) and delivery to local sessions (stage 7).

The route table maps a domain to an L{IRoute}, as Twisted's component router
does: every local host maps to L{LocalRoute}, which runs the recipient's
stages; any other domain goes to the default route, which answers
remote-server-not-found until federation (or a cluster) puts itself there.

L{Router.deliver} holds the RFC 6121 §8 rules for local bare and full JIDs,
which messages, presence, offline storage and privacy all rely on. A message
that no resource can take becomes the C{("message", "offline")} event (offline
storage claims it; its Deferred holds the sender's stream until stored), and
otherwise bounces. Every bounce goes through L{Router.bounce}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from zope.interface import implementer

from imserver import lang
from imserver.interfaces import IRoute, ISessionRegistry
from imserver.jid import JID, parse_jid
from imserver.serialize import stanza_bytes

if TYPE_CHECKING:
    from imserver.dispatcher import Event
    from imserver.server import Server
    from imserver.session import Session

#: The event a message becomes when no resource can take it (XEP-0160).
OFFLINE = ("message", "offline")


@implementer(IRoute)
class LocalRoute:
    """The hosts this server serves: the recipient's filters, handlers and delivery."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def route(self, event: Event):
        return self.server.dispatcher.inbound(event)


@implementer(IRoute)
class Unreachable:
    """The default route while nothing else serves remote domains (RFC 6120 §8.3.3.15)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def route(self, event: Event) -> None:
        self.router.bounce(event.stanza, StanzaError("remote-server-not-found"))


class Router:
    """The route table, and the delivery rules for local JIDs."""

    def __init__(self, server: Server, sessions: ISessionRegistry) -> None:
        self.server = server
        self.sessions = sessions
        local = LocalRoute(server)
        self._routes: dict[str, IRoute] = {host: local for host in server.hosts}
        self._default: IRoute = Unreachable(self)

    # -- the route table ------------------------------------------------------------

    def add_route(self, domain: str, route: IRoute) -> None:
        """Send stanzas for C{domain} to C{route} (e.g. a cluster peer serving it)."""
        if domain in self.server.hosts:
            raise ValueError(f"{domain} is served locally")
        self._routes[domain] = route

    def set_default_route(self, route: IRoute) -> None:
        """Where stanzas for every other domain go (server-to-server federation)."""
        self._default = route

    def route(self, event: Event):
        """Stage 4: hand the event to the route that serves its destination's domain."""
        return self._routes.get(event.to.host, self._default).route(event)

    # -- stage 7: RFC 6121 §8 for local JIDs ----------------------------------------

    def deliver(self, event: Event):
        """What happens to a stanza for a local JID that no inbound handler consumed."""
        if event.kind == "message":
            return self._message(event)
        if event.kind == "presence":
            return self._presence(event)
        return self._iq(event)

    def _message(self, event: Event):
        type_, target = event.type, event.target
        if target == "full":
            session = self.sessions.get(event.to.userhost(), event.to.resource)
            if session is not None:
                session.send(event.stanza)
                return None
            if type_ not in ("normal", "chat"):
                # §8.5.3.2.1: groupchat bounces; headline and error are dropped.
                return self._refuse(event) if type_ == "groupchat" else None
            # §8.5.3.2.1: normal and chat are treated as if sent to the bare JID.
        elif target != "bare":
            return self._refuse(event)  # to the server itself: no one serves messages there
        if type_ == "error":
            return None  # §8.5.2.1.3
        if type_ == "groupchat":
            return self._refuse(event)
        recipients = self.message_recipients(event.to.userhost(), type_)
        if recipients:
            self.send_to_sessions(recipients, event.stanza)
            return None
        if type_ == "headline":
            return None  # §8.5.2.2.2: no one to show it to
        return self.server.dispatcher.run(OFFLINE, event, then=self._refuse)

    def _presence(self, event: Event):
        if event.target == "full":
            if event.type in ("available", "unavailable", "error"):
                session = self.sessions.get(event.to.userhost(), event.to.resource)
                if session is not None:
                    session.send(event.stanza)
        elif event.target == "bare" and event.type in ("available", "unavailable"):
            self.send_to_sessions(self.available(event.to.userhost()), event.stanza)
        # Anything else no handler took is dropped (§8.5.2.1.2, §8.5.3.2.2).
        return None

    def _iq(self, event: Event):
        if event.target == "full":
            session = self.sessions.get(event.to.userhost(), event.to.resource)
            if session is not None:
                session.send(event.stanza)
                return None
        if event.type in ("get", "set"):
            return self._refuse(event)  # §8.5.3.2.1, and nobody serves this namespace
        return None

    def _refuse(self, event: Event) -> None:
        self.server.dispatcher.error(event, StanzaError("service-unavailable"))

    # -- sending and bouncing -----------------------------------------------------

    def bounce(self, stanza: domish.Element, error: StanzaError) -> None:
        """Send C{stanza} back to its sender as an error, per RFC 6120 §8.3.1.

        Errors and iq results are never answered with errors (no loops).
        """
        type_ = stanza.getAttribute("type")
        if type_ == "error" or (stanza.name == "iq" and type_ == "result"):
            return
        response = lang.labelled(error).toResponse(stanza)
        to = response.getAttribute("to")
        if to is not None:
            self.send_to_jid(parse_jid(to), response)

    def send_to_jid(self, to: JID, stanza: domish.Element) -> bool:
        """Send a server-made stanza to a full JID, or to every resource of a bare JID.

        Local JIDs get it at once, past filters and handlers (answers, errors,
        pushes); other domains through their route. Returns whether a local
        session got it (True for a stanza handed to another route).
        """
        if to.host not in self.server.hosts:
            sender = stanza.getAttribute("from")
            sender_jid = parse_jid(sender) if sender else JID(next(iter(self.server.hosts)))
            event = self.server.dispatcher.event_for(stanza, sender_jid, to)
            self._routes.get(to.host, self._default).route(event)
            return True
        if to.user is None:
            return False
        bare = to.userhost()
        if to.resource is not None:
            session = self.sessions.get(bare, to.resource)
            if session is None:
                return False
            session.send(stanza)
            return True
        sessions = self.sessions.of(bare)
        self.send_to_sessions(sessions, stanza)
        return bool(sessions)

    @staticmethod
    def send_to_sessions(sessions: list[Session], stanza: domish.Element) -> None:
        """Send one stanza to several sessions, serialising it only once."""
        if len(sessions) == 1:
            sessions[0].send(stanza)
            return
        data = stanza_bytes(stanza)
        for session in sessions:
            session.send_bytes(data)

    # -- who gets what ------------------------------------------------------------

    def available(self, bare: str) -> list[Session]:
        """The available resources of an account."""
        return [s for s in self.sessions.of(bare) if s.available]

    def interested(self, bare: str) -> list[Session]:
        """Resources that asked for the roster: they get pushes and subscription requests."""
        return [s for s in self.sessions.of(bare) if s.interested]

    def message_recipients(self, bare: str, message_type: str) -> list[Session]:
        """Who gets a message sent to a bare JID (RFC 6121 §8.5.2.1).

        Negative-priority resources never do. Chat and normal go to the
        highest-priority ones (all of them when several share it); headline to
        every non-negative one.
        """
        candidates = [s for s in self.sessions.of(bare) if s.available and s.priority >= 0]
        if message_type == "headline" or len(candidates) < 2:
            return candidates
        top = max(s.priority for s in candidates)
        return [s for s in candidates if s.priority == top]
