"""TLS and TCP details that independent clients depend on (issues 9 §1 and 15).

ALPN (RFC 7301): XEP-0368 clients offer "xmpp-client" on direct TLS, and Go's
XMPP library offers it on STARTTLS too; a server that answers an unknown
offer with an alert locks those clients out. TCP_NODELAY: without it a small
reply written after a large one waits for the client's delayed ACK.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from support.client import RawClient
from support.server import free_port
from support.sockets import nodelay_soon, server_socket_option
from support.tools import needs
from support.web import http_streams_turn_nagle_off

# Each case: what the client offers -> what the server must select (None: no ALPN at all).
ALPN_CASES = [
    (["xmpp-client"], "xmpp-client"),
    (["h2", "xmpp-client"], "xmpp-client"),
    (["h2"], None),
    (None, None),
]


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
@pytest.mark.parametrize(("offer", "selected"), ALPN_CASES)
def test_alpn_negotiation_then_login(server, pool, offer, selected, direct_tls) -> None:
    ((jid, password),) = pool.take()
    client = RawClient.for_server(server, alpn=offer)
    try:
        full = client.login(jid, password, direct_tls=direct_tls)
        assert full.startswith(jid + "/")
        assert client.sock.selected_alpn_protocol() == selected
    finally:
        client.close()


@needs("openssl")
@pytest.mark.parametrize("offer", ["xmpp-client", "h2"])
def test_openssl_s_client_with_alpn(server, offer) -> None:
    """An independent TLS stack (OpenSSL's own client) completes the handshake on both ports."""
    for extra in (
        ["-connect", f"127.0.0.1:{server.tls_port}"],
        ["-connect", f"127.0.0.1:{server.port}", "-starttls", "xmpp", "-xmpphost", server.host],
    ):
        result = subprocess.run(
            ["openssl", "s_client", *extra, "-alpn", offer],
            input=b"",
            capture_output=True,
            timeout=20,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        assert "alert" not in output.lower(), output
        assert "New, TLSv1.3" in output, output  # the handshake completed
        if offer == "xmpp-client":
            assert "ALPN protocol: xmpp-client" in output, output
        else:
            assert "No ALPN negotiated" in output, output


@pytest.mark.parametrize("direct_tls", [False, True], ids=["plain-tcp", "direct-tls"])
def test_streams_turn_nagle_off(server, direct_tls) -> None:
    client = RawClient.for_server(server).connect(direct_tls=direct_tls)
    try:
        client.open_stream()  # the server has set up the stream by now
        port = server.tls_port if direct_tls else server.port
        client_port = client.sock.getsockname()[1]
        nodelay = server_socket_option(
            server.process.pid, port, client_port, socket.IPPROTO_TCP, socket.TCP_NODELAY
        )
        assert nodelay == 1
    finally:
        client.close()


def test_s2s_and_http_streams_turn_nagle_off(make_server) -> None:
    """Issue 15 covers every stream transport: s2s links and WebSocket/BOSH HTTP channels."""
    s2s_port = free_port()
    server = make_server(
        s2s={"enabled": True, "interface": "127.0.0.1", "port": s2s_port},
        http={"port": 0, "tls_port": 0},
    )
    with socket.create_connection(("127.0.0.1", s2s_port), timeout=5) as sock:
        assert nodelay_soon(server.process.pid, s2s_port, sock.getsockname()[1]) == 1
    http_streams_turn_nagle_off(server.process.pid, server.http_port)


@needs("go-sendxmpp")
@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
def test_go_client_sends_a_message(server, pool, direct_tls) -> None:
    """Debian's go-sendxmpp (Go's TLS stack, offering ALPN on both ports) logs in and delivers.

    .ci/run installs it; this was the client the ALPN alert locked out.
    """
    (sender, sender_password), (recipient, password) = pool.take(2)
    receiver = RawClient.for_server(server)
    try:
        receiver.login(recipient, password)
        receiver.send("<presence/>")
        port = server.tls_port if direct_tls else server.port
        command = ["go-sendxmpp", "-n", "-u", sender, "-p", sender_password]
        command += ["-j", f"127.0.0.1:{port}", "--timeout", "10"]
        command += ["-t", recipient] if direct_tls else [recipient]
        result = subprocess.run(command, input=b"hello from Go", capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        message = receiver.expect(lambda e: e.tag == "{jabber:client}message")
        assert message.findtext("{jabber:client}body") == "hello from Go"
        assert message.get("from", "").startswith(sender + "/")
    finally:
        receiver.close()


@pytest.mark.parametrize("mode", ["plain-tcp", "starttls", "direct-tls"])
def test_more_than_the_socket_takes_arrives_whole_and_in_order(make_server, mode) -> None:
    """Writes go straight to the socket while it takes them and queue behind what it did not.

    Two hundred answers of 60 KB each, asked for in one write while the
    client does not read: 12 MB, more than loopback's socket buffers hold, so
    the rest waits in the server until the client reads.
    """
    server = make_server(
        c2s={"allow_plaintext_on_loopback": True},
        limits={"max_output_buffer": 64 * 1024 * 1024},
    )
    jid, password = server.new_account()
    client = RawClient.for_server(server)
    try:
        if mode == "plain-tcp":
            client.connect()
            client.open_stream()
            client.auth_plain(jid, password)
            client.open_stream()
            client.bind()
        else:
            client.login(jid, password, direct_tls=mode == "direct-tls")
        filler = "x" * 60_000
        client.iq(
            f"<iq type='set'><query xmlns='jabber:iq:private'>"
            f"<big xmlns='test:big'>{filler}</big></query></iq>"
        )
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.send(
            "".join(
                f"<iq type='get' id='get-{n}'><query xmlns='jabber:iq:private'>"
                "<big xmlns='test:big'/></query></iq>"
                for n in range(200)
            )
        )
        time.sleep(0.5)  # the server fills the socket buffers and queues the rest
        answers = []
        deadline = time.monotonic() + 30
        while len(answers) < 200 and time.monotonic() < deadline:
            answers += client.drain(wait=0.2)
        assert [a.get("id") for a in answers] == [f"get-{n}" for n in range(200)]
        assert all(a.findtext(".//{test:big}big") == filler for a in answers)
    finally:
        client.close()
