"""Certificates for the TLS tests, made with ``cryptography`` (no openssl binary needed).

- ``cert``/``key``: the server's self-signed certificate for ``127.0.0.1`` and ``localhost``;
  clients trust it by loading it as their CA file.
- ``client_ca``: a CA that signs client certificates (``tls_ca_file``);
  ``client_cert``/``client_key``: a client certificate it signed;
  ``stranger_cert``/``stranger_key``: a self-signed client certificate it did not sign.

EC P-256 keys, so making them all takes a few milliseconds.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from riverside_trio import Config, make_ssl_context

__all__ = ["Certs", "make_certs"]


@dataclass(frozen=True)
class Certs:
    cert: Path
    key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path

    def server_context(self, *, client_certs: bool = False) -> ssl.SSLContext:
        """The server's context, as ``Config.tls_*`` builds it."""
        return make_ssl_context(self.config(client_certs=client_certs))

    def config(self, *, client_certs: bool = False) -> Config:
        return Config(
            tls_certfile=str(self.cert),
            tls_keyfile=str(self.key),
            tls_ca_file=str(self.client_ca) if client_certs else None,
        )

    def spki_hash(self) -> str:
        """base64 SHA-256 of the server certificate's public key (what Chromium's
        ``--ignore-certificate-errors-spki-list`` takes)."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = hashes.Hash(hashes.SHA256())
        digest.update(spki)
        return base64.b64encode(digest.finalize()).decode()

    def client_context(self, *, cert: str | None = None) -> ssl.SSLContext:
        """A client context trusting the server's certificate; ``cert``: "good" presents
        the client certificate the CA signed, "stranger" one it did not."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        if cert == "good":
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        elif cert == "stranger":
            ctx.load_cert_chain(str(self.stranger_cert), str(self.stranger_key))
        return ctx


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
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
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certs(directory: Path) -> Certs:
    """Make every certificate and key in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certs(
        cert=directory / "server.pem",
        key=directory / "server.key",
        client_ca=directory / "client-ca.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        stranger_cert=directory / "stranger.pem",
        stranger_key=directory / "stranger.key",
    )
    # The server's self-signed certificate (it is its own CA, as `openssl req -x509` makes).
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("127.0.0.1", server_key, "127.0.0.1", server_key, ca=True, server=True)
    _write_cert(certs.cert, server)
    _write_key(certs.key, server_key)
    # A CA for client certificates, one client it signed, and a stranger it did not.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    _write_cert(
        certs.client_ca, _certificate("test client CA", ca_key, "test client CA", ca_key, ca=True)
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    _write_cert(
        certs.client_cert,
        _certificate("alice", client_key, "test client CA", ca_key, client=True),
    )
    _write_key(certs.client_key, client_key)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    _write_cert(
        certs.stranger_cert,
        _certificate("mallory", stranger_key, "mallory", stranger_key, client=True),
    )
    _write_key(certs.stranger_key, stranger_key)
    return certs
