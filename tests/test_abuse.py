"""Abuse limits (issue 6): one client must not hurt the server or anyone else.

Each case runs over real sockets against a real server process, with a bound
on its run time, and ends by checking that a fresh login still works. Figures
(RSS, timings, throughput) are printed: run with -s to see them.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from support.client import (
    IQ,
    MESSAGE,
    NS_CLIENT,
    NS_SASL,
    NS_TLS,
    RawClient,
    clark,
    stanza_error,
    to_text,
)
from support.server import ServerProcess
from twisted.words.xish import domish

from imserver.config import Limits
from imserver.stream.c2s import NS_STREAMS, C2SAuthenticator
from imserver.stream.limits import CLOSE_GRACE, TokenBucket

Credentials = tuple[str, str]
MakeClient = Callable[..., RawClient]
MakeServer = Callable[..., ServerProcess]

PING = "<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Credentials:
    return server.new_account("alice")


@pytest.fixture(scope="module")
def bob(server: ServerProcess) -> Credentials:
    return server.new_account("bob")


# -- helpers ---------------------------------------------------------------------


def rss_mib(server: ServerProcess) -> float:
    """The server process's resident memory, from /proc."""
    with open(f"/proc/{server.process.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc status")


def logged_in(
    make_client: MakeClient,
    credentials: Credentials,
    target: ServerProcess | None = None,
    resource: str | None = None,
) -> RawClient:
    client = make_client(target)
    client.login(*credentials, resource=resource)
    return client


def assert_still_serves(server: ServerProcess, credentials: Credentials) -> None:
    """A new connection logs in and gets its ping answered."""
    with RawClient.for_server(server) as client:
        client.connect()
        client.login(*credentials, resource="probe-" + secrets.token_hex(3))
        answer = client.iq(PING)
        assert answer.get("type") == "result", to_text(answer)


def secure_stream(make_client: MakeClient, target: ServerProcess) -> RawClient:
    client = make_client(target)
    client.open_stream()
    client.starttls()
    client.open_stream()
    return client


def sasl_condition(element) -> str:
    names = [c.tag.rpartition("}")[2] for c in element if c.tag != clark(NS_SASL, "text")]
    return names[0] if names else ""


@contextlib.contextmanager
def raw_sockets() -> Iterator[list[socket.socket]]:
    """Plain sockets a test opens itself, all closed at the end."""
    sockets: list[socket.socket] = []
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def connect(server: ServerProcess, sockets: list[socket.socket], tls: bool = False):
    sock = socket.create_connection(
        (server.interface, server.tls_port if tls else server.port), timeout=5
    )
    sockets.append(sock)
    return sock


def refused_at_accept(
    server: ServerProcess, sockets: list[socket.socket], tls: bool = False, timeout: float = 3.0
) -> bool:
    """Connect; True when the server closes it without a byte (the reset may even beat connect)."""
    try:
        sock = connect(server, sockets, tls)
    except ConnectionResetError:
        return True
    return refused(sock, timeout)


def refused(sock: socket.socket, timeout: float = 3.0) -> bool:
    """True when the server closes the connection (within C{timeout}) without sending a byte."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def plain_login(client: RawClient, credentials: Credentials) -> None:
    """Log in without TLS (the server must allow plaintext on loopback)."""
    client.open_stream()
    client.auth_plain(*credentials)
    client.open_stream()
    client.bind()


# -- XML shape limits --------------------------------------------------------------


def test_ten_thousand_deep_message_is_policy_violation(
    server: ServerProcess, make_client: MakeClient, alice: Credentials, bob: Credentials
) -> None:
    client = logged_in(make_client, alice)
    before = rss_mib(server)
    started = time.monotonic()
    client.send(f"<message to='{bob[0]}' type='chat'>" + "<a>" * 10_000)
    client.expect_stream_error("policy-violation", timeout=10)
    elapsed = time.monotonic() - started
    after = rss_mib(server)
    print(
        f"10,000-deep message: policy-violation in {elapsed:.3f} s; "
        f"RSS {before:.1f} -> {after:.1f} MiB"
    )
    assert elapsed < 2.0
    assert after - before < 20
    assert_still_serves(server, alice)


def test_sixty_deep_message_is_delivered_intact(
    server: ServerProcess, make_client: MakeClient, alice: Credentials, bob: Credentials
) -> None:
    receiver = logged_in(make_client, bob, resource="deep")
    sender = logged_in(make_client, alice)
    # The message is level 1; 59 nested <d/> take it to 60, under the limit of 64.
    inner = "bottom &amp; &lt;end&gt;"
    for level in range(59, 0, -1):
        inner = f"<d n='{level}'>{inner}</d>"
    body = inner.replace("<d n='1'>", "<d xmlns='urn:example:deep' n='1'>", 1)
    sender.send(f"<message to='{receiver.jid}' type='chat' id='deep'>{body}</message>")
    message = receiver.expect(lambda e: e.tag == MESSAGE and e.get("id") == "deep")
    element, depth = message, 1
    while (child := element.find("{urn:example:deep}d")) is not None:
        depth += 1
        assert child.get("n") == str(depth - 1), to_text(message)[:300]
        element = child
    assert depth == 60
    assert element.text == "bottom & <end>"
    assert message.get("from") == sender.jid
    answer = sender.iq(PING)
    assert answer.get("type") == "result", to_text(answer)


def _attributes(count: int) -> str:
    return " ".join(f"a{i}='v'" for i in range(count))


def _namespaces(count: int) -> str:
    return " ".join(f"xmlns:p{i}='urn:example:p{i}'" for i in range(count))


@pytest.mark.parametrize(
    ("at_limit", "over_limit"),
    [
        (_attributes(100), _attributes(101)),
        (_namespaces(100), _namespaces(101)),
        ("a='" + "x" * 65536 + "'", "a='" + "x" * 65537 + "'"),
    ],
    ids=["attributes", "namespace-declarations", "attribute-length"],
)
def test_xml_limits_are_policy_violation(
    server: ServerProcess,
    make_client: MakeClient,
    alice: Credentials,
    at_limit: str,
    over_limit: str,
) -> None:
    client = logged_in(make_client, alice)
    template = (
        "<iq type='get' id='{}' to='localhost'><ping xmlns='urn:xmpp:ping'><x {}/></ping></iq>"
    )
    answer = client.iq(template.format("fits", at_limit))
    assert answer.get("type") == "result", to_text(answer)[:300]
    client.send(template.format("over", over_limit))
    client.expect_stream_error("policy-violation")
    assert_still_serves(server, alice)


# -- malformed input and addresses ----------------------------------------------------


@pytest.mark.parametrize(
    "garbage", [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80"], ids=["ff", "overlong", "surrogate"]
)
def test_invalid_utf8_is_not_well_formed(
    server: ServerProcess, make_client: MakeClient, alice: Credentials, garbage: bytes
) -> None:
    client = logged_in(make_client, alice)
    client.send(b"<message to='" + alice[0].encode() + b"'><body>" + garbage + b"</body></message>")
    error = client.expect(clark(NS_STREAMS, "error"))
    conditions = {c.tag.rpartition("}")[2] for c in error}
    assert conditions & {"not-well-formed", "unsupported-encoding"}, to_text(error)
    client.expect_closed()
    assert_still_serves(server, alice)


@pytest.mark.parametrize(
    "to",
    ["a b@localhost", "user@localhost/a&#9;b", "user@localhost/\u05d0a", "user@exa mple.net"],
    ids=["space-in-node", "tab-in-resource", "mixed-bidi", "space-in-domain"],
)
def test_to_failing_stringprep_is_jid_malformed(
    make_client: MakeClient, alice: Credentials, to: str
) -> None:
    client = logged_in(make_client, alice)
    client.send(f"<message to='{to}' type='chat' id='prep'><body>x</body></message>")
    answer = client.expect(lambda e: e.get("id") == "prep")
    assert answer.get("type") == "error", to_text(answer)
    assert stanza_error(answer) == ("modify", "jid-malformed"), to_text(answer)
    assert client.iq(PING).get("type") == "result"


def test_spoofed_from_is_replaced_by_the_session_jid(
    make_client: MakeClient, alice: Credentials, bob: Credentials
) -> None:
    receiver = logged_in(make_client, bob, resource="spoof")
    sender = logged_in(make_client, alice)
    sender.send(
        f"<message to='{receiver.jid}' from='admin@localhost/console' type='chat' id='spoof'>"
        "<body>reset your password</body></message>"
    )
    message = receiver.expect(lambda e: e.tag == MESSAGE and e.get("id") == "spoof")
    assert message.get("from") == sender.jid, to_text(message)
    assert message.findtext(clark(NS_CLIENT, "body")) == "reset your password"


# -- unauthenticated streams ---------------------------------------------------------


def test_stalled_unauthenticated_streams_are_closed_on_time(make_server: MakeServer) -> None:
    quick = make_server(limits={"unauthenticated_timeout": 2.0})
    credentials = quick.new_account()
    header = (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
    )
    received = b""
    with raw_sockets() as sockets:
        # A trickling plain stream, and a direct TLS one that never starts its handshake
        # (its stream error cannot go out, so it is cut off after CLOSE_GRACE).
        sock = connect(quick, sockets)
        silent = connect(quick, sockets, tls=True)
        started = time.monotonic()
        sent = 0
        closed_after = None
        while time.monotonic() - started < 8:
            with contextlib.suppress(OSError):
                sock.sendall(header[sent : sent + 1])
                sent += 1
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed_after = time.monotonic() - started
                    break
                received += data
        assert refused(silent, timeout=2.0 + CLOSE_GRACE + 2 - (time.monotonic() - started))
        silent_closed_after = time.monotonic() - started
    print(
        f"trickling client ({sent} bytes, one per 100 ms) closed after {closed_after:.2f} s; "
        f"silent direct TLS client after {silent_closed_after:.2f} s"
    )
    assert closed_after is not None, "the server kept a trickling unauthenticated stream open"
    assert 1.8 <= closed_after <= 3.5, closed_after
    assert b"connection-timeout" in received, received
    assert silent_closed_after >= 1.8
    assert_still_serves(quick, credentials)


def test_restart_cap_counts_stream_headers_before_authentication() -> None:
    # RFC 6120 lets only STARTTLS restart a stream before SASL, and only once
    # (see the next test), so the cap of 5 cannot be reached over the wire:
    # drive the authenticator with the headers directly.
    errors: list[str] = []
    stream = SimpleNamespace(
        secure=False,
        plaintext_allowed=False,
        fail=lambda condition, text=None: errors.append(condition),
        sendHeader=lambda: None,
        send=lambda element: None,
    )
    server = SimpleNamespace(
        limits=Limits(),
        hosts=frozenset({"localhost"}),
        tls=None,
        stream_features={"preauth": [], "bound": []},
    )
    authenticator = C2SAuthenticator(server)
    authenticator.xmlstream = stream
    header = domish.Element(
        (NS_STREAMS, "stream"), defaultUri=NS_CLIENT, attribs={"to": "localhost", "version": "1.0"}
    )
    for _ in range(1 + Limits().max_stream_restarts):
        authenticator.streamStarted(header)
    assert errors == []
    authenticator.streamStarted(header)
    assert errors == ["policy-violation"]


def test_second_starttls_cannot_restart_the_stream(
    server: ServerProcess, make_client: MakeClient, alice: Credentials
) -> None:
    client = make_client()
    client.open_stream()
    client.starttls()
    client.open_stream()
    client.send(f"<starttls xmlns='{NS_TLS}'/>")
    answer = client.expect(lambda e: e.tag.startswith(f"{{{NS_TLS}}}"))
    assert answer.tag == clark(NS_TLS, "failure"), to_text(answer)
    client.expect_closed()
    assert_still_serves(server, alice)


# -- SASL -------------------------------------------------------------------------------


def test_failed_logins_close_the_stream_and_slow_the_address(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    slow = make_server(limits={"auth_failure_delay": 0.3, "auth_failure_max_delay": 5.0})
    credentials = slow.new_account()
    client = secure_stream(make_client, slow)
    timings = []
    for _ in range(3):
        started = time.monotonic()
        failure = client.auth_plain(credentials[0], "wrong", check=False)
        timings.append(time.monotonic() - started)
        assert sasl_condition(failure) == "not-authorized", to_text(failure)
    client.expect_stream_error("policy-violation")
    # Three failures from this address: the next answer waits 0.3 * 2**2 = 1.2 s.
    client = secure_stream(make_client, slow)
    started = time.monotonic()
    client.auth_plain(*credentials)
    waited = time.monotonic() - started
    print("failed attempts took " + ", ".join(f"{t:.2f}" for t in timings) + " s; ", end="")
    print(f"the right password then took {waited:.2f} s and succeeded")
    assert timings[0] < 0.25
    assert 0.25 <= timings[1] < timings[2]
    assert timings[2] >= 0.55
    assert waited >= 1.1
    client.open_stream()
    assert client.bind().startswith(credentials[0] + "/")
    assert_still_serves(slow, credentials)


# -- connection caps -------------------------------------------------------------------


def test_connections_per_address_are_capped_at_accept(make_server: MakeServer) -> None:
    capped = make_server(limits={"max_connections_per_address": 5, "exempt_loopback": False})
    credentials = capped.new_account()
    with raw_sockets() as sockets:
        streams = [RawClient.for_server(capped) for _ in range(5)]
        for client in streams:
            client.connect()
            sockets.append(client.sock)
            client.open_stream()
        assert refused_at_accept(capped, sockets)
        assert refused_at_accept(capped, sockets, tls=True)
        # The five accepted streams are unharmed.
        client = streams[0]
        client.starttls()
        assert client.open_stream().tag == clark(NS_STREAMS, "features")
        streams[1].sock.close()
        # The freed place is reusable once the server has seen the close.
        deadline = time.monotonic() + 5
        while refused_at_accept(capped, sockets, timeout=1) and time.monotonic() < deadline:
            time.sleep(0.1)
        for sock in sockets[5:]:
            sock.close()
        assert_still_serves(capped, credentials)


def test_loopback_is_exempt_from_the_per_address_cap_by_default(make_server: MakeServer) -> None:
    capped = make_server(limits={"max_connections_per_address": 2})
    with raw_sockets() as sockets:
        for _ in range(4):
            client = RawClient.for_server(capped).connect()
            sockets.append(client.sock)
            assert client.open_stream().tag == clark(NS_STREAMS, "features")


def test_unauthenticated_connections_are_capped_overall(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    capped = make_server(limits={"max_unauthenticated": 3})
    credentials = capped.new_account()
    # Authenticated streams do not count against the cap.
    bound = [logged_in(make_client, credentials, capped) for _ in range(3)]
    with raw_sockets() as sockets:
        waiting = []
        for _ in range(3):
            client = RawClient.for_server(capped).connect()
            sockets.append(client.sock)
            client.open_stream()
            waiting.append(client)
        assert refused_at_accept(capped, sockets)
        assert bound[0].iq(PING).get("type") == "result"
        waiting[0].sock.close()
        time.sleep(0.3)
        assert_still_serves(capped, credentials)


# -- input rate and output backlog ---------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1000, burst=4000, clock=lambda: now[0])
    assert bucket.take(4000) == 0
    assert bucket.take(500) == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.take(0) == 0
    now[0] = 100.0  # refills to the burst, not beyond
    assert bucket.take(5000) == pytest.approx(1.0)


def test_sender_over_the_rate_is_slowed_not_disconnected(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    rate, burst = 128 * 1024, 64 * 1024
    limited = make_server(limits={"input_rate": rate, "input_burst": burst})
    credentials = limited.new_account()
    client = logged_in(make_client, credentials, limited)
    padding = "x" * 8000
    pings = [
        f"<iq type='get' id='r{i}' to='localhost'><ping xmlns='urn:xmpp:ping'>"
        f"<pad>{padding}</pad></ping></iq>"
        for i in range(48)
    ]
    data = "".join(pings).encode()
    client.sock.settimeout(30)
    started = time.monotonic()
    client.sock.sendall(data)
    last = client.expect(lambda e: e.tag == IQ and e.get("id") == "r47", timeout=30)
    elapsed = time.monotonic() - started
    answered = 1 + sum(1 for e in client.drain() if e.tag == IQ and e.get("type") == "result")
    # Twisted reads up to 64 KiB at a time, so the last read may come in before its pause.
    fastest = (len(data) - burst - 65536) / rate
    slowest = (len(data) - burst) / rate
    print(
        f"{len(data) / 1024:.0f} KiB at a {rate // 1024} KiB/s limit "
        f"(burst {burst // 1024} KiB) took {elapsed:.2f} s, expected {fastest:.2f}-{slowest:.2f} s"
    )
    assert last.get("type") == "result", to_text(last)
    assert answered == 48
    assert 0.9 * fastest <= elapsed <= 1.5 * slowest + 0.5
    assert client.iq(PING).get("type") == "result"
    assert_still_serves(limited, credentials)


def test_reader_that_falls_behind_is_disconnected_and_memory_stays_bounded(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    # A fast input rate, so the flood is quick and only the output limit acts.
    flood = make_server(limits={"input_rate": 32 * MIB, "input_burst": 4 * MIB})
    bob = flood.new_account("bob")
    alice = flood.new_account("alice")
    slow = logged_in(make_client, bob, flood, resource="slow")
    sender = logged_in(make_client, alice, flood)
    message = (
        f"<message to='{slow.jid}' type='headline'><body>{'x' * 4000}</body></message>"
    ).encode()
    batch = message * 16
    # Enough to fill the kernel buffers on both sides of the connection, then the limit.
    total_wanted = _kernel_buffers() + Limits().max_output_buffer + 2 * MIB
    before = peak = rss_mib(flood)
    sender.sock.settimeout(20)
    started = time.monotonic()
    total = 0
    while total < total_wanted:
        sender.sock.sendall(batch)
        total += len(batch)
        if total % MIB < len(batch):
            peak = max(peak, rss_mib(flood))
    answer = sender.iq(PING, timeout=20)  # the sender, never reading so far, is fine
    flooded = time.monotonic() - started
    after = rss_mib(flood)
    peak = max(peak, after)
    error = slow.expect_stream_error("policy-violation", timeout=20)
    delivered = sum(1 for e in slow.drain() if e.tag == MESSAGE)
    print(
        f"sent {total / MIB:.1f} MiB in {flooded:.2f} s to a client that did not read; "
        f"RSS {before:.1f} -> peak {peak:.1f} -> {after:.1f} MiB; "
        f"it got {delivered} of {total // len(message)} messages, then policy-violation"
    )
    assert answer.get("type") == "result", to_text(answer)
    assert "too much unread data" in to_text(error)
    assert 0 < delivered < total // len(message)
    assert peak - before < 100
    assert_still_serves(flood, alice)


def _kernel_buffers() -> int:
    """The most Linux buffers for one loopback connection: our send buffer, the peer's receive."""
    with open("/proc/sys/net/ipv4/tcp_wmem", encoding="ascii") as wmem:
        send_max = int(wmem.read().split()[2])
    with open("/proc/sys/net/ipv4/tcp_rmem", encoding="ascii") as rmem:
        receive_default = int(rmem.read().split()[1])
    return send_max + receive_default


def test_client_that_never_reads_stops_being_read(
    make_server: MakeServer, make_client: MakeClient
) -> None:
    # Plain TCP on loopback, so bytes sent are counted exactly (no TLS records).
    greedy = make_server(
        c2s={"allow_plaintext_on_loopback": True},
        limits={"input_rate": 64 * MIB, "input_burst": 8 * MIB},
    )
    credentials = greedy.new_account()
    client = make_client(greedy)
    plain_login(client, credentials)
    sock = client.sock
    # Modest buffers (a tiny window would make loopback crawl once the client reads).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    size = len(_ping(0))
    limit = 64 * MIB
    before = rss_mib(greedy)
    sent = 0
    stalled = False
    sock.setblocking(False)
    while sent < limit:
        _, writable, _ = select.select([], [sock], [], 2.0)
        if not writable:
            stalled = True
            break
        first, offset = divmod(sent, size)
        chunk = b"".join(_ping(i) for i in range(first, first + 512))[offset:]
        with contextlib.suppress(BlockingIOError):
            sent += sock.send(chunk)
    during = rss_mib(greedy)
    # Now read: the server answers everything and reads the rest of the last ping.
    rest = _ping(sent // size)[sent % size :] if sent % size else b""
    expected = -(-sent // size)
    answered = 0
    deadline = time.monotonic() + 60
    while answered < expected and time.monotonic() < deadline:
        if rest:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                rest = rest[sock.send(rest) :]
        answered += sum(1 for e in client.drain(wait=0.05) if e.get("type") == "result")
    print(
        f"the server stopped reading a client that does not read after {sent / MIB:.1f} MiB "
        f"({expected} pings); RSS {before:.1f} -> {during:.1f} MiB; all {answered} answered"
    )
    assert stalled, f"the server read {limit / MIB:.0f} MiB from a client that never reads"
    assert during - before < 100
    assert answered == expected
    assert client.iq(PING).get("type") == "result"
    assert_still_serves(greedy, credentials)


def _ping(index: int) -> bytes:
    xml = f"<iq type='get' id='p{index:08d}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    return xml.encode()
