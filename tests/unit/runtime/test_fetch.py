"""`kustos fetch`: local, HTTP and S3 (a real moto server) sources, digests, retries."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kustos.runtime import fetch as f
from motoserver import moto_server

from .conftest import free_port

PAYLOAD = os.urandom(4096)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kustos.cli", "fetch", *args],
                          capture_output=True, text=True, timeout=60)


def no_leftovers(directory: Path) -> bool:
    return not any(p.name.endswith(".part") for p in directory.iterdir())


# ---------------------------------------------------------------------------- local


def test_local_path_and_file_uri(tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(PAYLOAD)
    out = tmp_path / "out"
    out.mkdir()
    res = f.fetch(str(src), out / "a.bin", f"sha256:{SHA}")
    assert res.path == out / "a.bin" and res.size == len(PAYLOAD) and res.sha256 == SHA
    assert (out / "a.bin").read_bytes() == PAYLOAD
    res = f.fetch(src.as_uri(), out)  # a directory gets the source's name
    assert res.path == out / "model.bin" and res.digest == f"sha256:{SHA}"
    assert no_leftovers(out)


def test_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "dest" / "model.bin"
    dest.parent.mkdir()
    with pytest.raises(f.DigestMismatch) as err:
        f.fetch(str(src), dest, "sha256:" + "0" * 64)
    assert SHA in str(err.value) and "0" * 64 in str(err.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(PAYLOAD)
    r = run_cli(str(src), str(tmp_path / "x"), "--digest", "sha256:" + "a" * 64)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "digest mismatch" in r.stderr
    assert f"expected sha256:{'a' * 64}" in r.stderr and f"got sha256:{SHA}" in r.stderr
    assert not (tmp_path / "x").exists()
    r = run_cli(str(tmp_path / "missing.bin"), str(tmp_path / "y"))
    assert r.returncode == 1 and r.stderr.strip().startswith("kustos fetch: not found")
    assert r.stderr.count("\n") == 1
    r = run_cli(str(src), str(tmp_path / "z"), "--digest", "md5:abc")
    assert r.returncode == 2 and "sha256:" in r.stderr
    r = run_cli(str(src), str(tmp_path / "nodir" / "z"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = run_cli(str(src), str(tmp_path / "ok.bin"), "--digest", f"sha256:{SHA}", "--quiet")
    assert r.returncode == 0 and r.stderr == "" and (tmp_path / "ok.bin").read_bytes() == PAYLOAD


def test_parse_digest() -> None:
    assert f.parse_digest(f"sha256:{SHA.upper()}") == SHA
    assert f.parse_digest(SHA) == SHA
    for bad in ("sha1:" + SHA, "sha256:xyz", "sha256:" + SHA[:-1]):
        with pytest.raises(ValueError):
            f.parse_digest(bad)


# ----------------------------------------------------------------------------- HTTP


class Script:
    """What the fake HTTP server answers, in order; the last answer repeats."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = [(200, PAYLOAD)]
        self.hits = 0
        self.headers: list[dict[str, str]] = []


@pytest.fixture
def web() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.hits += 1
            script.headers.append(dict(self.headers))
            status, body = script.answers[min(script.hits - 1, len(script.answers) - 1)]
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


def test_http_download_with_digest(web: tuple[str, Script], tmp_path: Path) -> None:
    base, _ = web
    res = f.fetch(f"{base}/m.skops?sig=secret", tmp_path, f"sha256:{SHA}")
    assert res.path == tmp_path / "m.skops" and res.path.read_bytes() == PAYLOAD
    assert res.attempts == 1


def test_http_retries_transient_errors_with_backoff(web: tuple[str, Script],
                                                    tmp_path: Path) -> None:
    base, script = web
    script.answers = [(503, b"busy"), (429, b"slow down"), (200, PAYLOAD)]
    sleeps: list[float] = []
    res = f.fetch(f"{base}/m", tmp_path / "m", f"sha256:{SHA}", backoff=0.1,
                  sleep=sleeps.append)
    assert res.attempts == 3 and script.hits == 3
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2


def test_http_404_and_403_are_not_retried(web: tuple[str, Script], tmp_path: Path) -> None:
    base, script = web
    script.answers = [(404, b"")]
    with pytest.raises(f.FetchError, match="not found") as err:
        f.fetch(f"{base}/m?X-Amz-Signature=topsecret", tmp_path / "m", sleep=lambda s: None)
    assert script.hits == 1 and "topsecret" not in str(err.value)
    script.answers, script.hits = [(403, b"")], 0
    with pytest.raises(f.FetchError, match="permission denied"):
        f.fetch(f"{base}/m", tmp_path / "m", sleep=lambda s: None)
    assert script.hits == 1
    assert no_leftovers(tmp_path)


def test_network_error_after_retries(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    calls: list[float] = []
    with pytest.raises(f.FetchError) as err:
        f.fetch(f"http://127.0.0.1:{port}/m", tmp_path / "m", retries=2, sleep=calls.append)
    assert "network error" in str(err.value) and "gave up after 3 attempts" in str(err.value)
    assert len(calls) == 2


def test_plain_http_only_for_loopback(tmp_path: Path) -> None:
    with pytest.raises(f.FetchError, match="refusing plain http"):
        f.fetch("http://example.com/m", tmp_path / "m", retries=0)


def test_progress_lines_every_ten_percent(web: tuple[str, Script], tmp_path: Path) -> None:
    base, script = web
    big = os.urandom(12 * f.CHUNK)
    script.answers = [(200, big)]
    lines: list[str] = []
    f.fetch(f"{base}/big", tmp_path / "big", log=lines.append)
    pct = [int(line.split(": ")[2].split("%")[0]) for line in lines]
    assert pct == sorted(pct) and pct[-1] == 100 and 9 <= len(pct) <= 11
    script.hits = 0
    r = run_cli(f"{base}/big", str(tmp_path / "big2"), "--quiet")
    assert r.returncode == 0 and r.stderr == ""
    r = run_cli(f"{base}/big", str(tmp_path / "big3"))
    assert r.returncode == 0 and r.stderr.count("%") >= 9


# ------------------------------------------------------------------------------- S3

USER_POLICY = """{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}"""


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A real moto server enforcing SigV4 after the set-up calls."""
    import boto3

    with moto_server(unauthenticated_calls=5) as endpoint:
        kw = {"endpoint_url": endpoint, "region_name": "us-east-1",
              "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="kustos")
        key = iam.create_access_key(UserName="kustos")["AccessKey"]
        iam.put_user_policy(UserName="kustos", PolicyName="all", PolicyDocument=USER_POLICY)
        s3c = boto3.client("s3", **kw)
        s3c.create_bucket(Bucket="models")
        s3c.put_object(Bucket="models", Key="iris/v1/model file.skops", Body=PAYLOAD)
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_REGION": "us-east-1"}


def test_s3_signed_download(s3: dict[str, str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    res = f.fetch("s3://models/iris/v1/model file.skops", tmp_path, f"sha256:{SHA}")
    assert res.path == tmp_path / "model file.skops" and res.path.read_bytes() == PAYLOAD


def test_s3_wrong_secret_is_permission_denied_without_leaking(
        s3: dict[str, str], tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    for k, v in s3.items():
        (creds / k).write_text(v + "\n")
    (creds / "AWS_SECRET_ACCESS_KEY").write_text("wrong-secret-value")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    r = subprocess.run([sys.executable, "-m", "kustos.cli", "fetch",
                        "s3://models/iris/v1/model file.skops", str(tmp_path / "m"),
                        "--credentials-dir", str(creds), "--retries", "0"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "permission denied" in r.stderr
    assert r.stderr.count("\n") == 1
    assert "wrong-secret-value" not in r.stderr and s3["AWS_ACCESS_KEY_ID"] not in r.stderr
    # The same directory with the right secret works: credentials come from the files.
    (creds / "AWS_SECRET_ACCESS_KEY").write_text(s3["AWS_SECRET_ACCESS_KEY"])
    r = subprocess.run([sys.executable, "-m", "kustos.cli", "fetch",
                        "s3://models/iris/v1/model file.skops", str(tmp_path / "m"),
                        "--credentials-dir", str(creds), "--digest", f"sha256:{SHA}"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m").read_bytes() == PAYLOAD


def test_s3_missing_key_is_not_found(s3: dict[str, str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(f.FetchError, match=r"not found: s3://models/nope \(HTTP 404 NoSuchKey\)"):
        f.fetch("s3://models/nope", tmp_path / "m")


# S3 credentials, signing and redirects: test_s3_credentials.py
