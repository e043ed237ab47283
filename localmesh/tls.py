"""TLS for the local API server: a CA and a server certificate made for one mesh.

Why the API speaks HTTPS at all: only its owner may use it (issue 15, point 7), and
kubectl sends a kubeconfig's credentials over TLS only — over ``http://`` it sends no
``Authorization`` header whatever the kubeconfig holds (kubernetes/kubectl#744; client-go's
clientcmd sets the bearer token for TLS connections alone). So the mesh makes, at every
start, a private CA and a certificate for ``127.0.0.1`` signed by it, serves the API with
it, and writes the CA into the kubeconfig (``certificate-authority-data``), as a cluster's
kubeconfig carries its CA. Keys are EC P-256, valid for 30 days, and never left on disk:
the server's is loaded from a 0600 file that is removed at once (the CA's is not written).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ApiCertificates", "make_certificates"]

_VALID_DAYS = 30


@dataclass(frozen=True)
class ApiCertificates:
    """One mesh's TLS: the CA clients trust and the server's context."""

    ca_pem: bytes
    server_context: ssl.SSLContext


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_certificates(folder: Path, host: str = "127.0.0.1") -> ApiCertificates:
    """Make a CA and a server certificate for ``host``; ``folder`` holds the key a moment."""
    # Imported here: only a starting mesh needs it (0.1 s of imports).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=_VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshchaos-local-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshchaos-api")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    chain = folder / f".api-{os.getpid()}.pem"  # the server's key: read once, then gone
    try:
        _write_private(chain, cert.public_bytes(serialization.Encoding.PEM) + ca_pem
                       + key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(chain)
    finally:
        with contextlib.suppress(FileNotFoundError):
            chain.unlink()
    return ApiCertificates(ca_pem, context)
