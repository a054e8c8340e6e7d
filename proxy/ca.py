"""The district CA: the certificate devices trust so that HTTPS block pages render.

Written in the file layout mitmproxy reads from its ``confdir``
(``mitmproxy-ca.pem`` = key + certificate, mode 0600), so ``ca init`` on an
admin workstation and ``cipa-proxy run`` on the server agree. Generated with
``cryptography`` directly, keeping this package free of mitmproxy.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

BASENAME = "mitmproxy"  # mitmproxy looks for <confdir>/mitmproxy-ca.pem
CA_VALIDITY = datetime.timedelta(days=5 * 365)
LEAF_VALIDITY = datetime.timedelta(days=7)  # leaf certificates minted per host are short-lived


def ca_paths(confdir: Path) -> tuple[Path, Path]:
    """(key+cert file, public certificate file)."""
    return confdir / f"{BASENAME}-ca.pem", confdir / f"{BASENAME}-ca-cert.pem"


def init(
    confdir: Path, *, force: bool = False, common_name: str = "cipa-proxy district CA"
) -> Path:
    """Create the CA unless one exists; returns the public certificate path."""
    key_file, cert_file = ca_paths(confdir)
    if key_file.exists() and not force:
        if not cert_file.exists():
            cert = x509.load_pem_x509_certificates(key_file.read_bytes())[0]
            cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_file
    confdir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cipa-proxy"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + CA_VALIDITY)
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
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    tmp = key_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem + cert_pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, key_file)
    cert_file.write_bytes(cert_pem)
    (confdir / f"{BASENAME}-ca-cert.cer").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_file


def export(confdir: Path, fmt: str = "pem") -> bytes:
    """The CA certificate as PEM or DER, for MDM / Group Policy / Google Admin."""
    _, cert_file = ca_paths(confdir)
    if not cert_file.exists():
        raise FileNotFoundError(f"no CA in {confdir}: run 'cipa-proxy ca init' first")
    if fmt == "pem":
        return cert_file.read_bytes()
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)
