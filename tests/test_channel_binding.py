"""SCRAM-*-PLUS over the wire: tls-exporter (RFC 9266), XEP-0440, XEP-0474.

The client's TLS is pyOpenSSL (Python's ssl cannot export keying material) and
its SCRAM is slixmpp's, so the binding value and the SCRAM arithmetic both come
from outside the server. scramp's client covers tls-server-end-point and 'y'.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable

import pytest
from OpenSSL import SSL
from scramp import ScramClient
from support.client import (
    NS_SASL,
    NS_SASL_CB,
    RawClient,
    clark,
    closed_after,
    sasl_data,
    sasl_xml,
    tls_server_end_point,
    to_text,
)
from support.openssl_socket import OpenSSLSocket
from support.server import ServerProcess
from test_scram import slixmpp_scram

Credentials = tuple[str, str]
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Credentials:
    return server.new_account("alice")


def openssl_client(
    server: ServerProcess, direct_tls: bool, max_version: int | None = None
) -> RawClient:
    """A client on pyOpenSSL, after STARTTLS or on the direct TLS port, features read."""
    client = RawClient.for_server(
        server,
        tls_wrapper=lambda sock, name: OpenSSLSocket(sock, name, max_version),
    )
    client.connect(direct_tls=direct_tls)
    if not direct_tls:
        client.open_stream()
        client.starttls()
    client.open_stream()
    return client


@pytest.fixture
def clients(server: ServerProcess):
    yield from closed_after(
        lambda direct_tls=False, max_version=None: openssl_client(server, direct_tls, max_version)
    )


def advertised(features) -> tuple[list[str], list[str] | None]:
    mechanisms = [m.text for m in features.iter(clark(NS_SASL, "mechanism"))]
    element = features.find(clark(NS_SASL_CB, "sasl-channel-binding"))
    if element is None:
        return mechanisms, None
    return mechanisms, [
        b.get("type") for b in element.findall(clark(NS_SASL_CB, "channel-binding"))
    ]


def ssdp_hash(digest: str, mechanisms: list[str], bindings: list[str] | None) -> str:
    """XEP-0474 §5.1, written here from the XEP, independently of the server's code."""
    text = "\x1e".join(sorted(mechanisms))
    if bindings is not None:
        text += "\x1f" + "\x1e".join(sorted(bindings))
    return base64.b64encode(hashlib.new(digest, text.encode()).digest()).decode()


def slixmpp_login(
    client: RawClient, credentials: Credentials, mechanism: str, binding: bytes
) -> tuple[str, object]:
    """SCRAM with slixmpp's mechanism over the raw stream; (outcome tag, server-first)."""
    user, password = credentials[0].partition("@")[0], credentials[1]
    scram = slixmpp_scram(mechanism, password, binding)
    scram.credentials["username"] = user.encode()
    client.send(sasl_xml("auth", scram.process(b""), mechanism=mechanism))
    answer = client.expect_sasl()
    if answer.tag != clark(NS_SASL, "challenge"):
        return answer, None
    server_first = sasl_data(answer)
    client.send(sasl_xml("response", scram.process(server_first)))
    answer = client.expect_sasl()
    if answer.tag == clark(NS_SASL, "success"):
        scram.process(sasl_data(answer))  # raises if the server's signature is wrong
    return answer, server_first


def condition(element) -> str:
    assert element.tag == clark(NS_SASL, "failure"), to_text(element)
    return [c.tag.rpartition("}")[2] for c in element if not c.tag.endswith("}text")][0]


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_tls_exporter_login(clients: Callable, alice: Credentials, direct_tls, mechanism):
    client = clients(direct_tls)
    assert client.sock.version() == "TLSv1.3"
    mechanisms, bindings = advertised(client.features)
    assert mechanism in mechanisms, to_text(client.features)
    assert bindings is not None and "tls-exporter" in bindings, to_text(client.features)
    assert "tls-server-end-point" in bindings
    exporter = client.sock.export_keying_material(EXPORTER_LABEL, 32)
    answer, _ = slixmpp_login(client, alice, mechanism, exporter)
    assert answer.tag == clark(NS_SASL, "success"), to_text(answer)
    client.open_stream()
    assert client.bind("exporter").startswith(alice[0] + "/exporter")


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
def test_wrong_exporter_value_is_not_authorized(
    clients: Callable, alice: Credentials, direct_tls: bool
) -> None:
    client = clients(direct_tls)
    answer, _ = slixmpp_login(client, alice, "SCRAM-SHA-256-PLUS", secrets.token_bytes(32))
    assert condition(answer) == "not-authorized"
    # Another connection's exporter is just as wrong: the binding ties the login to its TLS.
    other = clients(direct_tls)
    stolen = other.sock.export_keying_material(EXPORTER_LABEL, 32)
    answer, _ = slixmpp_login(client, alice, "SCRAM-SHA-256-PLUS", stolen)
    assert condition(answer) == "not-authorized"
    # The right value on the same stream still works.
    exporter = client.sock.export_keying_material(EXPORTER_LABEL, 32)
    answer, _ = slixmpp_login(client, alice, "SCRAM-SHA-256-PLUS", exporter)
    assert answer.tag == clark(NS_SASL, "success"), to_text(answer)


def test_client_saying_y_while_plus_is_advertised_fails(
    clients: Callable, alice: Credentials
) -> None:
    """RFC 5802 §6: 'y' means the client saw no -PLUS; we advertised it, so -PLUS was stripped."""
    client = clients()
    binding = ("tls-server-end-point", tls_server_end_point(client.sock.getpeercert(True)))
    scram = ScramClient(["SCRAM-SHA-256"], alice[0].partition("@")[0], alice[1], binding)
    first = scram.get_client_first()
    assert first.startswith("y,,")
    client.send(sasl_xml("auth", first.encode(), mechanism="SCRAM-SHA-256"))
    assert condition(client.expect_sasl()) == "not-authorized"
    client.auth_scram(*alice)  # a proper login on the same stream


def test_tls_1_2_offers_end_point_only(clients: Callable, alice: Credentials) -> None:
    """tls-exporter is for TLS 1.3 (RFC 9266 §3); TLS 1.2 keeps tls-server-end-point."""
    client = clients(max_version=SSL.TLS1_2_VERSION)
    assert client.sock.version() == "TLSv1.2"
    mechanisms, bindings = advertised(client.features)
    assert bindings == ["tls-server-end-point"], to_text(client.features)
    answer, _ = slixmpp_login(
        client, alice, "SCRAM-SHA-256-PLUS", client.sock.export_keying_material(EXPORTER_LABEL, 32)
    )
    assert condition(answer) == "not-authorized"
    client.auth_scram(*alice, mechanism="SCRAM-SHA-256-PLUS")  # scramp, tls-server-end-point


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1-PLUS"])
@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
def test_downgrade_protection_hash(
    clients: Callable, alice: Credentials, mechanism: str, direct_tls: bool
) -> None:
    """XEP-0474: server-first carries h=, the hash of what the features advertised."""
    client = clients(direct_tls)
    mechanisms, bindings = advertised(client.features)
    binding = (
        b""
        if not mechanism.endswith("-PLUS")
        else client.sock.export_keying_material(EXPORTER_LABEL, 32)
    )
    answer, server_first = slixmpp_login(client, alice, mechanism, binding)
    assert answer.tag == clark(NS_SASL, "success"), to_text(answer)
    attributes = dict(part.split(b"=", 1) for part in server_first.split(b","))
    digest = "sha1" if mechanism.startswith("SCRAM-SHA-1") else "sha256"
    assert attributes[b"h"].decode() == ssdp_hash(digest, mechanisms, bindings)


def test_downgrade_hash_without_tls(make_server, make_client) -> None:
    """Plaintext on loopback: no -PLUS, no XEP-0440, so the hash covers mechanisms only."""
    relaxed = make_server(c2s={"allow_plaintext_on_loopback": True})
    user, password = relaxed.new_account()
    client = make_client(relaxed)
    features = client.open_stream()
    mechanisms, bindings = advertised(features)
    assert bindings is None and not [m for m in mechanisms if m.endswith("-PLUS")]
    scram = ScramClient(["SCRAM-SHA-256"], user.partition("@")[0], password)
    client.send(sasl_xml("auth", scram.get_client_first().encode(), mechanism="SCRAM-SHA-256"))
    server_first = sasl_data(client.expect_sasl()).decode()
    attributes = dict(part.split("=", 1) for part in server_first.split(","))
    assert attributes["h"] == ssdp_hash("sha256", mechanisms, None)
    scram.set_server_first(server_first)  # scramp accepts the extra attribute
    client.send(sasl_xml("response", scram.get_client_final().encode()))
    success = client.expect_sasl()
    assert success.tag == clark(NS_SASL, "success"), to_text(success)
    scram.set_server_final(sasl_data(success).decode())
