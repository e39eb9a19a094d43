"""Privacy lists (RFC 3921 §10, XEP-0016) and the blocking command (XEP-0191): one engine.

Rules are evaluated by the pure functions below on (items, roster, stanza kind,
other JID); L{PrivacyEngine} decides which lists apply to a routed stanza and
keeps them in memory for online users.

Which list applies (RFC 3921 §10 business rules 1-3): a session's active list
if it set one, else the user's default list, else none (everything allowed).
There is no layering. For a stanza to or from a bare JID, the lists of every
session concerned are consulted (the resources a message would reach, the
available ones for presence, all of them otherwise; the default list when no
session is) and the stanza is stopped if any of them denies it.

Stanza kinds: an item naming <message/>, <iq/> or <presence-in/> applies to
inbound stanzas of that kind only, <presence-out/> to outbound presence
notifications (available and unavailable: broadcasts, directed presence and
probe answers alike); an item naming no kind applies to every stanza in both
directions, subscription requests and probes included (which the named kinds
do not cover, XEP-0016 §2.1).

What a denial does: a blocked entity's message or iq get/set is answered with
service-unavailable (what an unavailable user causes: the block stays secret),
anything else from it is dropped silently; the user's own stanza to a denied
entity gets not-acceptable (with XEP-0191's <blocked/> when the deciding item
is a block), while stanzas the server emits on the user's behalf are dropped.
Stanzas between a user's own resources, and to the server, are never filtered.

Online users' settings live in memory (loaded when their first session binds,
dropped when the last one ends), so a stanza between two online users without
lists costs two dictionary lookups. For an offline user, the default list is
read from the store only for what would act on them (messages, iq get/set,
subscription stanzas); presence to an offline user has nowhere to go anyway.

Blocking and privacy lists share one store (XEP-0191 §3): the blocklist *is*
the set of items of the user's default privacy list that have type "jid",
action "deny" and apply to every stanza kind (no kind named, or all four).

- Retrieving the blocklist lists those items' JIDs (none without a default list).
- Blocking JIDs puts one such item per JID at the front of the default list
  (below the lowest order in use, renumbering the list only when there is no
  room), so a block always wins over the list's other rules; without a default
  list, the list named L{BLOCKLIST_NAME} is created (or extended) and made the
  default.
- Unblocking removes those items; a default list left empty is removed and the
  default declined. Unblocking all removes every such item.
- A privacy-list client sees the block as ordinary deny items and may edit
  them; whatever it does to the default list (or a change of default list)
  shows in the blocklist, and resources that retrieved the blocklist get
  block/unblock pushes for the difference. A session that activates another
  list escapes the blocklist for that session, as XEP-0191 §3 (item 5) says.
- Every change, from either protocol, pushes the changed list's name to every
  connected resource (§10 rule 10) and sends unavailable presence to contacts
  that can no longer see a resource (current presence to those that can again).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from imserver.jid import JID, parse_jid
from imserver.router import readdressed

if TYPE_CHECKING:
    from imserver.dispatcher import Event
    from imserver.roster import Roster
    from imserver.server import Server
    from imserver.session import Session

log = Logger()

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
_NOTIFICATIONS = frozenset(("available", "unavailable"))
_SUBSCRIPTIONS = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))
#: Stanzas the server answers itself: privacy lists never apply to them.
_SERVER_TARGETS = frozenset(("host", "self", "preauth"))
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
        if type_ not in _NOTIFICATIONS:
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


def _renumbered(item: PrivacyItem, order: int) -> PrivacyItem:
    return PrivacyItem(order, item.action, item.type, item.value, item.stanzas)


def normalized(settings: PrivacySettings) -> PrivacySettings:
    """Settings with each list a tuple in ascending order (how the engine keeps them)."""
    lists = {name: tuple(sorted(items, key=_order)) for name, items in settings.lists.items()}
    default = settings.default if settings.default in lists else None
    return PrivacySettings(default=default, lists=lists)


# -- wire forms both protocol faces use ---------------------------------------------------


def parse_order(value: str | None) -> int:
    """An item's 'order': an xs:unsignedInt, else bad-request."""
    if value is None or not _ORDER.fullmatch(value) or int(value) > 0xFFFFFFFF:
        raise StanzaError("bad-request", text="order must be a non-negative integer")
    return int(value)


def blocking_element(name: str, jids: Iterable[str]) -> domish.Element:
    """<blocklist/>, <block/> or <unblock/> with one item per JID."""
    element = domish.Element((NS_BLOCKING, name))
    for jid in jids:
        element.addElement("item")["jid"] = jid
    return element


# -- the engine -----------------------------------------------------------------------------


class _User:
    """An online user's privacy state: settings (None while loading) and a change lock."""

    __slots__ = ("settings", "guarded", "waiters", "lock")

    def __init__(self) -> None:
        self.settings: PrivacySettings | None = None
        #: False only when no list can apply: the fast path of L{PrivacyEngine.check}.
        self.guarded = True
        self.waiters: list[defer.Deferred] = []
        self.lock = defer.DeferredLock()


class _Side:
    """The rules one party (sender or recipient) brings to a stanza."""

    __slots__ = ("user", "host", "online", "lists", "roster")

    def __init__(self, user: str, host: str, online: bool, lists: list | None) -> None:
        self.user = user
        self.host = host
        self.online = online
        #: The lists that apply (None: an offline user's, still to be read).
        self.lists = lists
        self.roster: Roster | None = None

    def needs_roster(self) -> bool:
        return any(needs_roster(items) for items in self.lists or ())

    def ready(self) -> bool:
        return self.lists is not None and (self.roster is not None or not self.needs_roster())


class PrivacyEngine:
    """Decides, for every routed stanza, whether privacy rules let it through.

    L{check} returns None (deliver), a L{StanzaError} to answer the sender
    with, False (drop silently), or a Deferred firing with one of those when
    rules must first be loaded from the store. The engine stays a no-op until a
    protocol face calls L{enable}.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._enabled = False
        #: host -> user -> state, for users with a session (two lookups, no allocation).
        self._users: dict[str, dict[str, _User]] = {}
        #: Store reads in flight, shared by everyone waiting for the same user.
        self._reads: dict[tuple[str, str], list[defer.Deferred]] = {}

    def enable(self) -> None:
        """Start enforcing (idempotent): called by the privacy and blocking plugins."""
        if self._enabled:
            return
        self._enabled = True
        self.server.dispatcher.hook("session-bound", self._session_bound, priority=100)
        self.server.dispatcher.hook("user-offline", self._user_offline)

    # -- the check on every routed stanza --------------------------------------------

    def check(self, event: Event) -> StanzaError | bool | defer.Deferred | None:
        if not self._enabled or event.target in _SERVER_TARGETS:
            return None
        sender, to = event.sender, event.to
        if sender.user == to.user and sender.host == to.host:
            return None  # never between a user's own resources (XEP-0016 §2.1 note)
        users = self._users
        hosts = users.get(sender.host)
        s = hosts.get(sender.user) if hosts is not None else None
        hosts = users.get(to.host)
        r = hosts.get(to.user) if hosts is not None else None
        if s is not None and r is not None and not s.guarded and not r.guarded:
            return None
        return self._check(event, s, r)

    def _check(self, event: Event, s: _User | None, r: _User | None):
        for state in (s, r):
            if state is not None and state.settings is None:
                return self._loaded(state).addCallback(lambda _: self.check(event))
        sender = self._side(event.sender, s, event, outbound=True)
        recipient = self._side(event.to, r, event, outbound=False)
        if sender is None and recipient is None:
            return None
        if (sender is None or sender.ready()) and (recipient is None or recipient.ready()):
            return self._verdict(event, sender, recipient)
        d = self._complete(event, sender, recipient)
        return d.addErrback(self._check_failed, event)

    def _side(self, jid: JID, state: _User | None, event: Event, outbound: bool) -> _Side | None:
        """Capture now the lists that apply to one party (later changes do not affect it)."""
        if state is None:
            if jid.user is None or jid.host not in self.server.hosts:
                return None
            if not _needs_offline_rules(event):
                return None  # nothing would reach or leave an offline user anyway
            return _Side(jid.user, jid.host, False, None)
        if not state.guarded:
            return None
        lists = self._lists_for(state.settings, jid, event, outbound)
        if not lists:
            return None
        side = _Side(jid.user, jid.host, True, lists)
        if side.needs_roster():
            side.roster = self.server.rosters.cached(jid.user, jid.host)
        return side

    def _lists_for(
        self, settings: PrivacySettings, jid: JID, event: Event, outbound: bool
    ) -> list[Sequence[PrivacyItem]]:
        bare = jid.userhost()
        session = self.server.sessions.get(bare, jid.resource) if jid.resource else None
        if session is not None:
            sessions = [session]
        elif outbound:
            # A full JID without a session (it just ended): the user as a whole.
            sessions = [] if jid.resource else self.server.sessions.of(bare)
        else:
            sessions = self._recipients(bare, event)
        names = {s.extra.get(ACTIVE_KEY) or settings.default for s in sessions} or {
            settings.default
        }
        return [settings.lists[n] for n in names if n is not None and n in settings.lists]

    def _recipients(self, bare: str, event: Event) -> list[Session]:
        """The sessions a stanza for a bare JID would reach (their lists all apply)."""
        router = self.server.router
        if event.kind == "message":
            return router.message_recipients(bare, event.type)
        if event.kind == "presence" and event.type not in _SUBSCRIPTIONS:
            return router.available(bare)
        return self.server.sessions.of(bare)

    @defer.inlineCallbacks
    def _complete(self, event: Event, *sides: _Side | None):
        """Read what is missing (an offline user's default list, a roster), then decide."""
        for side in sides:
            if side is None:
                continue
            if side.lists is None:
                settings = yield self._read(side.user, side.host)
                items = effective_list(settings, None)
                side.lists = [items] if items else []
            if side.needs_roster() and side.roster is None:
                side.roster = yield self.server.rosters.get(side.user, side.host, keep=side.online)
        return self._verdict(event, *sides)

    def _verdict(self, event: Event, sender: _Side | None, recipient: _Side | None):
        if sender is not None:
            kind = stanza_kind(event.kind, event.type, inbound=False)
            for items in sender.lists:
                item = first_match(items, sender.roster, kind, event.to)
                if item is not None and item.action == "deny":
                    return _refused_outbound(event, item)
        if recipient is not None:
            kind = stanza_kind(event.kind, event.type, inbound=True)
            for items in recipient.lists:
                item = first_match(items, recipient.roster, kind, event.sender)
                if item is not None and item.action == "deny":
                    return _refused_inbound(event)
        return None

    def _check_failed(self, failure, event: Event):
        """Rules could not be read: refuse rather than let a blocked stanza through."""
        log.failure("privacy rules unavailable for {event!r}", failure, event=event)
        if _answerable(event) and event.kind != "presence":
            return StanzaError("internal-server-error")
        return False

    # -- loading ------------------------------------------------------------------------

    def _session_bound(self, session: Session) -> None:
        hosts = self._users.setdefault(session.host, {})
        if session.user in hosts:
            return
        state = hosts[session.user] = _User()

        def loaded(settings: PrivacySettings) -> None:
            if self._state(session.user, session.host) is state:
                state.settings = normalized(settings)
                self._update_guard(state, session.bare)
            self._wake(state)

        def failed(failure) -> None:
            log.failure("loading privacy lists of {jid} failed", failure, jid=session.bare)
            if self._state(session.user, session.host) is state:
                del hosts[session.user]  # stanzas fall back to reading the store each time
            self._wake(state)

        self._read(session.user, session.host).addCallbacks(loaded, failed)

    def _user_offline(self, user: str, host: str) -> None:
        hosts = self._users.get(host)
        if hosts is not None:
            hosts.pop(user, None)
            if not hosts:
                del self._users[host]

    def _state(self, user: str | None, host: str) -> _User | None:
        hosts = self._users.get(host)
        return hosts.get(user) if hosts is not None else None

    def _loaded(self, state: _User) -> defer.Deferred:
        """Fire once C{state} has finished loading (at once if it has)."""
        if state.settings is not None:
            return defer.succeed(state)
        d: defer.Deferred = defer.Deferred()
        state.waiters.append(d)
        return d

    @staticmethod
    def _wake(state: _User) -> None:
        waiters, state.waiters = state.waiters, []
        for waiter in waiters:
            waiter.callback(state)

    def _read(self, user: str, host: str) -> defer.Deferred:
        """The stored settings, normalised; concurrent reads for one user share the query."""
        key = (user, host)
        d: defer.Deferred = defer.Deferred()
        waiting = self._reads.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        self._reads[key] = [d]

        def done(settings: PrivacySettings) -> None:
            settings = normalized(settings)
            for waiter in self._reads.pop(key):
                waiter.callback(settings)

        def failed(failure) -> None:
            for waiter in self._reads.pop(key):
                waiter.errback(failure)

        self.server.store.get_privacy(user, host).addCallbacks(done, failed)
        return d

    def _user_state(self, session: Session) -> defer.Deferred:
        """The loaded state of a session's user (loading it if need be)."""
        state = self._state(session.user, session.host)
        if state is None:
            self._session_bound(session)
            state = self._state(session.user, session.host)
        return self._loaded(state).addCallback(
            lambda _: self._state(session.user, session.host) or _offline_error()
        )

    def _update_guard(self, state: _User, bare: str) -> None:
        settings = state.settings
        state.guarded = settings.default is not None or any(
            s.extra.get(ACTIVE_KEY) is not None for s in self.server.sessions.of(bare)
        )

    # -- what the protocol faces ask --------------------------------------------------

    def settings(self, session: Session) -> defer.Deferred:
        """Fire with the user's L{PrivacySettings} (lists as sorted tuples; do not mutate)."""
        return self._user_state(session).addCallback(lambda state: state.settings)

    def admits(self, session: Session, other: JID, kind: str, type_: str) -> bool:
        """Whether C{session}'s rules let a stanza from C{other} reach it.

        For stanzas a plugin hands to a session itself instead of routing them
        (stored subscription requests redelivered at login). Uses the roster as
        cached; refuses while the user's rules are not loaded.
        """
        if not self._enabled:
            return True
        state = self._state(session.user, session.host)
        if state is None or state.settings is None:
            return False
        items = effective_list(state.settings, session.extra.get(ACTIVE_KEY))
        if not items:
            return True
        roster = self.server.rosters.cached(session.user, session.host)
        return is_allowed(items, roster, stanza_kind(kind, type_, inbound=True), other)

    def ready(self, session: Session) -> defer.Deferred:
        """Fire once L{admits} can answer for C{session}: rules and, if they need it, roster loaded.

        Without this, a plugin handing stanzas over right after login could find
        the rules still loading, and L{admits} refuses then.
        """
        if not self._enabled:
            return defer.succeed(None)

        def roster(state: _User):
            items = effective_list(state.settings, session.extra.get(ACTIVE_KEY))
            if items and needs_roster(items):
                return self.server.rosters.get(session.user, session.host, keep=True)
            return None

        return self._user_state(session).addCallback(roster)

    @staticmethod
    def active_name(session: Session) -> str | None:
        return session.extra.get(ACTIVE_KEY)

    def blocklist(self, session: Session) -> defer.Deferred:
        """Fire with the blocked JIDs (the block items of the default list)."""
        return self.settings(session).addCallback(
            lambda settings: blocklist_of(effective_list(settings, None))
        )

    def put_list(
        self, session: Session, name: str, items: Sequence[PrivacyItem], answer: Callable
    ) -> defer.Deferred:
        """Create or replace a list, or remove it when C{items} is empty (§10.7-§10.9)."""

        def change(state: _User):
            settings = state.settings
            if items:
                if name not in settings.lists and len(settings.lists) >= MAX_LISTS:
                    raise StanzaError("not-allowed", text=f"at most {MAX_LISTS} lists")
                if len(items) > MAX_ITEMS:
                    raise StanzaError("not-allowed", text=f"at most {MAX_ITEMS} items")
                return self._commit(session, state, _replace(settings, name, items), {}, answer)
            if name not in settings.lists:
                raise StanzaError("item-not-found")
            if self._applies_elsewhere(session, settings, name):
                raise StanzaError("conflict", text="the list is in use by another resource")
            return self._commit(session, state, _replace(settings, name, ()), {}, answer)

        return self._locked(session, change)

    def set_active(self, session: Session, name: str | None, answer: Callable) -> defer.Deferred:
        """Set (or with None, decline) this session's active list (§10.5)."""

        def change(state: _User):
            if name is not None and name not in state.settings.lists:
                raise StanzaError("item-not-found")
            return self._commit(session, state, state.settings, {session: name}, answer)

        return self._locked(session, change)

    def set_default(self, session: Session, name: str | None, answer: Callable) -> defer.Deferred:
        """Set (or with None, decline) the user's default list (§10.6)."""

        def change(state: _User):
            settings = state.settings
            if name is not None and name not in settings.lists:
                raise StanzaError("item-not-found")
            if name == settings.default:
                answer()
                return None
            if settings.default is not None and self._applies_elsewhere(
                session, settings, settings.default
            ):
                raise StanzaError("conflict", text="the default list is in use by another resource")
            new = PrivacySettings(default=name, lists=settings.lists)
            return self._commit(session, state, new, {}, answer)

        return self._locked(session, change)

    def block(self, session: Session, jids: Sequence[str], answer: Callable) -> defer.Deferred:
        """XEP-0191 block: deny items at the front of the default list (created if none)."""

        def change(state: _User):
            settings = state.settings
            name = settings.default or BLOCKLIST_NAME
            if name not in settings.lists and len(settings.lists) >= MAX_LISTS:
                raise StanzaError("not-allowed", text=f"at most {MAX_LISTS} lists")
            items = with_blocked(settings.lists.get(name, ()), jids)
            if len(items) > MAX_ITEMS:
                raise StanzaError("not-allowed", text=f"at most {MAX_ITEMS} items")
            new = _replace(settings, name, items)
            new.default = name
            return self._commit(session, state, new, {}, answer)

        return self._locked(session, change)

    def unblock(
        self, session: Session, jids: Sequence[str] | None, answer: Callable
    ) -> defer.Deferred:
        """XEP-0191 unblock (all of them when C{jids} is None)."""

        def change(state: _User):
            settings = state.settings
            name = settings.default
            current = settings.lists.get(name, ()) if name is not None else ()
            items = without_blocked(current, jids)
            if items == tuple(current):
                answer()
                return None
            new = _replace(settings, name, items)
            return self._commit(session, state, new, {}, answer, unblock_all=jids is None)

        return self._locked(session, change)

    # -- changes ------------------------------------------------------------------------

    def _locked(self, session: Session, change: Callable[[_User], Any]) -> defer.Deferred:
        """Run C{change} on the loaded state, one change per user at a time."""
        return self._user_state(session).addCallback(lambda state: state.lock.run(change, state))

    def _applies_elsewhere(self, session: Session, settings: PrivacySettings, name: str) -> bool:
        """Whether list C{name} is in force for a connected resource other than C{session}."""
        for other in self.server.sessions.of(session.bare):
            if other is session:
                continue
            active = other.extra.get(ACTIVE_KEY)
            if active == name or (active is None and settings.default == name):
                return True
        return False

    @defer.inlineCallbacks
    def _commit(
        self,
        session: Session,
        state: _User,
        new: PrivacySettings,
        actives: dict[Session, str | None],
        answer: Callable,
        unblock_all: bool = False,
    ):
        """Store a change, tell contacts what it changes for them, apply it, answer, push.

        Presence that becomes blocked is withdrawn (unavailable) *before* the new
        rules apply, so it still passes the old ones; presence that becomes
        allowed is sent after, so it passes the new ones.
        """
        old = state.settings
        user, host, bare = session.user, session.host, session.bare
        changed_names = [
            name
            for name in set(old.lists) | set(new.lists)
            if old.lists.get(name) != new.lists.get(name)
        ]
        if changed_names or new.default != old.default:
            # One transaction: never a stored default naming a list that was not stored.
            yield self.server.store.write_privacy(
                user,
                host,
                {name: list(new.lists.get(name, ())) for name in changed_names},
                new.default,
            )
        # A removed list is active nowhere any more.
        sessions = self.server.sessions.of(bare)
        for other in sessions:
            active = actives.get(other, other.extra.get(ACTIVE_KEY))
            if active is not None and active not in new.lists:
                actives[other] = None

        def active_now(other: Session) -> str | None:
            return other.extra.get(ACTIVE_KEY)

        before = {s: effective_list(old, active_now(s)) for s in sessions}
        after = {s: effective_list(new, actives.get(s, active_now(s))) for s in sessions}
        moved = [s for s in sessions if s.available and before[s] != after[s]]
        later: list[Callable[[], Any]] = []
        if moved:
            roster = yield self.server.rosters.get(user, host, keep=True)
            for s in moved:
                later.extend(self._withdraw(s, before[s] or (), after[s] or (), roster))

        state.settings = new
        for other, name in actives.items():
            if name is None:
                other.extra.pop(ACTIVE_KEY, None)
            else:
                other.extra[ACTIVE_KEY] = name
        self._update_guard(state, bare)
        for send in later:
            send()
        answer()

        sessions = self.server.sessions.of(bare)
        for name in sorted(changed_names):
            payload = domish.Element((NS_PRIVACY, "query"))
            payload.addElement("list")["name"] = name
            for s in sessions:
                s.push(payload)
        self._push_blocklist(
            sessions,
            blocklist_of(effective_list(old, None)),
            blocklist_of(effective_list(new, None)),
            unblock_all,
        )

    def _withdraw(
        self,
        session: Session,
        old: Sequence[PrivacyItem],
        new: Sequence[PrivacyItem],
        roster: Roster,
    ) -> list[Callable[[], Any]]:
        """Presence changes for one resource whose rules change (XEP-0016 §2.10-§2.11).

        Sends now what must pass the old rules; returns what must wait for the new.
        """
        dispatcher = self.server.dispatcher
        later: list[Callable[[], Any]] = []
        # Contacts that see this resource: subscribers and directed-presence recipients.
        seen = [item.jid for item in roster.items.values() if item.subscribed_from]
        subscribers = set(seen)
        seen += sorted(j for j in session.directed if parse_jid(j).userhost() not in subscribers)
        for contact in seen:
            jid = parse_jid(contact)
            was = is_allowed(old, roster, "presence-out", jid)
            now = is_allowed(new, roster, "presence-out", jid)
            if was and not now:
                dispatcher.deliver(_unavailable(session.full, contact), session.jid, jid)
            elif now and not was and session.presence is not None:
                stanza = readdressed(session.presence, contact)
                later.append(lambda s=stanza, j=jid: dispatcher.deliver(s, session.jid, j))
        # Contacts this resource sees: their presence is hidden, or shown again.
        for item in roster.items.values():
            if not item.subscribed_to:
                continue
            for peer in self.server.router.available(item.jid):
                was = is_allowed(old, roster, "presence-in", peer.jid)
                now = is_allowed(new, roster, "presence-in", peer.jid)
                if was and not now:
                    session.send(_unavailable(peer.full, session.full))
                elif now and not was and peer.presence is not None:
                    stanza = readdressed(peer.presence, session.full, peer.full)
                    later.append(lambda s=stanza, p=peer: dispatcher.deliver(s, p.jid, session.jid))
        return later

    @staticmethod
    def _push_blocklist(
        sessions: list[Session], old: list[str], new: list[str], unblock_all: bool
    ) -> None:
        """XEP-0191 pushes of the blocklist's difference, to resources that retrieved it.

        An unblock-all command is pushed as such (an empty <unblock/>, §3.5);
        any other change as the JIDs it unblocked and blocked.
        """
        targets = [s for s in sessions if s.extra.get(BLOCKLIST_KEY)]
        if not targets or old == new:
            return
        payloads = []
        if unblock_all:
            payloads.append(blocking_element("unblock", ()))
        else:
            removed = [j for j in old if j not in new]
            added = [j for j in new if j not in old]
            if removed:
                payloads.append(blocking_element("unblock", removed))
            if added:
                payloads.append(blocking_element("block", added))
        for payload in payloads:
            for s in targets:
                s.push(payload)


# -- helpers ------------------------------------------------------------------------------


def _replace(settings: PrivacySettings, name: str, items: Sequence[PrivacyItem]) -> PrivacySettings:
    """New settings with list C{name} replaced (removed when C{items} is empty).

    Removing the default list declines the default.
    """
    lists = dict(settings.lists)
    if items:
        lists[name] = tuple(sorted(items, key=_order))
        default = settings.default
    else:
        lists.pop(name, None)
        default = None if settings.default == name else settings.default
    return PrivacySettings(default=default, lists=lists)


def _needs_offline_rules(event: Event) -> bool:
    """Stanzas that act on an offline user (stored, answered or changing the roster)."""
    if event.kind == "message":
        return event.type != "error"
    if event.kind == "iq":
        return event.type in ("get", "set")
    return event.type in _SUBSCRIPTIONS


def _answerable(event: Event) -> bool:
    return event.type != "error" and not (event.kind == "iq" and event.type == "result")


def _refused_outbound(event: Event, item: PrivacyItem) -> StanzaError | bool:
    """The user's own stanza to a blocked entity: not-acceptable (XEP-0016 §2.13, XEP-0191).

    Stanzas the server emits on the user's behalf (broadcasts, probe answers)
    are dropped silently.
    """
    if event.origin is None or not _answerable(event):
        return False
    blocked = domish.Element((NS_BLOCKING_ERRORS, "blocked")) if is_block_item(item) else None
    return StanzaError("not-acceptable", type="cancel", appCondition=blocked)


def _refused_inbound(event: Event) -> StanzaError | bool:
    """A blocked entity's stanza: service-unavailable for message and iq get/set, else dropped.

    The error is the one an unavailable user would cause: the block stays secret.
    """
    if event.kind == "message" and event.type != "error":
        return StanzaError("service-unavailable")
    if event.kind == "iq" and event.type in ("get", "set"):
        return StanzaError("service-unavailable")
    return False


def _unavailable(sender: str, to: str) -> domish.Element:
    presence = domish.Element((None, "presence"))
    presence["type"] = "unavailable"
    presence["from"] = sender
    presence["to"] = to
    return presence


def _offline_error():
    raise StanzaError("internal-server-error", text="privacy lists could not be loaded")
