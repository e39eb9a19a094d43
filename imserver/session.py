"""Bound resources and the registry of the ones on this server."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.words.xish import domish
from zope.interface import implementer

from imserver.interfaces import ISessionRegistry
from imserver.jid import JID

if TYPE_CHECKING:
    from imserver.interfaces import ISessionStream


class Session:
    """One bound resource of one account: what presence and routing need to know.

    C{available} follows the last broadcast presence; C{interested} becomes true
    once the client has asked for its roster (RFC 6121 §2.1.6) and decides who
    gets roster pushes and subscription requests. C{directed} remembers the
    JIDs that got directed presence, so they hear of unavailability too.

    C{stream} is whatever carries the session (an L{ISessionStream}: c2s,
    WebSocket, BOSH). Every stanza for the client goes through it, so a
    feature may put a wrapper in its place to see each one; a wrapper names
    what it wraps C{inner}, down to the transport. One that must see exactly
    what reaches the wire (stream management counts and keeps it for
    resumption) goes directly above the transport, under any other
    (L{wrap_transport}); one that may keep stanzas back (client state) goes
    on top.
    """

    __slots__ = (
        "jid",
        "full",
        "bare",
        "user",
        "host",
        "resource",
        "stream",
        "priority",
        "available",
        "interested",
        "presence",
        "directed",
        "extra",
        "stanzas_in",
    )

    def __init__(self, jid: JID, stream: ISessionStream) -> None:
        self.jid = jid
        self.full = jid.full()
        self.bare = jid.userhost()
        self.user = jid.user
        self.host = jid.host
        self.resource = jid.resource
        self.stream = stream
        self.priority = 0
        self.available = False
        self.interested = False
        #: The last broadcast available presence, as sent (stamped 'from').
        self.presence: domish.Element | None = None
        self.directed: set[str] = set()
        #: Per-session state that feature plugins keep, keyed by plugin name.
        self.extra: dict[str, Any] = {}
        #: Stanzas the client has sent on this session (XEP-0198 acks count from it).
        self.stanzas_in = 0

    def send(self, stanza: domish.Element) -> None:
        self.stream.send_stanza(stanza)

    def push(self, payload: domish.Element) -> None:
        """Send a server-initiated iq set (a roster or privacy 'push') to this resource."""
        iq = domish.Element((None, "iq"))
        iq["type"] = "set"
        iq["id"] = "push-" + secrets.token_hex(6)
        iq["to"] = self.full
        iq.addChild(payload)
        self.send(iq)

    def drained(self):
        """A Deferred firing once the client has read what was sent to it."""
        return self.stream.drained()

    @property
    def connected(self) -> bool:
        return not self.stream.closed

    def send_bytes(self, data: bytes) -> None:
        """Send an already serialised stanza (broadcasts serialise once)."""
        self.stream.send_bytes(data)

    @property
    def transport(self) -> ISessionStream:
        """The stream at the bottom of the chain of wrappers."""
        stream = self.stream
        while getattr(stream, "inner", None) is not None:
            stream = stream.inner
        return stream

    def wrap_transport(self, wrapper: ISessionStream) -> None:
        """Put C{wrapper}, whose C{inner} is L{transport}, directly above it."""
        self._replace(wrapper.inner, wrapper)

    def unwrap(self, wrapper: ISessionStream) -> None:
        """Take C{wrapper} out of the chain: what it wraps takes its place."""
        self._replace(wrapper, wrapper.inner)

    def _replace(self, old: ISessionStream, new: ISessionStream) -> None:
        if self.stream is old:
            self.stream = new
            return
        stream = self.stream
        while stream.inner is not old:
            stream = stream.inner
        stream.inner = new

    def __repr__(self) -> str:
        return f"<Session {self.full}>"


@implementer(ISessionRegistry)
class SessionRegistry:
    """The sessions of this process, by bare JID then resource (in memory)."""

    def __init__(self) -> None:
        self._by_bare: dict[str, dict[str, Session]] = {}

    def add(self, session: Session) -> Session | None:
        """Register C{session}; return the session it replaces (same full JID), if any."""
        resources = self._by_bare.setdefault(session.bare, {})
        old = resources.get(session.resource)
        resources[session.resource] = session
        return old

    def remove(self, session: Session) -> bool:
        """Forget C{session}; True when it was the user's last one."""
        resources = self._by_bare.get(session.bare)
        if not resources or resources.get(session.resource) is not session:
            return False
        del resources[session.resource]
        if resources:
            return False
        del self._by_bare[session.bare]
        return True

    def get(self, bare: str, resource: str) -> Session | None:
        resources = self._by_bare.get(bare)
        return resources.get(resource) if resources else None

    def of(self, bare: str) -> list[Session]:
        """All sessions of an account (a copy: safe to iterate while they change)."""
        resources = self._by_bare.get(bare)
        return list(resources.values()) if resources else []

    def all(self) -> list[Session]:
        return [s for resources in self._by_bare.values() for s in resources.values()]

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_bare.values())
