"""JID parsing with a bounded cache.

Stringprep costs tens of microseconds per JID, and the same few JIDs appear on
most stanzas, so parsed JIDs are memoised. Twisted's own C{internJID} cache is
unbounded and would let a client grow server memory with made-up addresses;
this one is a bounded LRU.
"""

from __future__ import annotations

from functools import lru_cache

from twisted.words.protocols.jabber.jid import JID, InvalidFormat

__all__ = ["JID", "InvalidFormat", "parse_jid", "prepared_jid"]


@lru_cache(maxsize=16384)
def parse_jid(value: str) -> JID:
    """Parse and stringprep a JID; raises L{InvalidFormat} for invalid input.

    The returned JID is shared: treat it as immutable.
    """
    if not value or len(value) > 3071:  # RFC 7622 §3.1: three parts of at most 1023 octets
        raise InvalidFormat("JID empty or too long")
    slash = value.find("/")
    at = value.find("@", 0, slash if slash != -1 else len(value))
    # Twisted reads "@host" as a domain and "a@host/" as a bare JID; RFC 7622
    # forbids an empty localpart or resourcepart after its separator.
    if at == 0 or slash == len(value) - 1:
        raise InvalidFormat("empty localpart or resourcepart")
    parsed = JID(value)
    for part in (parsed.user, parsed.host, parsed.resource):
        if part is not None and len(part.encode()) > 1023:
            raise InvalidFormat("JID part too long")
    return parsed


def prepared_jid(user: str | None, host: str, resource: str | None) -> JID:
    """A JID from parts that were stringprepped already (a bound session's).

    Twisted's C{JID(tuple=...)} would run all three profiles again; a login
    has prepared each part on its way in, so this only assembles them.
    """
    jid = JID.__new__(JID)
    jid.user, jid.host, jid.resource = user or None, host, resource or None
    return jid
