"""XEP-0163 Personal Eventing Protocol: the XEP-0060 subset on each account's bare JID.

The wire face only: requests are parsed with tx-xmpp's L{PubSubRequest} and
answered here; every rule lives in L{imserver.pubsub} and every change goes
through the shared L{imserver.pep.PepEngine} (C{server.pep}), which stores,
notifies and caches. Implemented: publish (with auto-create and
publish-options), retract, items (by id and max_items), create, configure
(access_model open/presence/whitelist, max_items incl. "max"), default,
delete, purge; disco#items on one's own account lists the nodes.
Notifications follow XEP-0115 +notify interests (plugins/caps.py); explicit
subscriptions and affiliations are not implemented and say so.

Config, all optional ([plugin.pep]): max_nodes, max_items, max_bytes,
max_item_bytes (per account), cache_size (accounts kept in memory).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from tx_xmpp.disco import NS_DISCO_ITEMS
from tx_xmpp.pubsub import NS_PUBSUB, NS_PUBSUB_OWNER, PubSubRequest, Unsupported
from zope.interface import implementer

from imserver.caps import session_interests as interests
from imserver.interfaces import IFeature
from imserver.jid import parse_jid
from imserver.pep import PepEngine, new_item
from imserver.pubsub import Limits, NodeConfig, pubsub_error

log = Logger()

#: XEP-0060 §10 features an account's disco#info shows (XEP-0163 §6.1).
PUBSUB_FEATURES = tuple(
    f"{NS_PUBSUB}#{name}"
    for name in (
        "access-open",
        "access-presence",
        "access-whitelist",
        "auto-create",
        "config-node",
        "create-nodes",
        "delete-items",
        "delete-nodes",
        "filtered-notifications",
        "item-ids",
        "last-published",
        "persistent-items",
        "presence-notifications",
        "publish",
        "publish-options",
        "purge-nodes",
        "retract-items",
        "retrieve-default",
        "retrieve-items",
    )
)


@implementer(IPlugin, IFeature)
class PEP:
    name = "pep"
    disco_features = ()

    def attach(self, server) -> None:
        self.server = server
        options = server.options("pep")
        defaults = Limits()
        limits = Limits(
            max_nodes=options.positive_int("max_nodes", defaults.max_nodes),
            max_items=options.positive_int("max_items", defaults.max_items),
            max_bytes=options.positive_int("max_bytes", defaults.max_bytes),
            max_item_bytes=options.positive_int("max_item_bytes", defaults.max_item_bytes),
        )
        self.engine = server.pep = PepEngine(
            server, limits, options.positive_int("cache_size", 10000)
        )
        server.account_identities.add(("pubsub", "pep", None))
        server.account_features.update((NS_PUBSUB, *PUBSUB_FEATURES))
        on = server.dispatcher.on
        on(("iq", "set", NS_PUBSUB, "self"), self.own_set)
        on(("iq", "get", NS_PUBSUB, "self"), self.get)
        on(("iq", "get", NS_PUBSUB, "bare"), self.get)
        on(("iq", "set", NS_PUBSUB, "bare"), self.not_yours)
        on(("iq", "get", NS_PUBSUB_OWNER, "self"), self.owner)
        on(("iq", "set", NS_PUBSUB_OWNER, "self"), self.owner)
        on(("iq", "get", NS_PUBSUB_OWNER, "bare"), self.not_yours)
        on(("iq", "set", NS_PUBSUB_OWNER, "bare"), self.not_yours)
        on(("iq", "get", NS_DISCO_ITEMS, "self"), self.disco_items)
        server.dispatcher.hook("caps-known", self.engine.send_last_items)
        for target in ("bare", "full"):
            on(("presence", "available", target), self.contact_available, priority=50)
        server.dispatcher.hook("user-deleted", self.account_deleted)

    def account_deleted(self, user: str, host: str, *_) -> None:
        """The store dropped the account's nodes with it: drop the cached copy too."""
        self.engine.forget(parse_jid(f"{user}@{host}"))

    def contact_available(self, event) -> bool:
        """Observe presence from a local account reaching another (never handles it).

        On the presence hot path: resources without +notify interests cost a dict lookup.
        """
        if event.target == "full":
            session = self.server.sessions.get(event.to.userhost(), event.to.resource)
            sessions = [session] if session is not None else []
        else:
            sessions = self.server.sessions.of(event.to.userhost())
        owner = event.sender
        for session in sessions:
            if not session.available or not interests(session):
                continue
            if owner.host not in self.server.hosts or owner.userhost() == session.bare:
                return False
            d = self.engine.contact_heard(owner.userhostJID(), session)
            if d is not None:
                d.addErrback(lambda f: log.failure("sending last PEP items failed", f))
        return False

    # -- requests ----------------------------------------------------------------------

    def own_set(self, event):
        request = _parse(event)
        owner = event.to.userhostJID()
        if request.verb == "publish":
            return self.publish(event, request, owner)
        if request.verb == "retract":
            if not request.itemIdentifiers:
                raise pubsub_error("bad-request", "item-required")
            d = self.engine.retract(
                owner, request.nodeIdentifier, request.itemIdentifiers, bool(request.notify)
            )
            return d.addCallback(lambda _: event.answer())
        if request.verb == "create":
            if not request.nodeIdentifier:
                raise pubsub_error("not-acceptable", "nodeid-required")
            d = self.engine.create(owner, request.nodeIdentifier, request.options)
            return d.addCallback(lambda _: event.answer())
        raise Unsupported(_feature(request.verb))

    def publish(self, event, request: PubSubRequest, owner):
        if not request.items:
            raise pubsub_error("bad-request", "item-required")
        if len(request.items) > 1:
            raise pubsub_error("bad-request", "invalid-payload", text="one item per publish")
        element = request.items[0]
        payloads = list(element.elements())
        if not payloads:
            raise pubsub_error("bad-request", "payload-required")
        if len(payloads) > 1:
            raise pubsub_error("bad-request", "invalid-payload")
        item = new_item(element.getAttribute("id"), payloads[0])
        options = request.options if request.options and request.options.fields else None
        d = self.engine.publish(owner, request.nodeIdentifier, item, options)

        def published(_):
            pubsub = domish.Element((NS_PUBSUB, "pubsub"))
            publish = pubsub.addElement("publish")
            publish["node"] = request.nodeIdentifier
            publish.addElement("item")["id"] = item.id
            return event.answer(pubsub)

        return d.addCallback(published)

    def get(self, event):
        request = _parse(event)
        if request.verb != "items":
            raise Unsupported(_feature(request.verb))
        if request.maxItems is not None and request.maxItems < 1:
            raise pubsub_error("bad-request", text="max_items must be positive")
        owner = event.to.userhostJID()
        d = self.engine.readable(owner, event.sender, request.nodeIdentifier)

        def answer(node):
            chosen = node.select(request.itemIdentifiers, request.maxItems)
            pubsub = domish.Element((NS_PUBSUB, "pubsub"))
            items = pubsub.addElement("items")
            items["node"] = node.name
            for item in chosen:
                entry = items.addElement("item")
                entry["id"] = item.id
                entry.addChild(item.payload)
            return event.answer(pubsub)

        return d.addCallback(answer)

    def owner(self, event):
        request = _parse(event)
        owner = event.to.userhostJID()
        verb = request.verb
        if verb == "default":
            return event.answer(_owner_form("default", None, NodeConfig()))
        if verb == "configureGet":
            d = self.engine.service(owner)
            return d.addCallback(
                lambda service: event.answer(
                    _owner_form(
                        "configure",
                        request.nodeIdentifier,
                        service.node(request.nodeIdentifier).config,
                    )
                )
            )
        if verb == "configureSet":
            if request.options is None or request.options.formType == "cancel":
                return event.answer()
            d = self.engine.configure(owner, request.nodeIdentifier, request.options)
            return d.addCallback(lambda _: event.answer())
        if verb in ("delete", "purge"):
            change = self.engine.delete if verb == "delete" else self.engine.purge
            return change(owner, request.nodeIdentifier).addCallback(lambda _: event.answer())
        raise Unsupported(_feature(verb))

    def not_yours(self, event):
        """Only the owner may change (or configure) an account's nodes."""
        request = _parse(event)
        if request.verb in ("subscribe", "unsubscribe"):
            raise Unsupported("subscribe")
        raise StanzaError("forbidden")

    @defer.inlineCallbacks
    def disco_items(self, event):
        """XEP-0163 §6.2 / XEP-0060 §5.2: the owner's nodes."""
        if event.stanza.firstChildElement().getAttribute("node"):
            return False
        owner = event.to.userhostJID()
        service = yield self.engine.service(owner)
        query = domish.Element((NS_DISCO_ITEMS, "query"))
        for name in service.nodes:
            item = query.addElement("item")
            item["jid"] = owner.userhost()
            item["node"] = name
        return event.answer(query)


def _parse(event) -> PubSubRequest:
    try:
        return PubSubRequest.fromElement(event.stanza)
    except NotImplementedError:
        raise StanzaError("feature-not-implemented") from None


def _feature(verb: str) -> str:
    return {
        "optionsGet": "subscription-options",
        "optionsSet": "subscription-options",
        "subscriptions": "retrieve-subscriptions",
        "affiliations": "retrieve-affiliations",
        "affiliationsGet": "modify-affiliations",
        "affiliationsSet": "modify-affiliations",
        "subscriptionsGet": "manage-subscriptions",
        "subscriptionsSet": "manage-subscriptions",
    }.get(verb, verb)


def _owner_form(verb: str, node: str | None, config: NodeConfig) -> domish.Element:
    pubsub = domish.Element((NS_PUBSUB_OWNER, "pubsub"))
    element = pubsub.addElement(verb)
    if node:
        element["node"] = node
    element.addChild(config.to_form().toElement())
    return pubsub


feature = PEP()
