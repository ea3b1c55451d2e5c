"""The shadow mirror's HTTPS client: how the stable server checks the candidate it mirrors
to (and proves itself to a candidate that requires client certificates).

Both tracks of a ModelDeployment mount the same spec.runtime.tls Secret, so the candidate
serves the very certificate the stable serves. ``--shadow-tls-pin FILE`` trusts exactly
the first certificate in FILE (the leaf of the stable's own tls.crt) and nothing else:
no CA, so no other certificate that CA signed; the host name is not checked (the
certificate names the model's Service, not ``<md>-candidate``: the pinned certificate is
the identity). Its dates are checked. ``--shadow-tls-cert/--shadow-tls-key`` present a
client certificate (the stable's own, under mTLS). Without a pin an https URL is checked
against the system's CAs and its host name, as sender.connect does.

The files are stat-ed at each new connection (connections are kept alive, so that is
rare) and reread when they changed: a rotated Secret is picked up without a restart. A
new set that does not load keeps the previous context, with one warning.

Stdlib only: `kustos serve` builds its parser before prometheus_client may be imported.
"""

from __future__ import annotations

import argparse
import logging
import ssl
from dataclasses import dataclass

# how `kustos serve` reloads its own certificate on rotation (stat, following the
# kubelet's ..data symlink)
from kustos.runtime.server.tls import Reloading

log = logging.getLogger("kustos.serve")

BEGIN, END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


class ShadowTlsError(ValueError):
    """A file of the mirror's TLS settings does not load (the message names the file and
    the reason, never its contents)."""


@dataclass(frozen=True)
class MirrorTls:
    """The mirror's TLS settings, as the flags give them (file paths)."""

    pin: str | None = None  # PEM: the candidate must present its first certificate
    cert: str | None = None  # PEM client certificate chain (mTLS)
    key: str | None = None  # its private key

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.pin, self.cert, self.key) if f)


def first_certificate(path: str) -> str:
    """The first PEM certificate in ``path`` (a tls.crt holds the leaf, then its chain)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(1024 * 1024)
    except OSError as exc:
        raise ShadowTlsError(f"cannot read {path}: {exc.strerror}") from None
    start = text.find(BEGIN)
    end = text.find(END, start)
    if start < 0 or end < 0:
        raise ShadowTlsError(f"{path} holds no PEM certificate")
    return text[start:end + len(END)] + "\n"


def client_context(settings: MirrorTls) -> ssl.SSLContext:
    """The context new connections to the candidate are wrapped with."""
    if settings.pin is None:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # the pin is the identity (see the module's docstring)
        try:
            ctx.load_verify_locations(cadata=first_certificate(settings.pin))
        except ssl.SSLError as exc:
            raise ShadowTlsError(f"cannot load the pinned certificate of {settings.pin}: "
                                 f"{exc.reason or type(exc).__name__}") from None
        # A trust anchor that is not a CA: the candidate's own certificate.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert:
        try:
            ctx.load_cert_chain(settings.cert, settings.key)
        except (ssl.SSLError, OSError) as exc:
            reason = (exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror)
            raise ShadowTlsError(f"cannot load the client certificate {settings.cert} with "
                                 f"the key {settings.key}: "
                                 f"{reason or type(exc).__name__}") from None
    return ctx


class ReloadingClientContext(Reloading[ssl.SSLContext]):
    """``client_context(settings)``, rebuilt when one of its files changed since the last
    ``current()``. Raises ShadowTlsError at construction if the files do not load."""

    def __init__(self, settings: MirrorTls) -> None:
        self.settings = settings
        super().__init__(settings.files, lambda: client_context(settings), ShadowTlsError,
                         "shadow mirror: TLS files")

    def current(self) -> ssl.SSLContext:
        self.check()
        return self.value


# --- `kustos serve` flags ---------------------------------------------------------------


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shadow-tls-pin", metavar="FILE",
                   help="with an https --shadow-url: accept only the first certificate of "
                        "this PEM file from the candidate (e.g. the server's own "
                        "--tls-cert, which the candidate serves too); host name unchecked")
    p.add_argument("--shadow-tls-cert", metavar="FILE",
                   help="client certificate the mirror presents to a candidate that "
                        "requires one (mTLS); needs --shadow-tls-key")
    p.add_argument("--shadow-tls-key", metavar="FILE", help="PEM private key of "
                   "--shadow-tls-cert")


def from_args(args: argparse.Namespace) -> MirrorTls | None:
    if not (args.shadow_tls_pin or args.shadow_tls_cert):
        return None
    return MirrorTls(args.shadow_tls_pin, args.shadow_tls_cert, args.shadow_tls_key)


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the --shadow-tls-* flags (they are loaded once here), or None."""
    settings = from_args(args)
    if bool(args.shadow_tls_cert) != bool(args.shadow_tls_key):
        return "--shadow-tls-cert and --shadow-tls-key go together"
    if settings is None:
        return None
    if not (args.shadow_url or "").startswith("https://"):
        return "--shadow-tls-* need an https --shadow-url"
    try:
        client_context(settings)
    except ShadowTlsError as exc:
        return f"--shadow-tls-*: {exc}"
    return None
