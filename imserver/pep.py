"""PEP (XEP-0163) as the server runs it: cached services, written through, and notifications.

The PEP plugin speaks the wire protocol and the vCard and private-storage
plugins convert avatars and bookmarks; all three act through one L{PepEngine}
(C{server.pep}), so a publish made for a legacy client notifies exactly as a
client's own publish does. Rules (access, quotas, preconditions) live in the
pure L{imserver.pubsub}; this module adds the I/O: the store, rosters, caps
interests and sending.

Who is notified of a change to node N of account O: O's own resources and
the available resources of O's contacts with a presence subscription to O
(subscription 'from'), in both cases only those whose caps ask for N+notify;
contacts only when the access model lets them read (open, presence). Each
notification goes through the dispatcher, so privacy lists apply; its
<event/> payload is serialised once for all recipients.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.words.xish import domish
from tx_xmpp.data_form import Form
from tx_xmpp.pubsub import NS_PUBSUB_EVENT

from imserver.caps import session_interests as interests
from imserver.jid import JID, parse_jid
from imserver.pubsub import (
    CONTACT,
    OWNER,
    STRANGER,
    Item,
    Limits,
    Node,
    NodeConfig,
    Service,
    access_error,
    may_access,
)
from imserver.serialize import stanza_bytes
from imserver.stream.parser import parse_stanza

if TYPE_CHECKING:
    from imserver.server import Server
    from imserver.session import Session


def payload_xml(payload: domish.Element) -> str:
    """How an item's payload is stored (and counted against the byte quota)."""
    return stanza_bytes(payload, default_ns="").decode("utf-8")


def new_item(item_id: str | None, payload: domish.Element) -> Item:
    return Item(item_id or secrets.token_hex(8), payload_xml(payload), payload)


#: Key of Session.extra: the accounts whose last items this resource has had.
HEARD_KEY = "pep-heard"


class PepEngine:
    """Every account's PEP service on this server (C{server.pep})."""

    def __init__(self, server: Server, limits: Limits, cache_size: int = 10000) -> None:
        self.server = server
        self.store = server.store
        self.limits = limits
        self.cache_size = cache_size
        self._services: OrderedDict[str, Service] = OrderedDict()
        #: Accounts being loaded -> who waits for them.
        self._loading: dict[str, list[defer.Deferred]] = {}

    # -- the cache ------------------------------------------------------------------

    def service(self, owner: JID) -> defer.Deferred:
        """Fire with the L{Service} of a local account (loaded once, then cached)."""
        bare = owner.userhost()
        service = self._services.get(bare)
        if service is not None:
            self._services.move_to_end(bare)
            return defer.succeed(service)
        d: defer.Deferred = defer.Deferred()
        waiters = self._loading.get(bare)
        if waiters is not None:
            waiters.append(d)
            return d
        self._loading[bare] = [d]
        self.store.load_pep(owner.user, owner.host).addBoth(self._loaded, bare)
        return d

    def _loaded(self, stored: dict | Failure, bare: str) -> None:
        """Cache what the store returned; answer everyone who waited for it."""
        waiters = self._loading.pop(bare)
        if not isinstance(stored, Failure):
            try:
                stored = self._services[bare] = self._build(stored)
            except Exception:
                stored = Failure()
            else:
                if len(self._services) > self.cache_size:
                    self._services.popitem(last=False)
        for waiter in waiters:
            if isinstance(stored, Failure):
                waiter.errback(stored)
            else:
                waiter.callback(stored)

    def _build(self, stored: dict) -> Service:
        nodes = {}
        for name, (config_json, rows) in stored.items():
            items = [Item(item_id, xml, parse_stanza(xml)) for item_id, xml in rows]
            nodes[name] = Node(name, NodeConfig.from_json(config_json), items)
        return Service(self.limits, nodes)

    def _written(self, d: defer.Deferred, owner: JID) -> defer.Deferred:
        """On a failed store write, forget the cached service: the next use reloads it."""

        def failed(failure):
            self._services.pop(owner.userhost(), None)
            return failure

        return d.addErrback(failed)

    def forget(self, owner: JID) -> None:
        self._services.pop(owner.userhost(), None)

    # -- who may see what -----------------------------------------------------------------

    @defer.inlineCallbacks
    def relation(self, owner: JID, requester: JID):
        """OWNER, CONTACT (subscription 'from' in the owner's roster) or STRANGER."""
        if requester.userhost() == owner.userhost():
            return OWNER
        roster = yield self.server.rosters.get(
            owner.user, owner.host, keep=bool(self.server.sessions.of(owner.userhost()))
        )
        item = roster.items.get(requester.userhost())
        return CONTACT if item is not None and item.subscribed_from else STRANGER

    @defer.inlineCallbacks
    def readable(self, owner: JID, requester: JID, name: str):
        """The node C{name} of C{owner}, if C{requester} may read it; else a StanzaError."""
        service = yield self.service(owner)
        node = service.node(name)
        relation = yield self.relation(owner, requester)
        if not may_access(node.config.access_model, relation):
            raise access_error(node.config.access_model)
        return node

    # -- changes (the owner's, or made on the owner's behalf) -------------------------------

    @defer.inlineCallbacks
    def publish(self, owner: JID, name: str, item: Item, options: Form | None = None):
        """Publish (auto-creating the node) and notify; fire with the L{Published}."""
        service = yield self.service(owner)
        published = service.publish(name, item, options)
        node = published.node
        yield self._written(
            self.store.put_pep_item(
                owner.user,
                owner.host,
                name,
                node.config.to_json() if published.created else None,
                item.id,
                item.xml,
                published.dropped,
            ),
            owner,
        )
        items = domish.Element((NS_PUBSUB_EVENT, "items"))
        items["node"] = name
        entry = items.addElement("item")
        entry["id"] = item.id
        entry.addChild(item.payload)
        yield self.notify(owner, node, items)
        self.server.dispatcher.fire("pep-published", owner, name, item)
        return published

    @defer.inlineCallbacks
    def create(self, owner: JID, name: str, options: Form | None):
        service = yield self.service(owner)
        node = service.create(name, NodeConfig().updated(options, self.limits))
        yield self._written(
            self.store.save_pep_node(owner.user, owner.host, name, node.config.to_json(), []),
            owner,
        )
        return node

    @defer.inlineCallbacks
    def configure(self, owner: JID, name: str, form: Form):
        service = yield self.service(owner)
        node, dropped = service.configure(name, form)
        yield self._written(
            self.store.save_pep_node(owner.user, owner.host, name, node.config.to_json(), dropped),
            owner,
        )
        return node

    @defer.inlineCallbacks
    def retract(self, owner: JID, name: str, item_ids: list[str], notify: bool):
        service = yield self.service(owner)
        node = service.retract(name, item_ids)
        yield self._written(
            self.store.delete_pep_items(owner.user, owner.host, name, item_ids), owner
        )
        if notify:
            items = domish.Element((NS_PUBSUB_EVENT, "items"))
            items["node"] = name
            for item_id in item_ids:
                items.addElement("retract")["id"] = item_id
            yield self.notify(owner, node, items)
        self.server.dispatcher.fire("pep-retracted", owner, name, item_ids)
        return node

    @defer.inlineCallbacks
    def purge(self, owner: JID, name: str):
        service = yield self.service(owner)
        node = service.purge(name)
        yield self._written(self.store.delete_pep_items(owner.user, owner.host, name, None), owner)
        yield self.notify(owner, node, _named(NS_PUBSUB_EVENT, "purge", name))
        return node

    @defer.inlineCallbacks
    def delete(self, owner: JID, name: str):
        service = yield self.service(owner)
        node = service.delete(name)
        yield self._written(self.store.delete_pep_node(owner.user, owner.host, name), owner)
        yield self.notify(owner, node, _named(NS_PUBSUB_EVENT, "delete", name))
        return node

    # -- notifications -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def notify(self, owner: JID, node: Node, change: domish.Element):
        """Tell everyone interested in C{node} about C{change} (an <items/>, <purge/>, ...)."""
        bare = owner.userhost()
        recipients = [s for s in self.server.sessions.of(bare) if node.name in interests(s)]
        if may_access(node.config.access_model, CONTACT):
            online = bool(self.server.sessions.of(bare))
            roster = yield self.server.rosters.get(owner.user, owner.host, keep=online)
            for contact in roster.items.values():
                if contact.subscribed_from:
                    recipients.extend(
                        s
                        for s in self.server.sessions.of(contact.jid)
                        if s.available and node.name in interests(s)
                    )
        if recipients:
            self._send_event(owner, change, recipients)

    def send_last_items(self, session: Session, names: Iterable[str]) -> defer.Deferred:
        """A resource announced interest in C{names}: send it each node's last item (§4.3.4).

        From its own account and from every local contact it is subscribed to.
        """
        return self._send_last_items(session, frozenset(names))

    @defer.inlineCallbacks
    def _send_last_items(self, session: Session, names: frozenset[str]):
        roster = yield self.server.rosters.get(session.user, session.host, keep=True)
        owners = [session.jid.userhostJID()]
        owners += [
            parse_jid(item.jid)
            for item in roster.items.values()
            if item.subscribed_to and item.jid.partition("@")[2] in self.server.hosts
        ]
        heard = session.extra.setdefault(HEARD_KEY, set())
        for owner in owners:
            heard.add(owner.userhost())
            relation = OWNER if owner.userhost() == session.bare else CONTACT
            yield self._send_owner_last_items(owner, relation, session, names)

    def contact_heard(self, owner: JID, session: Session) -> defer.Deferred | None:
        """C{session} got presence from local account C{owner} (a subscription approved
        while online, or directed presence): the first time, send it C{owner}'s last items."""
        names = interests(session)
        heard = session.extra.setdefault(HEARD_KEY, set())
        if not names or owner.userhost() in heard:
            return None
        heard.add(owner.userhost())
        d = self.relation(owner, session.jid)
        return d.addCallback(
            lambda relation: self._send_owner_last_items(owner, relation, session, names)
        )

    @defer.inlineCallbacks
    def _send_owner_last_items(self, owner: JID, relation: str, session: Session, names):
        service = yield self.service(owner)
        for name in names:
            node = service.nodes.get(name)
            if (
                node is None
                or node.last is None
                or node.config.send_last_published_item == "never"
                or not may_access(node.config.access_model, relation)
            ):
                continue
            items = domish.Element((NS_PUBSUB_EVENT, "items"))
            items["node"] = name
            entry = items.addElement("item")
            entry["id"] = node.last.id
            entry.addChild(node.last.payload)
            self._send_event(owner, items, [session])

    def _send_event(self, owner: JID, change: domish.Element, sessions: list[Session]) -> None:
        event = domish.Element((NS_PUBSUB_EVENT, "event"))
        event.addChild(change)
        serialized = domish.SerializedXML(stanza_bytes(event, default_ns="").decode("utf-8"))
        owner_bare = owner.userhost()
        sender = parse_jid(owner_bare)
        route = self.server.dispatcher.route
        for session in sessions:
            message = domish.Element((None, "message"))
            message["from"] = owner_bare
            message["to"] = session.full
            message["type"] = "headline"
            message["id"] = secrets.token_hex(6)
            message.children.append(serialized)
            route(message, sender, session.jid)


def _named(uri: str, name: str, node: str) -> domish.Element:
    element = domish.Element((uri, name))
    element["node"] = node
    return element
