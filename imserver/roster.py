"""The roster model: items, pending inbound requests and a version.

Presence, subscriptions, privacy and the roster protocol all read the same
in-memory L{Roster} of an online user; L{RosterCache} keeps one per user with at
least one session and writes every change through to the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, succeed
from twisted.words.xish import domish

from imserver import stanzas
from imserver.jid import parse_jid
from imserver.serialize import stanza_bytes

#: Subscription values stored on an item (RFC 6121 §2.1.2.5).
SUBSCRIPTIONS = ("none", "to", "from", "both")


@dataclass(frozen=True)
class RosterItem:
    """One contact on a user's roster.

    C{ask} is True while an outbound subscription request is pending
    (the wire's ask='subscribe'); C{approved} records a pre-approval
    (RFC 6121 §3.4).
    """

    jid: str
    name: str | None = None
    subscription: str = "none"
    ask: bool = False
    approved: bool = False
    groups: tuple[str, ...] = ()

    def evolve(self, **changes) -> RosterItem:
        return replace(self, **changes)

    @property
    def subscribed_to(self) -> bool:
        """The user receives the contact's presence."""
        return self.subscription in ("to", "both")

    @property
    def subscribed_from(self) -> bool:
        """The contact receives the user's presence."""
        return self.subscription in ("from", "both")


@dataclass
class Roster:
    """A user's roster as stored: version, items by bare JID, pending inbound requests.

    C{pending_in} maps a contact's bare JID to its subscription request as
    received (serialised), so the request redelivered at login is the one the
    contact sent: its id, status text, nick (XEP-0172) and other children.
    """

    version: int = 0
    items: dict[str, RosterItem] = field(default_factory=dict)
    pending_in: dict[str, str] = field(default_factory=dict)
    _wire: tuple[int, domish.SerializedXML] | None = field(default=None, repr=False, compare=False)

    def apply(
        self,
        version: int,
        items: dict[str, RosterItem | None],
        pending_in: dict[str, str | None],
    ) -> None:
        """Apply one change as the store wrote it (None removes an item or a request)."""
        self.version = version
        for jid, item in items.items():
            if item is None:
                self.items.pop(jid, None)
            else:
                self.items[jid] = item
        for jid, request in pending_in.items():
            if request is None:
                self.pending_in.pop(jid, None)
            else:
                self.pending_in[jid] = request

    def wire_query(self) -> domish.SerializedXML:
        """The whole roster as a serialised <query/>, built once per version.

        A roster get of hundreds of items would otherwise build (and leave to
        the cyclic collector) hundreds of elements each time; every change of
        items bumps the version, so the cached form can never be stale.
        """
        if self._wire is None or self._wire[0] != self.version:
            query = domish.Element((NS_ROSTER, "query"))
            query["ver"] = str(self.version)
            for item in self.items.values():
                query.addChild(item_element(item))
            self._wire = (self.version, domish.SerializedXML(stanza_bytes(query).decode()))
        return self._wire[1]


class RosterCache:
    """The rosters of users with at least one session, loaded once, written through.

    Rosters of offline users (the other end of a subscription) are read from the
    store each time and not kept. Every change is one store transaction and
    bumps the roster version (RFC 6121 §2.6); the cache changes only after the
    store has accepted it, so memory never holds what the store refused.
    """

    def __init__(self, store, max_items: int, changed=None) -> None:
        self.store = store
        self.max_items = max_items
        #: Called as changed(user, host, items) after a change of items is stored.
        self.changed = changed
        self._rosters: dict[tuple[str, str], Roster] = {}
        self._loading: dict[tuple[str, str], list[Deferred]] = {}
        self._online: set[tuple[str, str]] = set()
        self._locks: dict[tuple[str, str], DeferredLock] = {}

    def cached(self, user: str, host: str) -> Roster | None:
        return self._rosters.get((user, host))

    def get(self, user: str, host: str, keep: bool = False) -> Deferred:
        """Fire with the user's L{Roster}; C{keep} caches it (the user is online)."""
        key = (user, host)
        if keep:
            self._online.add(key)
        roster = self._rosters.get(key)
        if roster is not None:
            return succeed(roster)
        waiting = self._loading.get(key)
        d: Deferred = Deferred()
        if waiting is not None:
            waiting.append(d)
            return d
        self._loading[key] = [d]

        def loaded(roster: Roster):
            if key in self._online:
                self._rosters[key] = roster
            for waiter in self._loading.pop(key):
                waiter.callback(roster)

        def failed(failure):
            for waiter in self._loading.pop(key):
                waiter.errback(failure)

        self.store.get_roster(user, host).addCallbacks(loaded, failed)
        return d

    def write(
        self,
        user: str,
        host: str,
        roster: Roster,
        items: dict[str, RosterItem | None] | None = None,
        pending_in: dict[str, str | None] | None = None,
    ) -> Deferred:
        """Store a change to C{roster}, then apply it to C{roster}; fire with the new version.

        C{items} maps a contact to its new item (None removes it); C{pending_in}
        a contact to the request to keep (None forgets it).
        """
        items = items or {}
        pending_in = pending_in or {}
        version = roster.version + 1 if items else roster.version
        d = self.store.write_roster(user, host, version, items, pending_in)

        def applied(_):
            roster.apply(version, items, pending_in)
            if items and self.changed is not None:
                self.changed(user, host, items)
            return version

        return d.addCallback(applied)

    def exclusive(self, user: str, host: str, work, *args) -> Deferred:
        """Run C{work(*args)} alone among the changes to one user's roster.

        A change reads an item, decides, and writes: two interleaved changes
        (an unsubscribe and an unsubscribed racing at the contact's side) would
        each start from the same stale item and one would be lost.
        """
        key = (user, host)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = DeferredLock()

        def release(result):
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)
            return result

        return lock.run(work, *args).addBoth(release)

    def forget(self, user: str, host: str) -> None:
        """Drop a user's roster from memory (their last session ended)."""
        self._online.discard((user, host))
        self._rosters.pop((user, host), None)


NS_ROSTER = "jabber:iq:roster"


def item_element(item: RosterItem, removed: bool = False) -> domish.Element:
    """The wire form of one roster item (RFC 6121 §2.1)."""
    element = domish.Element((NS_ROSTER, "item"))
    element["jid"] = item.jid
    if removed:
        element["subscription"] = "remove"
        return element
    element["subscription"] = item.subscription
    if item.name:
        element["name"] = item.name
    if item.ask:
        element["ask"] = "subscribe"
    if item.approved:
        element["approved"] = "true"
    for group in item.groups:
        element.addElement("group", content=group)
    return element


def push(router, bare: str, item: RosterItem, version: int, removed: bool = False) -> None:
    """Send a roster push for one item to every interested resource (RFC 6121 §2.1.6)."""
    sessions = router.interested(bare)
    if not sessions:
        return
    query = domish.Element((NS_ROSTER, "query"))
    query["ver"] = str(version)
    query.addChild(item_element(item, removed))
    for session in sessions:
        session.push(query)


@inlineCallbacks
def cancel_subscriptions(server, bare: str, item: RosterItem, pending_in: bool):
    """Tell a contact that the subscriptions both ways are gone (RFC 6121 §2.5.2, §3.2, §3.3).

    For a roster item removed by its owner, and for every item of a deleted
    account. One stanza at a time: each changes the contact's roster item,
    and the next must see the result of the one before.
    """
    user, contact = parse_jid(bare), parse_jid(item.jid)
    route = server.dispatcher.route
    if item.subscribed_to or item.ask:
        yield route(stanzas.presence("unsubscribe", bare, item.jid), user, contact)
    if item.subscribed_from:
        # §3.2.2: unavailable from every available resource first, while still subscribed.
        for own in server.router.available(bare):
            yield route(stanzas.presence("unavailable", own.full, item.jid), own.jid, contact)
    if item.subscribed_from or pending_in:
        yield route(stanzas.presence("unsubscribed", bare, item.jid), user, contact)
