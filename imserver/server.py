"""The server object every plugin attaches to: hosts, store, dispatcher, router, sessions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.words.xish import domish

import plugins as plugin_package
from imserver.config import Settings
from imserver.dispatcher import Dispatcher
from imserver.errors import ConfigError
from imserver.interfaces import IFeature, IStore
from imserver.privacy import PrivacyEngine
from imserver.roster import RosterCache
from imserver.router import Router
from imserver.session import Session, SessionRegistry
from imserver.stream.limits import ConnectionTally
from imserver.stream.throttle import AuthThrottle

if TYPE_CHECKING:
    from imserver.stream.c2s import C2SStream
    from imserver.tls import ServerTLS

log = Logger()

#: A stream feature offered at a stage of negotiation ("preauth" or "bound").
FeatureFactory = Callable[["C2SStream"], domish.Element | None]


class Server:
    """One imserver instance: shared by every stream and every plugin."""

    def __init__(self, settings: Settings, store: IStore, tls: ServerTLS | None = None) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.hosts = frozenset(settings.hosts)
        self.store = store
        self.tls = tls
        self.sessions = SessionRegistry()
        self.router = Router(self)
        self.dispatcher = Dispatcher(self)
        self.rosters = RosterCache(store, settings.limits.roster_size)
        self.privacy = PrivacyEngine(self)
        self.auth_throttle = AuthThrottle(
            settings.limits.auth_failure_delay, settings.limits.auth_failure_max_delay
        )
        #: Every open client stream, authenticated or not (for shutdown and limits).
        self.streams: set[C2SStream] = set()
        #: Open connections per address, for the caps checked at accept.
        self.connections = ConnectionTally()
        self.disco_features: set[str] = set()
        #: What a user's bare JID answers to disco#info (XEP-0030 on user@host): plugins add theirs.
        self.account_features: set[str] = set()
        self.account_identities: set[tuple[str, str]] = {("account", "registered")}
        self.stream_features: dict[str, list[FeatureFactory]] = {"preauth": [], "bound": []}
        self.ready: defer.Deferred = defer.Deferred()
        for iq_type in ("get", "set", "result", "error"):
            self.dispatcher.on(("iq", iq_type, "full"), self.router.iq_to_full, priority=-100)
        self.plugins = load_plugins(settings.plugins)
        for plugin in self.plugins:
            self.disco_features.update(plugin.disco_features)
            plugin.attach(self)

    def options(self, plugin: str) -> dict[str, Any]:
        """The [plugin.NAME] table of the config (empty when absent)."""
        return self.settings.plugin_options.get(plugin, {})

    def add_stream_feature(self, stage: str, factory: FeatureFactory) -> None:
        """Offer a stream feature: C{stage} "preauth" (before SASL) or "bound" (after it)."""
        self.stream_features[stage].append(factory)

    def when_ready(self) -> defer.Deferred:
        """Fire once the store is open (immediately afterwards)."""
        if self.ready.called:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self.ready.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    # -- session lifecycle -------------------------------------------------

    def bind(self, session: Session) -> Session | None:
        """Register a new bound resource; return the session it replaced, if any."""
        replaced = self.sessions.add(session)
        self.dispatcher.fire("session-bound", session)
        return replaced

    def unbind(self, session: Session) -> None:
        """Forget a resource whose stream closed, after features have said goodbye."""
        self.dispatcher.fire("session-ended", session)
        if self.sessions.remove(session):
            self.rosters.forget(session.user, session.host)
            self.dispatcher.fire("user-offline", session.user, session.host)


def load_plugins(names: tuple[str, ...]) -> list:
    """Find each named feature among the installed IFeature plugins, in config order."""
    available = {p.name: p for p in getPlugins(IFeature, plugin_package)}
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(
            f"server.plugins: unknown plugin {missing[0]!r} "
            f"(installed: {', '.join(sorted(available))})"
        )
    return [available[n] for n in names]
