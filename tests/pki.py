"""A test certificate authority: a CA, a server certificate for 127.0.0.1/localhost, a
client certificate it signed and a foreign client certificate another CA signed."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issuer:
    """A certificate and its key, able to sign others."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer: Issuer | None, *, ca: bool = False,
                 sans: list[x509.GeneralName] | None = None,
                 usage: x509.ObjectIdentifier | None = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject))
               .issuer_name(issuer.cert.subject if issuer else _name(subject))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    signer = issuer.key if issuer else key
    return Issuer(builder.sign(signer, hashes.SHA256()), key)


def _write(issuer: Issuer, folder: Path, stem: str) -> tuple[Path, Path]:
    cert = folder / f"{stem}.crt"
    key = folder / f"{stem}.key"
    cert.write_bytes(issuer.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(issuer.key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return cert, key


@dataclass
class Pki:
    """Files of a test CA, a server certificate, a client certificate and a foreign client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    foreign_cert: Path
    foreign_key: Path


def make_pki(folder: Path) -> Pki:
    """Writes the certificates and keys into ``folder``."""
    ca = _certificate("varstore test CA", None, ca=True)
    server = _certificate("varstore server", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=[
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
        x509.DNSName("varstore.internal")])
    client = _certificate("worker-0", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other_ca = _certificate("someone else's CA", None, ca=True)
    foreign = _certificate("intruder", other_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = _write(ca, folder, "ca")
    return Pki(ca_path, *_write(server, folder, "server"), *_write(client, folder, "client"),
               *_write(foreign, folder, "foreign"))
