"""A throw-away certificate authority for federation tests.

RFC 6120 §13.7.1.2 and XEP-0178 want a server certificate that names its
domain as a DNS-ID (subjectAltName dNSName) and as an XmppAddr (the id-on-
xmppAddr otherName), usable both to serve (serverAuth) and to connect
(clientAuth). L{TestCA.issue} writes such a certificate and its key as PEM
files, signed by a CA whose certificate tests hand to Prosody's
C{ssl.cafile} and imserver's C{[s2s] ca_file}.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

#: RFC 6120 §13.7.1.4: id-on-xmppAddr.
ID_ON_XMPPADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")


def _utf8_string(text: str) -> bytes:
    """DER UTF8String (the XmppAddr's value); short lengths suffice for domain names."""
    data = text.encode("utf-8")
    if len(data) > 127:
        raise ValueError("name too long for this test helper")
    return bytes([0x0C, len(data)]) + data


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class TestCA:
    """A CA certificate and key in C{directory}; C{issue} signs server certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "imserver test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = self.directory / "ca.crt"
        self.path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, domain: str, names: tuple[str, ...] | None = None) -> tuple[Path, Path]:
        """Write DOMAIN.crt (leaf then CA) and DOMAIN.key; return (certificate, key) paths.

        C{names} are the identities the certificate claims (default: C{domain}
        itself); give other names for a certificate that does not match.
        """
        names = names or (domain,)
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        alternatives += [x509.OtherName(ID_ON_XMPPADDR, _utf8_string(n)) for n in names]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        stem = "-".join(names) if names != (domain,) else domain
        certificate_path = self.directory / f"{stem}.crt"
        key_path = self.directory / f"{stem}.key"
        certificate_path.write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
            + self.certificate.public_bytes(serialization.Encoding.PEM)
        )
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return certificate_path, key_path
