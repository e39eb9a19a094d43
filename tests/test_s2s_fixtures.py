"""The federation test fixtures work: the test DNS zone, the test CA, a live Prosody.

Prosody (b.test on 127.0.0.2) resolves through the test DNS server only, trusts
the test CA, and reaches a peer found by SRV record: the same set-up the s2s
tests build on.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from support.ca import TestCA
from support.client import RawClient
from support.dns import DNSServer
from support.prosody import ProsodyProcess
from support.tools import needs

pytestmark = needs("prosody")

NS_STREAMS = "http://etherx.jabber.org/streams"


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    server = DNSServer(tmp_path_factory.mktemp("dns"))
    server.add_a("a.test", "127.0.0.1")
    server.add_a("b.test", "127.0.0.2")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def prosody(tmp_path_factory, zone, ca):
    process = ProsodyProcess(
        tmp_path_factory.mktemp("prosody"),
        hosts=["b.test"],
        interface="127.0.0.2",
        s2s=True,
        certificate=ca.issue("b.test"),
        cafile=ca.path,
        dns=f"127.0.0.1@{zone.port}",
        options={"s2s_timeout": 5},
    )
    process.register("bob@b.test", "bobpass")
    process.start()
    yield process
    process.stop()


def test_dns_serves_a_and_srv_and_nxdomain(zone, tmp_path):
    # In a child process: the zone is asked the way imserver's resolver asks it.
    zone.add_srv("_xmpp-server._tcp", "a.test", "a.test", 5999, priority=5, weight=1)
    script = f"""
import sys
from twisted.internet import defer, task
from twisted.names import client, dns, error

@defer.inlineCallbacks
def main(reactor):
    r = client.Resolver(servers=[("127.0.0.1", {zone.port})])
    a, _, _ = yield r.lookupAddress("b.test")
    print("A", a[0].payload.dottedQuad())
    s, _, _ = yield r.lookupService("_xmpp-server._tcp.a.test")
    print("SRV", s[0].payload.priority, s[0].payload.port, s[0].payload.target)
    try:
        yield r.lookupAddress("nowhere.test")
    except error.DNSNameError:
        print("NXDOMAIN")

task.react(main)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    ).stdout
    assert "A 127.0.0.2" in out
    assert "SRV 5 5999 a.test" in out
    assert "NXDOMAIN" in out
    zone.remove("_xmpp-server._tcp.a.test")


def test_prosody_serves_clients(prosody):
    client = RawClient.for_server(prosody)
    try:
        assert client.login("bob@b.test", "bobpass", "r", mechanism="PLAIN") == "bob@b.test/r"
    finally:
        client.close()


def test_prosody_certificate_chains_to_the_test_ca(prosody, ca):
    """STARTTLS on Prosody's s2s port; Python's ssl checks the chain and the name b.test."""
    with socket.create_connection((prosody.interface, prosody.s2s_port), timeout=5) as sock:
        sock.sendall(
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
            b"xmlns:stream='http://etherx.jabber.org/streams' to='b.test' from='a.test' "
            b"version='1.0'>"
        )
        _read_until(sock, b"</stream:features>")
        sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        assert b"<proceed" in _read_until(sock, b"/>")
        context = ssl.create_default_context(cafile=str(ca.path))
        with context.wrap_socket(sock, server_hostname="b.test") as secure:
            assert secure.getpeercert()["subject"] == ((("commonName", "b.test"),),)


def test_prosody_finds_a_peer_through_the_test_dns(prosody, zone):
    """A message to a.test makes Prosody look up the SRV record and connect there."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(15)
    zone.add_srv("_xmpp-server._tcp", "a.test", "a.test", listener.getsockname()[1])
    client = RawClient.for_server(prosody)
    try:
        client.login("bob@b.test", "bobpass", "r", mechanism="PLAIN")
        client.send("<message to='alice@a.test' type='chat'><body>hi</body></message>")
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(10)
            header = _read_until(peer, b">", skip_declaration=True)
            root = ET.fromstring(header.decode() + "</stream:stream>")
            assert root.get("to") == "a.test"
            assert root.get("from") == "b.test"
            assert root.tag == f"{{{NS_STREAMS}}}stream"
    finally:
        client.close()
        listener.close()
        zone.remove("_xmpp-server._tcp.a.test")


def _read_until(sock: socket.socket, marker: bytes, skip_declaration: bool = False) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed; got {data!r}")
        data += chunk
        text = data
        if skip_declaration and text.startswith(b"<?xml"):
            text = text[text.index(b"?>") + 2 :]
            if marker in text:
                return text[: text.index(marker) + len(marker)]
            continue
        if marker in text:
            return text
