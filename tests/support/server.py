"""A real `python -m imserver run` process for wire tests.

Tests talk to the server the way clients do, over sockets, so the process is
the unit under test: config written to a scratch directory, output captured
in a log file, accounts made through the CLI. Every process started here is
killed at teardown or, failing that, when the interpreter exits.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

#: Logged by imserver.service once the store is open: before that, logins would wait.
READY_MARKER = "imserver serving"
#: What `imserver run` prints when a port is in use (then start() tries other ports).
PORT_TAKEN = "cannot listen on"
#: How often start() tries again with new ports when another process took one.
PORT_ATTEMPTS = 5

DEFAULT_HOSTS = ["localhost", "example.net"]

_running: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


def free_port(interface: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel picks it, so xdist workers differ)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((interface, 0))
        return s.getsockname()[1]


def toml_document(tables: dict[str, dict[str, Any]]) -> str:
    """Serialise {table: {key: value}} to TOML; nested dicts become [table.sub] tables."""
    lines: list[str] = []

    def emit(name: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if scalars or not subtables:
            lines.append(f"[{name}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
            lines.append("")
        for key, sub in subtables.items():
            emit(f"{name}.{_toml_key(key)}", sub)

    for name, table in tables.items():
        emit(_toml_key(name), table)
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


class ServerStartError(RuntimeError):
    """The server did not come up; the message carries its log."""


class ServerProcess:
    """One imserver process with its own config, data directory and ports.

    Overrides are merged per table over the defaults (a value of None removes a
    default key); C{plugin} holds [plugin.NAME] tables. Ports in C{c2s} that
    are left out are picked free; give C{direct_tls_port=0} to disable it.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        server: dict[str, Any] | None = None,
        c2s: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        storage: dict[str, Any] | None = None,
        tls: dict[str, Any] | None = None,
        s2s: dict[str, Any] | None = None,
        http: dict[str, Any] | None = None,
        plugin: dict[str, dict[str, Any]] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "imserver.toml"
        self.log_path = self.directory / "server.log"
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        #: Ports the caller chose (0 disables a listener): never re-picked.
        self._fixed_ports = {k for k in ("port", "direct_tls_port") if k in (c2s or {})}
        self._picked: set[str] = set()
        self._tables: dict[str, dict[str, Any]] = {
            "server": {"hosts": list(DEFAULT_HOSTS), "data_dir": "data"},
            "c2s": {
                "interface": "127.0.0.1",
                "port": 0,
                "direct_tls_port": 0,
                "allow_plaintext_on_loopback": False,
            },
            # Fast retries: a failed login in one test must not slow the next ones.
            "limits": {"auth_failure_delay": 0.05, "auth_failure_max_delay": 0.4},
        }
        for name, overrides in (
            ("server", server),
            ("c2s", c2s),
            ("limits", limits),
            ("storage", storage),
            ("tls", tls),
            ("s2s", s2s),
            ("http", http),
        ):
            table = self._tables.setdefault(name, {})
            for key, value in (overrides or {}).items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
            if not table:
                del self._tables[name]
        if plugin:
            self._tables["plugin"] = {name: dict(options) for name, options in plugin.items()}
        self._pick_ports()

    # -- what tests look at ---------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        return list(self._tables["server"].get("hosts", ["localhost"]))

    @property
    def host(self) -> str:
        """The first served domain: what clients put in 'to' by default."""
        return self.hosts[0]

    @property
    def interface(self) -> str:
        return self._tables["c2s"].get("interface", "127.0.0.1")

    @property
    def port(self) -> int:
        return self._tables["c2s"]["port"]

    @property
    def tls_port(self) -> int:
        """The XEP-0368 direct TLS port (0 when disabled)."""
        return self._tables["c2s"].get("direct_tls_port", 0)

    @property
    def data_dir(self) -> Path:
        data_dir = Path(self._tables["server"].get("data_dir", "var"))
        return data_dir if data_dir.is_absolute() else self.directory / data_dir

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        """Everything the server wrote to stdout/stderr, over all its starts."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> ServerProcess:
        """Start the process and wait until it listens and its store is open."""
        if self.running:
            raise RuntimeError("the server is already running")
        for attempt in range(PORT_ATTEMPTS):
            if attempt:
                self._pick_ports()
            self.config_path.write_text(toml_document(self._tables), encoding="utf-8")
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "imserver", "run", "-c", str(self.config_path)],
                    cwd=self.directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_child_env(),
                    start_new_session=True,  # a Ctrl-C of pytest must not reach it first
                )
            _running.add(self)
            if self._wait_ready(offset):
                return self
            text = self._log_since(offset)
            self.kill()
            if PORT_TAKEN not in text or len(self._fixed_ports) == 2:
                raise ServerStartError(f"imserver did not start; its log:\n{text}")
        raise ServerStartError(f"no free ports after {PORT_ATTEMPTS} attempts")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for the exit and return its status (killed after C{timeout})."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"imserver ignored SIGTERM for {timeout} s") from None
        _running.discard(self)
        return process.returncode

    def restart(self) -> ServerProcess:
        """Stop cleanly and start again on the same data (ports may change if taken)."""
        code = self.stop()
        if code != 0:
            raise AssertionError(f"imserver exited with {code} on SIGTERM")
        return self.start()

    def kill(self) -> None:
        """Make sure the process is gone, politely if it still listens to SIGTERM."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        _running.discard(self)

    close = kill

    # -- accounts through the CLI ----------------------------------------------

    def cli(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
        """Run `python -m imserver ARGS -c CONFIG`; a password goes through a 0600 file."""
        argv = [sys.executable, "-m", "imserver", *args, "-c", str(self.config_path)]
        password_file = None
        if password is not None:
            password_file = self.directory / f"password-{os.getpid()}-{time.monotonic_ns()}"
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(password + "\n")
            argv += ["--password-file", str(password_file)]
        try:
            return subprocess.run(
                argv,
                cwd=self.directory,
                capture_output=True,
                text=True,
                timeout=60,
                env=_child_env(),
            )
        finally:
            if password_file is not None:
                password_file.unlink(missing_ok=True)

    def adduser(self, jid: str, password: str) -> subprocess.CompletedProcess:
        return self.cli("adduser", jid, password=password)

    def passwd(self, jid: str, password: str) -> subprocess.CompletedProcess:
        return self.cli("passwd", jid, password=password)

    def deluser(self, jid: str) -> subprocess.CompletedProcess:
        return self.cli("deluser", jid)

    def new_account(self, prefix: str = "user") -> tuple[str, str]:
        """Create a fresh account with a random name and password; returns (bare JID, password)."""
        jid = f"{prefix}-{secrets.token_hex(4)}@{self.host}"
        password = "pw-" + secrets.token_urlsafe(12)
        result = self.adduser(jid, password)
        if result.returncode != 0:
            raise AssertionError(f"adduser {jid} failed: {result.stderr or result.stdout}")
        return jid, password

    # -- internals ----------------------------------------------------------------

    @property
    def http_port(self) -> int:
        """The [http] plain port (0 when the server has no web listener)."""
        return self._tables.get("http", {}).get("port", 0)

    @property
    def http_tls_port(self) -> int:
        return self._tables.get("http", {}).get("tls_port", 0)

    def _pick_ports(self) -> None:
        c2s = self._tables["c2s"]
        interface = c2s.get("interface", "127.0.0.1")
        for key in ("port", "direct_tls_port"):
            if key not in self._fixed_ports:
                c2s[key] = free_port(interface)
        # [http] ports given as 0 are picked too (a web listener is off unless asked for).
        http = self._tables.get("http")
        if http is not None:
            for key in ("port", "tls_port"):
                if http.get(key) == 0 or f"http.{key}" in self._picked:
                    http[key] = free_port(http.get("interface", "127.0.0.1"))
                    self._picked.add(f"http.{key}")

    def _wait_ready(self, log_offset: int) -> bool:
        """True once every port accepts and the store is open; False if the process died."""
        deadline = time.monotonic() + self.start_timeout
        ports = [p for p in (self.port, self.tls_port, self.http_port, self.http_tls_port) if p]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            log = self._log_since(log_offset)
            if PORT_TAKEN in log:
                return False  # the process may linger after this error: start() kills it
            ready = READY_MARKER in log
            if ready and all(self._accepts(p) for p in ports):
                return True
            time.sleep(0.05)
        self.kill()
        raise ServerStartError(
            f"imserver not ready after {self.start_timeout} s; its log:\n"
            + self._log_since(log_offset)
        )

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.interface, port), timeout=1):
                return True
        except OSError:
            return False

    def __repr__(self) -> str:
        return f"<ServerProcess {self.directory} port={self.port} tls_port={self.tls_port}>"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # the log must be readable while the server runs
    return env


@atexit.register
def _kill_leftovers() -> None:
    """Last resort: no imserver outlives the test run, whatever happened to fixtures."""
    for server in list(_running):
        server.kill()
