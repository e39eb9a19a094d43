"""A real Prosody (Debian's 0.12) for interoperability and differential tests.

L{ProsodyProcess} writes its own config and data directory, listens on free
ports on the interface it is given, makes accounts through prosodyctl and is
stopped by PID. Everything optional is an option: virtual hosts, modules,
s2s port, TLS certificate and CA, DNS through a test resolver (see
L{support.dns}), extra config lines.

    prosody = ProsodyProcess(tmp / "prosody", hosts=["b.test"], interface="127.0.0.2",
                             s2s=True, certificate=(crt, key), cafile=ca.path,
                             dns="127.0.0.1@5353").start()
    prosody.register("bob@b.test", "secret")
    ... prosody.stop()
"""

from __future__ import annotations

import atexit
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path

#: What a minimal IM server needs beyond Prosody's auto-loaded modules.
DEFAULT_MODULES = ("roster", "saslauth", "tls", "disco", "ping", "dialback")

_running: weakref.WeakSet[ProsodyProcess] = weakref.WeakSet()


def free_port(interface: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((interface, 0))
        return s.getsockname()[1]


def lua(value: object) -> str:
    """A Python value as a Lua literal (str, bool, int, list/tuple, dict with str keys)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if isinstance(value, list | tuple):
        return "{ " + ", ".join(lua(v) for v in value) + " }"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no Lua literal for {value!r}")


class ProsodyProcess:
    """One Prosody with its own config, data, log and ports.

    C{certificate} is a (certificate, key) pair used for every host; C{cafile}
    the CA set Prosody verifies peers against; C{dns} an unbound forward
    address "IP@PORT" (libunbound then ignores resolv.conf and /etc/hosts);
    C{options} are global settings written as Lua (e.g. s2s_secure_auth=True),
    C{extra} raw config lines appended at the end.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        hosts: tuple[str, ...] | list[str] = ("localhost",),
        interface: str = "127.0.0.1",
        modules_enabled: tuple[str, ...] | list[str] = DEFAULT_MODULES,
        modules_disabled: tuple[str, ...] | list[str] = (),
        s2s: bool = False,
        s2s_direct_tls: bool = False,
        certificate: tuple[Path, Path] | None = None,
        cafile: Path | None = None,
        dns: str | None = None,
        options: dict[str, object] | None = None,
        extra: str = "",
        log_level: str = "debug",
        start_timeout: float = 20.0,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        self.config_path = self.directory / "prosody.cfg.lua"
        self.log_path = self.directory / "prosody.log"
        self.hosts = list(hosts)
        self.interface = interface
        self.modules_enabled = list(modules_enabled)
        self.modules_disabled = list(modules_disabled)
        self.s2s = s2s
        self.certificate = certificate
        self.cafile = cafile
        self.dns = dns
        self.options = dict(options or {})
        self.extra = extra
        #: "debug" helps when a test fails; benchmarks want "info" (debug costs CPU).
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.port = 0
        self.s2s_port = 0
        #: XEP-0368 s2s port (with s2s_direct_tls), else 0.
        self.s2s_direct_tls = s2s_direct_tls
        self.s2s_tls_port = 0
        self.process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return self.hosts[0]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    #: No XEP-0368 port: what RawClient.for_server reads.
    tls_port = 0

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- config -------------------------------------------------------------

    def config(self) -> str:
        d = self.directory
        lines = [
            "-- Written by tests/support/prosody.py for one test run.",
            "daemonize = false",
            "run_as_root = true -- a throw-away instance on loopback",
            f"pidfile = {lua(d / 'prosody.pid')}",
            f"data_path = {lua(d / 'data')}",
            f"certificates = {lua(d)}",
            f"log = {{ {{ levels = {{ min = {lua(self.log_level)} }}, to = 'file', "
            f"filename = {lua(self.log_path)} }} }}",
            f"interfaces = {lua([self.interface])}",
            f"c2s_ports = {lua([self.port])}",
            "c2s_direct_tls_ports = { }",
            "legacy_ssl_ports = { }",
            f"s2s_ports = {lua([self.s2s_port] if self.s2s else [])}",
            f"s2s_direct_tls_ports = {lua([self.s2s_tls_port] if self.s2s_tls_port else [])}",
            "component_ports = { }",
            "http_ports = { }",
            "https_ports = { }",
            f"modules_enabled = {lua(self.modules_enabled)}",
            f"modules_disabled = {lua(self.modules_disabled + ([] if self.s2s else ['s2s']))}",
            "authentication = 'internal_hashed'",
            "storage = 'internal'",
            "c2s_require_encryption = false",
            "allow_unencrypted_plain_auth = true",
            "use_ipv6 = false",
        ]
        ssl: dict[str, object] = {}
        if self.certificate is not None:
            ssl["certificate"], ssl["key"] = map(str, self.certificate)
        if self.cafile is not None:
            ssl["cafile"] = str(self.cafile)
        if ssl:
            lines.append(f"ssl = {lua(ssl)}")
        if self.dns is not None:
            lines.append(
                "unbound = { resolvconf = false; hoststxt = false; "
                f"forward = {lua(self.dns)}; "
                'options = { ["local-zone:"] = "test. transparent" } }'
            )
        lines += [f"{key} = {lua(value)}" for key, value in self.options.items()]
        if self.extra:
            lines.append(self.extra)
        lines += [f"VirtualHost {lua(h)}" for h in self.hosts]
        return "\n".join(lines) + "\n"

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> ProsodyProcess:
        """Start Prosody and wait until its ports accept connections."""
        if self.running:
            raise RuntimeError("prosody is already running")
        self.port = self.port or free_port(self.interface)
        if self.s2s:
            self.s2s_port = self.s2s_port or free_port(self.interface)
            if self.s2s_direct_tls:
                self.s2s_tls_port = self.s2s_tls_port or free_port(self.interface)
        self.config_path.write_text(self.config(), encoding="utf-8")
        with (self.directory / "stdout.log").open("ab") as out:
            self.process = subprocess.Popen(
                ["prosody", "--config", str(self.config_path), "-F"],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _running.add(self)
        deadline = time.monotonic() + self.start_timeout
        ports = [p for p in (self.port, self.s2s_port, self.s2s_tls_port) if p]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if all(self._accepts(p) for p in ports):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"prosody did not start; its log:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        _running.discard(self)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def restart(self) -> ProsodyProcess:
        """Stop and start again on the same ports, data and (re-written) config."""
        self.stop()
        return self.start()

    # -- accounts -----------------------------------------------------------

    def prosodyctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["prosodyctl", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def register(self, jid: str, password: str) -> None:
        user, _, host = jid.partition("@")
        if not self.config_path.exists():
            self.config_path.write_text(self.config(), encoding="utf-8")
        result = self.prosodyctl("register", user, host, password)
        if result.returncode != 0:
            raise AssertionError(
                f"prosodyctl register {jid} failed: {result.stdout}{result.stderr}"
            )

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.interface, port), timeout=1):
                return True
        except OSError:
            return False

    def __repr__(self) -> str:
        return f"<ProsodyProcess {self.hosts} {self.interface}:{self.port} s2s={self.s2s_port}>"


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_running):
        process.stop()
