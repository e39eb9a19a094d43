"""Two federating domains for s2s tests: imserver as a.test, Prosody or imserver as b.test.

a.test is 127.0.0.1 and b.test 127.0.0.2 (both loopback on Linux), each with
an SRV record for its s2s port in the test DNS zone (L{support.dns}); both
servers resolve through that zone only. Certificates come from one test CA
(L{support.ca}); a cell that must fall back to dialback gives one side a CA
set that does not include it.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from support.ca import TestCA
from support.client import RawClient
from support.dns import DNSServer
from support.im import User, presence
from support.prosody import ProsodyProcess
from support.server import ServerProcess, free_port

A, B = "a.test", "b.test"
A_ADDRESS, B_ADDRESS = "127.0.0.1", "127.0.0.2"
SRV = "_xmpp-server._tcp"


class Federation:
    """The zone and CAs shared by a test module; builds servers for each cell."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.zone = DNSServer(directory / "dns")
        self.zone.add_a(A, A_ADDRESS)
        self.zone.add_a(B, B_ADDRESS)
        self.ca = TestCA(directory / "ca")
        #: A CA that signed nothing the servers present: trusting only it means trusting no one.
        self.stranger = TestCA(directory / "stranger", name="some other CA")
        self.started: list[Any] = []

    def start(self) -> Federation:
        self.zone.start()
        return self

    def stop(self) -> None:
        for process in reversed(self.started):
            process.stop() if isinstance(process, ProsodyProcess) else process.kill()
        self.started.clear()
        self.zone.stop()

    def stop_servers(self, *processes: Any) -> None:
        """Stop the given servers (default: all) and forget their SRV records."""
        for process in reversed(processes or self.started):
            process.stop() if isinstance(process, ProsodyProcess) else process.kill()
            self.zone.remove(f"{SRV}.{process.host}")
        self.started = [p for p in self.started if processes and p not in processes]

    def imserver(
        self,
        domain: str = A,
        *,
        trusted: bool = True,
        secure_auth: bool = False,
        bidi: bool = True,
        names: tuple[str, ...] | None = None,
        s2s: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> ServerProcess:
        """imserver serving C{domain}, its s2s port in the zone; c2s on the same address."""
        address = A_ADDRESS if domain == A else B_ADDRESS
        directory = self.directory / f"imserver-{domain}-{secrets.token_hex(3)}"
        certificate, key = self.ca.issue(domain, names)
        port = free_port(address)
        table = {
            "enabled": True,
            "interface": address,
            "port": port,
            "resolvers": [f"127.0.0.1:{self.zone.port}"],
            "ca_file": str((self.ca if trusted else self.stranger).path),
            "secure_auth": secure_auth,
            "bidi": bidi,
            "connect_timeout": 5.0,
        } | (s2s or {})
        process = ServerProcess(
            directory,
            server={"hosts": [domain]} | overrides.pop("server", {}),
            c2s={"interface": address} | overrides.pop("c2s", {}),
            tls={"certificate": str(certificate), "key": str(key)},
            s2s=table,
            **overrides,
        )
        self.started.append(process)
        process.start()
        process.s2s_port = port
        self.zone.remove(f"{SRV}.{domain}")  # one server per domain at a time
        self.zone.add_srv(SRV, domain, domain, port)
        return process

    def prosody(
        self,
        domain: str = B,
        *,
        trusted: bool = True,
        secure_auth: bool = False,
        bidi: bool = True,
        names: tuple[str, ...] | None = None,
        log_level: str = "debug",
        direct_tls: bool = False,
        **options: object,
    ) -> ProsodyProcess:
        """Prosody serving C{domain}; C{trusted} False makes it distrust our CA (dialback).

        C{names}: what its certificate claims instead of C{domain}; C{options}: more
        global Prosody settings.
        """
        address = A_ADDRESS if domain == A else B_ADDRESS
        modules = ["roster", "saslauth", "tls", "dialback", "disco", "ping"]
        if bidi:
            modules.append("s2s_bidi")
        process = ProsodyProcess(
            self.directory / f"prosody-{domain}-{secrets.token_hex(3)}",
            hosts=[domain],
            interface=address,
            modules_enabled=modules,
            s2s=True,
            s2s_direct_tls=direct_tls,
            certificate=self.ca.issue(domain, names),
            cafile=(self.ca if trusted else self.stranger).path,
            dns=f"127.0.0.1@{self.zone.port}",
            options={"s2s_secure_auth": secure_auth, "s2s_timeout": 10} | options,
            log_level=log_level,
        )
        self.started.append(process)
        process.start()
        self.zone.remove(f"{SRV}.{domain}")
        self.zone.add_srv(SRV, domain, domain, process.s2s_port)
        return process


def account(server: Any, name: str) -> tuple[str, str]:
    """A fresh account on imserver (adduser) or Prosody (prosodyctl)."""
    jid = f"{name}-{secrets.token_hex(3)}@{server.host}"
    password = "pw-" + secrets.token_hex(6)
    if isinstance(server, ProsodyProcess):
        server.register(jid, password)
    else:
        result = server.adduser(jid, password)
        assert result.returncode == 0, result.stderr
    return jid, password


def online(server: Any, credentials: tuple[str, str], clients: list[RawClient]) -> User:
    """Log in (PLAIN over TLS works on both servers), get the roster, send presence."""
    client = RawClient.for_server(server, timeout=10)
    clients.append(client)
    client.login(credentials[0], credentials[1], "r" + secrets.token_hex(3), mechanism="PLAIN")
    user = User(client, credentials[0], credentials[1])
    user.roster()
    # Not User.available(): Prosody's copy of our own presence has no 'to'.
    user.send("<presence/>")
    user.expect(presence(user.jid))
    return user
