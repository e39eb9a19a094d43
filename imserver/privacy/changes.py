"""Changes to privacy lists and the blocklist, from either protocol face.

Each change runs alone among the user's changes, is stored first, then tells
contacts what it changes for them (presence withdrawn or shown again), applies
to the engine's cache, answers the request, and fires the C{privacy-changed}
hook with a L{PrivacyChange}, from which the two protocol faces push.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.words.protocols.jabber.error import StanzaError

from imserver import stanzas
from imserver.jid import parse_jid
from imserver.privacy.rules import (
    ACTIVE_KEY,
    BLOCKLIST_NAME,
    MAX_ITEMS,
    MAX_LISTS,
    PrivacyItem,
    PrivacySettings,
    blocklist_of,
    effective_list,
    is_allowed,
    ordered,
    with_blocked,
    without_blocked,
)

if TYPE_CHECKING:
    from imserver.privacy.engine import PrivacyEngine, UserState
    from imserver.roster import Roster
    from imserver.session import Session


@dataclass(frozen=True)
class PrivacyChange:
    """What a change did, for the protocol faces' pushes (the C{privacy-changed} hook)."""

    bare: str
    #: Names of the lists whose items changed (created, edited or removed), sorted.
    lists: tuple[str, ...]
    blocked_before: tuple[str, ...]
    blocked_after: tuple[str, ...]
    #: The change was XEP-0191's unblock-all command.
    unblock_all: bool = False


class PrivacyChanges:
    """The operations both protocol faces offer, on the engine's in-memory state."""

    def __init__(self, engine: PrivacyEngine) -> None:
        self.engine = engine
        self.server = engine.server

    def put_list(
        self, session: Session, name: str, items: Sequence[PrivacyItem], answer: Callable
    ) -> defer.Deferred:
        """Create or replace a list, or remove it when C{items} is empty (§10.7-§10.9)."""

        def change(state: UserState):
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

        def change(state: UserState):
            if name is not None and name not in state.settings.lists:
                raise StanzaError("item-not-found")
            return self._commit(session, state, state.settings, {session: name}, answer)

        return self._locked(session, change)

    def set_default(self, session: Session, name: str | None, answer: Callable) -> defer.Deferred:
        """Set (or with None, decline) the user's default list (§10.6)."""

        def change(state: UserState):
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

        def change(state: UserState):
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

        def change(state: UserState):
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

    # -- the one way a change is made ---------------------------------------------

    def _locked(self, session: Session, change: Callable[[UserState], Any]) -> defer.Deferred:
        """Run C{change} on the loaded state, one change per user at a time."""
        return self.engine.user_state(session).addCallback(
            lambda state: state.lock.run(change, state)
        )

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
        state: UserState,
        new: PrivacySettings,
        actives: dict[Session, str | None],
        answer: Callable,
        unblock_all: bool = False,
    ):
        """Store a change, tell contacts what it changes for them, apply it, answer, announce.

        Presence that becomes blocked is withdrawn (unavailable) *before* the new
        rules apply, so it still passes the old ones; presence that becomes
        allowed is sent after, so it passes the new ones.
        """
        old = state.settings
        user, host, bare = session.user, session.host, session.bare
        changed_names = sorted(
            name
            for name in set(old.lists) | set(new.lists)
            if old.lists.get(name) != new.lists.get(name)
        )
        if changed_names or new.default != old.default:
            # One transaction: never a stored default naming a list that was not stored.
            lists = {name: list(new.lists.get(name, ())) for name in changed_names}
            yield self.server.store.write_privacy(user, host, lists, new.default)
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
        self.engine.update_guard(state, bare)
        for send in later:
            send()
        answer()
        change = PrivacyChange(
            bare,
            tuple(changed_names),
            tuple(blocklist_of(effective_list(old, None))),
            tuple(blocklist_of(effective_list(new, None))),
            unblock_all,
        )
        yield self.server.dispatcher.fire("privacy-changed", change)

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
                unavailable = stanzas.presence("unavailable", session.full, contact)
                dispatcher.route(unavailable, session.jid, jid)
            elif now and not was and session.presence is not None:
                stanza = stanzas.readdressed(session.presence, contact)
                later.append(lambda s=stanza, j=jid: dispatcher.route(s, session.jid, j))
        # Contacts this resource sees: their presence is hidden, or shown again.
        for item in roster.items.values():
            if not item.subscribed_to:
                continue
            for peer in self.server.router.available(item.jid):
                was = is_allowed(old, roster, "presence-in", peer.jid)
                now = is_allowed(new, roster, "presence-in", peer.jid)
                if was and not now:
                    session.send(stanzas.presence("unavailable", peer.full, session.full))
                elif now and not was and peer.presence is not None:
                    stanza = stanzas.readdressed(peer.presence, session.full, peer.full)
                    later.append(lambda s=stanza, p=peer: dispatcher.route(s, p.jid, session.jid))
        return later


def _replace(settings: PrivacySettings, name: str, items: Sequence[PrivacyItem]) -> PrivacySettings:
    """New settings with list C{name} replaced (removed when C{items} is empty).

    Removing the default list declines the default.
    """
    lists = dict(settings.lists)
    if items:
        lists[name] = ordered(items)
        default = settings.default
    else:
        lists.pop(name, None)
        default = None if settings.default == name else settings.default
    return PrivacySettings(default=default, lists=lists)
