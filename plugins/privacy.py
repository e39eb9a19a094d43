"""RFC 3921 §10 / XEP-0016 privacy lists: the jabber:iq:privacy protocol face.

This module reads and writes the wire form and pushes changed list names
(§10 rule 10); what lists mean, which one applies and every change (conflicts,
presence) belong to the core's L{imserver.privacy}, which the blocking command
shares.
"""

from collections.abc import Iterable

from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from zope.interface import implementer

from imserver.interfaces import IFeature
from imserver.jid import InvalidFormat, parse_jid
from imserver.privacy import (
    ACTIONS,
    ITEM_TYPES,
    NS_PRIVACY,
    STANZA_KINDS,
    SUBSCRIPTION_VALUES,
    PrivacyChange,
    PrivacyChanges,
    PrivacyItem,
    parse_order,
)
from imserver.roster import Roster


def _forbidden(event) -> bool:
    raise StanzaError("forbidden", text="only your own privacy lists")


@implementer(IPlugin, IFeature)
class Privacy:
    name = "privacy"
    disco_features = (NS_PRIVACY,)

    def attach(self, server) -> None:
        self.server = server
        self.engine = server.privacy
        self.engine.enable()
        self.changes = PrivacyChanges(self.engine)
        dispatcher = server.dispatcher
        dispatcher.on(("iq", "get", NS_PRIVACY, "self"), self.get)
        dispatcher.on(("iq", "set", NS_PRIVACY, "self"), self.set)
        for iq_type in ("get", "set"):
            dispatcher.on(("iq", iq_type, NS_PRIVACY, "bare"), _forbidden)
        dispatcher.hook("privacy-changed", self.push)

    def push(self, change: PrivacyChange) -> None:
        """Each changed list's name to every connected resource (§10 rule 10)."""
        sessions = self.server.sessions.of(change.bare)
        for name in change.lists:
            payload = domish.Element((NS_PRIVACY, "query"))
            payload.addElement("list")["name"] = name
            for session in sessions:
                session.push(payload)

    @defer.inlineCallbacks
    def get(self, event):
        """The list names with the active and default markers, or one list (§10.4)."""
        session = event.origin
        settings = yield self.engine.settings(session)
        children = list(event.stanza.firstChildElement().elements())
        query = domish.Element((NS_PRIVACY, "query"))
        if not children:
            active = self.engine.active_name(session)
            if active is not None:
                query.addElement("active")["name"] = active
            if settings.default is not None:
                query.addElement("default")["name"] = settings.default
            for name in sorted(settings.lists):
                query.addElement("list")["name"] = name
            return event.answer(query)
        if len(children) != 1 or not _is(children[0], "list"):
            raise StanzaError("bad-request", text="ask for the names or for one list")
        name = children[0].getAttribute("name")
        if not name:
            raise StanzaError("bad-request", text="a list needs a name")
        items = settings.lists.get(name)
        if items is None:
            raise StanzaError("item-not-found")
        query.addChild(list_element(name, items))
        return event.answer(query)

    @defer.inlineCallbacks
    def set(self, event):
        """One <active/>, <default/> or <list/> per request (§10.5-§10.9)."""
        session = event.origin
        children = list(event.stanza.firstChildElement().elements())
        if len(children) != 1 or children[0].uri != NS_PRIVACY:
            raise StanzaError("bad-request", text="exactly one of active, default or list")
        child = children[0]
        name = child.getAttribute("name")
        if child.name == "active":
            yield self.changes.set_active(session, name, event.answer)
        elif child.name == "default":
            yield self.changes.set_default(session, name, event.answer)
        elif child.name == "list":
            if not name:
                raise StanzaError("bad-request", text="a list needs a name")
            elements = list(child.elements())
            roster = None
            if any(e.getAttribute("type") == "group" for e in elements):
                roster = yield self.server.rosters.get(session.user, session.host, keep=True)
            items = parse_items(elements, roster)
            yield self.changes.put_list(session, name, items, event.answer)
        else:
            raise StanzaError("bad-request", text="exactly one of active, default or list")
        return True


def _is(element: domish.Element, name: str) -> bool:
    return element.uri == NS_PRIVACY and element.name == name


def parse_items(elements: list[domish.Element], roster: Roster | None) -> list[PrivacyItem]:
    """The items of a <list/>, validated (bad-request, or item-not-found for a group).

    Every item needs a unique unsignedInt order and an action; a typed item a
    valid value (a JID that passes stringprep, stored normalised; a
    subscription state; a group of the user's roster, §10.1).
    """
    items: list[PrivacyItem] = []
    orders: set[int] = set()
    groups = {g for entry in roster.items.values() for g in entry.groups} if roster else set()
    for element in elements:
        if not _is(element, "item"):
            raise StanzaError("bad-request", text="a list holds only items")
        order = parse_order(element.getAttribute("order"))
        if order in orders:
            raise StanzaError("bad-request", text=f"order {order} is used twice")
        orders.add(order)
        action = element.getAttribute("action")
        if action not in ACTIONS:
            raise StanzaError("bad-request", text="action must be allow or deny")
        type_ = element.getAttribute("type")
        value = element.getAttribute("value")
        if type_ is None:
            value = None
        elif type_ not in ITEM_TYPES:
            raise StanzaError("bad-request", text=f"unknown item type {type_!r}")
        elif not value:
            raise StanzaError("bad-request", text="a typed item needs a value")
        elif type_ == "jid":
            try:
                value = parse_jid(value).full()
            except InvalidFormat:
                raise StanzaError("bad-request", text="invalid jid value") from None
        elif type_ == "subscription" and value not in SUBSCRIPTION_VALUES:
            raise StanzaError("bad-request", text="subscription must be none, to, from or both")
        elif type_ == "group" and value not in groups:
            raise StanzaError("item-not-found", text=f"no roster group {value!r}")
        stanzas = set()
        for kind in element.elements():
            if kind.uri != NS_PRIVACY or kind.name not in STANZA_KINDS:
                raise StanzaError("bad-request", text=f"unknown stanza kind {kind.name!r}")
            stanzas.add(kind.name)
        items.append(PrivacyItem(order, action, type_, value, frozenset(stanzas)))
    return items


def list_element(name: str, items: Iterable[PrivacyItem]) -> domish.Element:
    """The wire form of one list, items in ascending order."""
    element = domish.Element((NS_PRIVACY, "list"))
    element["name"] = name
    for item in sorted(items, key=lambda i: i.order):
        entry = element.addElement("item")
        if item.type is not None:
            entry["type"] = item.type
            entry["value"] = item.value
        entry["action"] = item.action
        entry["order"] = str(item.order)
        for kind in STANZA_KINDS:
            if kind in item.stanzas:
                entry.addElement(kind)
    return element


feature = Privacy()
