"""RFC 6121 §2 roster management: get (with versioning), set, remove, pushes.

Removing a contact also cancels the subscriptions both ways (RFC 6121 §2.5.2,
RFC 3921 §8.6) through the core's L{imserver.roster.cancel_subscriptions}.
"""

from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish
from zope.interface import implementer

from imserver import roster as model
from imserver.interfaces import IFeature
from imserver.jid import InvalidFormat, parse_jid
from imserver.roster import NS_ROSTER, RosterItem

NS_ROSTER_VER = "urn:xmpp:features:rosterver"


def _roster_ver_feature(stream) -> domish.Element:
    return domish.Element((NS_ROSTER_VER, "ver"))


def _forbidden(event) -> bool:
    raise StanzaError("forbidden", text="only your own roster")


@implementer(IPlugin, IFeature)
class Roster:
    name = "roster"
    disco_features = ()

    def attach(self, server) -> None:
        self.server = server
        server.add_stream_feature("bound", _roster_ver_feature)
        dispatcher = server.dispatcher
        dispatcher.on(("iq", "get", NS_ROSTER, "self"), self.get)
        dispatcher.on(("iq", "set", NS_ROSTER, "self"), self.set)
        for iq_type in ("get", "set"):
            dispatcher.on(("iq", iq_type, NS_ROSTER, "bare"), _forbidden)
            dispatcher.on(("iq", iq_type, NS_ROSTER, "host"), _forbidden)

    @defer.inlineCallbacks
    def get(self, event):
        session = event.origin
        roster = yield self.server.rosters.get(session.user, session.host, keep=True)
        session.interested = True
        requested = event.stanza.firstChildElement().getAttribute("ver")
        if requested is not None and requested == str(roster.version):
            # RFC 6121 §2.6.3: up to date, so an empty result; changes come as pushes.
            event.answer()
            return
        event.answer(roster.wire_query())

    def set(self, event):
        session = event.origin
        element = _single_item(event.stanza.firstChildElement())
        contact = _contact(element)
        if element.getAttribute("subscription") == "remove":
            return self._remove(event, contact)
        # RFC 6121 §2.1.2.5: in a roster set "the server MUST ignore all values
        # of the 'subscription' attribute other than 'remove'" (so do 'ask' and
        # 'approved': only the subscription stanzas change them).
        limit = self.server.limits.roster_text_length
        groups = _groups(element, limit)
        name = element.getAttribute("name") or None
        if name is not None and len(name.encode("utf-8")) > limit:
            # RFC 6121 §2.3.3: longer than a server-configured limit.
            raise StanzaError("not-acceptable", text=f"a name may have at most {limit} bytes")
        return self.server.rosters.exclusive(
            session.user, session.host, self._update, event, contact, name, groups
        )

    @defer.inlineCallbacks
    def _update(self, event, contact: str, name: str | None, groups: tuple[str, ...]):
        session = event.origin
        roster = yield self.server.rosters.get(session.user, session.host, keep=True)
        existing = roster.items.get(contact)
        if existing is None and len(roster.items) >= self.server.rosters.max_items:
            raise StanzaError(
                "not-allowed", type="cancel", text="resource-constraint: the roster is full"
            )
        item = (existing or RosterItem(contact)).evolve(name=name, groups=groups)
        version = yield self.server.rosters.write(
            session.user, session.host, roster, items={contact: item}
        )
        event.answer()
        model.push(self.server.router, session.bare, item, version)

    @defer.inlineCallbacks
    def _remove(self, event, contact: str):
        session = event.origin
        item, pending_in = yield self.server.rosters.exclusive(
            session.user, session.host, self._forget, event, contact
        )
        yield model.cancel_subscriptions(self.server, session.bare, item, pending_in)

    @defer.inlineCallbacks
    def _forget(self, event, contact: str):
        """Remove the item and any pending request; return what they were."""
        session = event.origin
        roster = yield self.server.rosters.get(session.user, session.host, keep=True)
        item = roster.items.get(contact)
        if item is None:
            raise StanzaError("item-not-found")
        pending_in = contact in roster.pending_in
        version = yield self.server.rosters.write(
            session.user, session.host, roster, items={contact: None}, pending_in={contact: None}
        )
        event.answer()
        model.push(self.server.router, session.bare, item, version, removed=True)
        return item, pending_in


def _single_item(query: domish.Element) -> domish.Element:
    items = list(query.elements(NS_ROSTER, "item"))
    if len(items) != 1:
        raise StanzaError("bad-request", text="a roster set carries exactly one item")
    return items[0]


def _contact(item: domish.Element) -> str:
    value = item.getAttribute("jid")
    if not value:
        raise StanzaError("bad-request", text="an item needs a jid")
    try:
        jid = parse_jid(value)
    except InvalidFormat:
        raise StanzaError("bad-request", text="invalid jid") from None
    if jid.resource is not None:
        raise StanzaError("bad-request", text="roster items are bare JIDs")
    return jid.userhost()


def _groups(item: domish.Element, limit: int) -> tuple[str, ...]:
    groups = [str(g).strip() for g in item.elements(NS_ROSTER, "group")]
    if any(not g for g in groups):
        raise StanzaError("not-acceptable", text="empty group name")
    if any(len(g.encode("utf-8")) > limit for g in groups):
        raise StanzaError("not-acceptable", text=f"a group name may have at most {limit} bytes")
    if len(set(groups)) != len(groups):
        raise StanzaError("bad-request", text="duplicate group")
    return tuple(groups)


feature = Roster()
