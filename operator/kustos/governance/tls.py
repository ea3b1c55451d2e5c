"""Certificates for the admission webhook: a throwaway self-signed one (when none is
given), or a CA and a serving certificate it signs, which the operator keeps in a Secret
(kustos.governance.certificate)."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(hosts: list[str], days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) valid for ``hosts`` (DNS names or IPs). The
    certificate is its own CA: it is also the caBundle of the webhook configuration."""
    if not hosts:
        raise ValueError("a certificate needs at least one host name")
    key = ec.generate_private_key(ec.SECP256R1())
    sans = _sans(hosts)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h)
            for h in hosts]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_self_signed(hosts: list[str]) -> tuple[Path, Path]:
    """Generate a certificate and write it to a private temporary directory; returns
    (certfile, keyfile). The key file is readable by this user only."""
    cert_pem, key_pem = self_signed(hosts)
    directory = Path(tempfile.mkdtemp(prefix="kustos-webhook-"))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    return cert_path, key_path


# --- A CA and the serving certificate it signs (the operator-owned certificate) ---

# The CA lives ten years, the serving certificate one; the serving certificate is renewed
# (by the same CA, so the webhook configuration's caBundle does not change) once less than
# RENEW_BEFORE of it is left, the CA (a new caBundle) once less than that is left of it.
CA_DAYS = 3650
CERT_DAYS = 365
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True, repr=False)
class Bundle:
    """PEM of a CA, its key (absent in a Secret someone else made), and a serving
    certificate and key it signed. ``repr`` and ``str`` show no key material."""

    ca_cert: bytes
    ca_key: bytes | None
    cert: bytes
    key: bytes

    def __repr__(self) -> str:
        return f"Bundle({describe(self)})"

    __str__ = __repr__


def issue(hosts: list[str], *, ca_days: int = CA_DAYS, cert_days: int = CERT_DAYS,
          now: datetime | None = None) -> Bundle:
    """A new CA (``ca_days``) and a serving certificate for ``hosts`` (``cert_days``)."""
    if not hosts:
        raise ValueError("a certificate needs at least one host name")
    now = now or datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hosts[0]}-ca"[:64])])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, ca_key_pem = ca.public_bytes(serialization.Encoding.PEM), _key_pem(ca_key)
    cert, key = _serving(hosts, ca, ca_key, cert_days, now)
    return Bundle(ca_pem, ca_key_pem, cert, key)


def renew(bundle: Bundle, hosts: list[str], *, cert_days: int = CERT_DAYS,
          now: datetime | None = None) -> Bundle:
    """A new serving certificate for ``hosts`` from the bundle's CA (which needs its key)."""
    if bundle.ca_key is None:
        raise ValueError("the CA's key is not in the bundle")
    ca = x509.load_pem_x509_certificate(bundle.ca_cert)
    ca_key = serialization.load_pem_private_key(bundle.ca_key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA's key is not an EC key")
    cert, key = _serving(hosts, ca, ca_key, cert_days, now or datetime.now(UTC))
    return Bundle(bundle.ca_cert, bundle.ca_key, cert, key)


def _serving(hosts: list[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
             days: int, now: datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + timedelta(days=days), ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def assess(bundle: Bundle, hosts: list[str], now: datetime | None = None,
           renew_before: timedelta = RENEW_BEFORE) -> tuple[str, str]:
    """What to do with a bundle read back: ("keep", ""), ("renew", why) for a new serving
    certificate from the same CA, or ("replace", why) for a new CA too. ``why`` names no
    key material. Raises nothing: a bundle that does not parse is replaced."""
    now = now or datetime.now(UTC)
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_cert)
        cert = x509.load_pem_x509_certificate(bundle.cert)
        key = serialization.load_pem_private_key(bundle.key, password=None)
        ca_key = (serialization.load_pem_private_key(bundle.ca_key, password=None)
                  if bundle.ca_key is not None else None)
    except ValueError as err:
        return "replace", f"it does not parse ({type(err).__name__})"
    pub = key.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub != cert.public_key():
        return "replace", "the serving key does not match the certificate"
    if ca_key is not None and ca_key.public_key() != ca.public_key():
        return "replace", "the CA key does not match the CA certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "replace", "the serving certificate is not signed by the CA"
    if ca.not_valid_after_utc - now < renew_before:
        return "replace", f"the CA expires {ca.not_valid_after_utc:%Y-%m-%d}"
    renewal = "renew" if ca_key is not None else "replace"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return renewal, "the serving certificate names no host"
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    missing = [h for h in hosts if str(ipaddress.ip_address(h) if _is_ip(h) else h) not in have]
    if missing:
        return renewal, f"the serving certificate does not name {', '.join(missing)}"
    if cert.not_valid_before_utc > now:
        return renewal, f"the serving certificate is valid from {cert.not_valid_before_utc}"
    if cert.not_valid_after_utc - now < renew_before:
        return renewal, f"the serving certificate expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return "keep", ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe(bundle: Bundle) -> str:
    """Validity and names of a bundle, for logs (never key material)."""
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_cert)
        cert = x509.load_pem_x509_certificate(bundle.cert)
    except ValueError:
        return "unreadable certificates"
    return (f"CA valid until {ca.not_valid_after_utc:%Y-%m-%d}, serving certificate "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d}, serial {cert.serial_number:x}")


def expiry(pem: bytes) -> datetime:
    """notAfter of a PEM certificate."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc
