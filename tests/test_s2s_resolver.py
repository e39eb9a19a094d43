"""DomainResolver against a real DNS server (the test zone): SRV, fallback, static map, absence.

The resolver runs in a child process (one reactor per process) and prints
what it found; the zone is served by support.dns over UDP.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.dns import DNSServer

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
