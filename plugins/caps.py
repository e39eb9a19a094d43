"""XEP-0115 entity capabilities: what each client can do, learned once per ver.

Watches every available presence a client broadcasts. A <c/> whose ver is
already known (verified) costs a dict lookup; an unknown ver gets one
disco#info query from the server, whatever number of clients share it; the
answer is hashed and accepted for caching only when it matches (XEP-0115
§5.4). A session's C{+notify} interests are kept on the session
(L{imserver.caps.session_interests}) and announced with the hook
C{caps-known}(session, new_nodes), which PEP uses to send the last items.

The server's own caps are advertised as a stream feature (§6.3), and its
node#ver answers disco#info like the server itself.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

from twisted.internet import reactor
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.words.xish import domish
from tx_xmpp.disco import NS_DISCO_INFO
from zope.interface import implementer

from imserver import caps
from imserver.interfaces import IFeature

log = Logger()

#: Verified vers remembered (a few hundred client builds are common; entries are small).
CACHE_SIZE = 10000
#: Seconds a client has to answer the disco#info query.
QUERY_TIMEOUT = 30.0
#: Queries waiting for an answer, from all clients together.
MAX_PENDING = 1000
#: Key of Session.extra holding the id of the query a client has not answered yet.
ASKED_KEY = "caps-query"


@implementer(IPlugin, IFeature)
class Caps:
    name = "caps"
    disco_features = (caps.NS_CAPS,)

    def attach(self, server) -> None:
        self.server = server
        self.dispatcher = server.dispatcher
        #: ver -> notify nodes, for verified answers only; least recently used first.
        self.known: OrderedDict[str, frozenset[str]] = OrderedDict()
        #: query id -> (ver, hash algorithm, sessions waiting for it)
        self.pending: dict[str, tuple[str, str, list]] = {}
        #: ver -> query id, so that one query serves every client announcing it.
        self.asking: dict[str, str] = {}
        self._feature: domish.Element | None = None
        self.dispatcher.on(("out", "presence", "available"), self.presence, priority=100)
        # An error without the query echoed (no namespace) leaves the query to time out.
        for type_ in ("result", "error"):
            self.dispatcher.on(("iq", type_, NS_DISCO_INFO, "host"), self.answer)
        for stage in ("preauth", "bound"):
            server.add_stream_feature(stage, self.stream_feature)

    # -- the server's own caps ---------------------------------------------------

    def stream_feature(self, _stream) -> domish.Element:
        if self._feature is None:
            self._feature = caps.caps_element(self.server.host_info())
            self.server.host_info_nodes.add(f"{caps.SERVER_NODE}#{self._feature['ver']}")
        return self._feature

    # -- clients' caps ---------------------------------------------------------------

    def presence(self, event) -> bool:
        """Observe a broadcast presence; never handles it (returns False)."""
        session = event.origin
        if session is None or event.stanza.getAttribute("to") is not None:
            return False
        c = next(event.stanza.elements(caps.NS_CAPS, "c"), None)
        if c is None:
            self._set(session, frozenset())
            return False
        ver, algorithm = c.getAttribute("ver"), c.getAttribute("hash")
        node = c.getAttribute("node")
        if not ver or not node or algorithm not in caps.HASHES:
            return False  # legacy or malformed caps: nothing we can verify
        nodes = self.known.get(ver)
        if nodes is not None:
            self.known.move_to_end(ver)
            self._set(session, nodes)
            return False
        query_id = self.asking.get(ver)
        if query_id is not None:
            self.pending[query_id][2].append(session)
            return False
        if session.extra.get(ASKED_KEY) in self.pending or len(self.pending) >= MAX_PENDING:
            # One open query per client (a client cycling vers cannot make us ask
            # without end) and a bound on all of them; its next presence asks again.
            return False
        self._query(session, f"{node}#{ver}", ver, algorithm)
        return False

    def _query(self, session, node: str, ver: str, algorithm: str) -> None:
        query_id = "caps-" + secrets.token_hex(6)
        iq = domish.Element((None, "iq"))
        iq["type"] = "get"
        iq["id"] = query_id
        iq["from"] = session.host
        iq["to"] = session.full
        iq.addElement((NS_DISCO_INFO, "query"))["node"] = node
        self.pending[query_id] = (ver, algorithm, [session])
        self.asking[ver] = query_id
        session.extra[ASKED_KEY] = query_id
        session.send(iq)
        reactor.callLater(QUERY_TIMEOUT, self._forget, query_id)

    def _forget(self, query_id: str) -> list:
        entry = self.pending.pop(query_id, None)
        if entry is None:
            return []
        ver, _, sessions = entry
        if self.asking.get(ver) == query_id:
            del self.asking[ver]
        return sessions

    def answer(self, event) -> bool:
        """A client answered one of our queries (or an iq to the server nobody else wants)."""
        query_id = event.stanza.getAttribute("id", "")
        entry = self.pending.get(query_id)
        if entry is None or event.origin is None or event.origin not in entry[2]:
            return False
        ver, algorithm, _ = entry
        sessions = self._forget(query_id)
        query = next(event.stanza.elements(NS_DISCO_INFO, "query"), None)
        if event.type != "result" or query is None:
            return True
        try:
            verified = caps.ver(query, algorithm) == ver
        except caps.InvalidCaps as e:
            log.info("caps of {jid} rejected: {why}", jid=event.sender.full(), why=str(e))
            verified = False
        nodes = caps.notify_nodes(caps.features_of(query))
        if verified:
            self.known[ver] = nodes
            if len(self.known) > CACHE_SIZE:
                self.known.popitem(last=False)
            for session in sessions:
                if session.connected:
                    self._set(session, nodes)
        else:
            # Not cached for anyone else; the client that answered still gets what it asked for.
            log.info("caps ver of {jid} does not match its features", jid=event.sender.full())
            self._set(event.origin, nodes)
        return True

    def _set(self, session, nodes: frozenset[str]) -> None:
        before = caps.session_interests(session)
        if nodes == before:
            return
        session.extra[caps.SESSION_KEY] = nodes
        added = nodes - before
        if added:
            self.dispatcher.fire("caps-known", session, added)


feature = Caps()
