"""Privacy rules (RFC 3921 §10, XEP-0016) and the blocklist (XEP-0191) as pure data.

The model storage reads and writes, and the evaluation every filter uses: no
reactor, no I/O, nothing that sends a stanza. L{imserver.privacy} (the
package's docstring) explains the rules; the engine applies them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.words.protocols.jabber.error import StanzaError

from imserver.jid import JID, parse_jid

if TYPE_CHECKING:
    from imserver.roster import Roster

NS_PRIVACY = "jabber:iq:privacy"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"

#: The stanza kinds an item may name; an item naming none applies to all.
STANZA_KINDS = ("message", "iq", "presence-in", "presence-out")
ITEM_TYPES = ("jid", "group", "subscription")
ACTIONS = ("allow", "deny")
SUBSCRIPTION_VALUES = ("none", "to", "from", "both")
#: The list blocking creates (and makes the default) when the user has no default list.
BLOCKLIST_NAME = "blocklist"
#: Keys in L{Session.extra}: the session's active list name; whether it retrieved the blocklist.
ACTIVE_KEY = "privacy"
BLOCKLIST_KEY = "blocking"
MAX_LISTS = 64
MAX_ITEMS = 1000

_ALL_KINDS = frozenset(STANZA_KINDS)
NOTIFICATIONS = frozenset(("available", "unavailable"))
SUBSCRIPTIONS = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))
#: Stanzas the server answers itself: privacy lists never apply to them.
SERVER_TARGETS = frozenset(("host", "self", "preauth"))
_ORDER = re.compile(r"[0-9]{1,10}")


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


# -- evaluation: pure functions -----------------------------------------------------


def stanza_kind(kind: str, type_: str, inbound: bool) -> str | None:
    """The item kind a stanza counts as, or None when only items naming no kind apply.

    Inbound: message, iq, presence-in (notifications only). Outbound:
    presence-out (notifications only); <message/> and <iq/> items concern
    incoming stanzas only (XEP-0016 §2.1).
    """
    if kind == "presence":
        if type_ not in NOTIFICATIONS:
            return None
        return "presence-in" if inbound else "presence-out"
    return kind if inbound else None


def jid_matches(value: str, other: JID) -> bool:
    """Whether a jid item's value covers C{other} (XEP-0016 §2.1).

    user@domain/resource: that resource only; user@domain: any of its
    resources; domain/resource: that resource of any entity at domain;
    domain: the domain, everything at it and its subdomains.
    """
    rule = parse_jid(value)
    if rule.user is not None:
        if rule.user != other.user or rule.host != other.host:
            return False
        return rule.resource is None or rule.resource == other.resource
    if rule.resource is not None:
        return rule.host == other.host and rule.resource == other.resource
    return other.host == rule.host or other.host.endswith("." + rule.host)


def item_matches(item: PrivacyItem, roster: Roster | None, other: JID) -> bool:
    """Whether C{item}'s type/value cover C{other}, given the list owner's roster."""
    if item.type is None:
        return True
    if item.type == "jid":
        return jid_matches(item.value, other)
    entry = roster.items.get(other.userhost()) if roster is not None else None
    if item.type == "group":
        return entry is not None and item.value in entry.groups
    if item.type == "subscription":
        # "none" includes entities that are not in the roster at all.
        return (entry.subscription if entry is not None else "none") == item.value
    return False


def first_match(
    items: Iterable[PrivacyItem], roster: Roster | None, kind: str | None, other: JID
) -> PrivacyItem | None:
    """The item that decides, by ascending order (RFC 3921 §10 rules 5-6); None if none."""
    for item in sorted(items, key=_order):
        if item.stanzas and kind not in item.stanzas:
            continue
        if item_matches(item, roster, other):
            return item
    return None


def is_allowed(
    items: Iterable[PrivacyItem], roster: Roster | None, kind: str | None, other: JID
) -> bool:
    """Whether a list lets the stanza through (no match means allow, rule 7)."""
    item = first_match(items, roster, kind, other)
    return item is None or item.action == "allow"


def needs_roster(items: Iterable[PrivacyItem]) -> bool:
    return any(item.type in ("group", "subscription") for item in items)


# -- the blocklist as items of the default list ---------------------------------------


def is_block_item(item: PrivacyItem) -> bool:
    """A blocklist entry: deny one JID for every stanza kind."""
    return (
        item.type == "jid"
        and item.action == "deny"
        and (not item.stanzas or item.stanzas >= _ALL_KINDS)
    )


def blocklist_of(items: Iterable[PrivacyItem] | None) -> list[str]:
    """The blocked JIDs a list holds, in order, each once."""
    seen: list[str] = []
    for item in sorted(items or (), key=_order):
        if is_block_item(item) and item.value not in seen:
            seen.append(item.value)
    return seen


def with_blocked(items: Sequence[PrivacyItem], jids: Sequence[str]) -> tuple[PrivacyItem, ...]:
    """C{items} with a block item per JID in front, in the order given.

    The new items take the orders just below the lowest one in use; the rest is
    renumbered (keeping its sequence) only when there is no room.
    """
    jids = list(dict.fromkeys(jids))
    rest = sorted(
        (i for i in items if not (is_block_item(i) and i.value in jids)),
        key=_order,
    )
    lowest = rest[0].order if rest else len(jids)
    if lowest >= len(jids):
        start = lowest - len(jids)
    else:
        start = 0
        rest = [_renumbered(item, len(jids) + n) for n, item in enumerate(rest)]
    blocks = [PrivacyItem(start + n, "deny", "jid", jid) for n, jid in enumerate(jids)]
    return tuple(blocks + rest)


def without_blocked(
    items: Sequence[PrivacyItem], jids: Iterable[str] | None
) -> tuple[PrivacyItem, ...]:
    """C{items} without the block items for C{jids} (all of them when None)."""
    wanted = None if jids is None else set(jids)
    return tuple(
        sorted(
            (i for i in items if not (is_block_item(i) and (wanted is None or i.value in wanted))),
            key=_order,
        )
    )


def effective_list(settings: PrivacySettings, active: str | None) -> Sequence[PrivacyItem] | None:
    """The list in force for a session: its active list, else the default (no layering)."""
    name = active if active is not None else settings.default
    return settings.lists.get(name) if name is not None else None


def _order(item: PrivacyItem) -> int:
    return item.order


def ordered(items: Iterable[PrivacyItem]) -> tuple[PrivacyItem, ...]:
    """A list's items by ascending order, as the engine keeps them."""
    return tuple(sorted(items, key=_order))


def _renumbered(item: PrivacyItem, order: int) -> PrivacyItem:
    return PrivacyItem(order, item.action, item.type, item.value, item.stanzas)


def normalized(settings: PrivacySettings) -> PrivacySettings:
    """Settings with each list a tuple in ascending order (how the engine keeps them)."""
    lists = {name: ordered(items) for name, items in settings.lists.items()}
    default = settings.default if settings.default in lists else None
    return PrivacySettings(default=default, lists=lists)


# -- wire forms both protocol faces use ---------------------------------------------------


def parse_order(value: str | None) -> int:
    """An item's 'order': an xs:unsignedInt, else bad-request."""
    if value is None or not _ORDER.fullmatch(value) or int(value) > 0xFFFFFFFF:
        raise StanzaError("bad-request", text="order must be a non-negative integer")
    return int(value)
