"""XMPP over WebSocket (RFC 7395) over real sockets, with the `websockets` library as client.

Every message the server sends is parsed on its own (support.web), so a
stanza that relied on an undeclared jabber:client namespace fails here.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator

import pytest
from support.client import (
    IQ,
    MESSAGE,
    NS_CLIENT,
    NS_SASL,
    NS_STREAM_ERRORS,
    PRESENCE,
    STREAM_ERROR,
    RawClient,
    clark,
    stream_error_condition,
)
from support.im import AccountPool
from support.server import ServerProcess
from support.web import CLOSE, NS_FRAMING, OPEN, BoshClient, WSClient
from test_abuse import MIB
from test_abuse import _kernel_buffers as kernel_buffers
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from imserver.config import Limits

WEB = {"port": 0, "cors_origins": ["*"]}
PLAINTEXT = {"allow_plaintext_on_loopback": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("ws"), http=WEB, c2s=PLAINTEXT)
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture
def ws(server: ServerProcess) -> Iterator:
    clients: list[WSClient] = []

    def make(target: ServerProcess | None = None) -> WSClient:
        client = WSClient((target or server).http_port).connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_handshake_answers_the_xmpp_subprotocol(ws) -> None:
    """Chromium drops a handshake that asked for 'xmpp' and got no subprotocol back."""
    client = ws()
    assert client.ws.subprotocol == "xmpp"
    assert client.ws.response.headers["Sec-WebSocket-Protocol"] == "xmpp"


def test_a_handshake_without_the_subprotocol_is_refused(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        WSClient(server.http_port).connect(subprotocols=())
    assert refused.value.response.status_code == 400
    with pytest.raises(InvalidStatus):
        WSClient(server.http_port).connect(subprotocols=("mqtt",))


def test_a_page_from_another_origin_is_refused(make_server) -> None:
    """With cors_origins set, a handshake from a page elsewhere gets 403 (RFC 6455 §4.2.2)."""
    strict = make_server(http={"port": 0, "cors_origins": ["https://chat.example"]}, c2s=PLAINTEXT)
    url = f"ws://127.0.0.1:{strict.http_port}/xmpp-websocket"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, subprotocols=["xmpp"], origin="https://elsewhere.example", open_timeout=5)
    assert refused.value.response.status_code == 403
    with connect(url, subprotocols=["xmpp"], origin="https://chat.example", open_timeout=5) as ok:
        assert ok.subprotocol == "xmpp"


def test_open_features_and_close(ws) -> None:
    client = ws()
    features = client.open()
    mechanisms = [
        m.text for m in features.iter(clark("urn:ietf:params:xml:ns:xmpp-sasl", "mechanism"))
    ]
    assert "SCRAM-SHA-256" in mechanisms
    # No STARTTLS over a WebSocket: TLS belongs to the HTTP layer.
    assert features.find(clark("urn:ietf:params:xml:ns:xmpp-tls", "starttls")) is None
    client.send(f"<close xmlns='{NS_FRAMING}'/>")
    client.expect(CLOSE)
    client.wait_closed()


def test_login_roster_and_chat_with_a_tcp_client(ws, pool: AccountPool, make_client) -> None:
    (web_jid, web_pw), (tcp_jid, tcp_pw) = pool.take(2)
    web = ws()
    full = web.login(web_jid, web_pw)
    tcp = make_client()
    tcp_full = tcp.login(tcp_jid, tcp_pw, resource="tcp")

    web.send("<iq xmlns='jabber:client' type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
    roster = web.expect(IQ)
    assert (
        roster.get("type") == "result"
        and roster.find(clark("jabber:iq:roster", "query")) is not None
    )

    web.send(
        f"<message xmlns='jabber:client' to='{tcp_full}' type='chat'><body>hi tcp</body></message>"
    )
    got = tcp.expect(MESSAGE)
    assert got.get("from") == full and got.findtext(clark(NS_CLIENT, "body")) == "hi tcp"

    tcp.send(f"<message to='{full}' type='chat'><body>hi web &amp; co</body></message>")
    got = web.expect(MESSAGE)
    assert got.get("from") == tcp_full
    assert got.findtext(clark(NS_CLIENT, "body")) == "hi web & co"


def test_a_broadcast_reaches_websocket_sessions_namespaced(
    ws, pool: AccountPool, make_client
) -> None:
    """Presence to several resources is serialised once; each copy declares jabber:client."""
    ((jid, pw),) = pool.take(1)
    one, two = ws(), ws()
    one.login(jid, pw, "one")
    two.login(jid, pw, "two")
    tcp = make_client()
    tcp.login(jid, pw, resource="three")
    for client in (one, two):
        client.send("<presence xmlns='jabber:client'><priority>1</priority></presence>")
    tcp.send("<presence><status>here</status></presence>")
    for client in (one, two):
        got = client.expect(lambda e: e.tag == PRESENCE and e.get("from", "").endswith("/three"))
        assert got.findtext(clark(NS_CLIENT, "status")) == "here"


@pytest.mark.parametrize(
    ("message", "condition"),
    [
        (
            "<iq xmlns='jabber:client' type='get' id='a'/><iq xmlns='jabber:client' id='b'/>",
            "bad-format",
        ),
        ("<message xmlns='jabber:client'><body>half", "not-well-formed"),
        ("<message xmlns='jabber:client'", "not-well-formed"),
        ("just text", "not-well-formed"),
        ("<message xmlns='jabber:client'><body>&bogus;</body></message>", "restricted-xml"),
        (f"<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>", "bad-format"),
    ],
)
def test_framing_errors_end_the_stream(ws, message: str, condition: str) -> None:
    client = ws()
    client.open()
    client.send(message)
    client.expect_stream_error(condition)
    client.wait_closed()


def test_a_binary_message_is_a_framing_error(ws) -> None:
    client = ws()
    client.open()
    client.ws.send(b"<iq xmlns='jabber:client' type='get' id='x'/>")
    client.expect_stream_error("bad-format")


def test_a_stanza_before_open_gets_open_then_the_error(ws) -> None:
    """RFC 7395 §3.3.3: an error before the stream is open still comes after an <open/>."""
    client = ws()
    client.send("<iq xmlns='jabber:client' type='get' id='x'/>")
    client.expect(OPEN)
    client.expect_stream_error("bad-format")


def test_xml_limits_apply(make_server) -> None:
    small = make_server(http=WEB, c2s=PLAINTEXT, limits={"max_stanza_size": 2048})
    client = WSClient(small.http_port).connect()
    try:
        client.open()
        client.send(f"<message xmlns='jabber:client'><body>{'x' * 4000}</body></message>")
        client.expect_stream_error("policy-violation")
    finally:
        client.close()


def test_an_idle_session_is_pinged_then_timed_out(make_server) -> None:
    quick = make_server(
        http=WEB, c2s=PLAINTEXT, limits={"idle_timeout": 1.0, "idle_ping_timeout": 1.0}
    )
    jid, pw = quick.new_account()
    client = WSClient(quick.http_port).connect()
    try:
        client.login(jid, pw)
        ping = client.expect(
            lambda e: e.tag == IQ and e.find(clark("urn:xmpp:ping", "ping")) is not None, 5
        )
        assert ping.get("type") == "get"
        client.expect_stream_error("connection-timeout", 5)
        client.wait_closed()
    finally:
        client.close()


def test_a_slow_reader_is_disconnected_and_the_sender_is_not(make_server) -> None:
    """A WebSocket client that stops reading is cut off at max_output_buffer (policy-violation)."""
    flood = make_server(
        http=WEB, c2s=PLAINTEXT, limits={"input_rate": 32 * MIB, "input_burst": 4 * MIB}
    )
    (reader_jid, reader_pw), (sender_jid, sender_pw) = flood.new_account(), flood.new_account()
    reader = WSClient(flood.http_port)
    # websockets stops reading the socket once this many messages wait unread.
    reader.ws = connect(reader.url, subprotocols=["xmpp"], max_queue=2, max_size=None, legacy=True)
    sender = RawClient.for_server(flood, timeout=20).connect()
    try:
        full = reader.login(reader_jid, reader_pw)
        sender.login(sender_jid, sender_pw, resource="fast")
        message = f"<message to='{full}' type='headline'><body>{'x' * 4000}</body></message>"
        batch = message.encode() * 16
        total, wanted = 0, kernel_buffers() + Limits().max_output_buffer + 2 * MIB
        sender.sock.settimeout(20)
        while total < wanted:
            sender.sock.sendall(batch)
            total += len(batch)
        ping = f"<iq type='get' id='alive' to='{flood.host}'><ping xmlns='urn:xmpp:ping'/></iq>"
        assert sender.iq(ping, timeout=20).get("type") == "result"
        delivered = 0
        while True:
            element = reader.receive(20)
            assert element is not None, f"closed without a stream error after {delivered}"
            if element.tag != MESSAGE:
                break
            delivered += 1
        assert element.tag == STREAM_ERROR, element.tag
        assert stream_error_condition(element) == "policy-violation"
        assert 0 < delivered < total // len(message)
    finally:
        reader.close()
        sender.close()


def test_host_meta_advertises_both_endpoints(server: ServerProcess) -> None:
    base = f"http://127.0.0.1:{server.http_port}/.well-known/"
    request = urllib.request.Request(
        base + "host-meta.json", headers={"Origin": "https://app.example"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        links = {link["rel"]: link["href"] for link in json.load(answer)["links"]}
    host = f"127.0.0.1:{server.http_port}"
    assert links == {
        "urn:xmpp:alt-connections:websocket": f"ws://{host}/xmpp-websocket",
        "urn:xmpp:alt-connections:xbosh": f"http://{host}/http-bind",
    }
    with urllib.request.urlopen(base + "host-meta", timeout=5) as answer:
        xrd = answer.read().decode()
    assert "http://docs.oasis-open.org/ns/xri/xrd-1.0" in xrd
    assert f'href="ws://{host}/xmpp-websocket"' in xrd
    assert f'href="http://{host}/http-bind"' in xrd


def test_wss_on_the_tls_port_counts_as_secure(make_server) -> None:
    """Over TLS (no plaintext allowance), SASL is offered: the WebSocket is secure."""
    secure = make_server(http={"port": 0, "tls_port": 0})
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-signed test certificate
    client = WSClient(secure.http_tls_port)
    client.url = f"wss://127.0.0.1:{secure.http_tls_port}/xmpp-websocket"
    client.ws = connect(client.url, subprotocols=["xmpp"], ssl=context, legacy=True)
    try:
        features = client.open()
        mechanisms = [m.text for m in features.iter(clark(NS_SASL, "mechanism"))]
        assert "SCRAM-SHA-256" in mechanisms and "PLAIN" in mechanisms
        # Our own TLS with the [tls] certificate: SCRAM-PLUS can bind to it.
        assert "SCRAM-SHA-256-PLUS" in mechanisms
    finally:
        client.close()


@pytest.mark.parametrize("proxy", [False, True])
def test_plain_http_is_secure_only_behind_a_tls_proxy(make_server, proxy: bool) -> None:
    target = make_server(http={"port": 0, "behind_tls_proxy": proxy})
    client = WSClient(target.http_port).connect()
    try:
        features = client.open()
        mechanisms = [m.text for m in features.iter(clark(NS_SASL, "mechanism"))]
        assert bool(mechanisms) == proxy
        # The client's TLS ends at the proxy: nothing to bind SCRAM-PLUS to.
        assert not [m for m in mechanisms if m.endswith("-PLUS")]
        assert features.find(clark("urn:xmpp:sasl-cb:0", "sasl-channel-binding")) is None
    finally:
        client.close()


def test_shutdown_ends_websocket_and_bosh_streams_with_system_shutdown(make_server) -> None:
    target = make_server(http=WEB, c2s=PLAINTEXT)
    web = WSClient(target.http_port).connect()
    web.open()
    bosh = BoshClient(target.http_port)
    try:
        bosh.start(wait=30)
        held = bosh.send()
        time.sleep(0.2)
        assert target.stop() == 0
        web.expect_stream_error("system-shutdown")
        body = held.result(10)
        assert body.get("type") == "terminate" and body.get("condition") == "remote-stream-error"
        error = body.find(clark("http://etherx.jabber.org/streams", "error"))
        assert error.find(clark(NS_STREAM_ERRORS, "system-shutdown")) is not None
    finally:
        web.close()
        bosh.close()
