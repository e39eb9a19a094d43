"""The SCRAM server (imserver.stream.scram) in memory: RFC vectors and independent clients.

The RFC 5802 and RFC 7677 examples fix every byte of an exchange; scramp's and
slixmpp's clients are independent implementations run against ours; the
XEP-0474 hash is checked against the XEP's own example.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import pytest
from scramp import ScramClient, ScramMechanism
from slixmpp.util.sasl import client as slixmpp_sasl

from imserver.credentials import ScramKeys, check_password, client_and_server_keys, make_credentials
from imserver.stream.c2s import C2SAuthenticator
from imserver.stream.scram import ScramExchange, ScramFailure, downgrade_hash, parse_client_first

END_POINT = hashlib.sha256(b"a certificate").digest()
EXPORTER = secrets.token_bytes(32)
TLS_BINDINGS = {"tls-exporter": EXPORTER, "tls-server-end-point": END_POINT}


def keys_for(digest: str, password: str, salt: bytes, iterations: int = 4096) -> ScramKeys:
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations)
    _, stored_key, server_key = client_and_server_keys(digest, salted)
    return ScramKeys(salt, stored_key, server_key, iterations)


@pytest.mark.parametrize(
    ("mechanism", "digest", "client_first", "server_nonce", "salt", "client_final", "verifier"),
    [
        (  # RFC 5802 §5
            "SCRAM-SHA-1",
            "sha1",
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "QSXCR+Q6sek8bf92",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        ),
        (  # RFC 7677 §3
            "SCRAM-SHA-256",
            "sha256",
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        ),
    ],
)
def test_rfc_vectors(mechanism, digest, client_first, server_nonce, salt, client_final, verifier):
    exchange = ScramExchange(mechanism, {}, server_nonce=server_nonce)
    first = exchange.receive_first(client_first)
    assert (first.username, first.authzid, first.flag) == ("user", "", "n")
    keys = keys_for(digest, "pencil", base64.b64decode(salt))
    server_first = exchange.server_first(keys)
    assert server_first == f"r={first.nonce}{server_nonce},s={salt},i=4096"
    assert exchange.receive_final(client_final) == verifier


def test_rfc_vector_with_a_wrong_proof_fails():
    exchange = ScramExchange("SCRAM-SHA-1", {}, server_nonce="3rfcNHYJY1ZVvWVs7j")
    exchange.receive_first("n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
    exchange.server_first(keys_for("sha1", "pencil", base64.b64decode("QSXCR+Q6sek8bf92")))
    wrong = (
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p="
        + base64.b64encode(bytes(20)).decode()
    )
    with pytest.raises(ScramFailure) as caught:
        exchange.receive_final(wrong)
    assert caught.value.condition == "not-authorized"


def test_downgrade_hash_matches_the_xep_0474_example():
    mechanisms = ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1"]
    bindings = ["tls-server-end-point", "tls-exporter"]
    assert downgrade_hash("sha1", mechanisms, bindings) == "G6k/rBLDqgOhRRaCuuatSDFkJ08="
    # Without XEP-0440 there is no 0x1F part.
    expected = base64.b64encode(hashlib.sha256(b"PLAIN\x1eSCRAM-SHA-256").digest()).decode()
    assert downgrade_hash("sha256", ["SCRAM-SHA-256", "PLAIN"], None) == expected


def run_scramp(mechanism: str, password: str, bindings, channel_binding=None, downgrade=None):
    """A whole exchange with scramp's client; returns the server-final message."""
    client = ScramClient([mechanism], "alice", password, channel_binding=channel_binding)
    exchange = ScramExchange(mechanism, bindings, downgrade)
    exchange.receive_first(client.get_client_first())
    keys = make_credentials("correct horse").for_mechanism(mechanism)
    client.set_server_first(exchange.server_first(keys))
    final = exchange.receive_final(client.get_client_final())
    client.set_server_final(final)  # scramp checks our signature
    return final


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scramp_client_without_binding(mechanism):
    assert run_scramp(mechanism, "correct horse", {}, downgrade="abc=").startswith("v=")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
def test_scramp_client_with_tls_server_end_point(mechanism):
    binding = ("tls-server-end-point", END_POINT)
    assert run_scramp(mechanism, "correct horse", TLS_BINDINGS, binding).startswith("v=")


def test_scramp_client_wrong_password():
    with pytest.raises(ScramFailure) as caught:
        run_scramp("SCRAM-SHA-256", "battery staple", {})
    assert caught.value.condition == "not-authorized"


def test_scramp_client_saying_y_while_we_offer_plus_fails():
    # scramp sends 'y' when it could bind but the mechanism it was given has no -PLUS.
    binding = ("tls-server-end-point", END_POINT)
    with pytest.raises(ScramFailure) as caught:
        run_scramp("SCRAM-SHA-256", "correct horse", TLS_BINDINGS, binding)
    assert caught.value.condition == "not-authorized"
    # Without TLS (no -PLUS advertised), 'y' is the honest answer and succeeds.
    assert run_scramp("SCRAM-SHA-256", "correct horse", {}, binding).startswith("v=")


def slixmpp_scram(mechanism: str, password: str, channel_binding: bytes, proposed: bool = True):
    """slixmpp's SCRAM client (tls-exporter on TLS 1.3, as it does with a capable ssl)."""
    return slixmpp_sasl.choose(
        [mechanism],
        lambda required, optional: {
            "username": "alice",
            "password": password,
            "channel_binding": channel_binding,
        },
        lambda wanted: {
            "encrypted": True,
            "unencrypted_scram": False,
            "tls_version": "TLSv1.3",
            "binding_proposed": proposed,
        },
    )


def run_slixmpp(mechanism: str, client_binding: bytes, password: str = "correct horse"):
    client = slixmpp_scram(mechanism, password, client_binding)
    exchange = ScramExchange(mechanism, TLS_BINDINGS)
    first = exchange.receive_first(client.process(b"").decode())
    keys = make_credentials("correct horse").for_mechanism(mechanism)
    final = client.process(exchange.server_first(keys).encode())
    server_final = exchange.receive_final(final.decode())
    client.process(server_final.encode())  # slixmpp checks our signature
    return first


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
def test_slixmpp_client_with_tls_exporter(mechanism):
    first = run_slixmpp(mechanism, EXPORTER)
    assert (first.flag, first.cb_name) == ("p", "tls-exporter")


def test_slixmpp_client_with_a_wrong_exporter_fails():
    with pytest.raises(ScramFailure) as caught:
        run_slixmpp("SCRAM-SHA-256-PLUS", secrets.token_bytes(32))
    assert caught.value.condition == "not-authorized"


def test_tls_exporter_is_refused_where_we_do_not_offer_it():
    client = slixmpp_scram("SCRAM-SHA-256-PLUS", "correct horse", EXPORTER)
    exchange = ScramExchange("SCRAM-SHA-256-PLUS", {"tls-server-end-point": END_POINT})
    with pytest.raises(ScramFailure) as caught:
        exchange.receive_first(client.process(b"").decode())
    assert caught.value.condition == "not-authorized"


@pytest.mark.parametrize(
    ("mechanism", "message"),
    [
        ("SCRAM-SHA-256-PLUS", "n,,n=alice,r=abc"),  # -PLUS without binding
        ("SCRAM-SHA-256", "p=tls-exporter,,n=alice,r=abc"),  # binding without -PLUS
        ("SCRAM-SHA-256-PLUS", "p=tls-unique,,n=alice,r=abc"),  # a type we do not offer
        ("SCRAM-SHA-256", "y,,n=alice,r=abc"),  # 'y' while -PLUS is offered
    ],
)
def test_channel_binding_rules(mechanism, message):
    with pytest.raises(ScramFailure) as caught:
        ScramExchange(mechanism, TLS_BINDINGS).receive_first(message)
    assert caught.value.condition == "not-authorized"


@pytest.mark.parametrize(
    "message",
    [
        "",
        "n,",
        "x,,n=alice,r=abc",
        "p=,,n=alice,r=abc",
        "n,b=x,n=alice,r=abc",
        "n,,m=ext,n=alice,r=abc",
        "n,,r=abc,n=alice",
        "n,,n=,r=abc",
        "n,,n=al=ice,r=abc",
        "n,,n=al=3=2Cce,r=abc",
        "n,,n=alice,r=",
        "n,,n=alice,r=a\x7fb",
    ],
)
def test_malformed_client_first(message):
    with pytest.raises(ScramFailure) as caught:
        parse_client_first(message)
    assert caught.value.condition == "malformed-request"


def test_names_are_unescaped():
    first = parse_client_first("n,a=b=2Cc,n=x=3Dy=2Cz,r=abc,ext=1")
    assert (first.authzid, first.username, first.nonce) == ("b,c", "x=y,z", "abc")
    assert first.gs2_header == "n,a=b=2Cc,"


@pytest.mark.parametrize(
    "final",
    ["", "c=biws", "c=biws,r=NONCE", "c=b!ws,r=NONCE,p=AAAA", "r=NONCE,c=biws,p=AAAA"],
)
def test_malformed_client_final(final):
    exchange = ScramExchange("SCRAM-SHA-256", {}, server_nonce="S")
    exchange.receive_first("n,,n=alice,r=C")
    exchange.server_first(make_credentials("pw").for_mechanism("SCRAM-SHA-256"))
    with pytest.raises(ScramFailure) as caught:
        exchange.receive_final(final.replace("NONCE", "CS"))
    assert caught.value.condition == "malformed-request"


def test_a_changed_nonce_fails():
    client = ScramClient(["SCRAM-SHA-256"], "alice", "pw")
    exchange = ScramExchange("SCRAM-SHA-256", {})
    exchange.receive_first(client.get_client_first())
    client.set_server_first(
        exchange.server_first(make_credentials("pw").for_mechanism("SCRAM-SHA-256"))
    )
    final = client.get_client_final()
    for changed in (final.replace(",r=", ",r=X", 1), final.replace(",r=", ",r=é", 1)):
        with pytest.raises(ScramFailure) as caught:
            exchange.receive_final(changed)
        assert caught.value.condition == "not-authorized"


def test_plain_check_uses_the_stored_keys():
    credentials = make_credentials("pässwörd")
    assert check_password(credentials, "pässwörd")
    assert not check_password(credentials, "passwort")
    assert set(credentials.keys) == {"SCRAM-SHA-1", "SCRAM-SHA-256"}
    # The keys are what scramp derives too.
    for family, keys in credentials.keys.items():
        expected = ScramMechanism(family).make_auth_info(
            "pässwörd", iteration_count=keys.iterations, salt=keys.salt
        )
        assert expected == (keys.salt, keys.stored_key, keys.server_key, keys.iterations)


class _Transport:
    """A secure stream's transport that does not hand out its TLS connection (WebSocket)."""


class _Stream:
    secure = True
    plaintext_allowed = False
    transport = _Transport()


class _TLS:
    server_end_point = END_POINT


class _Server:
    tls = _TLS()

    def feature_bytes(self, stage, stream, mechanisms=()) -> bytes:
        return b""  # no plugins


def test_no_plus_when_the_tls_connection_is_out_of_reach():
    authenticator = C2SAuthenticator(_Server())
    authenticator.xmlstream = _Stream()
    features = authenticator.features()
    assert b"<mechanism>SCRAM-SHA-256</mechanism>" in features, features
    assert b"-PLUS" not in features and b"sasl-channel-binding" not in features, features
