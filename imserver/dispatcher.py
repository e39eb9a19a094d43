"""The central dispatcher: every stanza becomes an event key, handled by plugins.

A stanza from a client crosses two phases:

1. C{("out", kind, type)}: features act for the sender (presence broadcast,
   roster changes for outbound subscriptions, directed-presence bookkeeping).
   A handler that returns True has fully handled the stanza.
2. Routing to the addressed entity, as an inbound event:
   - C{("iq", type, namespace, target)} with target C{"host"} (the server),
     C{"self"} (the sender's own account) or C{"bare"} (another local account);
   - C{(kind, type, target)} for message and presence, target C{"host"},
     C{"bare"} or C{"full"};
   - anything for a domain we do not serve bounces with remote-server-not-found.

Handlers run in descending priority; the first to return True (or a Deferred)
ends the chain. A handler raises L{StanzaError} to answer with an error; any
other exception becomes internal-server-error and a log line, and the stream
stays up. Unhandled iq get/set gets service-unavailable, unhandled messages
(other than errors) get service-unavailable, unhandled presence is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

from imserver.jid import JID, InvalidFormat, parse_jid

if TYPE_CHECKING:
    from imserver.server import Server
    from imserver.session import Session

log = Logger()

Handler = Callable[["Event"], Any]

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


class Event:
    """One stanza on its way: what every handler needs, computed once.

    C{origin} is the sending session (None for stanzas the server makes);
    C{sender} its JID as stamped; C{to} the parsed destination (never None:
    a missing 'to' means the sender's own account for iq and message, the
    server for presence); C{target} one of host/self/bare/full/remote.
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
    """Event key -> handlers in priority order; named hooks for the rest."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._handlers: dict[tuple, list[tuple[int, int, Handler]]] = {}
        self._chains: dict[tuple, tuple[Handler, ...]] = {}
        self._hooks: dict[str, list[tuple[int, int, Callable]]] = {}
        self._order = 0

    # -- registration ---------------------------------------------------

    def on(self, key: tuple, handler: Handler, priority: int = 0) -> None:
        """Handle events with C{key}; higher priorities run first."""
        self._order += 1
        entries = self._handlers.setdefault(key, [])
        entries.append((-priority, self._order, handler))
        entries.sort(key=lambda e: (e[0], e[1]))
        self._chains[key] = tuple(h for _, _, h in entries)

    def hook(self, name: str, callback: Callable, priority: int = 0) -> None:
        """Call C{callback} whenever C{fire(name, ...)} runs."""
        self._order += 1
        entries = self._hooks.setdefault(name, [])
        entries.append((-priority, self._order, callback))
        entries.sort(key=lambda e: (e[0], e[1]))

    def fire(self, name: str, *args: Any) -> defer.Deferred:
        """Run every callback of hook C{name}; fire when all (incl. async ones) are done.

        A failing callback is logged and does not stop the others.
        """
        waits = []
        for _, _, callback in self._hooks.get(name, ()):
            try:
                result = callback(*args)
            except Exception:
                log.failure("hook {name} failed in {callback!r}", name=name, callback=callback)
                continue
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

    # -- dispatch -------------------------------------------------------

    def dispatch(self, stanza: domish.Element, origin: Session) -> defer.Deferred | None:
        """Handle one stanza from a client session (the hot path).

        Returns a Deferred while an asynchronous handler is still working, so
        the stream can hold back the sender's next stanzas and keep their order.
        """
        kind = stanza.name
        stanza["from"] = origin.full  # stamped: a client cannot spoof its address
        type_ = stanza.getAttribute("type") or _DEFAULT_TYPE[kind]
        if type_ not in _TYPES[kind]:
            return self._bounce(stanza, "bad-request", f"unknown {kind} type")
        if kind == "iq" and not self._valid_iq(stanza, type_):
            return self._bounce(stanza, "bad-request", "iq needs an id and one payload")

        to_attr = stanza.getAttribute("to")
        if to_attr is None:
            to = origin.jid.userhostJID() if kind != "presence" else None
        else:
            try:
                to = parse_jid(to_attr)
            except InvalidFormat:
                return self._bounce(stanza, "jid-malformed")

        event = self._event(stanza, kind, type_, origin, origin.jid, to)
        return self.run(("out", kind, type_), event, then=self.route)

    def dispatch_preauth(self, stanza: domish.Element, stream: Any) -> defer.Deferred | None:
        """Handle an iq from a stream that has not authenticated yet (XEP-0077).

        The key is C{("iq", type, namespace, "preauth")}; C{event.origin} is None
        and C{event.stream} is the stream, which gets the answer.
        """
        type_ = stanza.getAttribute("type") or ""
        if type_ not in ("get", "set") or not self._valid_iq(stanza, type_):
            stream.send_stanza(StanzaError("bad-request").toResponse(stanza))
            return None
        host = parse_jid(stream.authenticator.host)
        event = Event(
            self.server,
            stanza,
            "iq",
            type_,
            None,
            host,
            host,
            "preauth",
            _payload_namespace(stanza),
        )
        event.stream = stream
        return self.run(("iq", type_, event.ns, "preauth"), event, then=self._unhandled)

    def route(self, event: Event) -> defer.Deferred | None:
        """Deliver an event to whatever it is addressed to (the inbound phase).

        Privacy lists and blocking (sender's outbound rules, recipient's inbound
        rules) are consulted first, on every path: client stanzas and those the
        server emits on a user's behalf (broadcasts, probe answers) alike.
        """
        verdict = self.server.privacy.check(event)
        if verdict is None:
            return self._route_allowed(event)
        if isinstance(verdict, defer.Deferred):
            return verdict.addCallback(self._after_privacy, event)
        return self._blocked(event, verdict)

    def _after_privacy(self, verdict: StanzaError | bool | None, event: Event):
        if verdict is None:
            return self._route_allowed(event)
        return self._blocked(event, verdict)

    def _blocked(self, event: Event, verdict: StanzaError | bool) -> None:
        """A privacy rule stopped the stanza: answer with its error, or drop it (False)."""
        if isinstance(verdict, StanzaError):
            self._error(event, verdict)

    def _route_allowed(self, event: Event) -> defer.Deferred | None:
        if event.target == "remote":
            route = self.server.router.default_route
            if route is None:
                return self._error(event, StanzaError("remote-server-not-found"))
            return route.route(event)
        if event.kind == "iq":
            if event.target == "full":
                key: tuple = ("iq", event.type, "full")
            else:
                key = ("iq", event.type, event.ns, event.target)
        else:
            key = (event.kind, event.type, event.target)
        return self.run(key, event, then=self._unhandled)

    def deliver(
        self, stanza: domish.Element, sender: JID, to: JID, origin: Session | None = None
    ) -> defer.Deferred | None:
        """Route a stanza the server itself emits (e.g. on a user's behalf) through phase 2."""
        kind = stanza.name
        type_ = stanza.getAttribute("type") or _DEFAULT_TYPE[kind]
        return self.route(self._event(stanza, kind, type_, origin, sender, to))

    def run(
        self, key: tuple, event: Event, then: Callable[[Event], Any] | None = None
    ) -> defer.Deferred | None:
        """Run the chain for C{key}; call C{then(event)} when nobody handled it."""
        for handler in self._chains.get(key, ()):
            try:
                result = handler(event)
            except StanzaError as e:
                return self._error(event, e)
            except Exception:
                log.failure("handler {handler!r} failed on {event!r}", handler=handler, event=event)
                return self._error(event, StanzaError("internal-server-error"))
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

    @staticmethod
    def _valid_iq(stanza: domish.Element, type_: str) -> bool:
        if not stanza.getAttribute("id"):
            return False
        if type_ in ("get", "set"):
            return sum(1 for c in stanza.elements()) == 1
        return True

    def _unhandled(self, event: Event) -> None:
        if event.kind == "iq":
            if event.type in ("get", "set"):
                self._error(event, StanzaError("service-unavailable"))
        elif event.kind == "message" and event.type != "error":
            self._error(event, StanzaError("service-unavailable"))

    def _async_failure(self, failure: Failure, event: Event, handler: Handler) -> None:
        if failure.check(StanzaError):
            self._error(event, failure.value)
        else:
            log.failure(
                "handler {handler!r} failed on {event!r}", failure, handler=handler, event=event
            )
            self._error(event, StanzaError("internal-server-error"))

    def _error(self, event: Event, error: StanzaError) -> None:
        """Answer C{event}'s sender with C{error} (never for an error or an iq result)."""
        if event.stream is not None:
            event.stream.send_stanza(error.toResponse(event.stanza))
            return
        self.bounce(event.stanza, error, event.sender, event.origin)

    def _bounce(self, stanza: domish.Element, condition: str, text: str | None = None) -> None:
        self.bounce(stanza, StanzaError(condition, text=text))

    def bounce(
        self,
        stanza: domish.Element,
        error: StanzaError,
        sender: JID | None = None,
        origin: Session | None = None,
    ) -> None:
        """Send C{stanza} back to its sender as an error, per RFC 6120 §8.3.1.

        Errors and iq results are never answered with errors (no loops).
        """
        type_ = stanza.getAttribute("type")
        if type_ == "error" or (stanza.name == "iq" and type_ == "result"):
            return
        response = error.toResponse(stanza)
        to = response.getAttribute("to")
        if to is None:
            return
        self.server.router.send_to_jid(parse_jid(to), response)


def _payload_namespace(stanza: domish.Element) -> str | None:
    for child in stanza.elements():
        if child.uri != "jabber:client" or child.name != "error":
            return child.uri
    return None
