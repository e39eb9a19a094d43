"""Federation failure cases: nothing is lost silently, nothing waits for ever, no spoofing.

- a domain with no DNS answer bounces remote-server-not-found in bounded time;
- a stanza whose 'from' domain the stream did not authenticate ends the
  stream with invalid-from;
- a peer that stops reading is cut off;
- the queue for a domain being connected holds at most max_queue stanzas,
  and what it holds bounces remote-server-timeout after connect_timeout.

The scripted peers here are raw sockets speaking just enough s2s (plain TCP,
dialback) for one domain whose policy allows that. The wrong-name certificate
case is in test_s2s_prosody (it needs its own pair of servers).
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from support.client import stanza_error
from support.federation import A, Federation, account, online
from support.im import message
from support.tools import needs

NS_SERVER_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    "version='1.0' {attributes}>"
)
SCRIPTED = ("evil.test", "slow.test", "tarpit.test")

pytestmark = needs("prosody")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    world = Federation(tmp_path_factory.mktemp("federation")).start()
    yield world
    world.stop()


class Listener:
    """A socket where a scripted peer domain 'listens' (found through [s2s.hosts])."""

    def __init__(self, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]

    def accept(self) -> socket.socket:
        connection, _ = self.sock.accept()
        connection.settimeout(10)
        return connection


@pytest.fixture(scope="module")
def listeners():
    made = {"evil.test": Listener(), "slow.test": Listener(4096), "tarpit.test": Listener()}
    yield made
    for listener in made.values():
        listener.sock.close()


@pytest.fixture(scope="module")
def a_server(federation, listeners):
    server = federation.imserver(
        A,
        s2s={
            "hosts": {d: f"127.0.0.1:{listeners[d].port}" for d in SCRIPTED},
            "domain": {d: {"require_encryption": False} for d in SCRIPTED}
            | {"strict.test": {"require_encryption": False, "secure_auth": True}},
            "max_queue": 5,
            "max_connections_per_domain": 3,
            "connect_timeout": 3.0,
        },
        limits={
            "max_output_buffer": 100_000,
            "input_rate": 100_000_000,
            "input_burst": 100_000_000,
        },
    )
    yield server
    federation.stop_servers(server)


@pytest.fixture
def clients():
    made: list = []
    yield made
    for client in made:
        client.close()


def read_until(sock: socket.socket, pattern: str, data: bytes = b"") -> tuple[re.Match, bytes]:
    """Read until C{pattern} matches the text so far; returns (match, all bytes read)."""
    deadline = time.monotonic() + 10
    while True:
        found = re.search(pattern, data.decode("utf-8", errors="replace"), re.S)
        if found:
            return found, data
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in {data[-2000:]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before {pattern!r}; got {data[-2000:]!r}")
        data += chunk


def answer_as_receiving(sock: socket.socket, domain: str) -> None:
    """We connected to a scripted domain: accept our dialback db:result without checking."""
    read_until(sock, r"<stream:stream[^>]*>")
    sock.sendall(
        NS_SERVER_HEADER.format(attributes=f"from='{domain}' to='{A}' id='s-1'").encode()
        + b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"
    )
    read_until(sock, r"<db:result[^>]*>[^<]+</db:result>")
    sock.sendall(f"<db:result from='{domain}' to='{A}' type='valid'/>".encode())


def test_unknown_domain_bounces_in_bounded_time(a_server, clients):
    alice = online(a_server, account(a_server, "alice"), clients)
    started = time.monotonic()
    alice.send("<message to='someone@nowhere.test' id='m1' type='chat'><body>?</body></message>")
    bounce = alice.expect(message("someone@nowhere.test", "error"), timeout=10)
    assert stanza_error(bounce) == ("cancel", "remote-server-not-found")
    assert time.monotonic() - started < 5
    assert "giving up on nowhere.test (remote-server-not-found)" in a_server.log_text()


def test_spoofed_from_gets_invalid_from(a_server, listeners, clients):
    alice = online(a_server, account(a_server, "alice"), clients)
    peer = socket.create_connection(("127.0.0.1", a_server.s2s_port), timeout=10)
    try:
        peer.sendall(NS_SERVER_HEADER.format(attributes=f"from='evil.test' to='{A}'").encode())
        header, data = read_until(peer, r"<stream:stream[^>]*\bid='([^']+)'")
        read_until(peer, r"</stream:features>", data)
        peer.sendall(f"<db:result from='evil.test' to='{A}'>some-key</db:result>".encode())
        # imserver asks evil.test's authoritative server (our listener) about the key.
        verifier = listeners["evil.test"].accept()
        with verifier:
            read_until(verifier, r"<stream:stream[^>]*>")
            verifier.sendall(
                NS_SERVER_HEADER.format(attributes=f"from='evil.test' to='{A}' id='v-1'").encode()
                + b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
                b"</stream:features>"
            )
            verify, _ = read_until(verifier, r"<db:verify[^>]*\bid='([^']+)'[^>]*>some-key<")
            assert verify.group(1) == header.group(1)
            verifier.sendall(
                f"<db:verify from='evil.test' to='{A}' id='{verify.group(1)}' "
                "type='valid'/>".encode()
            )
            read_until(peer, r"<db:result[^>]*type='valid'")
            # Authenticated for evil.test: its users' stanzas are delivered...
            peer.sendall(
                f"<message from='mallory@evil.test/x' to='{alice.bare}' type='chat'>"
                "<body>legit</body></message>".encode()
            )
            alice.expect(message("mallory@evil.test/x", "chat"))
            # ...but not stanzas claiming another domain.
            peer.sendall(
                f"<message from='boss@b.test/x' to='{alice.bare}' type='chat'>"
                "<body>spoofed</body></message>".encode()
            )
            read_until(peer, r"<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'")
            alice.assert_nothing(message("boss@b.test/x"))
    finally:
        peer.close()
    assert "b.test is not authenticated here" in a_server.log_text()


def test_peer_that_stops_reading_is_cut_off(a_server, listeners, clients):
    alice = online(a_server, account(a_server, "alice"), clients)
    body = "x" * 60_000
    alice.send(f"<message to='reader@slow.test' type='chat'><body>{body}</body></message>")
    peer = listeners["slow.test"].accept()
    with peer:
        answer_as_receiving(peer, "slow.test")
        # Now never read again, while alice keeps sending.
        for _ in range(80):
            alice.send(f"<message to='reader@slow.test' type='chat'><body>{body}</body></message>")
        deadline = time.monotonic() + 15
        while "the peer does not read what we send" not in a_server.log_text():
            assert time.monotonic() < deadline, a_server.log_text()[-3000:]
            time.sleep(0.1)
    alice.sync()  # alice's own stream is unaffected


def test_queue_bound_holds_and_queue_times_out(a_server, listeners, clients):
    alice = online(a_server, account(a_server, "alice"), clients)
    for n in range(8):
        alice.send(f"<message to='t@tarpit.test' id='q{n}' type='chat'><body>{n}</body></message>")
    tarpit = listeners["tarpit.test"].accept()  # accepted, never answered
    with tarpit:
        refused = [alice.expect(message("t@tarpit.test", "error"), timeout=2) for _ in range(3)]
        assert {stanza_error(e)[1] for e in refused} == {"resource-constraint"}
        assert sorted(e.get("id") for e in refused) == ["q5", "q6", "q7"]
        started = time.monotonic()
        timed_out = [alice.expect(message("t@tarpit.test", "error"), timeout=6) for _ in range(5)]
        assert {stanza_error(e)[1] for e in timed_out} == {"remote-server-timeout"}
        assert sorted(e.get("id") for e in timed_out) == [f"q{n}" for n in range(5)]
        assert time.monotonic() - started < 5


def test_dialback_refused_by_policy_gets_a_dialback_error(a_server):
    """XEP-0220 §2.4: a domain that must use certificates gets db:result type='error'."""
    with socket.create_connection(("127.0.0.1", a_server.s2s_port), timeout=10) as peer:
        peer.sendall(NS_SERVER_HEADER.format(attributes=f"from='strict.test' to='{A}'").encode())
        _, data = read_until(peer, r"</stream:features>")
        assert b"urn:xmpp:features:dialback" not in data  # not even offered
        peer.sendall(f"<db:result from='strict.test' to='{A}'>k</db:result>".encode())
        answer, _ = read_until(peer, r"<db:result[^>]*type='error'.*?</db:result>")
        assert "not-acceptable" in answer.group(0)
    assert "dialback from strict.test refused: policy requires a certificate" in (
        a_server.log_text()
    )


def test_connections_per_domain_are_capped(a_server):
    """A fourth stream claiming one domain is refused while three are open."""
    opened = []
    try:
        for _ in range(3):
            peer = socket.create_connection(("127.0.0.1", a_server.s2s_port), timeout=10)
            opened.append(peer)
            peer.sendall(NS_SERVER_HEADER.format(attributes=f"from='many.test' to='{A}'").encode())
            read_until(peer, r"</stream:features>")
        extra = socket.create_connection(("127.0.0.1", a_server.s2s_port), timeout=10)
        opened.append(extra)
        extra.sendall(NS_SERVER_HEADER.format(attributes=f"from='many.test' to='{A}'").encode())
        read_until(extra, r"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'")
    finally:
        for peer in opened:
            peer.close()
    assert "too many connections from many.test" in a_server.log_text()
