"""Privacy-list model (RFC 3921 §10)."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The stanza kinds an item may name; an item naming none applies to all.
STANZA_KINDS = ("message", "iq", "presence-in", "presence-out")


@dataclass(frozen=True)
class PrivacyItem:
    """One rule: match C{type}/C{value}, then C{action} for the named stanza kinds."""

    order: int
    action: str  # "allow" | "deny"
    type: str | None = None  # "jid" | "group" | "subscription" | None (fall-through)
    value: str | None = None
    stanzas: frozenset[str] = frozenset()


@dataclass
class PrivacySettings:
    """A user's stored privacy lists and the name of the default one."""

    default: str | None = None
    lists: dict[str, list[PrivacyItem]] = field(default_factory=dict)


class PrivacyEngine:
    """Decides, for every routed stanza, whether privacy rules let it through.

    L{check} returns None (deliver), a L{StanzaError} to answer the sender
    with, False (drop silently), or a Deferred firing with one of those when
    rules must first be loaded from the store.
    """

    def __init__(self, server) -> None:
        self.server = server

    def check(self, event):
        return None
