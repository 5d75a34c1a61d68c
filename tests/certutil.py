"""Test certificates: a throwaway root CA, intermediates and leaves, made with ``cryptography``.

Generic helpers for any test that needs TLS material::

    ca_cert, ca_key = make_ca("Test Root")
    cert, key = make_leaf(ca_cert, ca_key, "localhost", sans=("localhost", "127.0.0.1"))
    write_pem(tmp / "server.pem", cert, key)

Keys are RSA (2048 bits by default: fast to generate, and what Intel AMT accepts).
Nothing here is secure; never use it outside tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Sequence, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_ca", "make_intermediate", "make_leaf", "make_key", "write_pem"]

_ONE_DAY = datetime.timedelta(days=1)


def make_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """Generate an RSA private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_ca(
    cn: str, *, bits: int = 2048, days: int = 30
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Make a self-signed root CA certificate and its key."""
    key = make_key(bits)
    name = _name(cn)
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_intermediate(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    cn: str,
    *,
    bits: int = 2048,
    days: int = 30,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Make an intermediate CA certificate signed by ``ca_cert``/``ca_key``, and its key."""
    key = make_key(bits)
    cert = (
        _builder(_name(cn), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    cn: str,
    sans: Sequence[str] | None = None,
    bits: int = 2048,
    *,
    days: int = 30,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Make an end-entity certificate (serverAuth + clientAuth) signed by the given CA.

    ``sans`` are DNS names or IP addresses (as strings); by default the CN alone.
    """
    key = make_key(bits)
    names = [_general_name(s) for s in (sans if sans is not None else (cn,))]
    builder = (
        _builder(_name(cn), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def write_pem(
    path: Union[str, os.PathLike[str]],
    *items: Union[x509.Certificate, rsa.RSAPrivateKey],
) -> Path:
    """Write certificates and/or keys (unencrypted PKCS#8) to one PEM file, mode 0600."""
    blobs = []
    for item in items:
        if isinstance(item, x509.Certificate):
            blobs.append(item.public_bytes(serialization.Encoding.PEM))
        else:
            blobs.append(
                item.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(b"".join(blobs))
    return target


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey,
    days: int,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _general_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)
