"""The privacy filters on every routed stanza, and the online users' rules in memory.

The dispatcher consults L{PrivacyEngine.outbound} at stage 2 (the sender's
rules) and L{PrivacyEngine.inbound} at stage 5 (the recipient's rules), for
client stanzas and for those the server emits on a user's behalf alike. Each
answers None (pass), a L{StanzaError} to answer the sender with, False (drop
silently), or a Deferred firing with one of those when rules must first be
read from the store. Nothing here sends a stanza.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from imserver.jid import JID
from imserver.privacy.rules import (
    ACTIVE_KEY,
    NS_BLOCKING_ERRORS,
    SERVER_TARGETS,
    SUBSCRIPTIONS,
    PrivacyItem,
    PrivacySettings,
    blocklist_of,
    effective_list,
    first_match,
    is_allowed,
    is_block_item,
    needs_roster,
    normalized,
    stanza_kind,
)

if TYPE_CHECKING:
    from imserver.dispatcher import Event
    from imserver.roster import Roster
    from imserver.server import Server
    from imserver.session import Session

log = Logger()


class UserState:
    """An online user's privacy state: settings (None while loading) and a change lock."""

    __slots__ = ("settings", "guarded", "waiters", "lock")

    def __init__(self) -> None:
        self.settings: PrivacySettings | None = None
        #: False only when no list can apply: the filters' fast path.
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

    It stays a no-op until a protocol face calls L{enable}: then it registers
    itself as the dispatcher's outbound and inbound filter.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._enabled = False
        #: host -> user -> state, for users with a session (two lookups, no allocation).
        self._users: dict[str, dict[str, UserState]] = {}
        #: Store reads in flight, shared by everyone waiting for the same user.
        self._reads: dict[tuple[str, str], list[defer.Deferred]] = {}

    def enable(self) -> None:
        """Start enforcing (idempotent): called by the privacy and blocking plugins."""
        if self._enabled:
            return
        self._enabled = True
        dispatcher = self.server.dispatcher
        dispatcher.add_filter("out", self.outbound)
        dispatcher.add_filter("in", self.inbound)
        dispatcher.hook("session-bound", self._session_bound, priority=100)
        dispatcher.hook("user-offline", self._user_offline)

    # -- the filters ---------------------------------------------------------------

    def outbound(self, event: Event):
        """Stage 2: the sender's rules (when the sender is a local user)."""
        return self._filter(event, event.sender, True)

    def inbound(self, event: Event):
        """Stage 5: the recipient's rules."""
        return self._filter(event, event.to, False)

    def _filter(self, event: Event, jid: JID, outbound: bool):
        if event.target in SERVER_TARGETS:
            return None
        other = event.to if outbound else event.sender
        if jid.user == other.user and jid.host == other.host:
            return None  # never between a user's own resources (XEP-0016 §2.1 note)
        hosts = self._users.get(jid.host)
        state = hosts.get(jid.user) if hosts is not None else None
        if state is not None and not state.guarded:
            return None
        if state is not None and state.settings is None:
            return self._loaded(state).addCallback(lambda _: self._filter(event, jid, outbound))
        side = self._side(jid, state, event, outbound)
        if side is None:
            return None
        if side.ready():
            return _verdict(event, side, outbound)
        d = self._complete(event, side, outbound)
        return d.addErrback(self._check_failed, event)

    def _side(self, jid: JID, state: UserState | None, event: Event, outbound: bool):
        """Capture now the lists that apply to one party (later changes do not affect it)."""
        if state is None:
            if jid.user is None or jid.host not in self.server.hosts:
                return None
            if not _needs_offline_rules(event):
                return None  # nothing would reach or leave an offline user anyway
            return _Side(jid.user, jid.host, False, None)
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
        sessions = self.server.sessions
        session = sessions.get(bare, jid.resource) if jid.resource else None
        if session is not None:
            concerned = [session]
        elif outbound:
            # A full JID without a session (it just ended): the user as a whole.
            concerned = [] if jid.resource else sessions.of(bare)
        else:
            concerned = self._recipients(bare, event)
        names = {s.extra.get(ACTIVE_KEY) or settings.default for s in concerned} or {
            settings.default
        }
        return [settings.lists[n] for n in names if n is not None and n in settings.lists]

    def _recipients(self, bare: str, event: Event) -> list[Session]:
        """The sessions a stanza for a bare JID would reach (their lists all apply)."""
        router = self.server.router
        if event.kind == "message":
            return router.message_recipients(bare, event.type)
        if event.kind == "presence" and event.type not in SUBSCRIPTIONS:
            return router.available(bare)
        return self.server.sessions.of(bare)

    @defer.inlineCallbacks
    def _complete(self, event: Event, side: _Side, outbound: bool):
        """Read what is missing (an offline user's default list, a roster), then decide."""
        if side.lists is None:
            settings = yield self._read(side.user, side.host)
            items = effective_list(settings, None)
            side.lists = [items] if items else []
        if side.needs_roster() and side.roster is None:
            side.roster = yield self.server.rosters.get(side.user, side.host, keep=side.online)
        return _verdict(event, side, outbound)

    def _check_failed(self, failure, event: Event):
        """Rules could not be read: refuse rather than let a blocked stanza through."""
        log.failure("privacy rules unavailable for {event!r}", failure, event=event)
        if _answerable(event) and event.kind != "presence":
            return StanzaError("internal-server-error")
        return False

    # -- loading ------------------------------------------------------------------

    def _session_bound(self, session: Session) -> None:
        hosts = self._users.setdefault(session.host, {})
        if session.user in hosts:
            return
        state = hosts[session.user] = UserState()

        def loaded(settings: PrivacySettings) -> None:
            if self.state(session.user, session.host) is state:
                state.settings = settings
                self.update_guard(state, session.bare)
            self._wake(state)

        def failed(failure) -> None:
            log.failure("loading privacy lists of {jid} failed", failure, jid=session.bare)
            if self.state(session.user, session.host) is state:
                del hosts[session.user]  # stanzas fall back to reading the store each time
            self._wake(state)

        self._read(session.user, session.host).addCallbacks(loaded, failed)

    def _user_offline(self, user: str, host: str) -> None:
        hosts = self._users.get(host)
        if hosts is not None:
            hosts.pop(user, None)
            if not hosts:
                del self._users[host]

    def state(self, user: str | None, host: str) -> UserState | None:
        """An online user's loaded-or-loading state."""
        hosts = self._users.get(host)
        return hosts.get(user) if hosts is not None else None

    def _loaded(self, state: UserState) -> defer.Deferred:
        """Fire once C{state} has finished loading (at once if it has)."""
        if state.settings is not None:
            return defer.succeed(state)
        d: defer.Deferred = defer.Deferred()
        state.waiters.append(d)
        return d

    @staticmethod
    def _wake(state: UserState) -> None:
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

    def user_state(self, session: Session) -> defer.Deferred:
        """The loaded state of a session's user (loading it if need be)."""
        state = self.state(session.user, session.host)
        if state is None:
            self._session_bound(session)
            state = self.state(session.user, session.host)
        return self._loaded(state).addCallback(
            lambda _: self.state(session.user, session.host) or _offline_error()
        )

    def update_guard(self, state: UserState, bare: str) -> None:
        """Turn the fast path on when no list can apply to the user's stanzas."""
        settings = state.settings
        state.guarded = settings.default is not None or any(
            s.extra.get(ACTIVE_KEY) is not None for s in self.server.sessions.of(bare)
        )

    # -- what the protocol faces ask --------------------------------------------------

    def settings(self, session: Session) -> defer.Deferred:
        """Fire with the user's L{PrivacySettings} (lists as sorted tuples; do not mutate)."""
        return self.user_state(session).addCallback(lambda state: state.settings)

    def admits(self, session: Session, other: JID, kind: str, type_: str) -> bool:
        """Whether C{session}'s rules let a stanza from C{other} reach it.

        For stanzas a plugin hands to a session itself instead of routing them
        (stored subscription requests redelivered at login). Uses the roster as
        cached; refuses while the user's rules are not loaded.
        """
        if not self._enabled:
            return True
        state = self.state(session.user, session.host)
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

        def roster(state):
            items = effective_list(state.settings, session.extra.get(ACTIVE_KEY))
            if items and needs_roster(items):
                return self.server.rosters.get(session.user, session.host, keep=True)
            return None

        return self.user_state(session).addCallback(roster)

    @staticmethod
    def active_name(session: Session) -> str | None:
        return session.extra.get(ACTIVE_KEY)

    def blocklist(self, session: Session) -> defer.Deferred:
        """Fire with the blocked JIDs (the block items of the default list)."""
        return self.settings(session).addCallback(
            lambda settings: blocklist_of(effective_list(settings, None))
        )


def _verdict(event: Event, side: _Side, outbound: bool):
    kind = stanza_kind(event.kind, event.type, inbound=not outbound)
    other = event.to if outbound else event.sender
    for items in side.lists:
        item = first_match(items, side.roster, kind, other)
        if item is not None and item.action == "deny":
            return _refused_outbound(event, item) if outbound else _refused_inbound(event)
    return None


def _needs_offline_rules(event: Event) -> bool:
    """Stanzas that act on an offline user (stored, answered or changing the roster)."""
    if event.kind == "message":
        return event.type != "error"
    if event.kind == "iq":
        return event.type in ("get", "set")
    return event.type in SUBSCRIPTIONS


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


def _offline_error():
    raise StanzaError("internal-server-error", text="privacy lists could not be loaded")
