"""TLS for s2s streams: one context per direction, and who a peer's certificate names.

Both directions present our certificate (the receiving server checks the
initiating one's for SASL EXTERNAL, XEP-0178) and ask for the peer's. The
handshake never fails on the peer's certificate: whether the chain verifies
against the CA set (the system's or C{ca_file}) is read afterwards, and with
the names the certificate proves (L{certificate_names}) decides between SASL
EXTERNAL, dialback or refusal, per policy (RFC 6120 §13.7.2).

Identity follows RFC 6125 as RFC 6120 §13.7.1.2 profiles it: service-identity
matches DNS-IDs (wildcards included) and SRV-IDs (_xmpp-server). It has no
support for the XmppAddr otherName (id-on-xmppAddr), so that one is read here
from the subjectAltName with cryptography's parser.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, SRV_ID, verify_service_identity
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

ALPN_SERVER = b"xmpp-server"
ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")


#: Connections whose peer chain failed verification (pyOpenSSL has no get_verify_result).
_untrusted: weakref.WeakSet[SSL.Connection] = weakref.WeakSet()


def _note_chain(connection: SSL.Connection, certificate, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict on each certificate of the chain: remember a failure, go on."""
    if not ok:
        _untrusted.add(connection)
    return True


def _context(certificate: Path, key: Path, ca_file: Path | None) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_chain_file(str(certificate))
    context.use_privatekey_file(str(key))
    if ca_file is not None:
        context.load_verify_locations(str(ca_file))
    else:
        context.set_default_verify_paths()
    # Ask for the peer's certificate but decide afterwards (see the module docstring).
    context.set_verify(SSL.VERIFY_PEER, _note_chain)
    context.set_session_id(b"imserver-s2s")
    return context


@implementer(IOpenSSLServerConnectionCreator)
class S2SServerTLS:
    """The receiving side: selects ALPN "xmpp-server" when offered (XEP-0368)."""

    def __init__(self, certificate: Path, key: Path, ca_file: Path | None) -> None:
        self.context = _context(certificate, key, ca_file)
        self.context.set_alpn_select_callback(self._select)

    @staticmethod
    def _select(connection: SSL.Connection, offered: list[bytes]):
        return ALPN_SERVER if ALPN_SERVER in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return SSL.Connection(self.context, None)


class S2SClientTLS:
    """The initiating side: our certificate, SNI and (for direct TLS) ALPN per connection."""

    def __init__(self, certificate: Path, key: Path, ca_file: Path | None) -> None:
        self.context = _context(certificate, key, ca_file)

    def creator(self, domain: str, alpn: bool) -> IOpenSSLClientConnectionCreator:
        return _ClientCreator(self.context, domain, alpn)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, context: SSL.Context, domain: str, alpn: bool) -> None:
        self.context = context
        self.domain = domain
        self.alpn = alpn

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_tlsext_host_name(self.domain.encode("idna"))
        if self.alpn:
            connection.set_alpn_protos([ALPN_SERVER])
        connection.set_connect_state()
        return connection


def peer_certificate(transport) -> tuple[x509.Certificate | None, bool]:
    """(the peer's certificate, whether its chain verified) after a TLS handshake."""
    connection = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(connection, SSL.Connection):
        return None, False
    certificate = connection.get_peer_certificate()
    if certificate is None:
        return None, False
    return certificate.to_cryptography(), connection not in _untrusted


def names_domain(certificate: x509.Certificate, domain: str) -> bool:
    """Whether C{certificate} is for C{domain}: DNS-ID, SRV-ID or XmppAddr (RFC 6120 §13.7.1.2)."""
    try:
        patterns = extract_patterns(certificate)
    except Exception:
        patterns = []
    for identity in (DNS_ID(domain), SRV_ID(f"_xmpp-server.{domain}")):
        try:
            verify_service_identity(patterns, obligatory_ids=[identity], optional_ids=[])
            return True
        except VerificationError:
            continue
    return domain in xmpp_addresses(certificate)


def xmpp_addresses(certificate: x509.Certificate) -> list[str]:
    """The id-on-xmppAddr otherNames (a DER UTF8String each), lower-cased."""
    try:
        alternatives = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return []
    found = []
    for other in alternatives.get_values_for_type(x509.OtherName):
        if other.type_id != ID_ON_XMPPADDR:
            continue
        text = _der_utf8(other.value)
        if text is not None:
            found.append(text.lower())
    return found


def _der_utf8(data: bytes) -> str | None:
    """Decode a DER UTF8String (tag 0x0C), or None when it is something else."""
    if len(data) < 2 or data[0] != 0x0C:
        return None
    length, offset = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(data) < 2 + count:
            return None
        length = int.from_bytes(data[2 : 2 + count], "big")
        offset = 2 + count
    if len(data) != offset + length:
        return None
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError:
        return None
