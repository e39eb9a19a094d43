"""TOML configuration, validated into typed settings.

Every bad value fails at start with one line naming the key and the reason
(L{ConfigError}). Relative paths are resolved against C{data_dir}, and a
relative C{data_dir} against the directory of the config file, so a server
started from anywhere finds the same files.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.words.protocols.jabber.jid import JID, InvalidFormat

from imserver.errors import ConfigError

DEFAULT_PLUGINS = (
    "sessions",
    "disco",
    "ping",
    "version",
    "roster",
    "presence",
    "subscriptions",
    "offline",
    "privacy",
    "blocking",
    "caps",
    "pep",
    "vcard",
    "private",
    "sm",
    "csi",
    "sasl2",
    "bind2",
)


@dataclass(frozen=True)
class C2SSettings:
    """Client-to-server listeners and their security policy."""

    interface: str = "127.0.0.1"
    port: int = 5222
    #: XEP-0368 direct TLS; 0 disables it.
    direct_tls_port: int = 5223
    #: Let loopback clients authenticate without STARTTLS (tests, benchmarks).
    allow_plaintext_on_loopback: bool = False


@dataclass(frozen=True)
class HTTPSettings:
    """The web listener: XMPP over WebSocket (RFC 7395), BOSH (XEP-0206), XEP-0156 discovery.

    Off unless a port is set. Browsers connect from pages on other origins, so
    BOSH and host-meta answer CORS requests from C{cors_origins} ("*" for any),
    and a WebSocket handshake from any other Origin is refused.
    """

    interface: str = "127.0.0.1"
    #: Plain HTTP; 0 disables it.
    port: int = 0
    #: HTTPS with the [tls] certificate (or the one below); 0 disables it.
    tls_port: int = 0
    certificate: Path | None = None
    key: Path | None = None
    cors_origins: tuple[str, ...] = ("*",)
    #: A TLS-terminating proxy is in front: plain HTTP counts as secure for SASL.
    behind_tls_proxy: bool = False
    #: Base URL for host-meta links, e.g. "https://chat.example.net" (default: from the request).
    public_url: str = ""
    #: BOSH: the longest a request is held (seconds), and how long a session may go
    #: without any request before it ends.
    bosh_max_wait: float = 60.0
    bosh_inactivity: float = 60.0
    #: BOSH: requests the server may hold at once (XEP-0124 'hold').
    bosh_max_hold: int = 1

    @property
    def enabled(self) -> bool:
        return bool(self.port or self.tls_port)


@dataclass(frozen=True)
class S2SPolicy:
    """How a remote domain must authenticate (RFC 6120 §13, XEP-0178, XEP-0220)."""

    #: Refuse a connection that does not use TLS.
    require_encryption: bool = True
    #: Only certificates (SASL EXTERNAL); never fall back to dialback.
    secure_auth: bool = False


@dataclass(frozen=True)
class S2SSettings:
    """Server-to-server federation: listener, DNS, certificates, policy, limits."""

    enabled: bool = False
    interface: str = "0.0.0.0"
    port: int = 5269
    #: XEP-0368 direct TLS listener; 0 disables it.
    direct_tls_port: int = 0
    #: DNS servers "ip" or "ip:port"; empty means the system's /etc/resolv.conf.
    resolvers: tuple[tuple[str, int], ...] = ()
    #: Static routes: domain -> (host, port), tried before DNS.
    hosts: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: CA certificates (PEM) peers are verified against; None is the system's set.
    ca_file: Path | None = None
    #: XEP-0185 dialback secret; empty means a random one per start.
    dialback_secret: str = ""
    #: XEP-0288: offer and request bidirectional streams.
    bidi: bool = True
    default_policy: S2SPolicy = field(default_factory=S2SPolicy)
    policies: dict[str, S2SPolicy] = field(default_factory=dict)
    #: Seconds to connect and authenticate before queued stanzas bounce (remote-server-timeout).
    connect_timeout: float = 30.0
    #: Seconds without traffic before an s2s connection is closed.
    idle_timeout: float = 600.0
    #: Stanzas held per remote domain while its connection is being made.
    max_queue: int = 1000
    #: Open s2s connections (both directions) to one remote domain, and in total.
    max_connections_per_domain: int = 8
    max_connections: int = 1000
    #: Bytes per second one s2s connection may send us, sustained, after a burst of
    #: input_burst bytes (in place of [limits] input_rate/input_burst, which are per
    #: client). A peer carries many users' traffic at once: 8 MiB/s is about 30,000
    #: stanzas a second, roughly what one link between two imservers carries flat out
    #: on a 2-core machine, so normal federation never meets it while one peer still
    #: cannot hold the reactor without pause.
    input_rate: int = 8 * 1024 * 1024
    input_burst: int = 32 * 1024 * 1024

    def policy(self, domain: str) -> S2SPolicy:
        return self.policies.get(domain, self.default_policy)


@dataclass(frozen=True)
class TLSSettings:
    certificate: Path
    key: Path


@dataclass(frozen=True)
class Limits:
    max_stanza_size: int = 256 * 1024
    max_depth: int = 64
    max_attributes: int = 100
    max_namespaces: int = 100
    max_attribute_length: int = 64 * 1024
    #: Seconds an unauthenticated stream may live.
    unauthenticated_timeout: float = 30.0
    #: Seconds of silence from an authenticated client before the server pings it (XEP-0199)...
    idle_timeout: float = 300.0
    #: ...and seconds it then has to show any sign of life before connection-timeout.
    idle_ping_timeout: float = 60.0
    max_stream_restarts: int = 5
    max_auth_failures_per_stream: int = 3
    #: First delay (seconds) after a failed login from an address; doubles per failure.
    auth_failure_delay: float = 0.5
    auth_failure_max_delay: float = 10.0
    #: Bytes per second a client may send, sustained, after a burst of input_burst bytes.
    input_rate: int = 64 * 1024
    input_burst: int = 256 * 1024
    #: Bytes held for a client that does not read before it is disconnected.
    max_output_buffer: int = 1024 * 1024
    #: Open client connections from one source address.
    max_connections_per_address: int = 100
    #: Loopback clients are not capped per address (local proxies, gateways).
    exempt_loopback: bool = True
    #: Connections not yet authenticated, from all addresses together.
    max_unauthenticated: int = 1000
    roster_size: int = 1000
    #: Bytes (UTF-8) of a roster item's name and of each of its group names.
    roster_text_length: int = 1023
    offline_messages: int = 1000


@dataclass(frozen=True)
class Settings:
    hosts: tuple[str, ...]
    data_dir: Path
    storage_url: str
    tls: TLSSettings
    c2s: C2SSettings = field(default_factory=C2SSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    s2s: S2SSettings = field(default_factory=S2SSettings)
    plugins: tuple[str, ...] = DEFAULT_PLUGINS
    limits: Limits = field(default_factory=Limits)
    #: XEP-0077 in-band registration (off by default).
    allow_registration: bool = False
    #: Free-form per-plugin tables, e.g. [plugin.version] name = "..."
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def load(path: str | Path) -> Settings:
    """Read and validate a config file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(raw, base=path.resolve().parent)


def from_dict(raw: dict[str, Any], base: Path | None = None) -> Settings:
    """Validate a parsed config; C{base} anchors a relative data_dir."""
    reader = OptionReader(raw)
    server = reader.table("server")
    hosts = tuple(_host(h, "server.hosts") for h in server.list("hosts", ["localhost"], str))
    if not hosts:
        raise ConfigError("server.hosts: at least one host is required")
    data_dir = Path(server.str("data_dir", "var"))
    if not data_dir.is_absolute():
        data_dir = ((base or Path.cwd()) / data_dir).resolve()
    plugins = tuple(server.list("plugins", list(DEFAULT_PLUGINS), str))
    for name in plugins:
        if plugins.count(name) > 1:
            raise ConfigError(f"server.plugins: {name!r} is listed twice")
    allow_registration = server.bool("allow_registration", False)

    storage = reader.table("storage")
    url = storage.str("url", "sqlite:///imserver.sqlite")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str(data_dir / url.removeprefix("sqlite:///"))
    elif not url.startswith(("sqlite:", "postgresql")):
        raise ConfigError(f"storage.url: unsupported database {url.split(':')[0]!r}")

    tls = reader.table("tls")
    tls_settings = TLSSettings(
        certificate=data_dir / tls.str("certificate", "imserver.crt"),
        key=data_dir / tls.str("key", "imserver.key"),
    )

    c2s = reader.table("c2s")
    c2s_settings = C2SSettings(
        interface=c2s.str("interface", C2SSettings.interface),
        port=c2s.port("port", C2SSettings.port),
        direct_tls_port=c2s.port("direct_tls_port", C2SSettings.direct_tls_port),
        allow_plaintext_on_loopback=c2s.bool("allow_plaintext_on_loopback", False),
    )

    http_settings = _http(reader.table("http"), data_dir)
    s2s_settings = _s2s(reader.table("s2s"), data_dir)

    limits = reader.table("limits")
    defaults = Limits()
    limit_values = {}
    for name, default in vars(defaults).items():
        if isinstance(default, bool):
            limit_values[name] = limits.bool(name, default)
        elif isinstance(default, float):
            limit_values[name] = limits.number(name, default)
        else:
            limit_values[name] = limits.positive_int(name, default)
    for name in ("unauthenticated_timeout", "idle_timeout", "idle_ping_timeout"):
        if limit_values[name] == 0:
            raise ConfigError(f"limits.{name}: must be greater than 0")

    plugin_options = reader.table("plugin").raw
    for name, value in plugin_options.items():
        if not isinstance(value, dict):
            raise ConfigError(f"plugin.{name}: must be a table")

    reader.reject_unknown()
    return Settings(
        hosts=hosts,
        data_dir=data_dir,
        storage_url=url,
        tls=tls_settings,
        c2s=c2s_settings,
        http=http_settings,
        s2s=s2s_settings,
        plugins=plugins,
        limits=Limits(**limit_values),
        allow_registration=allow_registration,
        plugin_options=plugin_options,
    )


def _http(http: OptionReader, data_dir: Path) -> HTTPSettings:
    certificate, key = http.str("certificate", ""), http.str("key", "")
    if bool(certificate) != bool(key):
        raise ConfigError(f"{http.prefix}certificate: give both certificate and key, or neither")
    origins = tuple(http.list("cors_origins", ["*"], str))
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(
                f"{http.prefix}cors_origins: {origin!r} is not an origin like https://example.net"
            )
    public_url = http.str("public_url", "").rstrip("/")
    if public_url and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", public_url):
        raise ConfigError(f"{http.prefix}public_url: {public_url!r} is not an http(s) URL")
    settings = HTTPSettings(
        interface=http.str("interface", HTTPSettings.interface),
        port=http.port("port", 0),
        tls_port=http.port("tls_port", 0),
        certificate=data_dir / certificate if certificate else None,
        key=data_dir / key if key else None,
        cors_origins=origins,
        behind_tls_proxy=http.bool("behind_tls_proxy", False),
        public_url=public_url,
        bosh_max_wait=http.number("bosh_max_wait", HTTPSettings.bosh_max_wait),
        bosh_inactivity=http.number("bosh_inactivity", HTTPSettings.bosh_inactivity),
        bosh_max_hold=http.positive_int("bosh_max_hold", HTTPSettings.bosh_max_hold),
    )
    for name in ("bosh_max_wait", "bosh_inactivity"):
        if getattr(settings, name) == 0:
            raise ConfigError(f"{http.prefix}{name}: must be greater than 0")
    return settings


def _s2s(table: OptionReader, data_dir: Path) -> S2SSettings:
    defaults = S2SSettings()
    resolvers = tuple(
        _address(a, f"{table.prefix}resolvers", 53) for a in table.list("resolvers", [], str)
    )
    hosts_table = table.table("hosts")
    hosts = {}
    for domain in list(hosts_table.raw):
        key = f"{hosts_table.prefix}{domain}"
        hosts[_host(domain, key)] = _address(hosts_table.str(domain, ""), key, 5269)
    ca_file = table.str("ca_file", "")
    default_policy = _policy(table, S2SPolicy())
    domains = table.table("domain")
    policies = {}
    for domain in list(domains.raw):
        policies[_host(domain, f"{domains.prefix}{domain}")] = _policy(
            domains.table(domain), default_policy
        )
    settings = S2SSettings(
        enabled=table.bool("enabled", defaults.enabled),
        interface=table.str("interface", defaults.interface),
        port=table.port("port", defaults.port),
        direct_tls_port=table.port("direct_tls_port", defaults.direct_tls_port),
        resolvers=resolvers,
        hosts=hosts,
        ca_file=(data_dir / ca_file) if ca_file else None,
        dialback_secret=table.str("dialback_secret", ""),
        bidi=table.bool("bidi", defaults.bidi),
        default_policy=default_policy,
        policies=policies,
        connect_timeout=table.number("connect_timeout", defaults.connect_timeout),
        idle_timeout=table.number("idle_timeout", defaults.idle_timeout),
        max_queue=table.positive_int("max_queue", defaults.max_queue),
        max_connections_per_domain=table.positive_int(
            "max_connections_per_domain", defaults.max_connections_per_domain
        ),
        max_connections=table.positive_int("max_connections", defaults.max_connections),
        input_rate=table.positive_int("input_rate", defaults.input_rate),
        input_burst=table.positive_int("input_burst", defaults.input_burst),
    )
    for name in ("connect_timeout", "idle_timeout"):
        if getattr(settings, name) == 0:
            raise ConfigError(f"{table.prefix}{name}: must be greater than 0")
    if settings.ca_file is not None and not settings.ca_file.is_file():
        raise ConfigError(f"{table.prefix}ca_file: {settings.ca_file} is not a readable file")
    return settings


def _policy(table: OptionReader, defaults: S2SPolicy) -> S2SPolicy:
    return S2SPolicy(
        require_encryption=table.bool("require_encryption", defaults.require_encryption),
        secure_auth=table.bool("secure_auth", defaults.secure_auth),
    )


def _address(value: str, key: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port' or '[v6]:port' -> (host, port)."""
    host, port = value, default_port
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            port = _port_text(rest.removeprefix(":"), value, key)
    elif value.count(":") == 1:
        host, _, text = value.partition(":")
        port = _port_text(text, value, key)
    if not host:
        raise ConfigError(f"{key}: {value!r} needs a host")
    return host, port


def _port_text(text: str, value: str, key: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ConfigError(f"{key}: {value!r} has no valid port")
    return int(text)


def _host(value: str, key: str) -> str:
    try:
        parsed = JID(value)
    except InvalidFormat:
        raise ConfigError(f"{key}: {value!r} is not a valid domain") from None
    if parsed.user or parsed.resource:
        raise ConfigError(f"{key}: {value!r} must be a bare domain")
    return parsed.host


class OptionReader:
    """Typed getters over one TOML table that remember which keys they read."""

    def __init__(self, raw: dict[str, Any], prefix: str = "") -> None:
        self.raw = raw
        self.prefix = prefix
        self.seen: set[str] = set()
        self.children: list[OptionReader] = []

    def _get(self, key: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            return default
        value = self.raw[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{self.prefix}{key}: must be {what}, not {value!r}")
        return value

    def table(self, key: str) -> OptionReader:
        child = OptionReader(self._get(key, {}, dict, "a table"), f"{self.prefix}{key}.")
        self.children.append(child)
        return child

    def str(self, key: str, default: str) -> str:
        return self._get(key, default, str, "a string")

    def bool(self, key: str, default: bool) -> bool:
        return self._get(key, default, bool, "true or false")

    def number(self, key: str, default: float) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{self.prefix}{key}: must be a finite number, not negative")
        return value

    def positive_int(self, key: str, default: int) -> int:
        value = self._get(key, default, int, "a whole number")
        if value <= 0:
            raise ConfigError(f"{self.prefix}{key}: must be greater than 0")
        return value

    def port(self, key: str, default: int) -> int:
        value = self._get(key, default, int, "a port number")
        if not 0 <= value <= 65535:
            raise ConfigError(f"{self.prefix}{key}: {value} is not a port (0-65535)")
        return value

    def list(self, key: str, default: list, item: type) -> list:
        values = self._get(key, default, list, "a list")
        for value in values:
            if not isinstance(value, item):
                raise ConfigError(f"{self.prefix}{key}: {value!r} must be a {item.__name__}")
        return values

    def reject_unknown(self) -> None:
        # A table read as a whole (plugin options) marks nothing: its keys are free-form.
        if self.prefix == "plugin.":
            return
        for key in self.raw:
            if key not in self.seen:
                raise ConfigError(f"{self.prefix}{key}: unknown setting")
        for child in self.children:
            child.reject_unknown()
