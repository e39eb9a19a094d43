"""TLS: the server certificate (self-signed on first start) and its context.

One OpenSSL context per kind of stream (client streams today), built once and
shared by STARTTLS and direct TLS (XEP-0368). It names the ALPN protocols we
speak (RFC 7301; XEP-0368 has clients offer "xmpp-client"). The certificate
hash is the SCRAM-PLUS 'tls-server-end-point' channel binding (RFC 5929 §4.1),
computed once.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from imserver.config import TLSSettings

log = Logger()

#: ALPN protocol of client-to-server streams (XEP-0368).
ALPN_CLIENT = b"xmpp-client"


@implementer(IOpenSSLServerConnectionCreator)
class ALPNServerOptions:
    """Server-side TLS that selects one of C{protocols} when a client offers it.

    Twisted's own ALPN callback answers a client whose offer shares nothing with
    ours with an empty protocol, which OpenSSL turns into a fatal
    internal_error alert: every Go XMPP client (it offers "xmpp-client" even on
    STARTTLS) was locked out. RFC 7301 §3.2 lets a server go on without
    selecting a protocol, so ours returns NO_OVERLAPPING_PROTOCOLS instead.
    """

    def __init__(self, options: ssl.CertificateOptions, protocols: tuple[bytes, ...]) -> None:
        self.protocols = protocols
        self.context = options.getContext()
        self.context.set_alpn_select_callback(self._select)

    def _select(self, connection: SSL.Connection, offered: list[bytes]):
        for protocol in self.protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@dataclass(frozen=True)
class ServerTLS:
    """What streams need: the certificate, the c2s connection creator, the end-point binding."""

    certificate: ssl.PrivateCertificate
    options: ALPNServerOptions
    server_end_point: bytes

    def server_options(self, protocols: tuple[bytes, ...]) -> ALPNServerOptions:
        """A TLS server side of its own for another kind of stream (e.g. s2s, "xmpp-server")."""
        return ALPNServerOptions(self.certificate.options(), protocols)


def ensure_certificate(settings: TLSSettings, hosts: tuple[str, ...]) -> None:
    """Make a self-signed certificate for C{hosts} when the configured files are missing."""
    if settings.certificate.exists() and settings.key.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
        .sign(key, hashes.SHA256())
    )
    _write(
        settings.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    _write(settings.certificate, certificate.public_bytes(serialization.Encoding.PEM))
    log.info(
        "made a self-signed certificate for {hosts} at {path}",
        hosts=hosts,
        path=str(settings.certificate),
    )


def load(settings: TLSSettings) -> ServerTLS:
    pem = settings.certificate.read_bytes()
    private = ssl.PrivateCertificate.loadPEM(pem + b"\n" + settings.key.read_bytes())
    certificate = x509.load_pem_x509_certificate(pem)
    return ServerTLS(
        private, ALPNServerOptions(private.options(), (ALPN_CLIENT,)), _end_point_hash(certificate)
    )


def _end_point_hash(certificate: x509.Certificate) -> bytes:
    """RFC 5929 §4.1: the certificate's signature hash, with MD5/SHA-1 upgraded to SHA-256."""
    algorithm = certificate.signature_hash_algorithm
    name = algorithm.name if algorithm is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, certificate.public_bytes(serialization.Encoding.DER)).digest()


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
