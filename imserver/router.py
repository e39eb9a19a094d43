"""Delivery primitives: which local sessions get a stanza, and sending it once.

The RFC 6121 §8 rules that choose recipients live here because messages,
presence, offline storage and privacy all ask the same questions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from imserver.jid import JID
from imserver.serialize import stanza_bytes

if TYPE_CHECKING:
    from imserver.server import Server
    from imserver.session import Session


class Router:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.sessions = server.sessions
        #: Where stanzas for domains we do not serve go (s2s); None: they bounce.
        self.default_route = None

    def set_default_route(self, route) -> None:
        """Route every non-local domain through C{route} (its C{route(event)}, C{send_stanza})."""
        self.default_route = route

    def send_to_jid(self, to: JID, stanza: domish.Element) -> bool:
        """Send a server-made stanza to a local full JID, or to every resource of a bare JID.

        Returns whether any session got it. Stanzas for other domains go to the
        default route (s2s) when there is one.
        """
        if to.host not in self.server.hosts:
            if self.default_route is None:
                return False
            self.default_route.send_stanza(stanza)
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

    def iq_to_full(self, event) -> bool:
        """An iq for a client's full JID: that session, or service-unavailable (RFC 6121 §8.5.3)."""
        session = self.sessions.get(event.to.userhost(), event.to.resource)
        if session is None:
            if event.type in ("get", "set"):
                raise StanzaError("service-unavailable")
            return True
        session.send(event.stanza)
        return True

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


def readdressed(stanza: domish.Element, to: str, sender: str | None = None) -> domish.Element:
    """A copy of C{stanza} with new addresses, sharing (not copying) its children.

    Broadcasts send the same payload to many JIDs; only the envelope differs.
    """
    copy = domish.Element((stanza.uri, stanza.name), stanza.defaultUri)
    copy.attributes = dict(stanza.attributes)
    copy.children = stanza.children
    copy["to"] = to
    if sender is not None:
        copy["from"] = sender
    return copy
