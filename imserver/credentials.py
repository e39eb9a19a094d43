"""SCRAM credentials: what the store keeps instead of a password.

Both SCRAM-SHA-1 and SCRAM-SHA-256 keys are derived once, when the password is
set, so a SCRAM login costs no key derivation; PLAIN derives the SHA-256 salted
password once per attempt and compares stored keys.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from scramp import ScramMechanism
from scramp.utils import saslprep

#: Hash name per SCRAM family, in the order we advertise them.
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}
ITERATIONS = 4096


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


def make_credentials(password: str, iterations: int = ITERATIONS) -> Credentials:
    """Derive the stored keys for every SCRAM family from a password."""
    keys = {}
    for family in SCRAM_HASHES:
        salt, stored_key, server_key, count = ScramMechanism(family).make_auth_info(
            password, iteration_count=iterations
        )
        keys[family] = ScramKeys(salt, stored_key, server_key, count)
    return Credentials(keys)


def check_password(credentials: Credentials, password: str) -> bool:
    """Verify a clear-text password (SASL PLAIN) against the stored SHA-256 keys."""

    keys = credentials.keys["SCRAM-SHA-256"]
    try:
        prepared = saslprep(password)
    except Exception:
        return False
    salted = hashlib.pbkdf2_hmac("sha256", prepared.encode(), keys.salt, keys.iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    return hmac.compare_digest(stored_key, keys.stored_key)


@dataclass(frozen=True)
class FastToken:
    """A XEP-0484 FAST token as stored: its SHA-256 (hex), mechanism and expiry (epoch seconds)."""

    token_hash: str
    mechanism: str
    expiry: int
