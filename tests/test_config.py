"""imserver.config: typed settings, one-line errors naming the key, paths anchored to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from imserver import config
from imserver.config import DEFAULT_PLUGINS, C2SSettings, HTTPSettings, Limits, Settings
from imserver.errors import ConfigError


def load_text(directory: Path, text: str, name: str = "imserver.toml") -> Settings:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return config.load(path)


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        config.from_dict(raw, base=Path("/srv/imserver"))
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- values ---------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "")
    assert settings.hosts == ("localhost",)
    assert settings.data_dir == tmp_path / "var"
    assert settings.storage_url == f"sqlite:///{tmp_path / 'var' / 'imserver.sqlite'}"
    assert settings.tls.certificate == tmp_path / "var" / "imserver.crt"
    assert settings.tls.key == tmp_path / "var" / "imserver.key"
    assert settings.c2s == C2SSettings()
    assert settings.limits == Limits()
    assert settings.plugins == DEFAULT_PLUGINS
    assert settings.allow_registration is False
    assert settings.plugin_options == {}


def test_typed_values(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        """
        [server]
        hosts = ["Example.COM", "im.example.org"]
        plugins = ["disco", "ping"]
        allow_registration = true

        [c2s]
        interface = "0.0.0.0"
        port = 15222
        direct_tls_port = 0
        allow_plaintext_on_loopback = true

        [limits]
        max_depth = 12
        unauthenticated_timeout = 5
        auth_failure_delay = 0.25

        [plugin.version]
        name = "custom"
        os = false
        """,
    )
    assert settings.hosts == ("example.com", "im.example.org")  # nameprepped
    assert settings.plugins == ("disco", "ping")
    assert settings.allow_registration is True
    assert settings.c2s == C2SSettings("0.0.0.0", 15222, 0, True)
    assert settings.limits.max_depth == 12
    # A whole number where seconds are expected is fine, and becomes a float.
    assert settings.limits.unauthenticated_timeout == 5.0
    assert isinstance(settings.limits.unauthenticated_timeout, float)
    assert settings.limits.auth_failure_delay == 0.25
    assert settings.limits.max_stanza_size == Limits().max_stanza_size  # untouched default
    assert settings.plugin_options == {"version": {"name": "custom", "os": False}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"server": {"hosts": "localhost"}}, "server.hosts: must be a list"),
        ({"server": {"hosts": [1]}}, "server.hosts: 1 must be a str"),
        ({"server": {"hosts": []}}, "server.hosts: at least one host is required"),
        ({"server": {"hosts": ["bob@localhost"]}}, "server.hosts: 'bob@localhost' must be a bare"),
        ({"server": {"hosts": ["a b"]}}, "server.hosts: 'a b' is not a valid domain"),
        ({"server": {"allow_registration": 1}}, "server.allow_registration: must be true or false"),
        ({"server": {"allow_registration": "yes"}}, "server.allow_registration: must be true"),
        ({"server": {"data_dir": 7}}, "server.data_dir: must be a string"),
        ({"server": 3}, "server: must be a table"),
        ({"c2s": {"port": "5222"}}, "c2s.port: must be a port number"),
        ({"c2s": {"port": True}}, "c2s.port: must be a port number"),
        ({"c2s": {"port": 70000}}, "c2s.port: 70000 is not a port"),
        ({"c2s": {"direct_tls_port": -1}}, "c2s.direct_tls_port: -1 is not a port"),
        ({"limits": {"max_depth": 0}}, "limits.max_depth: must be greater than 0"),
        ({"limits": {"max_depth": -3}}, "limits.max_depth: must be greater than 0"),
        ({"limits": {"max_depth": 2.5}}, "limits.max_depth: must be a whole number"),
        ({"limits": {"max_depth": True}}, "limits.max_depth: must be a whole number"),
        (
            {"limits": {"auth_failure_delay": -1}},
            "limits.auth_failure_delay: must be a finite number, not negative",
        ),
        (
            {"limits": {"auth_failure_delay": float("inf")}},
            "limits.auth_failure_delay: must be a finite number, not negative",
        ),
        (
            {"limits": {"unauthenticated_timeout": 0}},
            "limits.unauthenticated_timeout: must be greater than 0",
        ),
        (
            {"server": {"plugins": ["ping", "ping"]}},
            "server.plugins: 'ping' is listed twice",
        ),
        ({"limits": {"unauthenticated_timeout": "30"}}, "limits.unauthenticated_timeout: must be"),
        ({"storage": {"url": "mysql://db/im"}}, "storage.url: unsupported database 'mysql'"),
        ({"plugin": {"version": "x"}}, "plugin.version: must be a table"),
        ({"s2s": {"input_rate": 0}}, "s2s.input_rate: must be greater than 0"),
        ({"s2s": {"input_burst": 1.5}}, "s2s.input_burst: must be a whole number"),
    ],
)
def test_bad_values_name_the_key(raw: dict, expected: str) -> None:
    assert error_of(raw).startswith(expected)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"colour": {}}, "colour"),
        ({"server": {"host": ["localhost"]}}, "server.host"),
        ({"c2s": {"s2s_port": 5269}}, "c2s.s2s_port"),
        ({"limits": {"max_dept": 5}}, "limits.max_dept"),
        ({"tls": {"cert": "x.pem"}}, "tls.cert"),
        ({"storage": {"uri": "sqlite:///x"}}, "storage.uri"),
    ],
)
def test_unknown_keys_are_rejected(raw: dict, key: str) -> None:
    assert error_of(raw) == f"{key}: unknown setting"


def test_s2s_input_limits_are_their_own() -> None:
    """[s2s] input_rate/input_burst are read apart from [limits] (a peer is not a client)."""
    defaults = config.from_dict({})
    assert defaults.s2s.input_rate == 8 * 1024 * 1024 > defaults.limits.input_rate
    assert defaults.s2s.input_burst == 32 * 1024 * 1024
    settings = config.from_dict(
        {"s2s": {"input_rate": 1000, "input_burst": 2000}, "limits": {"input_rate": 5}}
    )
    assert (settings.s2s.input_rate, settings.s2s.input_burst) == (1000, 2000)
    assert (settings.limits.input_rate, settings.limits.input_burst) == (5, Limits().input_burst)


def test_plugin_tables_are_free_form() -> None:
    settings = config.from_dict({"plugin": {"anything": {"goes": [1, 2], "here": True}}})
    assert settings.plugin_options["anything"] == {"goes": [1, 2], "here": True}


# -- files and paths ----------------------------------------------------------------------


def test_relative_data_dir_is_resolved_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_text(
        etc,
        """
        [server]
        data_dir = "../var"
        [tls]
        certificate = "certs/server.pem"
        """,
    )
    # Not the working directory's ../var: the file's.
    assert settings.data_dir.resolve() == tmp_path / "var"
    assert settings.data_dir.is_absolute()
    assert settings.storage_url == f"sqlite:///{settings.data_dir / 'imserver.sqlite'}"
    assert settings.tls.certificate == settings.data_dir / "certs" / "server.pem"
    # A relative config path is read from the working directory, then anchored the same way.
    relative = config.load(Path("..") / "etc" / "imserver.toml")
    assert relative.data_dir.resolve() == tmp_path / "var"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = load_text(
        tmp_path,
        f"""
        [server]
        data_dir = "{data}"
        [storage]
        url = "sqlite:///{tmp_path}/elsewhere.sqlite"
        [tls]
        key = "{tmp_path / "keys" / "k.pem"}"
        """,
    )
    assert settings.data_dir == data
    assert settings.storage_url == f"sqlite:///{tmp_path}/elsewhere.sqlite"  # four slashes
    assert settings.tls.key == tmp_path / "keys" / "k.pem"  # a / b keeps an absolute b


def test_postgresql_url_is_kept() -> None:
    url = "postgresql+psycopg://im:secret@db.example/im"
    assert config.from_dict({"storage": {"url": url}}).storage_url == url


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read: No such file"):
        config.load(tmp_path / "absent.toml")


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_text(tmp_path, "[server\n", name="broken.toml")


def test_sample_config_is_valid() -> None:
    sample = Path(__file__).resolve().parent.parent / "etc" / "imserver.toml"
    settings = config.load(sample)
    assert settings.hosts == ("localhost",)
    assert settings.data_dir.resolve() == sample.parent.parent / "var"
    assert "register" in settings.plugins
    assert settings.allow_registration is False


# -- [http] -----------------------------------------------------------------------------


def test_http_is_off_unless_a_port_is_given(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "")
    assert settings.http == HTTPSettings() and not settings.http.enabled
    settings = load_text(
        tmp_path,
        "[http]\nport = 5280\ntls_port = 5281\ncertificate = 'web.crt'\nkey = 'web.key'\n"
        "cors_origins = ['https://chat.example.net']\nbehind_tls_proxy = true\n"
        "public_url = 'https://chat.example.net/'\nbosh_max_wait = 30\n",
    )
    http = settings.http
    assert http.enabled and (http.port, http.tls_port) == (5280, 5281)
    assert http.certificate == tmp_path / "var" / "web.crt"
    assert http.cors_origins == ("https://chat.example.net",)
    assert http.behind_tls_proxy and http.public_url == "https://chat.example.net"
    assert http.bosh_max_wait == 30.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"http": {"port": 70000}}, "http.port: 70000 is not a port (0-65535)"),
        ({"http": {"certificate": "a.crt"}}, "http.certificate: give both certificate and key"),
        ({"http": {"cors_origins": ["example.net"]}}, "http.cors_origins: 'example.net' is not"),
        ({"http": {"public_url": "chat.example.net"}}, "http.public_url: 'chat.example.net' is"),
        ({"http": {"bosh_max_wait": 0}}, "http.bosh_max_wait: must be greater than 0"),
        ({"http": {"bosh_max_hold": 0}}, "http.bosh_max_hold: must be greater than 0"),
        ({"http": {"websocket": True}}, "http.websocket: unknown setting"),
    ],
)
def test_bad_http_values_name_the_key(raw: dict, expected: str) -> None:
    assert error_of(raw).startswith(expected)
