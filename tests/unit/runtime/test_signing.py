"""Signed models: `kustos sign` writes an OpenSSF model-signing bundle, `kustos fetch
--signature-method ...` verifies it before the model reaches its destination.

Real keys and a real test CA made here with cryptography; the model is a real skops file
trained on iris (conftest); the source is a loopback HTTP server or a local path."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kustos.runtime import signing

from . import fake_sigstore
from .conftest import Models


def kustos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kustos.cli", *args],
                          capture_output=True, text=True, timeout=120)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def write_public(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
              issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, email: str | None = None,
              start: datetime | None = None, days: int = 30) -> x509.Certificate:
    start = start or datetime.now(UTC) - timedelta(hours=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start)
               .not_valid_after(start + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        if email:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    root: Path  # the CA chain a verifier trusts (root only)
    intermediate: Path
    leaf_key: Path
    leaf: Path
    expired_key: Path
    expired: Path
    other_root: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = make_cert("Kustos Test Root", root_key, None, root_key, ca=True, days=365)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = make_cert("Kustos Test Signing CA", inter_key, root, root_key, ca=True, days=300)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert("ml-publisher", leaf_key, inter, inter_key, ca=False,
                     email="ml-publisher@acme.example")
    old_key = ec.generate_private_key(ec.SECP256R1())
    old = make_cert("ml-publisher", old_key, inter, inter_key, ca=False,
                    email="ml-publisher@acme.example",
                    start=datetime.now(UTC) - timedelta(days=20), days=10)
    other_key = ec.generate_private_key(ec.SECP384R1())
    other = make_cert("Some Other Root", other_key, None, other_key, ca=True, days=365)
    return Pki(write_cert(d / "root.pem", root), write_cert(d / "inter.pem", inter),
               write_key(d / "leaf.key", leaf_key), write_cert(d / "leaf.pem", leaf),
               write_key(d / "old.key", old_key), write_cert(d / "old.pem", old),
               write_cert(d / "other-root.pem", other))


@pytest.fixture
def published(tmp_path: Path, models: Models) -> Path:
    """A directory a loopback HTTP server publishes, holding a real model."""
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "iris.skops").write_bytes(models.iris_lr.read_bytes())
    return pub


@pytest.fixture
def web(published: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(published))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def only_model_or_nothing(dest: Path) -> list[str]:
    """What is left in the model directory: no staging directory, no partial file."""
    return sorted(p.name for p in dest.iterdir())


def key_fetch(url: str, dest: Path, pub: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return kustos("fetch", f"{url}/iris.skops", str(dest), "--signature-method", "key",
                  "--signature-key", str(pub), "--signer-file", str(dest.parent / "signer"),
                  *extra)


# --------------------------------------------------------------------------- key


def test_key_signed_model_verifies_and_records_the_signer(
        tmp_path: Path, published: Path, web: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = kustos("sign", str(published / "iris.skops"), "--key",
                    str(write_key(tmp_path / "k.pem", key)))
    assert signed.returncode == 0, signed.stderr
    assert (published / "iris.skops.sig").is_file()
    pub = write_public(tmp_path / "k.pub", key)
    dest = tmp_path / "models"
    dest.mkdir()
    sha = hashlib.sha256((published / "iris.skops").read_bytes()).hexdigest()
    r = key_fetch(web, dest, pub, "--digest", f"sha256:{sha}")
    assert r.returncode == 0, r.stderr
    assert only_model_or_nothing(dest) == ["iris.skops"]
    assert (dest / "iris.skops").read_bytes() == (published / "iris.skops").read_bytes()
    fingerprint = signing.key_fingerprint(pub.read_bytes())
    assert (tmp_path / "signer").read_text() == f"verified signer: key {fingerprint}\n"
    assert fingerprint in r.stderr
    assert f"public key fingerprint {fingerprint}" in signed.stderr  # what the spec pins
    # What `kustos serve` then loads is the verified model itself.
    import skops.io as sio
    model = sio.load(dest / "iris.skops", trusted=sio.get_untrusted_types(
        file=dest / "iris.skops"))
    assert model.predict([[5.1, 3.5, 1.4, 0.2]])[0] == 0


def test_tampered_model_byte_is_refused(tmp_path: Path, published: Path, web: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert kustos("sign", str(published / "iris.skops"), "--key",
                  str(write_key(tmp_path / "k.pem", key))).returncode == 0
    data = bytearray((published / "iris.skops").read_bytes())
    data[len(data) // 2] ^= 0x01
    (published / "iris.skops").write_bytes(bytes(data))
    dest = tmp_path / "models"
    dest.mkdir()
    r = key_fetch(web, dest, write_public(tmp_path / "k.pub", key))
    assert r.returncode == 1
    assert "signature verification failed (tampered model)" in r.stderr
    assert r.stderr.count("\n") == 1
    assert only_model_or_nothing(dest) == []
    assert not (tmp_path / "signer").exists()


def test_tampered_bundle_is_refused(tmp_path: Path, published: Path, web: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert kustos("sign", str(published / "iris.skops"), "--key",
                  str(write_key(tmp_path / "k.pem", key))).returncode == 0
    bundle_path = published / "iris.skops.sig"
    bundle = json.loads(bundle_path.read_text())
    # Claim another digest for the model in the signed statement (payload), keeping the
    # old signature: the signature no longer covers the payload.
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(
        json.dumps(statement).encode()).decode()
    bundle_path.write_text(json.dumps(bundle))
    dest = tmp_path / "models"
    dest.mkdir()
    pub = write_public(tmp_path / "k.pub", key)
    r = key_fetch(web, dest, pub)
    assert r.returncode == 1
    assert "(bundle signature does not verify with the given key" in r.stderr
    assert only_model_or_nothing(dest) == []
    # A bundle that is not a bundle at all.
    bundle_path.write_text("{not json")
    r = key_fetch(web, dest, pub)
    assert r.returncode == 1 and "(invalid bundle)" in r.stderr
    assert only_model_or_nothing(dest) == []
    # No bundle at the default location.
    bundle_path.unlink()
    r = key_fetch(web, dest, pub)
    assert r.returncode == 1 and "not found" in r.stderr and "iris.skops.sig" in r.stderr
    assert only_model_or_nothing(dest) == []


def test_wrong_public_key_is_refused(tmp_path: Path, published: Path, web: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    assert kustos("sign", str(published / "iris.skops"), "--key",
                  str(write_key(tmp_path / "k.pem", key))).returncode == 0
    dest = tmp_path / "models"
    dest.mkdir()
    r = key_fetch(web, dest, write_public(tmp_path / "other.pub", other))
    assert r.returncode == 1
    assert "(bundle signature does not verify with the given key" in r.stderr
    assert only_model_or_nothing(dest) == []


def test_pinned_key_fingerprint(tmp_path: Path, published: Path, web: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert kustos("sign", str(published / "iris.skops"), "--key",
                  str(write_key(tmp_path / "k.pem", key))).returncode == 0
    pub = write_public(tmp_path / "k.pub", key)
    dest = tmp_path / "models"
    dest.mkdir()
    pinned = signing.key_fingerprint(pub.read_bytes())
    r = key_fetch(web, dest, pub, "--signature-key-fingerprint", pinned)
    assert r.returncode == 0, r.stderr
    (dest / "iris.skops").unlink()
    # The mounted key was swapped (for one that did sign this bundle): still refused.
    other = ec.generate_private_key(ec.SECP256R1())
    assert kustos("sign", str(published / "iris.skops"), "--key",
                  str(write_key(tmp_path / "o.pem", other))).returncode == 0
    r = key_fetch(web, dest, write_public(tmp_path / "o.pub", other),
                  "--signature-key-fingerprint", pinned)
    assert r.returncode == 1 and "(wrong key)" in r.stderr and pinned in r.stderr
    assert only_model_or_nothing(dest) == []


def test_a_killed_fetch_leaves_no_unverified_bytes_behind(tmp_path: Path,
                                                           published: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert kustos("sign", str(published / "iris.skops"), "--key",
                  str(write_key(tmp_path / "k.pem", key))).returncode == 0
    dest = tmp_path / "models"
    stale = dest / f"{signing.STAGE_PREFIX}killed" / "model"
    stale.mkdir(parents=True)
    (stale / "iris.skops").write_bytes(b"unverified")
    r = kustos("fetch", str(published / "iris.skops"), str(dest), "--quiet",
               "--signature-method", "key", "--signature-key",
               str(write_public(tmp_path / "k.pub", key)))
    assert r.returncode == 0, r.stderr
    assert only_model_or_nothing(dest) == ["iris.skops"]


def test_explicit_bundle_uri_and_local_source(tmp_path: Path, published: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    assert kustos("sign", str(published / "iris.skops"), "--key",
                  str(write_key(tmp_path / "k.pem", key)), "-o",
                  str(bundles / "v7.sig")).returncode == 0
    dest = tmp_path / "out.skops"
    r = kustos("fetch", f"file://{published}/iris.skops", str(dest), "--quiet",
               "--signature-method", "key", "--signature-key",
               str(write_public(tmp_path / "k.pub", key)),
               "--signature", f"file://{bundles}/v7.sig")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == (published / "iris.skops").read_bytes()


def test_usage_errors(tmp_path: Path, published: Path) -> None:
    r = kustos("fetch", str(published / "iris.skops"), str(tmp_path / "x"),
               "--signature-method", "sigstore", "--signature-identity", "a@b")
    assert r.returncode == 2
    assert "--signature-issuer, --signature-trust-root" in r.stderr
    assert not (tmp_path / "x").exists()
    r = kustos("sign", str(published / "iris.skops"), "--key", str(tmp_path / "none.pem"))
    assert r.returncode == 1 and "none.pem" in r.stderr


# ------------------------------------------------------------------- certificate


def cert_sign(pki: Pki, model: Path, key: Path, cert: Path) -> None:
    r = kustos("sign", str(model), "--key", str(key), "--certificate", str(cert),
               "--chain", str(pki.intermediate), "--chain", str(pki.root))
    assert r.returncode == 0, r.stderr


def cert_fetch(url: str, dest: Path, ca: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return kustos("fetch", f"{url}/iris.skops", str(dest), "--signature-method",
                  "certificate", "--signature-ca-chain", str(ca),
                  "--signer-file", str(dest.parent / "signer"), *extra)


def test_certificate_signed_model_verifies(tmp_path: Path, published: Path, web: str,
                                          pki: Pki) -> None:
    cert_sign(pki, published / "iris.skops", pki.leaf_key, pki.leaf)
    dest = tmp_path / "models"
    dest.mkdir()
    r = cert_fetch(web, dest, pki.root, "--signature-identity", "ml-publisher@acme.example")
    assert r.returncode == 0, r.stderr
    assert only_model_or_nothing(dest) == ["iris.skops"]
    assert (tmp_path / "signer").read_text() == \
        "verified signer: certificate ml-publisher@acme.example\n"


def test_certificate_wrong_identity_or_ca_is_refused(tmp_path: Path, published: Path,
                                                    web: str, pki: Pki) -> None:
    cert_sign(pki, published / "iris.skops", pki.leaf_key, pki.leaf)
    dest = tmp_path / "models"
    dest.mkdir()
    r = cert_fetch(web, dest, pki.root, "--signature-identity", "someone-else@acme.example")
    assert r.returncode == 1
    assert "(wrong identity)" in r.stderr and "ml-publisher@acme.example" in r.stderr
    assert only_model_or_nothing(dest) == []
    r = cert_fetch(web, dest, pki.other_root)
    assert r.returncode == 1
    assert "(bundle does not verify with the given CA chain" in r.stderr
    assert only_model_or_nothing(dest) == []


def test_expired_certificate_is_refused(tmp_path: Path, published: Path, web: str,
                                        pki: Pki) -> None:
    cert_sign(pki, published / "iris.skops", pki.expired_key, pki.expired)
    dest = tmp_path / "models"
    dest.mkdir()
    r = cert_fetch(web, dest, pki.root)
    assert r.returncode == 1
    assert "(expired certificate)" in r.stderr and "signing certificate" in r.stderr
    assert only_model_or_nothing(dest) == []


def test_key_bundle_is_not_a_certificate_bundle(tmp_path: Path, published: Path,
                                                pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert kustos("sign", str(published / "iris.skops"), "--key",
                  str(write_key(tmp_path / "k.pem", key))).returncode == 0
    with pytest.raises(signing.SignatureError, match="wrong signature kind"):
        signing.verify(published / "iris.skops", published / "iris.skops.sig",
                       signing.Trust("certificate", ca_chain=pki.root))


# ---------------------------------------------------------------------- sigstore

ISSUER = "https://oidc.kustos.test"
IDENTITY = "release-bot@acme.example"


@dataclass
class Keyless:
    instance: fake_sigstore.Instance
    root: Path  # trusted_root.json
    statement: bytes  # what model_signing signs for the published model


@pytest.fixture
def keyless(tmp_path: Path, published: Path) -> Keyless:
    instance = fake_sigstore.Instance.create()
    root = tmp_path / "trusted_root.json"
    root.write_text(json.dumps(instance.trusted_root()))
    return Keyless(instance, root,
                   fake_sigstore.model_statement(published / "iris.skops", tmp_path))


def keyless_sign(k: Keyless, published: Path, *, identity: str = IDENTITY,
                 expired_at_signing: bool = False) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = datetime.now(UTC) - timedelta(minutes=5)
    cert = k.instance.issue(key, identity, ISSUER, issued, minutes=10)
    # A Fulcio certificate lives minutes; what counts is that the log integrated the
    # signature while it was valid (here: after it expired, when asked).
    integrated = issued + timedelta(minutes=20 if expired_at_signing else 1)
    bundle = k.instance.bundle(k.statement, key, cert, integrated)
    (published / "iris.skops.sig").write_text(json.dumps(bundle))


def sigstore_fetch(url: str, dest: Path, root: Path, identity: str = IDENTITY,
                   issuer: str = ISSUER) -> subprocess.CompletedProcess[str]:
    return kustos("fetch", f"{url}/iris.skops", str(dest), "--signature-method", "sigstore",
                  "--signature-identity", identity, "--signature-issuer", issuer,
                  "--signature-trust-root", str(root),
                  "--signer-file", str(dest.parent / "signer"))


def test_sigstore_bundle_verifies_offline_with_a_trust_root_file(
        tmp_path: Path, published: Path, web: str, keyless: Keyless) -> None:
    """The trust root is a file (no TUF, no network: the only server here is the loopback
    one holding the model); Fulcio chain, SCT, log inclusion proof, checkpoint and SET,
    identity and issuer are all checked by sigstore-python."""
    keyless_sign(keyless, published)
    dest = tmp_path / "models"
    dest.mkdir()
    r = sigstore_fetch(web, dest, keyless.root)
    assert r.returncode == 0, r.stderr
    assert only_model_or_nothing(dest) == ["iris.skops"]
    assert (tmp_path / "signer").read_text() == \
        f"verified signer: sigstore {IDENTITY} (issuer {ISSUER})\n"
    # The same root wrapped as a ClientTrustConfig is read as such.
    wrapped = tmp_path / "trust_config.json"
    wrapped.write_text(json.dumps({
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": json.loads(keyless.root.read_text()),
        "signingConfig": {"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json"}}))
    (dest / "iris.skops").unlink()
    r = sigstore_fetch(web, dest, wrapped)
    assert r.returncode == 0, r.stderr


def test_sigstore_wrong_identity_or_issuer_is_refused(
        tmp_path: Path, published: Path, web: str, keyless: Keyless) -> None:
    keyless_sign(keyless, published)
    dest = tmp_path / "models"
    dest.mkdir()
    r = sigstore_fetch(web, dest, keyless.root, identity="someone@acme.example")
    assert r.returncode == 1
    assert "(wrong identity)" in r.stderr
    assert "do not match someone@acme.example" in r.stderr
    r = sigstore_fetch(web, dest, keyless.root, issuer="https://other-idp.example")
    assert r.returncode == 1 and "(wrong identity)" in r.stderr
    assert "https://other-idp.example" in r.stderr
    assert only_model_or_nothing(dest) == []


def test_sigstore_untrusted_instance_late_log_entry_and_tampered_model_are_refused(
        tmp_path: Path, published: Path, web: str, keyless: Keyless) -> None:
    dest = tmp_path / "models"
    dest.mkdir()
    # Signed by another instance: its CA and logs are not in the trust root.
    other = Keyless(fake_sigstore.Instance.create(), keyless.root, keyless.statement)
    keyless_sign(other, published)
    r = sigstore_fetch(web, dest, keyless.root)
    assert r.returncode == 1 and "Sigstore bundle does not verify" in r.stderr
    # Logged after the certificate expired.
    keyless_sign(keyless, published, expired_at_signing=True)
    r = sigstore_fetch(web, dest, keyless.root)
    assert r.returncode == 1 and "(expired certificate)" in r.stderr
    # A valid bundle for other bytes.
    keyless_sign(keyless, published)
    data = bytearray((published / "iris.skops").read_bytes())
    data[-1] ^= 0x01
    (published / "iris.skops").write_bytes(bytes(data))
    r = sigstore_fetch(web, dest, keyless.root)
    assert r.returncode == 1 and "(tampered model)" in r.stderr
    assert only_model_or_nothing(dest) == []


def test_sigstore_method_refuses_other_bundles_and_bad_roots(
        tmp_path: Path, published: Path, pki: Pki, keyless: Keyless) -> None:
    cert_sign(pki, published / "iris.skops", pki.leaf_key, pki.leaf)
    trust = signing.Trust("sigstore", identity=IDENTITY, issuer=ISSUER,
                          trust_root=keyless.root)
    with pytest.raises(signing.SignatureError) as err:
        signing.verify(published / "iris.skops", published / "iris.skops.sig", trust)
    assert "Sigstore bundle does not verify against the trust root" in str(err.value)
    assert "expected certificate in bundle" in str(err.value)  # sigstore-python 4.5.1
    (tmp_path / "broken.json").write_text("[]")
    with pytest.raises(signing.SignatureError, match="invalid trust root"):
        signing.verify(published / "iris.skops", published / "iris.skops.sig",
                       signing.Trust("sigstore", identity="a", issuer="b",
                                     trust_root=tmp_path / "broken.json"))


def test_default_bundle_uri() -> None:
    assert signing.default_bundle_uri("s3://b/m/model.onnx") == "s3://b/m/model.onnx.sig"
    assert signing.default_bundle_uri("https://h/m.onnx?x=1") == "https://h/m.onnx.sig?x=1"
