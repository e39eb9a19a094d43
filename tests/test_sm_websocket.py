"""Stream management over WebSocket (RFC 7395): the transport is a WebStream, a C2SStream.

A WebSocket client enables SM, gets a message, loses its connection without
<close/>, and resumes on a new WebSocket: the message sent while it was away
arrives once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.client import MESSAGE, NS_CLIENT, clark, to_text
from support.im import AccountPool
from support.server import ServerProcess
from support.sm import NS_SM, sm
from support.web import NS_SASL, WSClient, plain

WEB = {"port": 0, "cors_origins": ["*"]}
PLAINTEXT = {"allow_plaintext_on_loopback": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("ws-sm"), http=WEB, c2s=PLAINTEXT)
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture
def ws(server: ServerProcess) -> Iterator:
    made: list[WSClient] = []

    def make() -> WSClient:
        client = WSClient(server.http_port).connect()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def body(text: str):
    def match(e) -> bool:
        return e.tag == MESSAGE and e.findtext(clark(NS_CLIENT, "body")) == text

    return match


def test_resume_over_a_new_websocket(ws, pool: AccountPool) -> None:
    (alice, password), (bob, bob_password) = pool.take(2)
    first: WSClient = ws()
    jid = first.login(alice, password)
    first.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    enabled = first.expect(sm("enabled"))
    previd = enabled.get("id")
    sender: WSClient = ws()
    sender.login(bob, bob_password)
    sender.send(f"<message xmlns='jabber:client' to='{jid}' type='chat'><body>one</body></message>")
    first.expect(body("one"))
    first.send(f"<a xmlns='{NS_SM}' h='1'/>")
    first.ws.socket.close()  # the network is gone: no <close/>
    sender.send(f"<message xmlns='jabber:client' to='{jid}' type='chat'><body>two</body></message>")

    second: WSClient = ws()
    features = second.open()
    assert features.find(clark(NS_SASL, "mechanisms")) is not None, to_text(features)
    second.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{plain(alice, password)}</auth>")
    second.expect(clark(NS_SASL, "success"))
    assert second.open().find(sm("sm")) is not None
    second.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='1'/>")
    resumed = second.expect(sm("resumed"))
    assert resumed.get("previd") == previd
    second.expect(body("two"))
    second.send(f"<r xmlns='{NS_SM}'/>")
    assert second.expect(sm("a")).get("h") == "0"  # alice sent no stanza since <enable/>
