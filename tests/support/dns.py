"""A test DNS zone served by twisted.names in its own process.

Federation tests need names that Prosody and imserver both resolve the way a
real network would (A and SRV records), and Prosody never reads /etc/hosts. So
a fixture writes the zone to a JSON file and runs this module as a process
serving it on UDP and TCP on a free loopback port. The file is read again
whenever it changes, so a test can add records for ports it picked later.
Names outside the zone get NXDOMAIN at once (no recursion, no waiting).

Zone file: {"a": {"a.test": "127.0.0.1"},
            "srv": {"_xmpp-server._tcp.a.test": [[priority, weight, port, target], ...]}}
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

READY = "dns serving"


class DNSServer:
    """The zone file plus the process serving it; stop() kills it by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.zone_path = self.directory / "zone.json"
        self.log_path = self.directory / "dns.log"
        self.a: dict[str, str] = {}
        self.srv: dict[str, list[tuple[int, int, int, str]]] = {}
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_a(self, name: str, address: str) -> None:
        self.a[name] = address
        self._write()

    def add_srv(
        self, service: str, domain: str, target: str, port: int, priority: int = 0, weight: int = 0
    ) -> None:
        """E.g. add_srv("_xmpp-server._tcp", "a.test", "a.test", 5269)."""
        self.srv.setdefault(f"{service}.{domain}", []).append((priority, weight, port, target))
        self._write()

    def remove(self, name: str) -> None:
        self.a.pop(name, None)
        self.srv.pop(name, None)
        self._write()

    def _write(self) -> None:
        temporary = self.zone_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"a": self.a, "srv": self.srv}), encoding="utf-8")
        os.replace(temporary, self.zone_path)  # the server never reads half a file

    def start(self, timeout: float = 15.0) -> DNSServer:
        self._write()
        for _ in range(5):
            self.port = _free_udp_tcp_port()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, __file__, str(self.zone_path), str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                if READY in self.log_path.read_text(errors="replace"):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"the test DNS server did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _free_udp_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server process --------------------------------------------------------


def _serve(zone_path: str, port: int) -> None:
    from twisted.internet import defer, reactor
    from twisted.names import dns, error, server
    from twisted.names.common import ResolverBase

    class ZoneAuthority(ResolverBase):
        """Answers from the JSON zone, re-read when its modification time changes."""

        def __init__(self) -> None:
            super().__init__()
            self._stamp = None
            self._zone: dict[str, Any] = {"a": {}, "srv": {}}

        def _current(self) -> dict[str, Any]:
            stamp = os.stat(zone_path).st_mtime_ns
            if stamp != self._stamp:
                with open(zone_path, encoding="utf-8") as f:
                    self._zone = json.load(f)
                self._stamp = stamp
            return self._zone

        def _lookup(self, name, cls, type_, timeout):
            key = name.decode("ascii").lower().rstrip(".")
            zone = self._current()
            answers = []
            if type_ in (dns.A, dns.ALL_RECORDS) and key in zone["a"]:
                answers.append(
                    dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A(zone["a"][key], 60), True)
                )
            if type_ in (dns.SRV, dns.ALL_RECORDS):
                for priority, weight, srv_port, target in zone["srv"].get(key, ()):
                    root = target in ("", ".")  # "." is the root: "no service here"
                    record = dns.Record_SRV(priority, weight, srv_port, b"" if root else target, 60)
                    answers.append(dns.RRHeader(name, dns.SRV, dns.IN, 60, record, True))
            known = key in zone["a"] or key in zone["srv"]
            if not answers and not known:
                return defer.fail(error.AuthoritativeDomainError(name))
            return defer.succeed((answers, [], []))

    factory = server.DNSServerFactory(authorities=[ZoneAuthority()])
    reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.callWhenRunning(print, READY, port, flush=True)
    reactor.run()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
