"""SCRAM credentials: what the store keeps instead of a password.

Both SCRAM-SHA-1 and SCRAM-SHA-256 keys are derived once, when the password is
set, so a SCRAM login costs no key derivation; PLAIN derives the SHA-256 salted
password once per attempt and compares stored keys. The formulas are RFC 5802
§3; SASLprep (RFC 4013) is scramp's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from scramp.utils import saslprep

#: hashlib name per SCRAM family, in the order we advertise them.
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}
ITERATIONS = 4096
SALT_BYTES = 32


@dataclass(frozen=True)
class ScramKeys:
    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int


@dataclass(frozen=True)
class Credentials:
    """Keys per SCRAM family name ("SCRAM-SHA-1", "SCRAM-SHA-256")."""

    keys: dict[str, ScramKeys]

    def for_mechanism(self, mechanism: str) -> ScramKeys:
        """Keys for a mechanism name; the -PLUS variants share their family's keys."""
        return self.keys[mechanism.removesuffix("-PLUS")]


def client_and_server_keys(digest: str, salted: bytes) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) from a salted password (RFC 5802 §3)."""
    client_key = hmac.digest(salted, b"Client Key", digest)
    return (
        client_key,
        hashlib.new(digest, client_key).digest(),
        hmac.digest(salted, b"Server Key", digest),
    )


def make_credentials(password: str, iterations: int = ITERATIONS) -> Credentials:
    """Derive the stored keys for every SCRAM family from a password, each with its own salt."""
    prepared = saslprep(password).encode()
    keys = {}
    for family, digest in SCRAM_HASHES.items():
        salt = secrets.token_bytes(SALT_BYTES)
        salted = hashlib.pbkdf2_hmac(digest, prepared, salt, iterations)
        _, stored_key, server_key = client_and_server_keys(digest, salted)
        keys[family] = ScramKeys(salt, stored_key, server_key, iterations)
    return Credentials(keys)


def check_password(credentials: Credentials, password: str) -> bool:
    """Verify a clear-text password (SASL PLAIN): one PBKDF2, against the SHA-256 keys."""
    keys = credentials.keys["SCRAM-SHA-256"]
    try:
        prepared = saslprep(password)
    except Exception:
        return False
    salted = hashlib.pbkdf2_hmac("sha256", prepared.encode(), keys.salt, keys.iterations)
    _, stored_key, _ = client_and_server_keys("sha256", salted)
    return hmac.compare_digest(stored_key, keys.stored_key)


@dataclass(frozen=True)
class FastToken:
    """A XEP-0484 FAST token as stored: its SHA-256 (hex), mechanism and expiry (epoch seconds)."""

    token_hash: str
    mechanism: str
    expiry: int
