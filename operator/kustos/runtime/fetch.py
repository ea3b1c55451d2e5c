"""`kustos fetch`: download one model or data file, verifying its sha256 while streaming.

The file is written to a temporary name in the destination's directory and renamed into
place only after the digest matched, so nothing can ever deserialize unverified bytes
from ``DEST``. Sources: ``file://``, a plain local path (a mounted volume), ``https://``
(``http://`` for loopback only; redirects followed, never from https down to http), and
``s3://bucket/key`` signed with AWS Signature V4 (runtime/s3.py; credentials from the AWS
SDKs' provider chain in runtime/aws_credentials.py).

The library entry point :func:`fetch` is reused by the explainer and drift sidecars.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import os
import random
import socket
import ssl
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kustos.runtime.aws_credentials import is_loopback

CHUNK = 1 << 20
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    """A failure worth one clear line on stderr. ``transient`` errors are retried."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class DigestMismatch(FetchError):
    def __init__(self, uri: str, expected: str, actual: str) -> None:
        super().__init__(
            f"digest mismatch for {uri}: expected sha256:{expected}, got sha256:{actual}"
        )
        self.expected = expected
        self.actual = actual


class HTTPStatusError(FetchError):
    """A non-200 answer. ``code`` is S3's error code; ``region`` the bucket's region when
    S3 said it (x-amz-bucket-region or <Region>), for runtime/s3.py's region redirect."""

    def __init__(self, message: str, *, status: int, code: str, region: str | None,
                 transient: bool) -> None:
        super().__init__(message, transient=transient)
        self.status = status
        self.code = code
        self.region = region


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str  # hex
    size: int
    attempts: int
    seconds: float

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def parse_digest(digest: str) -> str:
    """``sha256:HEX`` (or bare HEX) -> lower-case hex; ValueError otherwise."""
    value = digest.strip()
    algo, sep, hexpart = value.partition(":")
    if not sep:
        algo, hexpart = "sha256", value
    hexpart = hexpart.lower()
    if algo.lower() != "sha256" or len(hexpart) != 64 or any(
        c not in "0123456789abcdef" for c in hexpart
    ):
        raise ValueError(f"digest must look like sha256:<64 hex digits>, got {digest!r}")
    return hexpart


# --------------------------------------------------------------------------- sources


@dataclass
class _Stream:
    """An open source: an iterator of chunks plus the size when the source knows it."""

    chunks: Iterator[bytes]
    size: int | None
    close: Callable[[], None]


def _local_open(path: str, uri: str) -> _Stream:
    try:
        fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the _Stream
    except FileNotFoundError:
        raise FetchError(f"not found: {uri}") from None
    except PermissionError:
        raise FetchError(f"permission denied reading {uri}") from None
    except IsADirectoryError:
        raise FetchError(f"{uri} is a directory, expected a file") from None
    except OSError as exc:
        raise FetchError(f"cannot read {uri}: {exc.strerror}") from None
    size = os.fstat(fh.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        while block := fh.read(CHUNK):
            yield block

    return _Stream(chunks(), size, fh.close)


def _http_open(
    url: str,
    display: str,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    allow_http: bool = False,
    redirects: int = 0,
) -> _Stream:
    hops = 0
    while True:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"redirected to an unsupported scheme fetching {display}")
        if parts.scheme == "http" and not (allow_http or is_loopback(host)):
            raise FetchError(f"refusing plain http for {display}: use https")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            ctx = ssl_context or ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            conn.request("GET", target, headers=dict(headers or {}))
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise FetchError(f"network error fetching {display}: {_describe(exc)}",
                             transient=True) from None
        if resp.status in REDIRECTS and redirects:
            location = resp.getheader("location")
            resp.read(2048)
            conn.close()
            if hops >= redirects:
                raise FetchError(f"more than {redirects} redirects fetching {display}")
            if not location:
                raise FetchError(f"HTTP {resp.status} without a Location fetching {display}")
            new = urllib.parse.urljoin(url, location)
            if parts.scheme == "https" and urllib.parse.urlsplit(new).scheme == "http":
                raise FetchError(f"refusing a redirect from https to plain http for {display}")
            if urllib.parse.urlsplit(new).netloc != parts.netloc:
                headers = None  # whatever authorised us here is not for another host
            url, hops = new, hops + 1
            continue
        if resp.status != 200:
            body = resp.read(2048)
            region = resp.getheader("x-amz-bucket-region")
            conn.close()
            raise _status_error(resp.status, display, body, region)
        break
    length = resp.getheader("content-length")
    size = int(length) if length and length.isdigit() else None

    def chunks() -> Iterator[bytes]:
        try:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                yield block
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(
                f"network error reading {display}: {_describe(exc)}", transient=True
            ) from None

    return _Stream(chunks(), size, conn.close)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _xml_field(body: bytes, tag: str) -> str:
    start, end = f"<{tag}>".encode(), f"</{tag}>".encode()
    if start not in body:
        return ""
    return body.split(start, 1)[1].split(end, 1)[0].decode("utf-8", "replace")[:64]


def _status_error(status: int, display: str, body: bytes,
                  region: str | None = None) -> HTTPStatusError:
    # S3 error document: show its code, never the request details.
    code = _xml_field(body, "Code")
    region = region or _xml_field(body, "Region") or None
    what = f"HTTP {status}" + (f" {code}" if code else "")
    if status == 404:
        message = f"not found: {display} ({what})"
    elif status in (401, 403):
        message = f"permission denied fetching {display} ({what})"
    else:
        message = f"{what} fetching {display}"
    transient = status >= 500 or status in (408, 429)
    return HTTPStatusError(message, status=status, code=code, region=region,
                           transient=transient)


def _tls_context(ca_bundle: str | None) -> ssl.SSLContext | None:
    """--ca-bundle: trust these CAs (instead of the system's) for https and S3."""
    if not ca_bundle:
        return None
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except FileNotFoundError:
        raise FetchError(f"CA bundle {ca_bundle} does not exist") from None
    except (OSError, ssl.SSLError):
        raise FetchError(f"cannot load CA bundle {ca_bundle}") from None


# ------------------------------------------------------------------------------ fetch


def _open(uri: str, timeout: float, credentials_dir: str | None,
          ca_bundle: str | None = None) -> _Stream:
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _local_open(urllib.parse.unquote(parts.path), uri)
    if scheme in ("http", "https"):
        return _http_open(uri, _redact(uri), timeout, ssl_context=_tls_context(ca_bundle),
                          redirects=MAX_REDIRECTS)
    if scheme == "s3":
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not bucket or not key:
            raise FetchError(f"s3 URI must be s3://bucket/key, got {uri!r}")
        from . import s3  # imports this module: loaded on first use

        return s3.open_object(bucket, key, uri, timeout, credentials_dir, ca_bundle)
    if scheme and len(scheme) > 1:  # "c:" style drive letters are not a concern on Linux
        raise FetchError(f"unsupported URI scheme {scheme!r} in {_redact(uri)}")
    return _local_open(uri, uri)


def _redact(uri: str) -> str:
    """Drop userinfo and query (pre-signed URLs carry credentials there)."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _progress(
    size: int | None, out: Callable[[str], None] | None, name: str
) -> Callable[[int], None]:
    if out is None or not size or size < 10 * CHUNK:
        return lambda done: None
    state = {"next": 10}

    def report(done: int) -> None:
        pct = done * 100 // size
        if pct >= state["next"]:
            out(f"kustos fetch: {name}: {pct}% ({done}/{size} bytes)")
            state["next"] = (pct // 10 + 1) * 10

    return report


def _fetch_once(
    uri: str,
    dest: Path,
    expected: str | None,
    timeout: float,
    credentials_dir: str | None,
    log: Callable[[str], None] | None,
    ca_bundle: str | None = None,
) -> tuple[str, int]:
    stream = _open(uri, timeout, credentials_dir, ca_bundle)
    digest = hashlib.sha256()
    size = 0
    tmp_name: str | None = None
    try:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part",
                                            dir=dest.parent)
        except PermissionError:
            raise FetchError(f"permission denied writing to {dest.parent}") from None
        except FileNotFoundError:
            raise FetchError(f"destination directory {dest.parent} does not exist") from None
        report = _progress(stream.size, log, dest.name)
        with os.fdopen(fd, "wb") as out:
            for block in stream.chunks:
                digest.update(block)
                out.write(block)
                size += len(block)
                report(size)
            if stream.size is not None and size != stream.size:
                raise FetchError(
                    f"truncated download of {_redact(uri)}: {size} of {stream.size} bytes",
                    transient=True,
                )
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise DigestMismatch(_redact(uri), expected, actual)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
        tmp_name = None
        return actual, size
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FetchError(f"no space left writing {dest}") from None
        raise FetchError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        stream.close()
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)


def fetch(
    uri: str,
    dest: str | os.PathLike[str],
    digest: str | None = None,
    *,
    retries: int = 4,
    timeout: float = 30.0,
    credentials_dir: str | None = None,
    log: Callable[[str], None] | None = None,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    ca_bundle: str | None = None,
) -> FetchResult:
    """Download ``uri`` to ``dest`` (a file path; a directory gets the URI's base name).

    Raises :class:`FetchError` (or :class:`DigestMismatch`) with a one-line message.
    Transient failures (connection errors, timeouts, 5xx, 408, 429, truncation) are retried
    ``retries`` times with exponential backoff and full jitter.
    """
    expected = parse_digest(digest) if digest else None
    target = Path(dest)
    if target.is_dir():
        base = urllib.parse.urlsplit(uri).path.rstrip("/").rsplit("/", 1)[-1]
        if not base:
            raise FetchError(f"cannot name a file inside {target} after {_redact(uri)}")
        target = target / urllib.parse.unquote(base)
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            sha, size = _fetch_once(uri, target, expected, timeout, credentials_dir, log,
                                    ca_bundle)
            return FetchResult(target, sha, size, attempt, time.monotonic() - started)
        except FetchError as exc:
            if not exc.transient or attempt > retries:
                if exc.transient and attempt > 1:
                    raise FetchError(f"{exc} (gave up after {attempt} attempts)") from None
                raise
            delay = random.uniform(0, backoff * (2 ** (attempt - 1)))
            if log:
                log(f"kustos fetch: {exc}; retrying in {delay:.1f}s ({attempt}/{retries})")
            sleep(delay)


# -------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kustos fetch",
        description="Download a model or data file and verify its sha256 before it is used.",
    )
    p.add_argument("uri", metavar="URI", help="file://, a local path, https://, or s3://bucket/key")
    p.add_argument("dest", metavar="DEST", help="destination file (or existing directory)")
    p.add_argument("--digest", help="expected digest, sha256:<hex>; the file is refused otherwise")
    p.add_argument("--retries", type=int, default=4, help="retries for transient errors (4)")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds (30)")
    p.add_argument("--credentials-dir", help="directory with AWS_* files (a mounted Secret)")
    p.add_argument("--ca-bundle", help="PEM CA certificates to trust (instead of the system's) "
                   "for https and S3; AWS_CA_BUNDLE does the same for S3 and STS")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    sig = p.add_argument_group(
        "model signature (OpenSSF model signing; runtime/signing.py)",
        "With --signature-method the model is verified before it reaches DEST.")
    sig.add_argument("--signature-method", choices=("key", "certificate", "sigstore"))
    sig.add_argument("--signature", metavar="URI", help="the bundle (default: URI + .sig)")
    sig.add_argument("--signature-key", help="elliptic-curve public key (PEM) file")
    sig.add_argument("--signature-key-fingerprint", help="sha256:<hex> the key must have")
    sig.add_argument("--signature-ca-chain", help="CA certificates (PEM) file")
    sig.add_argument("--signature-identity", help="expected signer identity (SAN)")
    sig.add_argument("--signature-issuer", help="expected OIDC issuer (sigstore)")
    sig.add_argument("--signature-trust-root", help="Sigstore trust root JSON file")
    sig.add_argument("--signer-file", help="write the verified signer here (e.g. "
                     "/dev/termination-log, which the pod status keeps)")
    from . import decrypt  # --transit-key and the Vault login flags (runtime/decrypt.py)

    decrypt.add_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.retries < 0 or args.timeout <= 0:
        print("kustos fetch: --retries must be >= 0 and --timeout > 0", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.transit_key:
            from . import decrypt

            result = decrypt.fetch_and_decrypt(args, log=None if args.quiet else log)
        elif args.signature_method:
            from . import signing  # sigstore loads only when a signature is asked for

            result = signing.fetch_and_report(args, log=None if args.quiet else log)
        else:
            result = fetch(
                args.uri,
                args.dest,
                args.digest,
                retries=args.retries,
                timeout=args.timeout,
                credentials_dir=args.credentials_dir,
                log=None if args.quiet else log,
                ca_bundle=args.ca_bundle,
            )
    except ValueError as exc:
        print(f"kustos fetch: {exc}", file=sys.stderr)
        return 2
    except FetchError as exc:
        print(f"kustos fetch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if not args.quiet:
        log(f"kustos fetch: wrote {result.path} ({result.size} bytes, {result.digest})")
    return 0
