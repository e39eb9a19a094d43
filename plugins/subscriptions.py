"""RFC 6121 §3 presence subscriptions, driven by the core's state table.

Both ends are handled here: the user's outbound request or answer, and the
inbound one at the contact's side. Every decision (new state, deliver or not,
roster push, auto-reply, presence to send) comes from
L{imserver.subscription.transition}; this module only carries it out.
"""

from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.words.xish import domish
from zope.interface import implementer

from imserver import roster as model
from imserver import subscription as table
from imserver.interfaces import IFeature
from imserver.jid import parse_jid
from imserver.serialize import stanza_bytes
from imserver.stanzas import presence, readdressed
from imserver.stream.parser import parse_stanza

KINDS = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
NS_PRE_APPROVAL = "urn:xmpp:features:pre-approval"


def _pre_approval_feature(stream) -> domish.Element:
    return domish.Element((NS_PRE_APPROVAL, "sub"))


@implementer(IPlugin, IFeature)
class Subscriptions:
    name = "subscriptions"
    disco_features = ()
    requires = ("presence",)  # fires initial-presence

    def attach(self, server) -> None:
        self.server = server
        self.dispatcher = server.dispatcher
        server.add_stream_feature("bound", _pre_approval_feature)
        for kind in KINDS:
            self.dispatcher.on(("out", "presence", kind), self.outbound)
            for target in ("bare", "full"):
                self.dispatcher.on(("presence", kind, target), self.inbound)
        self.dispatcher.hook("initial-presence", self.redeliver_pending)
        self.dispatcher.hook("user-deleted", self.account_deleted)

    @defer.inlineCallbacks
    def outbound(self, event):
        """The user subscribes, approves, cancels or refuses (RFC 6121 §3.1.2-§3.3.2)."""
        session = event.origin
        contact = event.to.userhost()
        if contact == session.bare:
            return True  # subscribing to oneself has no meaning; nothing to route
        # The sender's privacy rules ran before this stage: a request to a
        # blocked contact never reaches here, so the roster stays as it was.
        outcome = yield self._transition(
            session.user, session.host, contact, "outbound", event.type, keep=True
        )
        user = parse_jid(session.bare)
        grant = event.type == "subscribed"
        if outcome.send_presence and not grant:
            # §3.2.2: unavailable goes first, "while the user is still subscribed".
            self._send_own_presence(session.bare, contact, False)
        if outcome.deliver:
            # §3.1.2: the server stamps the user's bare JID and routes to the contact's bare JID.
            stanza = readdressed(event.stanza, contact, session.bare)
            # Waited for: the contact's side must have handled it before what follows.
            yield self.dispatcher.route(stanza, user, parse_jid(contact))
        if outcome.send_presence and grant:
            # §3.1.5: the approval, then the presence it grants access to.
            self._send_own_presence(session.bare, contact, True)
        return True

    @defer.inlineCallbacks
    def inbound(self, event):
        """A contact's subscription stanza for a local user (RFC 6121 §3.1.3-§3.3.3)."""
        user, host = event.to.user, event.to.host
        bare = event.to.userhost()
        contact = event.sender.userhost()
        online = bool(self.server.sessions.of(bare))
        if not online and not (yield self.server.store.user_exists(user, host)):
            if event.type == "subscribe":  # §3.1.3: no such user
                self._route(presence("unsubscribed", bare, contact))
            return True
        stanza = readdressed(event.stanza, bare, contact)
        # A request that ends up pending is kept as sent, for redelivery at login.
        request = stanza_bytes(stanza).decode("utf-8") if event.type == "subscribe" else None
        outcome = yield self._transition(
            user, host, contact, "inbound", event.type, keep=online, request=request
        )
        if outcome.deliver:
            router = self.server.router
            router.send_to_sessions(router.available(bare), stanza)
        if outcome.auto_reply is not None:
            yield self._route(presence(outcome.auto_reply, bare, contact))
        if outcome.send_presence:
            self._send_own_presence(bare, contact, event.type == "subscribe")
        return True

    def _transition(
        self,
        user: str,
        host: str,
        contact: str,
        direction: str,
        kind: str,
        keep: bool,
        request: str | None = None,
    ):
        """Apply the table's answer to the stored roster, alone among the user's roster changes.

        C{request} is the serialised inbound subscribe: what is stored when it
        leaves the contact Pending In.
        """
        return self.server.rosters.exclusive(
            user, host, self._apply, user, host, contact, direction, kind, keep, request
        )

    @defer.inlineCallbacks
    def _apply(
        self,
        user: str,
        host: str,
        contact: str,
        direction: str,
        kind: str,
        keep: bool,
        request: str | None,
    ):
        roster = yield self.server.rosters.get(user, host, keep=keep)
        item = roster.items.get(contact)
        pending = contact in roster.pending_in
        outcome = table.transition(
            table.item_state(item, pending), direction, kind, item.approved if item else False
        )
        new_item = table.apply(item, contact, outcome)
        items = {contact: new_item} if new_item != item else {}
        pending_in = (
            {contact: request if outcome.state.pending_in else None}
            if outcome.state.pending_in != pending
            else {}
        )
        if items or pending_in:
            version = yield self.server.rosters.write(user, host, roster, items, pending_in)
            if outcome.push and new_item is not None:
                model.push(self.server.router, f"{user}@{host}", new_item, version)
        return outcome

    def _send_own_presence(self, bare: str, contact: str, available: bool) -> None:
        """After granting or ending 'from': current presence, or unavailable (§3.1.5, §3.2.2)."""
        for session in self.server.router.available(bare):
            if available:
                stanza = readdressed(session.presence, contact, session.full)
            else:
                stanza = presence("unavailable", session.full, contact)
            self.dispatcher.route(stanza, session.jid, parse_jid(contact))

    def _route(self, stanza: domish.Element):
        return self.dispatcher.route(stanza, parse_jid(stanza["from"]), parse_jid(stanza["to"]))

    @defer.inlineCallbacks
    def redeliver_pending(self, session):
        """Pending requests reach the user again at each login (RFC 6121 §3.1.3).

        Each is the stanza the contact sent (id, status, nick and all), as stored.
        """
        roster = yield self.server.rosters.get(session.user, session.host, keep=True)
        privacy = self.server.privacy
        yield privacy.ready(session)
        for contact, request in sorted(roster.pending_in.items()):
            if privacy.admits(session, parse_jid(contact), "presence", "subscribe"):
                session.send(parse_stanza(request))

    @defer.inlineCallbacks
    def account_deleted(self, user: str, host: str, roster):
        """Contacts of a deleted account lose their subscriptions to it, one at a time."""
        bare = f"{user}@{host}"
        for item in list(roster.items.values()):
            yield model.cancel_subscriptions(self.server, bare, item, item.jid in roster.pending_in)
        for contact in sorted(set(roster.pending_in) - set(roster.items)):
            yield self._route(presence("unsubscribed", bare, contact))


feature = Subscriptions()
