"""The server side of SCRAM: RFC 5802, RFC 7677, channel binding (RFC 5929, RFC 9266).

Ours rather than scramp's server because scramp 1.5 refuses the 'tls-exporter'
binding by name (its CbName class, with no public way to add a type), fixes one
binding type when the server object is made, before the client has said which
one it uses, and has no way to put XEP-0474's attribute into server-first.
scramp stays our reference: the tests run its client (and slixmpp's) against
this module, and check the RFC test vectors.

One L{ScramExchange} lives for one authentication. It only parses, checks and
computes: looking up keys and talking XMPP are the caller's business. Every
check that involves a secret (proof, channel binding, nonce) uses
C{hmac.compare_digest}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from imserver.credentials import SCRAM_HASHES, ScramKeys

#: Characters a nonce may hold (RFC 5802 §7: printable ASCII except ',').
_NONCE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {","}
#: RFC 5802 saslname: '=' only as '=2C' (a comma) or '=3D' (an equals sign).
_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)+")


class ScramFailure(Exception):
    """The exchange failed; C{condition} is the RFC 6120 §6.5 SASL condition to send."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(text)
        self.condition = condition
        self.text = text


@dataclass(frozen=True)
class ClientFirst:
    """A parsed client-first-message (RFC 5802 §7), with its names unescaped."""

    gs2_header: str
    #: 'n', 'y' or 'p' (RFC 5802 gs2-cbind-flag).
    flag: str
    cb_name: str | None
    authzid: str
    username: str
    nonce: str
    bare: str


def family(mechanism: str) -> str:
    """'SCRAM-SHA-256' for 'SCRAM-SHA-256-PLUS': the -PLUS variant uses its family's keys."""
    return mechanism.removesuffix("-PLUS")


def downgrade_hash(digest: str, mechanisms: Iterable[str], bindings: Iterable[str] | None) -> str:
    """XEP-0474 §5.1: base64 hash of what we advertised, signed along with the exchange.

    Mechanisms sorted (octet order) and joined by 0x1E; when XEP-0440 bindings
    were advertised, 0x1F and the sorted binding types joined by 0x1E.
    """
    text = "\x1e".join(sorted(mechanisms))
    if bindings is not None:
        text += "\x1f" + "\x1e".join(sorted(bindings))
    return base64.b64encode(hashlib.new(digest, text.encode()).digest()).decode()


def parse_client_first(message: str) -> ClientFirst:
    """Split a client-first-message; ScramFailure('malformed-request') if it is not one."""
    flag_part, sep1, rest = message.partition(",")
    authzid_part, sep2, bare = rest.partition(",")
    if not (sep1 and sep2):
        raise ScramFailure("malformed-request", "no GS2 header")
    if flag_part in ("n", "y"):
        flag, cb_name = flag_part, None
    elif flag_part.startswith("p=") and _is_cb_name(flag_part[2:]):
        flag, cb_name = "p", flag_part[2:]
    else:
        raise ScramFailure("malformed-request", "bad channel-binding flag")
    if authzid_part and not authzid_part.startswith("a="):
        raise ScramFailure("malformed-request", "bad authorization identity")
    authzid = _saslname(authzid_part[2:]) if authzid_part else ""
    attributes = bare.split(",")
    if attributes[0].startswith("m="):
        raise ScramFailure("malformed-request", "mandatory extensions are not supported")
    if (
        len(attributes) < 2
        or not attributes[0].startswith("n=")
        or not (attributes[1].startswith("r="))
    ):
        raise ScramFailure("malformed-request", "expected n= and r=")
    username = _saslname(attributes[0][2:])
    nonce = attributes[1][2:]
    if not nonce or not _NONCE_CHARS.issuperset(nonce):
        raise ScramFailure("malformed-request", "bad nonce")
    return ClientFirst(
        gs2_header=f"{flag_part},{authzid_part},",
        flag=flag,
        cb_name=cb_name,
        authzid=authzid,
        username=username,
        nonce=nonce,
        bare=bare,
    )


class ScramExchange:
    """One SCRAM authentication, server side.

    C{bindings} holds the channel-binding data this connection offers by type
    (empty without TLS); a -PLUS mechanism is only advertised when it is not
    empty, and the binding rules of RFC 5802 §6 follow from that.
    C{downgrade} is the XEP-0474 hash to send in server-first, if any.
    """

    def __init__(
        self,
        mechanism: str,
        bindings: Mapping[str, bytes],
        downgrade: str | None = None,
        server_nonce: str | None = None,
    ) -> None:
        if family(mechanism) not in SCRAM_HASHES:
            raise ValueError(f"not a SCRAM mechanism: {mechanism}")
        self.mechanism = mechanism
        self.digest = SCRAM_HASHES[family(mechanism)]
        self.plus = mechanism.endswith("-PLUS")
        self.bindings = bindings
        self.downgrade = downgrade
        self.server_nonce = server_nonce or secrets.token_urlsafe(18)
        self.first: ClientFirst | None = None
        self._server_first = ""
        self._keys: ScramKeys | None = None

    def receive_first(self, message: str) -> ClientFirst:
        """Parse client-first and apply the channel-binding rules (RFC 5802 §6)."""
        first = parse_client_first(message)
        if first.flag == "p":
            if not self.plus:
                raise ScramFailure("not-authorized", "channel binding needs a -PLUS mechanism")
            if first.cb_name not in self.bindings:
                raise ScramFailure("not-authorized", "unsupported channel-binding type")
        elif self.plus:
            raise ScramFailure("not-authorized", "a -PLUS mechanism needs channel binding")
        elif first.flag == "y" and self.bindings:
            # The client can bind but believes we cannot: someone removed -PLUS.
            raise ScramFailure("not-authorized", "the server does support channel binding")
        self.first = first
        return first

    def server_first(self, keys: ScramKeys) -> str:
        """The server-first-message for these keys (the caller looked them up)."""
        if self.first is None:
            raise RuntimeError("receive_first() comes first")
        self._keys = keys
        salt = base64.b64encode(keys.salt).decode()
        message = f"r={self.first.nonce}{self.server_nonce},s={salt},i={keys.iterations}"
        if self.downgrade is not None:
            message += f",h={self.downgrade}"
        self._server_first = message
        return message

    def receive_final(self, message: str) -> str:
        """Verify client-final; the server-final-message ('v=...') on success."""
        first, keys = self.first, self._keys
        if first is None or keys is None:
            raise RuntimeError("server_first() comes first")
        without_proof, sep, proof_part = message.rpartition(",")
        attributes = without_proof.split(",")
        if (
            not sep
            or not proof_part.startswith("p=")
            or len(attributes) < 2
            or not attributes[0].startswith("c=")
            or not attributes[1].startswith("r=")
        ):
            raise ScramFailure("malformed-request", "expected c=, r= and p=")
        binding = _b64(attributes[0][2:])
        proof = _b64(proof_part[2:])
        expected_binding = first.gs2_header.encode()
        if first.flag == "p":
            expected_binding += self.bindings[first.cb_name]
        if not hmac.compare_digest(binding, expected_binding):
            raise ScramFailure("not-authorized", "channel bindings do not match")
        nonce = (first.nonce + self.server_nonce).encode()
        if not hmac.compare_digest(attributes[1][2:].encode(), nonce):
            raise ScramFailure("not-authorized", "nonce mismatch")
        auth_message = f"{first.bare},{self._server_first},{without_proof}".encode()
        signature = hmac.digest(keys.stored_key, auth_message, self.digest)
        if len(proof) != len(signature):
            raise ScramFailure("not-authorized", "wrong proof")
        client_key = (int.from_bytes(proof) ^ int.from_bytes(signature)).to_bytes(len(proof))
        if not hmac.compare_digest(hashlib.new(self.digest, client_key).digest(), keys.stored_key):
            raise ScramFailure("not-authorized", "wrong proof")
        verifier = hmac.digest(keys.server_key, auth_message, self.digest)
        return "v=" + base64.b64encode(verifier).decode()


def _is_cb_name(name: str) -> bool:
    """RFC 5802 cb-name: 1*(ALPHA / DIGIT / "." / "-")."""
    return bool(name) and all(c.isascii() and (c.isalnum() or c in ".-") for c in name)


def _saslname(value: str) -> str:
    """Undo RFC 5802 §5.1 escaping; '=' may only start '=2C' or '=3D'."""
    if not _SASLNAME.fullmatch(value):
        raise ScramFailure("malformed-request", "empty name or bad '=' escape in it")
    return value.replace("=2C", ",").replace("=3D", "=")


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ScramFailure("malformed-request", "bad base64 in a SCRAM attribute") from None
