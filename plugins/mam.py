"""XEP-0313 Message Archive Management (mam:2) with XEP-0359 stanza ids.

Every message to or from a local user that L{imserver.archive.should_archive}
keeps and the user's preferences allow is stored once in that user's archive:

- for the sender, in the ("out", "message", type) phase: the message gets a
  <stanza-id by=sender/> while the sender's own handlers (carbons' "sent"
  copies) see it, and loses it again before it leaves for the recipient
  (XEP-0313 §3.5: only the archive's owner may see its ids);
- for the recipient, in the inbound phase, before delivery and offline storage:
  the message keeps its <stanza-id by=recipient/>, so a message delivered from
  offline storage carries the id it has in the archive.

A decision that needs the store (preferences of a user who is not online, a
roster for the 'roster' policy) makes the handler wait (holding the sender's
stream), then run the stage again; the decision is remembered per stanza, so
each copy is archived once.

Every <fin/> carries the RSM <count/> of what the query's filters match and,
on a forward page, the index of its <first/> (XEP-0059 §2.2; why not on a
backward page: L{imserver.archive.ArchivePage}); <max>0</max> asks for the
count alone (§2.7).

Writes are batched: records queue in memory and go to the store in one
transaction per reactor turn, in order; a query first waits for the records
queued before it. Options ([plugin.mam]): default_policy ("always", "never",
"roster"), default_page (20), max_page (50), expire_after_days (0 keeps
everything).
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from tx_xmpp.delay import Delay
from tx_xmpp.mam import NS_FORWARD, NS_MAM, MAMPrefs
from tx_xmpp.rsm import RSMResponse
from zope.interface import implementer

from imserver.archive import (
    NS_MAM_EXTENDED,
    NS_SID,
    POLICIES,
    ArchiveClock,
    ArchiveIds,
    ArchivePrefs,
    ArchiveRecord,
    UnknownArchiveId,
    parse_prefs,
    parse_query,
    query_form,
    should_archive,
    stanza_id_element,
    strip_stanza_ids,
    to_datetime,
)
from imserver.errors import ConfigError
from imserver.interfaces import IFeature
from imserver.serialize import stanza_bytes

log = Logger()

MESSAGE_TYPES = ("normal", "chat", "groupchat", "headline", "error")
#: Runs before every other message handler of its phase (carbons, delivery, offline).
FIRST = 100
#: Runs after every other "out" handler: the sender's stanza-id must not leave.
LAST = -100
DAY = 86400.0


class _Seen:
    """What the archive did with one stanza so far (it may pass a phase twice)."""

    __slots__ = ("xml", "owners")

    def __init__(self) -> None:
        #: The message as handled, serialised once for every archive it goes to.
        self.xml: str | None = None
        #: Archive owner (bare JID) -> True/False decided, or the archive id once stored.
        self.owners: dict[str, bool | str] = {}


class ArchiveWriter:
    """Records queue here and reach the store in one transaction per reactor turn.

    Order is kept: one batch is written at a time, in the order records came.
    """

    def __init__(self, store: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.store = store
        self.reactor = reactor
        self._queue: list[ArchiveRecord] = []
        self._scheduled = False
        self._writing = False
        self._waiting_queued: list[defer.Deferred] = []
        self._waiting_written: list[defer.Deferred] = []

    def add(self, record: ArchiveRecord) -> None:
        self._queue.append(record)
        if not self._scheduled and not self._writing:
            self._scheduled = True
            self.reactor.callLater(0, self._write)

    def flushed(self) -> defer.Deferred:
        """Fire once every record added so far is written (or failed and was logged)."""
        d: defer.Deferred = defer.Deferred()
        if self._queue:
            self._waiting_queued.append(d)
        elif self._writing:
            self._waiting_written.append(d)
        else:
            d.callback(None)
        return d

    def _write(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        self._waiting_written, self._waiting_queued = self._waiting_queued, []
        self._writing = True
        d = self.store.append_archive(batch)
        d.addErrback(
            lambda f: log.failure("archiving {count} messages failed", f, count=len(batch))
        )
        d.addBoth(self._written)

    def _written(self, _: object) -> None:
        self._writing = False
        waiting, self._waiting_written = self._waiting_written, []
        for d in waiting:
            d.callback(None)
        if self._queue:
            self._write()


@implementer(IPlugin, IFeature)
class Mam:
    name = "mam"
    #: Advertised on the account (bare JID), not the server (XEP-0313 §8).
    disco_features = ()

    def attach(self, server) -> None:
        self.server = server
        self.store = server.store
        self.dispatcher = server.dispatcher
        self._read_options(server.options(self.name))
        self.clock = ArchiveClock()
        self.new_id = ArchiveIds()
        self.writer = ArchiveWriter(server.store)
        #: Preferences of users with a session; others are read when needed.
        self._prefs: dict[tuple[str, str], ArchivePrefs | defer.Deferred] = {}
        self._seen: weakref.WeakKeyDictionary[domish.Element, _Seen] = weakref.WeakKeyDictionary()
        server.account_features.update((NS_MAM, NS_MAM_EXTENDED, NS_SID))
        dispatcher = self.dispatcher
        for type_ in MESSAGE_TYPES:
            dispatcher.on(("out", "message", type_), self.outgoing, priority=FIRST)
            dispatcher.on(("out", "message", type_), self.hide_sender_id, priority=LAST)
            for target in ("bare", "full"):
                dispatcher.on(("message", type_, target), self.incoming, priority=FIRST)
        dispatcher.on(("iq", "get", NS_MAM, "self"), self.iq_get)
        dispatcher.on(("iq", "set", NS_MAM, "self"), self.iq_set)
        for type_ in ("get", "set"):
            dispatcher.on(("iq", type_, NS_MAM, "bare"), _forbidden)
        dispatcher.hook("session-bound", self._session_bound)
        dispatcher.hook("user-offline", self._user_offline)
        dispatcher.hook("user-deleted", self._user_deleted)
        if self.expire_after:
            self._expiry = task.LoopingCall(self.expire)
            interval = min(3600.0, max(1.0, self.expire_after / 4))
            server.when_ready().addCallback(lambda _: self._expiry.start(interval))

    def _read_options(self, options) -> None:
        policy = options.str("default_policy", "always")
        if policy not in POLICIES:
            raise ConfigError(f"plugin.mam.default_policy: must be one of {', '.join(POLICIES)}")
        self.default_prefs = ArchivePrefs(policy)
        self.default_page = options.positive_int("default_page", 20)
        self.max_page = options.positive_int("max_page", 50)
        self.expire_after = options.number("expire_after_days", 0) * DAY

    # -- archiving ----------------------------------------------------------------

    def outgoing(self, event):
        """Archive a local user's message in their own archive (the 'sent' side)."""
        sender = event.sender.userhost()
        stanza = event.stanza
        strip_stanza_ids(stanza, sender, event.to.userhost())
        if event.to.userhost() == sender:
            return False  # to oneself: archived once, as received
        return self._archive(event, event.sender.user, event.sender.host, event.to, rerun_out=True)

    def hide_sender_id(self, event) -> bool:
        strip_stanza_ids(event.stanza, event.sender.userhost())
        return False

    def incoming(self, event):
        """Archive a message for a local recipient and tell them its id (stanza-id)."""
        seen = self._seen.get(event.stanza)
        if seen is None or not isinstance(seen.owners.get(event.to.userhost()), str):
            strip_stanza_ids(event.stanza, event.to.userhost())  # forged: not ours
        return self._archive(event, event.to.user, event.to.host, event.sender, rerun_out=False)

    def _archive(self, event, user: str, host: str, other: JID, rerun_out: bool):
        stanza = event.stanza
        seen = self._seen.get(stanza)
        owner = f"{user}@{host}"
        done = seen.owners.get(owner) if seen is not None else None
        if isinstance(done, str):  # archived when it passed here before
            return False
        if done is None:
            if not should_archive(stanza):
                return False
            decided = self._decide(user, host, other.userhost())
            if isinstance(decided, defer.Deferred):
                return decided.addCallback(self._decided, event, owner, rerun_out)
            done = decided
        if not done:
            return False
        if seen is None:
            seen = self._seen[stanza] = _Seen()
        if seen.xml is None:
            seen.xml = stanza_bytes(stanza, "").decode("utf-8")
        archive_id = self.new_id()
        self.writer.add(ArchiveRecord(user, host, archive_id, self.clock(), other.full(), seen.xml))
        seen.owners[owner] = archive_id
        stanza.addChild(stanza_id_element(archive_id, owner))
        return False

    def _decided(self, keep: bool, event, owner: str, rerun_out: bool):
        seen = self._seen.get(event.stanza)
        if seen is None:
            seen = self._seen[event.stanza] = _Seen()
        seen.owners[owner] = keep
        if rerun_out:
            key = ("out", "message", event.type)
            return self.dispatcher.run(key, event, then=self.server.router.route)
        return self.dispatcher.inbound(event)

    def _decide(self, user: str, host: str, with_bare: str) -> bool | defer.Deferred:
        """Whether user@host keeps messages with C{with_bare}: now, or once the store answered."""
        prefs = self._prefs.get((user, host))
        if prefs is None or isinstance(prefs, defer.Deferred):
            return self._decide_later(user, host, with_bare)
        rule = prefs.rule_for(with_bare)
        if rule != "roster":
            return rule == "always"
        roster = self.server.rosters.cached(user, host)
        if roster is None:
            return self._decide_later(user, host, with_bare)
        return with_bare in roster.items

    @defer.inlineCallbacks
    def _decide_later(self, user: str, host: str, with_bare: str):
        prefs = self._prefs.get((user, host))
        if isinstance(prefs, defer.Deferred):
            prefs = yield _waiting(prefs)
        if prefs is None:
            if not (yield self.store.user_exists(user, host)):
                return False  # no archive for an account that does not exist
            prefs = yield self._read_prefs(user, host)
        rule = prefs.rule_for(with_bare)
        if rule != "roster":
            return rule == "always"
        roster = yield self.server.rosters.get(user, host)
        return with_bare in roster.items

    def _read_prefs(self, user: str, host: str) -> defer.Deferred:
        d = self.store.get_archive_prefs(user, host)
        d.addCallback(lambda prefs: prefs or self.default_prefs)
        return d

    def _session_bound(self, session) -> None:
        key = (session.user, session.host)
        if key in self._prefs:
            return
        d = self._prefs[key] = self._read_prefs(session.user, session.host)

        def loaded(prefs: ArchivePrefs) -> ArchivePrefs:
            if self._prefs.get(key) is d:
                self._prefs[key] = prefs
            return prefs

        def failed(failure):
            log.failure("reading archive preferences of {user}@{host}", failure, **_who(key))
            if self._prefs.get(key) is d:
                del self._prefs[key]
            return self.default_prefs

        d.addCallbacks(loaded, failed)

    def _user_offline(self, user: str, host: str) -> None:
        self._prefs.pop((user, host), None)

    def _user_deleted(self, user: str, host: str, _roster) -> defer.Deferred:
        """The store deleted the archive with the account; copies queued since go too."""
        self._prefs.pop((user, host), None)
        d = self.writer.flushed()
        d.addCallback(lambda _: self.store.delete_archive(user, host))
        return d

    def expire(self) -> defer.Deferred:
        """Delete what is older than expire_after_days, for every user."""
        before = int((time.time() - self.expire_after) * 1_000_000)
        d = self.writer.flushed()
        d.addCallback(lambda _: self.store.expire_archive(before))
        d.addCallback(lambda count: count and log.info("archive: {count} expired", count=count))
        d.addErrback(lambda f: log.failure("archive expiry failed", f))
        return d

    # -- the protocol ------------------------------------------------------------------

    def iq_get(self, event):
        payload = event.stanza.firstChildElement()
        if payload.name == "query":  # the query form (XEP-0313 §4.1.5)
            query = domish.Element((NS_MAM, "query"))
            query.addChild(query_form())
            return event.answer(query)
        if payload.name == "prefs":
            return self._prefs_of(event).addCallback(self._answer_prefs, event)
        if payload.name == "metadata":
            return self._metadata(event)
        raise StanzaError("feature-not-implemented")

    def iq_set(self, event):
        payload = event.stanza.firstChildElement()
        if payload.name == "query":
            return self._query(event, payload)
        if payload.name == "prefs":
            prefs = parse_prefs(payload)
            user, host = event.sender.user, event.sender.host
            d = self.store.set_archive_prefs(user, host, prefs)

            def stored(_):
                if (user, host) in self._prefs:
                    self._prefs[(user, host)] = prefs
                return self._answer_prefs(prefs, event)

            return d.addCallback(stored)
        raise StanzaError("feature-not-implemented")

    def _prefs_of(self, event) -> defer.Deferred:
        prefs = self._prefs.get((event.sender.user, event.sender.host))
        if isinstance(prefs, ArchivePrefs):
            return defer.succeed(prefs)
        return self._read_prefs(event.sender.user, event.sender.host)

    @staticmethod
    def _answer_prefs(prefs: ArchivePrefs, event) -> bool:
        wire = MAMPrefs(
            prefs.default,
            always=[JID(j) for j in sorted(prefs.always)],
            never=[JID(j) for j in sorted(prefs.never)],
        )
        return event.answer(wire.toElement())

    def _query(self, event, payload: domish.Element) -> defer.Deferred:
        request = parse_query(payload, self.default_page, self.max_page)
        user, host = event.sender.user, event.sender.host
        d = self.writer.flushed()
        d.addCallback(lambda _: self.store.query_archive(user, host, request.query))

        def unknown(failure):
            failure.trap(UnknownArchiveId)
            raise StanzaError("item-not-found", text="no such id in the archive")

        d.addCallbacks(self._send_page, unknown, callbackArgs=(event, request))
        return d

    @staticmethod
    def _send_page(page, event, request) -> bool:
        origin = event.origin
        source = event.stanza.getAttribute("to")
        messages = page.messages
        for item in reversed(messages) if request.flip else messages:
            message = domish.Element((None, "message"))
            message["to"] = event.sender.full()
            if source:
                message["from"] = source
            result = message.addElement((NS_MAM, "result"))
            if request.query_id is not None:
                result["queryid"] = request.query_id
            result["id"] = item.archive_id
            forwarded = result.addElement((NS_FORWARD, "forwarded"))
            forwarded.addChild(Delay(to_datetime(item.when)).toElement())
            forwarded.addChild(domish.SerializedXML(item.xml))
            origin.send(message)
        fin = domish.Element((NS_MAM, "fin"))
        if page.complete:
            fin["complete"] = "true"
        # XEP-0059 §2.2 (SHOULD, optional in XEP-0313 §4.3.2): <count/> and the index
        # of <first/>; an empty page, as for <max>0</max> (§2.7), has only the count.
        if messages:
            first, last = messages[0].archive_id, messages[-1].archive_id
            rsm = RSMResponse(first, last, index=page.index, count=page.count)
        else:
            rsm = RSMResponse(count=page.count)
        fin.addChild(rsm.toElement())
        return event.answer(fin)

    def _metadata(self, event) -> defer.Deferred:
        """The first and last entries of the archive (XEP-0313 §6, #extended)."""
        user, host = event.sender.user, event.sender.host
        d = self.writer.flushed()
        d.addCallback(lambda _: self.store.archive_bounds(user, host))

        def answer(bounds) -> bool:
            metadata = domish.Element((NS_MAM, "metadata"))
            for name, item in zip(("start", "end"), bounds, strict=True):
                if item is not None:
                    element = metadata.addElement(name)
                    element["id"] = item.archive_id
                    element["timestamp"] = Delay(to_datetime(item.when)).toElement()["stamp"]
            return event.answer(metadata)

        return d.addCallback(answer)


def _forbidden(event) -> bool:
    """Another user's archive is theirs alone (XEP-0313 §9.1)."""
    raise StanzaError("forbidden")


def _waiting(d: defer.Deferred) -> defer.Deferred:
    """A new Deferred with C{d}'s result, leaving C{d}'s own chain as it was."""
    copy: defer.Deferred = defer.Deferred()
    d.addBoth(lambda result: (copy.callback(result), result)[1])
    return copy


def _who(key: tuple[str, str]) -> dict[str, str]:
    return {"user": key[0], "host": key[1]}


feature = Mam()
