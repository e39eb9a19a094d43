"""XMPP over BOSH (XEP-0124/0206) with raw HTTP from http.client and asyncio.

Each test states the XEP-0124 rule it checks. Bodies are parsed with
ElementTree, so a stanza without its own jabber:client declaration (the
body's default namespace is httpbind) would show up with the wrong tag.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from support.client import FEATURES, IQ, MESSAGE, NS_CLIENT, RawClient, clark
from support.im import AccountPool
from support.server import ServerProcess
from support.web import BODY, NS_HTTPBIND, BoshClient

WEB = {"port": 0, "cors_origins": ["https://app.example"], "bosh_inactivity": 3.0}
PLAINTEXT = {"allow_plaintext_on_loopback": True}
STREAM_ERROR_IN_BODY = "{http://etherx.jabber.org/streams}error"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("bosh"), http=WEB, c2s=PLAINTEXT)
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture
def bosh(server: ServerProcess) -> Iterator:
    clients: list[BoshClient] = []

    def make(target: ServerProcess | None = None) -> BoshClient:
        client = BoshClient((target or server).http_port)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_session_creation_answers_the_session_attributes_and_features(bosh) -> None:
    """XEP-0124 §7.1, XEP-0206 §4: sid, wait, requests, hold, ver, from, xmpp:version."""
    client = bosh()
    body = client.start(wait=30, hold=3)
    assert body.get("sid") and body.get("from") == "localhost"
    assert body.get("wait") == "30" and body.get("hold") == "1" and body.get("requests") == "2"
    assert body.get("ver") == "1.11" and body.get("inactivity") == "3"
    assert body.get("{urn:xmpp:xbosh}version") == "1.0"
    assert body.get("{urn:xmpp:xbosh}restartlogic") == "true"
    features = body.find(FEATURES)
    assert features is not None
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None


def test_cors_preflight_and_answer_headers(server: ServerProcess, bosh) -> None:
    client = bosh()
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5)
    connection.request(
        "OPTIONS",
        "/http-bind",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    answer = connection.getresponse()
    answer.read()
    assert answer.getheader("Access-Control-Allow-Origin") == "https://app.example"
    assert "POST" in answer.getheader("Access-Control-Allow-Methods")
    assert "Content-Type" in answer.getheader("Access-Control-Allow-Headers")
    status, headers, _ = client.post(
        client.body(rid=1, to="localhost", wait="1", hold="1"), {"Origin": "https://other.example"}
    )
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = client.post(
        client.body(rid=5, to="localhost", wait="1", hold="1"), {"Origin": "https://app.example"}
    )
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_login_roster_and_chat_with_a_tcp_client(bosh, pool: AccountPool, make_client) -> None:
    (web_jid, web_pw), (tcp_jid, tcp_pw) = pool.take(2)
    client = bosh()
    full = client.login(web_jid, web_pw)
    tcp: RawClient = make_client()
    tcp_full = tcp.login(tcp_jid, tcp_pw, resource="tcp")
    client.request(
        "<iq xmlns='jabber:client' type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
    )
    roster = client.expect(IQ)
    assert roster.get("id") == "r1" and roster.get("type") == "result"
    client.request(
        f"<message xmlns='jabber:client' to='{tcp_full}' type='chat'><body>hi</body></message>"
    )
    got = tcp.expect(MESSAGE)
    assert got.get("from") == full and got.findtext(clark(NS_CLIENT, "body")) == "hi"
    # A held request carries what arrives while it waits.
    held = client.send()
    time.sleep(0.2)
    tcp.send(f"<message to='{full}' type='chat'><body>back</body></message>")
    body = held.result(5)
    assert [e.findtext(clark(NS_CLIENT, "body")) for e in body if e.tag == MESSAGE] == ["back"]


def test_a_held_request_is_answered_empty_after_wait(bosh) -> None:
    client = bosh()
    client.start(wait=1)
    started = time.monotonic()
    body = client.request()
    assert len(body) == 0 and 0.8 < time.monotonic() - started < 3


def test_a_new_request_releases_the_held_one(bosh) -> None:
    """§11: with hold=1, a second request makes the server answer the first at once."""
    client = bosh()
    client.start(wait=20)
    first = client.send()
    time.sleep(0.3)
    assert not first.done()
    second = client.send()
    assert len(first.result(3)) == 0
    assert not second.done()


def test_requests_are_handled_in_rid_order(bosh, pool: AccountPool) -> None:
    """§14.2: a request ahead of a gap waits for the missing rid."""
    ((jid, pw),) = pool.take(1)
    client = bosh()
    client.login(jid, pw)
    rid = client.rid
    later = client.send(_ping("second"), rid=rid + 2)
    time.sleep(0.3)
    assert not later.done()
    earlier = client.send(_ping("first"), rid=rid + 1)
    # Answers read in rid order (the client's threads may finish in any order).
    ids = [e.get("id") for f in (earlier, later) for e in f.result(5) if e.tag == IQ]
    client.rid = rid + 2
    client.queue.clear()
    while len(ids) < 2:
        ids += [e.get("id") for e in client.request() if e.tag == IQ]
    # The server got "second" first but handled (and so answered) "first" first.
    assert ids == ["first", "second"]


def _ping(iq_id: str) -> str:
    return (
        f"<iq xmlns='jabber:client' type='get' id='{iq_id}' to='localhost'>"
        "<ping xmlns='urn:xmpp:ping'/></iq>"
    )


def test_a_retried_rid_gets_the_same_answer(bosh) -> None:
    """§14.3: a client that lost an answer repeats the rid and gets it again."""
    client = bosh()
    client.start(wait=1)
    first = client.request()
    again = client.request(rid=client.rid)
    assert ET.tostring(first) == ET.tostring(again)


def test_a_held_request_whose_connection_broke_can_be_retried(bosh, server: ServerProcess) -> None:
    """§14.3: the client resends a rid the server handled but could not answer."""
    import socket

    client = bosh()
    client.start(wait=2)
    data = client.body()
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(
            b"POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
        )
        time.sleep(0.3)  # handled and held; then the connection breaks
    body = client.request(rid=client.rid)
    assert body.get("type") is None, ET.tostring(body)
    assert client.request().get("type") is None  # the session goes on


@pytest.mark.parametrize("offset", [3, 50, -5])
def test_a_rid_out_of_the_window_ends_the_session(bosh, offset: int) -> None:
    """§14.3: beyond 'requests' ahead, or long answered: item-not-found, and the session is gone."""
    client = bosh()
    client.start(wait=1)
    body = client.request(rid=client.rid + offset)
    assert body.get("type") == "terminate" and body.get("condition") == "item-not-found"
    client.terminated = None
    body = client.request()
    assert body.get("type") == "terminate"


def test_unknown_sid_bad_xml_and_unknown_host(server: ServerProcess, bosh) -> None:
    client = bosh()
    client.sid = "no-such-session"
    assert client.request().get("condition") == "item-not-found"
    status, _, data = client.post(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1'")
    assert status == 200 and ET.fromstring(data).get("condition") == "bad-request"
    status, _, data = client.post(b"<notbody rid='1'/>")
    assert ET.fromstring(data).get("condition") == "bad-request"
    stranger = bosh()
    stranger.domain = "elsewhere.example"
    body = stranger._exchange(stranger.body(rid=9, to="elsewhere.example", wait="1", hold="1"))
    assert body.get("condition") == "host-unknown"


def test_a_stream_error_arrives_as_remote_stream_error(bosh) -> None:
    """XEP-0206 §5: the <stream:error/> travels inside the terminate body."""
    client = bosh()
    client.start(wait=1)
    body = client.request("<message xmlns='jabber:client' to='someone@localhost'/>")
    if body.get("type") != "terminate":
        body = client.request()
    assert body.get("type") == "terminate" and body.get("condition") == "remote-stream-error"
    error = body.find(STREAM_ERROR_IN_BODY)
    assert error is not None
    assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}not-authorized") is not None


def test_terminate_ends_the_session_and_the_resource(bosh, pool: AccountPool, make_client) -> None:
    ((jid, pw),) = pool.take(1)
    client = bosh()
    full = client.login(jid, pw)
    watcher = make_client()
    watcher.login(jid, pw, resource="watcher")
    body = client.request("<presence xmlns='jabber:client' type='unavailable'/>", type="terminate")
    assert body.get("type") == "terminate"
    answer = watcher.iq(
        f"<iq type='get' id='v' to='{full}'><query xmlns='jabber:iq:version'/></iq>"
    )
    assert answer.get("type") == "error"  # the BOSH resource is gone


def test_an_inactive_session_ends(bosh, pool: AccountPool, make_client) -> None:
    """§7: no request for 'inactivity' seconds ends the session and its resource."""
    ((jid, pw),) = pool.take(1)
    client = bosh()
    full = client.login(jid, pw)
    watcher = make_client()
    watcher.login(jid, pw, resource="watcher")
    time.sleep(float(WEB["bosh_inactivity"]) + 1.0)
    answer = watcher.iq(
        f"<iq type='get' id='v' to='{full}'><query xmlns='jabber:iq:version'/></iq>"
    )
    assert answer.get("type") == "error"
    assert client.request().get("condition") == "item-not-found"


def test_acknowledgements(bosh) -> None:
    """§9: with acks, creation answers ack=rid; an answer to an older request says the newest."""
    client = bosh()
    body = client.start(wait=2, ack="1")
    assert body.get("ack") == str(client.rid)
    first = client.send()
    time.sleep(0.3)
    second = client.send(ack=str(client.rid - 1))
    released = first.result(3)
    # Released early, for an older rid than the newest handled: it says which one that is.
    assert released.get("ack") == str(client.rid)
    # The newest one, answered after 'wait', acknowledges itself: no ack attribute needed.
    assert second.result(5).get("ack") is None


def test_output_nobody_collects_is_bounded(make_server) -> None:
    """Bounded buffering: a session that never polls is ended at max_output_buffer."""
    limited = make_server(
        http=WEB | {"bosh_inactivity": 60.0},
        c2s=PLAINTEXT,
        limits={
            "max_output_buffer": 128 * 1024,
            "input_rate": 32 * 1024 * 1024,
            "input_burst": 8 * 1024 * 1024,
        },
    )
    (jid, pw), (sender_jid, sender_pw) = limited.new_account(), limited.new_account()
    client = BoshClient(limited.http_port)
    sender = RawClient.for_server(limited, timeout=20).connect()
    try:
        full = client.login(jid, pw)
        sender.login(sender_jid, sender_pw, resource="s")
        message = f"<message to='{full}' type='headline'><body>{'z' * 4000}</body></message>"
        sender.sock.sendall(message.encode() * 100)  # 400 KB for a client that is not polling
        ping = f"<iq type='get' id='alive' to='{limited.host}'><ping xmlns='urn:xmpp:ping'/></iq>"
        assert sender.iq(ping).get("type") == "result"
        body = client.request()
        if body.get("type") != "terminate":
            body = client.request()
        assert body.get("type") == "terminate" and body.get("condition") == "remote-stream-error"
        error = body.find(STREAM_ERROR_IN_BODY)
        assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
        assert len(body) < 100  # not every message was kept
    finally:
        client.close()
        sender.close()


# -- 1,000 sessions at once ---------------------------------------------------------


async def _post(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data)
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


async def _session(port: int, index: int, held: list) -> None:
    rid = 1000 + index * 10
    created = await _post(
        port,
        f"<body xmlns='{NS_HTTPBIND}' rid='{rid}' to='localhost' wait='3' hold='1' "
        f"ver='1.11' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>".encode(),
    )
    body = ET.fromstring(created)
    assert body.tag == BODY and body.find(FEATURES) is not None, created
    sid = body.get("sid")
    started = time.monotonic()
    answer = ET.fromstring(
        await _post(port, f"<body xmlns='{NS_HTTPBIND}' rid='{rid + 1}' sid='{sid}'/>".encode())
    )
    assert answer.get("type") is None and len(answer) == 0, ET.tostring(answer)
    held.append(time.monotonic() - started)


def test_a_thousand_concurrent_sessions(make_server) -> None:
    """1,000 sessions created at once, each then holding a request that is answered after wait."""
    # Inactivity well above the time 1,000 creations can take on a loaded machine.
    many = make_server(
        http=WEB | {"bosh_inactivity": 60.0}, c2s=PLAINTEXT, limits={"max_unauthenticated": 2000}
    )
    count = 1000
    held: list[float] = []

    async def run() -> None:
        await asyncio.gather(*(_session(many.http_port, i, held) for i in range(count)))

    started = time.monotonic()
    asyncio.run(run())
    elapsed = time.monotonic() - started
    print(f"{count} BOSH sessions created and held in {elapsed:.1f} s")
    assert len(held) == count
    # Every held request waited its 'wait' (3 s), none was dropped or answered early.
    assert min(held) > 2.5 and max(held) < 30
    assert "Traceback" not in many.log_text()
