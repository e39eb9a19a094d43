"""Server side of SASL: PLAIN, and SCRAM with -PLUS channel binding (see L{scram}).

A stream first makes an L{Offer}: the mechanisms it advertises and, on TLS,
the channel bindings it can verify (XEP-0440). A mechanism instance lives for
one <auth/> exchange. Each step returns a L{Challenge} or a L{Success}, or
fails with L{SASLFailure} carrying an RFC 6120 §6.5 condition. The store is
asked for credentials once per attempt.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from OpenSSL import SSL
from twisted.internet import defer
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from imserver.credentials import SCRAM_HASHES, Credentials, check_password, make_credentials
from imserver.stream.scram import ScramExchange, ScramFailure, downgrade_hash

#: Looks up credentials: (username) -> Deferred[Credentials | None].
CredentialLookup = Callable[[str], defer.Deferred]

SCRAM_MECHANISMS = tuple(SCRAM_HASHES)
#: RFC 9266 §2: the exporter label and length of the tls-exporter binding (TLS 1.3 only).
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32


class SASLFailure(Exception):
    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition)
        self.condition = condition
        self.text = text


@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class Success:
    username: str
    data: bytes | None = None


@dataclass(frozen=True)
class Offer:
    """What one stream advertised: mechanisms, strongest first, and channel bindings.

    C{bindings} maps each binding type this connection can verify to its data;
    it is empty without TLS, and then neither -PLUS nor XEP-0440 is advertised.
    """

    mechanisms: tuple[str, ...]
    bindings: Mapping[str, bytes]


def make_offer(plain_allowed: bool, bindings: Mapping[str, bytes]) -> Offer:
    names: list[str] = []
    if bindings:
        names += [f"{m}-PLUS" for m in SCRAM_MECHANISMS]
    names += SCRAM_MECHANISMS
    if plain_allowed:
        names.append("PLAIN")
    return Offer(tuple(names), bindings)


def channel_bindings(connection: SSL.Connection, server_end_point: bytes) -> dict[str, bytes]:
    """The bindings of one TLS connection, after its handshake.

    tls-exporter (RFC 9266) is defined for TLS 1.3 only; tls-server-end-point
    (RFC 5929), the certificate's hash, works on every version.
    """
    bindings = {}
    if connection.get_protocol_version_name() == "TLSv1.3":
        bindings["tls-exporter"] = connection.export_keying_material(
            EXPORTER_LABEL, EXPORTER_LENGTH
        )
    bindings["tls-server-end-point"] = server_end_point
    return bindings


def prep_username(raw: str) -> str:
    username = _nodeprep(raw)
    if not username or len(username.encode()) > 1023:
        raise SASLFailure("not-authorized")
    return username


@lru_cache(maxsize=10_000)
def _nodeprep(raw: str) -> str | None:
    """Nodeprep, remembered: Twisted's is pure Python, and the same users log in all day."""
    try:
        return nodeprep.prepare(raw)
    except UnicodeError:
        return None


def _check_authzid(authzid: str, username: str, host: str) -> None:
    """Only the account itself may be asked for: no acting as another user."""
    if authzid and authzid not in (username, f"{username}@{host}"):
        raise SASLFailure("invalid-authzid")


class Plain:
    """RFC 4616: one message 'authzid NUL authcid NUL password'."""

    def __init__(self, lookup: CredentialLookup, host: str) -> None:
        self.lookup = lookup
        self.host = host

    def start(self, data: bytes | None) -> defer.Deferred:
        if not data:
            return defer.succeed(Challenge(b""))
        return self.step(data)

    def step(self, data: bytes) -> defer.Deferred:
        try:
            authzid, authcid, password = data.decode("utf-8").split("\0")
        except (UnicodeDecodeError, ValueError):
            return defer.fail(SASLFailure("malformed-request"))
        try:
            username = prep_username(authcid)
            _check_authzid(authzid, username, self.host)
        except SASLFailure as failure:
            return defer.fail(failure)

        def check(credentials: Credentials | None) -> Success:
            if credentials is None or not check_password(credentials, password):
                raise SASLFailure("not-authorized")
            return Success(username)

        return self.lookup(username).addCallback(check)


class Scram:
    """SCRAM-SHA-1/256 and their -PLUS variants, with XEP-0474's downgrade hash."""

    #: Keys for unknown users, so an attempt on one looks like a wrong password.
    _decoy: Credentials | None = None

    def __init__(self, mechanism: str, lookup: CredentialLookup, host: str, offer: Offer) -> None:
        self.mechanism = mechanism
        self.lookup = lookup
        self.host = host
        digest = SCRAM_HASHES[mechanism.removesuffix("-PLUS")]
        advertised = tuple(offer.bindings) if offer.bindings else None
        self.exchange = ScramExchange(
            mechanism, offer.bindings, downgrade_hash(digest, offer.mechanisms, advertised)
        )
        self.username: str | None = None
        self.started = False

    def start(self, data: bytes | None) -> defer.Deferred:
        if not data:
            return defer.succeed(Challenge(b""))
        self.started = True
        try:
            first = self.exchange.receive_first(data.decode("utf-8"))
            self.username = prep_username(first.username)
            _check_authzid(first.authzid, self.username, self.host)
        except UnicodeDecodeError:
            return defer.fail(SASLFailure("malformed-request"))
        except ScramFailure as failure:
            return defer.fail(SASLFailure(failure.condition, failure.text))
        except SASLFailure as failure:
            return defer.fail(failure)
        return self.lookup(self.username).addCallback(self._server_first)

    def _server_first(self, credentials: Credentials | None) -> Challenge:
        keys = (credentials or self._decoy_credentials()).for_mechanism(self.mechanism)
        return Challenge(self.exchange.server_first(keys).encode())

    def step(self, data: bytes) -> defer.Deferred:
        if not self.started:
            return self.start(data)
        try:
            final = self.exchange.receive_final(data.decode("utf-8"))
        except UnicodeDecodeError:
            return defer.fail(SASLFailure("malformed-request"))
        except ScramFailure as failure:
            return defer.fail(SASLFailure(failure.condition, failure.text))
        return defer.succeed(Success(self.username, final.encode()))

    @classmethod
    def _decoy_credentials(cls) -> Credentials:
        if cls._decoy is None:
            cls._decoy = make_credentials(secrets.token_urlsafe(24))
        return cls._decoy


def make_mechanism(name: str, lookup: CredentialLookup, host: str, offer: Offer):
    """A fresh mechanism for one exchange; SASLFailure('invalid-mechanism') if not offered."""
    if name not in offer.mechanisms:
        raise SASLFailure("invalid-mechanism")
    if name == "PLAIN":
        return Plain(lookup, host)
    return Scram(name, lookup, host, offer)
