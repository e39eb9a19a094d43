"""Server side of SASL: PLAIN and SCRAM (with -PLUS channel binding) via scramp.

A mechanism instance lives for one <auth/> exchange. Each step returns a
L{Challenge} or a L{Success}, or raises L{SASLFailure} with an RFC 6120 §6.5
condition. The store is asked for credentials once per attempt.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from scramp import ScramException, ScramMechanism
from twisted.internet import defer
from twisted.words.protocols.jabber.xmpp_stringprep import nodeprep

from imserver.credentials import Credentials, check_password, make_credentials

#: Looks up credentials: (username) -> Deferred[Credentials | None].
CredentialLookup = Callable[[str], defer.Deferred]

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
#: Channel-binding types we can verify (XEP-0440 advertises them).
#: scramp rejects 'tls-exporter', so it is not offered (see README, gaps).
CHANNEL_BINDINGS = ("tls-server-end-point",)


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


def offered_mechanisms(secure: bool, plain_allowed: bool) -> list[str]:
    """Mechanism names to advertise, strongest first."""
    names = []
    if secure:
        names += [f"{m}-PLUS" for m in SCRAM_MECHANISMS]
    names += list(SCRAM_MECHANISMS)
    if plain_allowed:
        names.append("PLAIN")
    return names


def prep_username(raw: str) -> str:
    try:
        username = nodeprep.prepare(raw)
    except UnicodeError:
        raise SASLFailure("not-authorized") from None
    if not username or len(username.encode()) > 1023:
        raise SASLFailure("not-authorized")
    return username


class Plain:
    """RFC 4616: one message 'authzid NUL authcid NUL password'."""

    def __init__(self, lookup: CredentialLookup, host: str) -> None:
        self.lookup = lookup
        self.host = host

    @defer.inlineCallbacks
    def start(self, data: bytes | None):
        if not data:
            return Challenge(b"")
        return (yield self.step(data))

    @defer.inlineCallbacks
    def step(self, data: bytes):
        try:
            authzid, authcid, password = data.decode("utf-8").split("\0")
        except (UnicodeDecodeError, ValueError):
            raise SASLFailure("malformed-request") from None
        username = prep_username(authcid)
        _check_authzid(authzid, username, self.host)
        credentials = yield self.lookup(username)
        if credentials is None or not check_password(credentials, password):
            raise SASLFailure("not-authorized")
        return Success(username)


class Scram:
    """RFC 5802/7677 SCRAM, and the -PLUS variants when channel binding is given."""

    #: Keys for unknown users, so an attempt on one looks like a wrong password.
    _decoy: Credentials | None = None

    def __init__(
        self,
        mechanism: str,
        lookup: CredentialLookup,
        host: str,
        channel_binding: tuple[str, bytes] | None,
    ) -> None:
        self.mechanism = ScramMechanism(mechanism)
        self.lookup = lookup
        self.host = host
        self.channel_binding = channel_binding
        self.server = None
        self.username: str | None = None

    @defer.inlineCallbacks
    def start(self, data: bytes | None):
        if not data:
            return Challenge(b"")
        try:
            client_first = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request") from None
        authzid, username = _scram_names(client_first)
        self.username = prep_username(username)
        _check_authzid(authzid, self.username, self.host)
        credentials = yield self.lookup(self.username)
        if credentials is None:
            credentials = self._decoy_credentials()
        keys = credentials.for_mechanism(self.mechanism.name)
        try:
            self.server = self.mechanism.make_server(
                lambda _name: (keys.salt, keys.stored_key, keys.server_key, keys.iterations),
                channel_binding=self.channel_binding,
            )
            self.server.set_client_first(client_first)
            return Challenge(self.server.get_server_first().encode())
        except ScramException as e:
            raise SASLFailure("malformed-request", str(e)) from None

    def step(self, data: bytes):
        if self.server is None:
            return self.start(data)
        try:
            self.server.set_client_final(data.decode("utf-8"))
            final = self.server.get_server_final()
        except (ScramException, UnicodeDecodeError):
            return defer.fail(SASLFailure("not-authorized"))
        return defer.succeed(Success(self.username, final.encode()))

    @classmethod
    def _decoy_credentials(cls) -> Credentials:
        if cls._decoy is None:
            cls._decoy = make_credentials(secrets.token_urlsafe(24))
        return cls._decoy


def _check_authzid(authzid: str, username: str, host: str) -> None:
    """Only the account itself may be asked for: no acting as another user."""
    if authzid and authzid not in (username, f"{username}@{host}"):
        raise SASLFailure("invalid-authzid")


def _scram_names(client_first: str) -> tuple[str, str]:
    """(authzid, username) of a SCRAM client-first message, unescaped (RFC 5802 §5.1)."""
    parts = client_first.split(",")
    if len(parts) < 4:
        raise SASLFailure("malformed-request")
    authzid = parts[1][2:] if parts[1].startswith("a=") else ""
    for part in parts[2:]:
        if part.startswith("n="):
            return _unescape(authzid), _unescape(part[2:])
    raise SASLFailure("malformed-request")


def _unescape(value: str) -> str:
    return value.replace("=2C", ",").replace("=3D", "=")


def make_mechanism(
    name: str,
    lookup: CredentialLookup,
    host: str,
    channel_binding: tuple[str, bytes] | None,
    offered: list[str],
):
    """A fresh mechanism for one exchange; SASLFailure('invalid-mechanism') if not offered."""
    if name not in offered:
        raise SASLFailure("invalid-mechanism")
    if name == "PLAIN":
        return Plain(lookup, host)
    return Scram(name, lookup, host, channel_binding)
