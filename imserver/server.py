"""The server object every plugin attaches to: hosts, store, dispatcher, router, sessions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.words.xish import domish

import plugins as plugin_package
from imserver.config import OptionReader, Settings
from imserver.dispatcher import Dispatcher
from imserver.errors import ConfigError
from imserver.interfaces import IFeature, ISessionRegistry, IStore
from imserver.privacy import PrivacyEngine
from imserver.roster import RosterCache
from imserver.router import Router
from imserver.serialize import stanza_bytes
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

    def __init__(
        self,
        settings: Settings,
        store: IStore,
        tls: ServerTLS | None = None,
        sessions: ISessionRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.hosts = frozenset(settings.hosts)
        self.store = store
        self.tls = tls
        self.sessions: ISessionRegistry = sessions if sessions is not None else SessionRegistry()
        self.router = Router(self, self.sessions)
        self.dispatcher = Dispatcher(self)
        self.rosters = RosterCache(
            store,
            settings.limits.roster_size,
            lambda user, host, items: self.dispatcher.fire("roster-changed", user, host, items),
        )
        self.privacy = PrivacyEngine(self)
        self.auth_throttle = AuthThrottle(
            settings.limits.auth_failure_delay, settings.limits.auth_failure_max_delay
        )
        #: Every open client stream, authenticated or not (for shutdown and limits).
        self.streams: set[C2SStream] = set()
        #: Open connections per address, for the caps checked at accept.
        self.connections = ConnectionTally()
        self.disco_features: set[str] = set()
        #: What disco#info on a user's bare JID shows (XEP-0030 on the account).
        self.account_features: set[str] = set()
        self.account_identities: set[tuple[str, str, str | None]] = {
            ("account", "registered", None)
        }
        #: disco#info nodes the server answers with its own info (its XEP-0115 node#ver).
        self.host_info_nodes: set[str] = set()
        #: The PEP engine (L{imserver.pep.PepEngine}) when the pep plugin is loaded.
        self.pep = None
        #: Stream features by stage: "preauth" (before SASL), "bound" (after it), and
        #: the inline features of SASL2's <authentication/> ("sasl2") and Bind2 ("bind2").
        self.stream_features: dict[str, list[FeatureFactory]] = {
            "preauth": [],
            "bound": [],
            "sasl2": [],
            "bind2": [],
        }
        self._feature_bytes: dict[tuple, bytes] = {}
        self.ready: defer.Deferred = defer.Deferred()
        self._options: dict[str, OptionReader] = {}
        self.plugins = load_plugins(settings.plugins)
        for plugin in self.plugins:
            self.disco_features.update(plugin.disco_features)
            plugin.attach(self)
        for reader in self._options.values():
            reader.reject_unknown()  # a mistyped option fails at start, not silently

    def options(self, plugin: str) -> OptionReader:
        """Typed getters over the [plugin.NAME] table of the config (empty when absent)."""
        reader = self._options.get(plugin)
        if reader is None:
            raw = self.settings.plugin_options.get(plugin, {})
            reader = self._options[plugin] = OptionReader(raw, f"plugin.{plugin}.")
        return reader

    def add_stream_feature(self, stage: str, factory: FeatureFactory) -> None:
        """Offer a stream feature at C{stage}: "preauth", "bound", "sasl2" or "bind2".

        C{factory(stream)} returns the feature's element, or None to offer
        nothing. What it returns may depend only on whether the stream is
        secure and, before SASL, on the mechanisms the stream offers: the
        features are serialised once for each such kind of stream (see
        L{feature_bytes}), as every login needs them twice.
        """
        self.stream_features[stage].append(factory)

    def feature_bytes(self, stage: str, stream, mechanisms: tuple[str, ...] = ()) -> bytes:
        """The plugins' stream features of C{stage} for C{stream}, serialised."""
        key = (stage, stream.secure, mechanisms)
        features = self._feature_bytes.get(key)
        if features is None:
            elements = (factory(stream) for factory in self.stream_features[stage])
            features = b"".join(stanza_bytes(e) for e in elements if e is not None)
            self._feature_bytes[key] = features
        return features

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

    def stream_gone(self, session: Session, reason: str) -> None:
        """A session's stream closed or failed: end the session, unless a feature keeps it.

        C{reason} is "closed" (the client ended its stream), "lost" (the
        connection dropped) or the stream error condition we sent. A
        C{pre-session-ended} callback returning True keeps the session bound
        (stream management waits for a resumption) and must unbind it later.
        """
        if not self.dispatcher.claimed("pre-session-ended", session, reason):
            self.unbind(session)

    def unbind(self, session: Session) -> None:
        """Forget a resource for good, after features have said goodbye."""
        self.dispatcher.fire("session-ended", session)
        if self.sessions.remove(session):
            self.rosters.forget(session.user, session.host)
            self.dispatcher.fire("user-offline", session.user, session.host)


#: Plugin names of earlier releases whose work moved into the core: accepted, with a warning.
RETIRED_PLUGINS = {"messages": "message delivery (RFC 6121 §8) is part of the core router"}


def load_plugins(names: tuple[str, ...]) -> list:
    """Find each named feature among the installed IFeature plugins, in config order.

    A plugin's C{requires} names plugins that must be listed too (those that
    fire the hooks it listens to); a missing one is a configuration error.
    """
    available = {p.name: p for p in getPlugins(IFeature, plugin_package)}
    for name in names:
        if name in RETIRED_PLUGINS and name not in available:
            log.warn(
                "server.plugins: {name!r} is no longer a plugin ({why}); remove it",
                name=name,
                why=RETIRED_PLUGINS[name],
            )
    names = tuple(n for n in names if n in available or n not in RETIRED_PLUGINS)
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(
            f"server.plugins: unknown plugin {missing[0]!r} "
            f"(installed: {', '.join(sorted(available))})"
        )
    plugins = [available[n] for n in names]
    for plugin in plugins:
        for needed in getattr(plugin, "requires", ()):
            if needed not in names:
                raise ConfigError(f"server.plugins: {plugin.name!r} requires {needed!r}")
    return plugins
