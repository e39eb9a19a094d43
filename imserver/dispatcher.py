"""The central dispatcher: every stanza crosses the same named stages.

1. validate and stamp: a client's 'from' is its session's full JID; a bad
   type, a malformed 'to' or an iq without id or payload gets a stanza error;
2. outbound filters (the sender's privacy rules: registered, never called by name);
3. C{("out", kind, type)} handlers act for a local sender (presence broadcast,
   roster changes for outbound subscriptions, directed-presence bookkeeping);
4. route by domain (L{imserver.router.Router}): the local hosts, or another
   route (s2s, a cluster peer); the default route answers remote-server-not-found;
5. inbound filters (the recipient's privacy rules);
6. inbound handlers act for the recipient:
   - C{("iq", type, namespace, target)} with target C{"host"} (the server),
     C{"self"} (the sender's own account) or C{"bare"} (another local account);
     C{("iq", type, "full")} for an iq to a client;
   - C{(kind, type, target)} for message and presence, target C{"host"},
     C{"bare"} or C{"full"};
7. default delivery (L{imserver.router.Router.deliver}): the RFC 6121 §8 rules;
   a message nobody can take becomes the C{("message", "offline")} event.

Stanzas the server emits on someone's behalf (broadcasts, subscription
stanzas, probe answers) and stanzas from peer servers enter at stage 2 through
L{Dispatcher.route}. Top-level elements after bind that are not stanzas
(stream management, client state) are C{("stream", namespace, name)} events;
those a client sends during negotiation, before bind (stream resumption, SASL2),
are C{("negotiate", namespace, name)} events; requests made inline in a SASL2 or
Bind2 request are C{("inline", namespace, name)} events.

Handlers run in descending priority; the first to return True (or a Deferred)
ends the chain, and a returned Deferred holds the sender's next stanzas until
it fires. A handler raises L{StanzaError} to answer with an error; any other
exception becomes internal-server-error and a log line, and the stream stays
up. A filter returns None (pass), False (drop), a L{StanzaError} (refuse) or a
Deferred firing with one of those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from imserver import lang
from imserver.jid import JID, InvalidFormat, parse_jid

if TYPE_CHECKING:
    from imserver.server import Server
    from imserver.session import Session

log = Logger()

Handler = Callable[["Event"], Any]
Filter = Callable[["Event"], Any]

IQ_TYPES = frozenset(("get", "set", "result", "error"))
MESSAGE_TYPES = frozenset(("normal", "chat", "groupchat", "headline", "error"))
PRESENCE_TYPES = frozenset(
    (
        "available",
        "unavailable",
        "subscribe",
        "subscribed",
        "unsubscribe",
        "unsubscribed",
        "probe",
        "error",
    )
)
_TYPES = {"message": MESSAGE_TYPES, "presence": PRESENCE_TYPES, "iq": IQ_TYPES}
_DEFAULT_TYPE = {"message": "normal", "presence": "available", "iq": ""}
#: Hook names; registering for another is a mistake caught at start.
HOOKS = frozenset(
    (
        "session-bound",
        # session-resumed(session): a stream-managed session moved onto a new stream.
        "session-resumed",
        "initial-presence",
        "reachable",
        "pre-session-ended",
        "session-ended",
        "user-offline",
        "roster-changed",
        "privacy-changed",
        "user-deleted",
        "server-stopping",
        # caps-known(session, new_nodes): a client's +notify interests grew (XEP-0115).
        "caps-known",
        # pep-published(owner, node, item) / pep-retracted(owner, node, ids): PEP changed.
        "pep-published",
        "pep-retracted",
    )
)
_IQ_TARGETS = frozenset(("host", "self", "bare", "preauth"))
_TARGETS = frozenset(("host", "bare", "full"))


class Event:
    """One stanza on its way: what every handler needs, computed once.

    C{origin} is the sending session (None for stanzas the server makes or a
    peer server sends); C{sender} its JID as stamped; C{to} the parsed
    destination (never None: a missing 'to' means the sender's own account for
    iq and message, the server for presence); C{target} one of
    host/self/bare/full for local destinations, "remote" for other domains.
    """

    __slots__ = (
        "stanza",
        "kind",
        "type",
        "origin",
        "sender",
        "to",
        "target",
        "ns",
        "server",
        "stream",
        "result",
    )

    def __init__(
        self,
        server: Server,
        stanza: domish.Element,
        kind: str,
        type_: str,
        origin: Session | None,
        sender: JID,
        to: JID,
        target: str,
        ns: str | None,
    ) -> None:
        self.server = server
        self.stanza = stanza
        self.kind = kind
        self.type = type_
        self.origin = origin
        self.sender = sender
        self.to = to
        self.target = target
        self.ns = ns
        #: Only for stanzas from a stream without a session (registration).
        self.stream = None
        #: What an inline handler answers with (an element for the SASL2 or Bind2 reply).
        self.result: domish.Element | None = None

    def reply(self, child: domish.Element | None = None) -> domish.Element:
        """Build the result for this iq (to the sender, from the addressee)."""
        result = domish.Element((None, "iq"))
        result["type"] = "result"
        result["id"] = self.stanza.getAttribute("id", "")
        if self.stream is None:
            result["to"] = self.sender.full()
        if self.stanza.hasAttribute("to"):
            result["from"] = self.stanza["to"]
        if child is not None:
            result.addChild(child)
        return result

    def answer(self, child: domish.Element | None = None) -> bool:
        """Send the iq result to the sender; returns True, as a handler does."""
        result = self.reply(child)
        if self.stream is not None:
            self.stream.send_stanza(result)
        elif self.origin is not None:
            self.origin.send(result)
        else:
            self.server.router.send_to_jid(self.sender, result)
        return True

    def __repr__(self) -> str:
        return f"<Event {self.kind}/{self.type} {self.target} ns={self.ns}>"


class Dispatcher:
    """Event key -> handlers in priority order; filters; named hooks for the rest."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._handlers: dict[tuple, list[tuple[int, int, Handler]]] = {}
        self._chains: dict[tuple, tuple[Handler, ...]] = {}
        self._hooks: dict[str, list[tuple[int, int, Callable]]] = {}
        self._filters: dict[str, list[Filter]] = {"out": [], "in": []}
        self._order = 0

    # -- registration ---------------------------------------------------

    def on(self, key: tuple, handler: Handler, priority: int = 0) -> None:
        """Handle events with C{key}; higher priorities run first.

        Raises ValueError for a key no stanza can have, so a typo fails at
        start instead of never firing.
        """
        check_key(key)
        self._order += 1
        entries = self._handlers.setdefault(key, [])
        entries.append((-priority, self._order, handler))
        entries.sort(key=lambda e: (e[0], e[1]))
        self._chains[key] = tuple(h for _, _, h in entries)

    def hook(self, name: str, callback: Callable, priority: int = 0) -> None:
        """Call C{callback} whenever C{fire(name, ...)} runs."""
        if name not in HOOKS:
            raise ValueError(f"unknown hook {name!r} (known: {', '.join(sorted(HOOKS))})")
        self._order += 1
        entries = self._hooks.setdefault(name, [])
        entries.append((-priority, self._order, callback))
        entries.sort(key=lambda e: (e[0], e[1]))

    def add_filter(self, direction: str, check: Filter) -> None:
        """Consult C{check} at stage 2 (C{"out"}, the sender's side) or 5 (C{"in"})."""
        self._filters[direction].append(check)

    def fire(self, name: str, *args: Any) -> defer.Deferred:
        """Run every callback of hook C{name}; fire when all (incl. async ones) are done.

        A failing callback is logged and does not stop the others.
        """
        waits = []
        for callback, result in self._call_hook(name, args):
            if isinstance(result, defer.Deferred):
                result.addErrback(
                    lambda f, c=callback: log.failure(
                        "hook {name} failed in {callback!r}", f, name=name, callback=c
                    )
                )
                waits.append(result)
        if not waits:
            return defer.succeed(None)
        return defer.gatherResults(waits, consumeErrors=True)

    def claimed(self, name: str, *args: Any) -> bool:
        """Run hook C{name}'s callbacks until one returns True (it claims the moment)."""
        return any(result is True for _, result in self._call_hook(name, args))

    def _call_hook(self, name: str, args: tuple):
        for _, _, callback in self._hooks.get(name, ()):
            try:
                yield callback, callback(*args)
            except Exception:
                log.failure("hook {name} failed in {callback!r}", name=name, callback=callback)

    # -- entry points ---------------------------------------------------

    def dispatch(self, stanza: domish.Element, origin: Session) -> defer.Deferred | None:
        """Stage 1 for a stanza from a client session (the hot path), then the rest.

        Returns a Deferred while an asynchronous handler is still working, so
        the stream can hold back the sender's next stanzas and keep their order.
        """
        kind = stanza.name
        origin.stanzas_in += 1
        stanza["from"] = origin.full  # stamped: a client cannot spoof its address
        type_ = stanza.getAttribute("type") or _DEFAULT_TYPE[kind]
        if type_ not in _TYPES[kind]:
            return self.bounce(stanza, StanzaError("bad-request", text=f"unknown {kind} type"))
        if kind == "iq" and not _valid_iq(stanza, type_):
            error = StanzaError("bad-request", text="iq needs an id and one payload")
            return self.bounce(stanza, error)
        to_attr = stanza.getAttribute("to")
        if to_attr is None:
            to = origin.jid.userhostJID() if kind != "presence" else None
        else:
            try:
                to = parse_jid(to_attr)
            except InvalidFormat:
                return self.bounce(stanza, StanzaError("jid-malformed"))
        event = self._event(stanza, kind, type_, origin, origin.jid, to)
        if self._filters["out"]:
            return self._filtered("out", event, self._act_for_sender)
        return self._act_for_sender(event)

    def dispatch_element(self, element: domish.Element, origin: Session):
        """A top-level element after bind that is not a stanza: C{("stream", ns, name)}.

        Returns False when no plugin registered for it (the stream then closes
        with an error), else None or a Deferred, as for a stanza.
        """
        key = ("stream", element.uri, element.name)
        if key not in self._chains:
            return False
        host = origin.jid.userhostJID()
        event = Event(
            self.server, element, "stream", element.name, origin, origin.jid, host, "host", None
        )
        return self.run(key, event)

    def dispatch_negotiation(self, element: domish.Element, stream: Any):
        """A top-level element during negotiation that the stream itself does not know.

        The key is C{("negotiate", ns, name)} (XEP-0198 <resume/> after SASL);
        C{event.origin} is None, C{event.sender} the authenticated account (the
        host before authentication) and C{event.stream} the stream. Returns
        False when no plugin registered for it, else None or a Deferred.
        """
        key = ("negotiate", element.uri, element.name)
        if key not in self._chains:
            return False
        auth = stream.authenticator
        host = parse_jid(auth.host)
        sender = JID(tuple=(auth.username, auth.host, None)) if auth.username else host
        event = Event(
            self.server, element, "negotiate", element.name, None, sender, host, "host", None
        )
        event.stream = stream
        return self.run(key, event)

    def dispatch_inline(
        self, element: domish.Element, stream: Any, session: Session | None = None
    ) -> domish.Element | bool | None:
        """A request made inline in a SASL2 <authenticate/> or Bind2 <bind/> (XEP-0388/0386).

        The key is C{("inline", ns, name)}; the handler runs synchronously and
        puts its answer in C{event.result}, which is returned (None when it has
        nothing to say). C{event.origin} is the newly bound session for Bind2
        requests, None for those made before binding. False when no plugin
        handles the element (the request then ignores it).
        """
        key = ("inline", element.uri, element.name)
        if key not in self._chains:
            return False
        auth = stream.authenticator
        host = parse_jid(auth.host)
        sender = session.jid if session is not None else JID(tuple=(auth.username, auth.host, None))
        event = Event(
            self.server, element, "inline", element.name, session, sender, host, "host", None
        )
        event.stream = stream
        self.run(key, event)
        return event.result

    def inline_namespaces(self) -> set[str]:
        """The namespaces of the inline requests some plugin handles (Bind2 advertises them)."""
        return {key[1] for key in self._chains if key[0] == "inline"}

    def dispatch_preauth(self, stanza: domish.Element, stream: Any) -> defer.Deferred | None:
        """Handle an iq from a stream that has not authenticated yet (XEP-0077).

        The key is C{("iq", type, namespace, "preauth")}; C{event.origin} is None
        and C{event.stream} is the stream, which gets the answer.
        """
        type_ = stanza.getAttribute("type") or ""
        if type_ not in ("get", "set") or not _valid_iq(stanza, type_):
            stream.send_stanza(StanzaError("bad-request").toResponse(stanza))
            return None
        host = parse_jid(stream.authenticator.host)
        ns = _payload_namespace(stanza)
        event = Event(self.server, stanza, "iq", type_, None, host, host, "preauth", ns)
        event.stream = stream
        return self.run(("iq", type_, ns, "preauth"), event, then=self._unhandled)

    def route(
        self, stanza: domish.Element, sender: JID, to: JID, origin: Session | None = None
    ) -> defer.Deferred | None:
        """Send a stanza the server emits, or a peer server sent, through stages 2 and 4-7.

        Its 'from' and 'to' must already be set; filters, routes and handlers
        treat it exactly like a client's stanza after stage 3.
        """
        kind = stanza.name
        type_ = stanza.getAttribute("type") or _DEFAULT_TYPE[kind]
        event = self._event(stanza, kind, type_, origin, sender, to)
        if self._filters["out"]:
            return self._filtered("out", event, self.server.router.route)
        return self.server.router.route(event)

    def event_for(self, stanza: domish.Element, sender: JID, to: JID) -> Event:
        """The event of a server-made stanza (e.g. one a route must carry)."""
        kind = stanza.name
        return self._event(
            stanza, kind, stanza.getAttribute("type") or _DEFAULT_TYPE[kind], None, sender, to
        )

    def inbound(self, event: Event) -> defer.Deferred | None:
        """Stages 5-7 for an event addressed to a local host (the local route's work)."""
        if self._filters["in"]:
            return self._filtered("in", event, self._act_for_recipient)
        return self._act_for_recipient(event)

    # -- stages ---------------------------------------------------------

    def _act_for_sender(self, event: Event) -> defer.Deferred | None:
        """Stage 3, then stage 4 when no handler consumed the stanza."""
        return self.run(("out", event.kind, event.type), event, then=self.server.router.route)

    def _act_for_recipient(self, event: Event) -> defer.Deferred | None:
        """Stage 6, then the router's default delivery (stage 7)."""
        if event.kind == "iq":
            if event.target == "full":
                key: tuple = ("iq", event.type, "full")
            else:
                key = ("iq", event.type, event.ns, event.target)
        else:
            key = (event.kind, event.type, event.target)
        return self.run(key, event, then=self.server.router.deliver)

    def _filtered(
        self, direction: str, event: Event, then: Callable[[Event], Any], start: int = 0
    ) -> defer.Deferred | None:
        """Consult the filters of one direction in order, then go on with C{then}."""
        filters = self._filters[direction]
        for index in range(start, len(filters)):
            verdict = filters[index](event)
            if verdict is None:
                continue
            if isinstance(verdict, defer.Deferred):
                verdict.addCallback(self._after_filter, direction, event, then, index + 1)
                return verdict.addErrback(self._filter_failed, event)
            return self._refused(event, verdict)
        return then(event)

    def _after_filter(self, verdict, direction: str, event: Event, then, start: int):
        if verdict is None:
            return self._filtered(direction, event, then, start)
        return self._refused(event, verdict)

    def _refused(self, event: Event, verdict: StanzaError | bool) -> None:
        """A filter stopped the stanza: answer with its error, or drop it (False)."""
        if isinstance(verdict, StanzaError):
            self.error(event, verdict)

    def _filter_failed(self, failure: Failure, event: Event) -> None:
        log.failure("filtering {event!r} failed", failure, event=event)
        self.error(event, StanzaError("internal-server-error"))

    def run(
        self, key: tuple, event: Event, then: Callable[[Event], Any] | None = None
    ) -> defer.Deferred | None:
        """Run the chain for C{key}; call C{then(event)} when nobody handled it."""
        for handler in self._chains.get(key, ()):
            try:
                result = handler(event)
            except StanzaError as e:
                return self.error(event, e)
            except Exception:
                log.failure("handler {handler!r} failed on {event!r}", handler=handler, event=event)
                return self.error(event, StanzaError("internal-server-error"))
            if result is True:
                return None
            if isinstance(result, defer.Deferred):
                return result.addErrback(self._async_failure, event, handler)
        if then is not None:
            return then(event)
        return None

    # -- helpers --------------------------------------------------------

    def _event(
        self,
        stanza: domish.Element,
        kind: str,
        type_: str,
        origin: Session | None,
        sender: JID,
        to: JID | None,
    ) -> Event:
        """The event for a stanza: its target (host/self/bare/full/remote) and iq namespace."""
        if to is None:
            target, to = "host", parse_jid(sender.host)
        elif to.host not in self.server.hosts:
            target = "remote"
        elif to.user is None:
            target = "host"
        elif to.resource is not None:
            target = "full"
        elif kind == "iq" and to.user == sender.user and to.host == sender.host:
            target = "self"
        else:
            target = "bare"
        ns = _payload_namespace(stanza) if kind == "iq" else None
        return Event(self.server, stanza, kind, type_, origin, sender, to, target, ns)

    def _unhandled(self, event: Event) -> None:
        if event.kind == "iq" and event.type in ("get", "set"):
            self.error(event, StanzaError("service-unavailable"))

    def _async_failure(self, failure: Failure, event: Event, handler: Handler) -> None:
        if failure.check(StanzaError):
            self.error(event, failure.value)
        else:
            log.failure(
                "handler {handler!r} failed on {event!r}", failure, handler=handler, event=event
            )
            self.error(event, StanzaError("internal-server-error"))

    def error(self, event: Event, error: StanzaError) -> None:
        """Answer C{event}'s sender with C{error} (never for an error or an iq result)."""
        if event.stream is not None:
            event.stream.send_stanza(lang.labelled(error).toResponse(event.stanza))
            return
        self.bounce(event.stanza, error)

    def bounce(self, stanza: domish.Element, error: StanzaError) -> None:
        """The one bounce function: see L{imserver.router.Router.bounce}."""
        self.server.router.bounce(stanza, error)


def check_key(key: tuple) -> None:
    """Raise ValueError unless some stanza or element can have event key C{key}."""
    ok = False
    if len(key) == 3 and key[0] == "out":
        ok = key[1] in _TYPES and key[2] in _TYPES[key[1]]
    elif len(key) == 3 and key[0] in ("stream", "negotiate", "inline"):
        ok = isinstance(key[1], str) and isinstance(key[2], str)
    elif len(key) == 4 and key[0] == "iq":
        ok = key[1] in IQ_TYPES and isinstance(key[2], str) and key[3] in _IQ_TARGETS
    elif len(key) == 3 and key[0] == "iq":
        ok = key[1] in IQ_TYPES and key[2] == "full"
    elif key == ("message", "offline"):
        ok = True
    elif len(key) == 3 and key[0] in ("message", "presence"):
        ok = key[1] in _TYPES[key[0]] and key[2] in _TARGETS
    if not ok:
        raise ValueError(f"no stanza has the event key {key!r} (see imserver.dispatcher)")


def _valid_iq(stanza: domish.Element, type_: str) -> bool:
    if not stanza.getAttribute("id"):
        return False
    if type_ in ("get", "set"):
        return sum(1 for c in stanza.elements()) == 1
    return True


def _payload_namespace(stanza: domish.Element) -> str | None:
    for child in stanza.elements():
        if child.uri != "jabber:client" or child.name != "error":
            return child.uri
    return None
