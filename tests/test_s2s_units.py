"""The pure parts of federation, in memory: SRV order, dialback keys, certificate names, config."""

from __future__ import annotations

import hashlib
import hmac
import random
from collections import Counter

import pytest
from cryptography import x509
from support.ca import TestCA
from support.cli import imserver, write_config
from twisted.words.xish import domish

from imserver.config import from_dict
from imserver.errors import ConfigError
from imserver.s2s.dialback import DialbackKeys
from imserver.s2s.resolver import Target, rfc2782_order
from imserver.s2s.stream import to_client_namespace
from imserver.s2s.tls import _der_utf8, names_domain, xmpp_addresses

# -- RFC 2782 ordering ------------------------------------------------------------


def test_lower_priority_always_first():
    records = [(20, 100, Target("c", 1)), (10, 0, Target("a", 1)), (10, 5, Target("b", 1))]
    for seed in range(50):
        order = rfc2782_order(records, random.Random(seed))
        assert {t.host for t in order[:2]} == {"a", "b"}
        assert order[2].host == "c"


def test_weights_share_the_first_place():
    records = [(0, 90, Target("heavy", 1)), (0, 10, Target("light", 1))]
    rng = random.Random(7)
    firsts = Counter(rfc2782_order(records, rng)[0].host for _ in range(2000))
    assert 0.85 < firsts["heavy"] / 2000 < 0.95


def test_zero_weight_only_first_when_the_draw_is_zero():
    records = [(0, 0, Target("zero", 1)), (0, 10, Target("ten", 1))]
    rng = random.Random(3)
    firsts = Counter(rfc2782_order(records, rng)[0].host for _ in range(2000))
    # The draw is uniform over 0..10: zero wins only on 0 (about 1 in 11).
    assert 100 < firsts["zero"] < 300


def test_every_record_appears_once():
    records = [(p, w, Target(f"h{p}{w}", 1)) for p in (1, 2) for w in (0, 3, 7)]
    order = rfc2782_order(records, random.Random(1))
    assert sorted(t.host for t in order) == sorted(r[2].host for r in records)


# -- dialback keys (XEP-0185) ---------------------------------------------------------


def test_key_matches_xep_0185_recipe():
    keys = DialbackKeys("s3cr3tf0rd14lb4ck")
    secret = hashlib.sha256(b"s3cr3tf0rd14lb4ck").hexdigest().encode()
    expected = hmac.new(secret, b"example.org example.com D60000229F", hashlib.sha256)
    assert keys.make("example.org", "example.com", "D60000229F") == expected.hexdigest()


def test_key_check_needs_every_part():
    keys = DialbackKeys("x")
    key = keys.make("b.test", "a.test", "id1")
    assert keys.check(key, "b.test", "a.test", "id1")
    assert not keys.check(key, "a.test", "b.test", "id1")
    assert not keys.check(key, "b.test", "a.test", "id2")
    tampered = key[:-1] + ("1" if key.endswith("0") else "0")
    assert not keys.check(tampered, "b.test", "a.test", "id1")
    assert not keys.check("", "b.test", "a.test", "id1")


def test_random_secret_differs_per_instance():
    assert DialbackKeys().make("a", "b", "c") != DialbackKeys().make("a", "b", "c")


# -- certificate identities -------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"))


def _load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_names_domain_by_dns_id_and_xmppaddr(ca):
    certificate = _load(ca.issue("a.test")[0])
    assert names_domain(certificate, "a.test")
    assert not names_domain(certificate, "b.test")
    assert xmpp_addresses(certificate) == ["a.test"]


def test_wildcard_dns_id(ca):
    certificate = _load(ca.issue("wild", names=("*.example.test",))[0])
    assert names_domain(certificate, "chat.example.test")
    assert not names_domain(certificate, "example.test")


def test_der_utf8_refuses_other_types_and_bad_lengths():
    assert _der_utf8(b"\x0c\x06a.test") == "a.test"
    assert _der_utf8(b"\x16\x06a.test") is None  # IA5String, not UTF8String
    assert _der_utf8(b"\x0c\x07a.test") is None
    long = "x" * 200
    assert _der_utf8(b"\x0c\x81\xc8" + long.encode()) == long


# -- the namespace of received stanzas --------------------------------------------------


def test_jabber_server_content_becomes_jabber_client():
    stanza = domish.Element(("jabber:server", "message"))
    stanza.addElement("body", content="hi")
    extension = stanza.addElement(("urn:x", "x"))
    to_client_namespace(stanza)
    assert stanza.uri == "jabber:client"
    assert next(stanza.elements()).uri == "jabber:client"
    assert extension.uri == "urn:x"


# -- the [s2s] table --------------------------------------------------------------------


def test_s2s_defaults():
    s2s = from_dict({}).s2s
    assert not s2s.enabled and s2s.port == 5269
    assert s2s.policy("any.test").require_encryption and not s2s.policy("any.test").secure_auth


def test_s2s_table_is_read():
    s2s = from_dict(
        {
            "s2s": {
                "enabled": True,
                "resolvers": ["127.0.0.1:5353", "[::1]:53", "10.0.0.1"],
                "hosts": {"b.test": "127.0.0.2:5999", "c.test": "c.example"},
                "secure_auth": True,
                "domain": {"legacy.test": {"secure_auth": False, "require_encryption": False}},
            }
        }
    ).s2s
    assert s2s.resolvers == (("127.0.0.1", 5353), ("::1", 53), ("10.0.0.1", 53))
    assert s2s.hosts == {"b.test": ("127.0.0.2", 5999), "c.test": ("c.example", 5269)}
    assert s2s.policy("b.test").secure_auth
    assert not s2s.policy("legacy.test").secure_auth
    assert not s2s.policy("legacy.test").require_encryption


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"port": 70000}, "s2s.port"),
        ({"resolvers": ["1.2.3.4:x"]}, "s2s.resolvers"),
        ({"hosts": {"b.test": "h:0"}}, "s2s.hosts.b.test"),
        ({"hosts": {"b@test": "h:1"}}, "s2s.hosts.b@test"),
        ({"domain": {"b.test": {"secure": True}}}, "s2s.domain.b.test.secure"),
        ({"ca_file": "/nonexistent/ca.pem"}, "s2s.ca_file"),
        ({"connect_timeout": 0}, "s2s.connect_timeout"),
        ({"max_queue": 0}, "s2s.max_queue"),
        ({"bidi": "yes"}, "s2s.bidi"),
        ({"unknown": 1}, "s2s.unknown"),
    ],
)
def test_bad_s2s_values_name_their_key(table, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        from_dict({"s2s": table})


def test_check_config_validates_s2s(tmp_path):
    """`imserver check-config` names the bad [s2s] key, on one line, and exits 1."""
    config = write_config(
        tmp_path, server={"hosts": ["a.test"]}, s2s={"enabled": True, "resolvers": ["1.2.3.4:x"]}
    )
    result = imserver("check-config", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "imserver: s2s.resolvers: '1.2.3.4:x' has no valid port"
