"""TLS for `kustos serve`: the server context, reloaded when its files change.

Kubernetes updates a mounted Secret in place: the kubelet writes the new files into a
fresh directory and swaps the ``..data`` symlink, so the path stays and the inode behind
it changes (cert-manager and Vault PKI rotation arrive this way). ``ReloadingContext``
stats the files (following symlinks) every ``interval`` seconds and builds a new
``ssl.SSLContext`` when any changed; new connections get it, open ones keep the context
they were made with, so nothing is dropped. A half-written pair (certificate and key
that do not match, as seen between two file writes) is not loaded: the old context stays
and the next look tries again.

``server_credentials`` gives the gRPC server the same files with the same reloading.
Nothing here logs or raises with key material: OpenSSL's errors name files and reasons.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("kustos.serve")
T = TypeVar("T")

# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3's own suites are all fine).
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"
DEFAULT_RELOAD_INTERVAL = 2.0  # seconds between looks at the files; kubelet syncs ~1 min

# (device, inode, mtime_ns, size) per file, following symlinks; None when it is missing.
Signature = tuple[tuple[int, int, int, int] | None, ...]


class TlsConfigError(ValueError):
    """The certificate, key or client CA cannot be loaded (message names the file)."""


def signature(paths: tuple[str, ...]) -> Signature:
    out: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context: TLS 1.2+, ECDHE AEAD suites, HTTP/1.1 ALPN; with ``client_ca``
    every client must present a certificate that CA signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS_TLS12)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_RENEGOTIATION)
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot load the certificate {cert} with the key {key}: "
                             f"{_reason(exc)}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(f"cannot load the client CA {client_ca}: "
                                 f"{_reason(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def describe(cert: str) -> tuple[str, bool]:
    """("serial S, valid until T", expired?) of the first certificate in a PEM file, for
    the log: names and dates only. ("unreadable", False) when it does not parse."""
    from datetime import UTC, datetime

    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError):
        return "unreadable", False
    until = leaf.not_valid_after_utc
    return (f"serial {leaf.serial_number:x}, valid until {until:%Y-%m-%d %H:%M} UTC",
            until <= datetime.now(UTC))


def _log_loaded(what: str, cert: str) -> None:
    text, expired = describe(cert)
    if expired:
        log.warning("%s %s: %s, EXPIRED", what, cert, text)
    else:
        log.info("%s %s: %s", what, cert, text)


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason or the OS error, without echoing anything read from the files."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


class Reloading(Generic[T]):
    """What ``build()`` makes of the files ``paths`` (``value``), rebuilt when one of them
    changed since the last ``check()``. A build that raises one of ``errors`` keeps the
    previous value, is logged once per change (``what`` names the files) and is tried
    again at the next look: a pair caught between two writes gets a second look. Raises
    at construction if the files do not load."""

    def __init__(self, paths: tuple[str, ...], build: Callable[[], T],
                 errors: type[Exception], what: str) -> None:
        self._paths, self._build, self._errors, self._what = paths, build, errors, what
        self._seen = signature(paths)
        self.value = build()
        self.reloads = 0  # successful reloads (tests and logs read it)
        self._failed: Signature | None = None  # the signature whose load failed, logged once

    def check(self) -> bool:
        """Reload if the files changed since the last look; True when a new value is in
        use."""
        now = signature(self._paths)
        if now == self._seen or None in now:  # unchanged, or mid-swap (a file missing)
            return False
        try:
            value = self._build()
        except self._errors as exc:
            if now != self._failed:
                self._failed = now
                log.warning("%s changed but do not load, keeping the previous ones: %s",
                            self._what, exc)
            return False
        self._seen, self._failed = now, None
        self.value = value
        self.reloads += 1
        return True


class ReloadingContext(Reloading[Any]):
    """The current server context for ``cert``/``key`` (and ``client_ca``), rebuilt when
    the files change. Raises TlsConfigError at construction if they do not load."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None,
                 interval: float = DEFAULT_RELOAD_INTERVAL,
                 build: Callable[[str, str, str | None], Any] = server_context) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.interval = interval
        super().__init__((cert, key) + ((client_ca,) if client_ca else ()),
                         lambda: build(cert, key, client_ca), TlsConfigError, "TLS files")
        _log_loaded("TLS certificate", cert)

    @property
    def context(self) -> Any:
        return self.value

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def check(self) -> bool:
        if not super().check():
            return False
        _log_loaded("TLS certificate reloaded from", self.cert)
        return True

    async def watch(self) -> None:
        """Look at the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # never let a reload bug stop serving with the old context
                log.exception("TLS reload check failed")


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """gRPC server credentials from the same files, reloaded the same way: gRPC asks the
    fetcher before each new handshake, which stats the files and rereads them on change.
    With ``client_ca``, clients must present a certificate it signed (mTLS)."""
    import grpc

    def load() -> grpc.ServerCertificateConfiguration:
        try:
            chain = Path(cert).read_bytes()
            private = Path(key).read_bytes()
            roots = Path(client_ca).read_bytes() if client_ca else None
        except OSError as exc:
            raise TlsConfigError(f"cannot read the TLS files: {_reason(exc)}") from None
        # Checked with ssl first: gRPC would fail the handshakes, not the load.
        server_context(cert, key, client_ca)
        return grpc.ssl_server_certificate_configuration([(private, chain)], roots)

    paths = (cert, key) + ((client_ca,) if client_ca else ())
    seen: list[Signature] = [signature(paths)]
    failed: dict[Signature, float] = {}  # a pair that did not load: when to try again
    initial = load()

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        now = signature(paths)
        if now == seen[0] or None in now:
            return None  # None: keep the current configuration
        # Called before every handshake: a broken pair is retried every few seconds,
        # not on each connection.
        if time.monotonic() < failed.get(now, 0.0):
            return None
        try:
            config = load()
        except TlsConfigError as exc:
            if now not in failed:
                log.warning("TLS files changed but do not load, gRPC keeps the previous "
                            "certificate: %s", exc)
            failed.clear()
            failed[now] = time.monotonic() + DEFAULT_RELOAD_INTERVAL
            return None
        seen[0] = now
        failed.clear()
        _log_loaded("gRPC TLS certificate reloaded from", cert)
        return config

    return grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=client_ca is not None)


# --- `kustos serve` flags ---------------------------------------------------------------

# What the plain health port (--health-port) answers: probes and the Prometheus scrape.
HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


def add_tls_args(p: Any) -> None:
    """--tls-cert, --tls-key, --tls-client-ca and --health-port on an argparse parser."""
    p.add_argument("--tls-cert", metavar="FILE",
                   help="serve HTTPS with this PEM certificate chain (needs --tls-key); "
                        "reread when the file changes")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", metavar="FILE",
                   help="require client certificates signed by this PEM CA (mTLS)")
    p.add_argument("--health-port", type=int, default=None,
                   help="also listen in plain HTTP on this port for "
                        + ", ".join(sorted(HEALTH_PATHS)) + " only (probes and scrapes "
                        "that cannot present a client certificate)")


def check_tls_args(args: Any) -> str | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    if args.tls_client_ca and not args.tls_cert:
        return "--tls-client-ca needs --tls-cert and --tls-key"
    if args.health_port is not None:
        if not 1 <= args.health_port <= 65535:
            return "--health-port must be 1..65535"
        if args.health_port == args.port:
            return "--health-port must differ from --port"
    for flag in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            return f"--{flag.replace('_', '-')}: no such file {path}"
    return None


def from_args(args: Any) -> ReloadingContext | None:
    """The reloading context the flags ask for, None for plain HTTP; TlsConfigError when
    the files do not load."""
    if not args.tls_cert:
        return None
    return ReloadingContext(args.tls_cert, args.tls_key, args.tls_client_ca)
