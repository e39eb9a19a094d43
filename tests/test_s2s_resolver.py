"""DomainResolver against a real DNS server (the test zone): SRV, fallback, static map, absence.

The resolver runs in a child process (one reactor per process) and prints
what it found; the zone is served by support.dns over UDP. A server that
resolves peers through that zone logs none of twisted.names' per-query
chatter, and a DNS server failing a query is one line of ours.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.client import stanza_error
from support.dns import DNSServer
from support.federation import A, B, Federation, account, online
from support.im import message
from twisted.internet import defer
from twisted.logger import capturedLogs
from twisted.names import error

from imserver.s2s.resolver import DomainResolver

SCRIPT = """
import json, sys
from twisted.internet import defer, task
from imserver.s2s.resolver import DomainResolver

@defer.inlineCallbacks
def main(reactor, port, static):
    resolver = DomainResolver([("127.0.0.1", int(port))], json.loads(static))
    found = {}
    for domain in ("srv.test", "plain.test", "nowhere.test", "dot.test", "static.test"):
        targets = yield resolver.targets(domain)
        found[domain] = [[t.host, t.port, t.direct_tls] for t in targets]
    found["addresses"] = yield resolver.addresses("host1.test")
    found["none"] = yield resolver.addresses("nowhere.test")
    print(json.dumps(found))

task.react(main, sys.argv[1:])
"""


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    server = DNSServer(tmp_path_factory.mktemp("dns"))
    server.add_a("host1.test", "127.0.0.9")
    server.add_a("plain.test", "127.0.0.8")
    server.add_srv("_xmpp-server._tcp", "srv.test", "host2.test", 5270, priority=20)
    server.add_srv("_xmpps-server._tcp", "srv.test", "host1.test", 5223, priority=10)
    server.add_srv("_xmpp-server._tcp", "dot.test", ".", 0)
    server.start()
    yield server
    server.stop()


def test_resolution(zone):
    static = json.dumps({"static.test": ["10.1.2.3", 5999]})
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(zone.port), static],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    # SRV: lower priority first, direct TLS flagged (XEP-0368).
    assert found["srv.test"] == [["host1.test", 5223, True], ["host2.test", 5270, False]]
    # No SRV record: the domain itself on 5269 (RFC 6120 §3.2.2).
    assert found["plain.test"] == [["plain.test", 5269, False]]
    assert found["nowhere.test"] == [["nowhere.test", 5269, False]]
    # "." : the service is decidedly not available there, and no fallback (RFC 2782).
    assert found["dot.test"] == []
    assert found["static.test"] == [["10.1.2.3", 5999, False]]
    assert found["addresses"] == ["127.0.0.9"]
    assert found["none"] == []


#: What Twisted logs for each DNS query's UDP port and protocol (four lines a query).
PER_QUERY_CHATTER = ("DNSDatagramProtocol", "Starting protocol", "Stopping protocol", "(UDP Port")


def test_resolving_peers_leaves_no_per_query_lines_in_the_log(tmp_path):
    world = Federation(tmp_path).start()
    clients: list = []
    try:
        a_server, b_server = world.imserver(A), world.imserver(B)
        alice = online(a_server, account(a_server, "alice"), clients)
        bob = online(b_server, account(b_server, "bob"), clients)
        # b.test: found through its SRV and A records in the zone.
        alice.send(f"<message to='{bob.jid}' type='chat'><body>hi</body></message>")
        bob.expect(message(alice.jid, "chat"))
        # nowhere.test: NXDOMAIN for every query.
        alice.send("<message to='x@nowhere.test' type='chat'><body>?</body></message>")
        bounce = alice.expect(message("x@nowhere.test", "error"), timeout=10)
        assert stanza_error(bounce) == ("cancel", "remote-server-not-found")
        log = a_server.log_text()
    finally:
        for client in clients:
            client.close()
        world.stop()
    assert "s2s: a.test -> b.test ready" in log
    assert "giving up on nowhere.test (remote-server-not-found)" in log
    for chatter in PER_QUERY_CHATTER:
        assert chatter not in log, chatter


class FailingDNS:
    """Every query answered with SERVFAIL."""

    def lookupService(self, name: str, timeout=None):
        return defer.fail(error.DNSServerError(name))

    lookupAddress = lookupIPV6Address = lookupService


def test_a_failing_dns_server_is_one_line_per_query():
    resolver = DomainResolver([("127.0.0.1", 53)], {})
    resolver.dns = FailingDNS()
    with capturedLogs() as events:
        targets = resolver.targets("b.example")
        addresses = resolver.addresses("b.example")
    assert [t.host for t in targets.result] == ["b.example"]  # falls back to the domain itself
    assert addresses.result == []
    lines = [e["log_format"].format(**e) for e in events]
    assert (
        lines
        == [
            f"DNS query for {name} failed: DNSServerError"
            for name in ("_xmpps-server._tcp.b.example", "_xmpp-server._tcp.b.example")
        ]
        + ["DNS query for b.example failed: DNSServerError"] * 2
    )
