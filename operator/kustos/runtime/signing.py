"""Verify an OpenSSF model-signing bundle for a fetched model before anything loads it.

`kustos fetch --signature ...` downloads the model into a hidden staging directory next
to its destination, downloads the bundle outside the model directory, verifies one with
the other (`model_signing` 1.1.1) and only then renames the model into place: a model
that fails verification is deleted and never reaches ``DEST``, so `kustos serve` cannot
deserialise it.

Three ways to trust a signer, one per bundle kind `model_signing` writes:

- ``key``: an elliptic-curve public key (PEM). The signer is the key's SHA-256
  fingerprint (of its DER SubjectPublicKeyInfo).
- ``certificate``: the CA chain (PEM) the signing certificate must chain to, optionally an
  expected identity (a subjectAltName). `model_signing` checks the chain at the
  certificate's notBefore only; this module also refuses a signing or intermediate
  certificate in the bundle that is expired (or not yet valid) now, because a bundle
  without a timestamp gives no other time to judge it at.
- ``sigstore``: the expected identity and OIDC issuer plus a trust root read from a file
  (a Sigstore ClientTrustConfig, or a bare TrustedRoot which is wrapped into one), so
  nothing is fetched from the network: sigstore-python's Verifier checks the Fulcio chain,
  the SCT and the Rekor inclusion proof and checkpoint from the bundle and that root.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .fetch import FetchError, FetchResult, fetch

Method = Literal["key", "certificate", "sigstore"]

CLIENT_TRUST_CONFIG = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"
SIGNING_CONFIG = "application/vnd.dev.sigstore.signingconfig.v0.2+json"
STAGE_PREFIX = ".kustos-verify-"


class SignatureError(FetchError):
    """Verification refused the model; ``what`` names the failed check."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"signature verification failed ({what}): {detail}")
        self.what = what


@dataclass(frozen=True)
class Trust:
    """What a bundle must verify against (one method)."""

    method: Method
    public_key: Path | None = None  # key
    key_fingerprint: str | None = None  # key (optional): sha256:<hex> of its SPKI
    ca_chain: Path | None = None  # certificate
    identity: str | None = None  # certificate (optional) and sigstore
    issuer: str | None = None  # sigstore
    trust_root: Path | None = None  # sigstore

    def check(self) -> None:
        """ValueError when the method's inputs are missing (a usage error)."""
        needs: dict[str, tuple[tuple[str, object], ...]] = {
            "key": (("--signature-key", self.public_key),),
            "certificate": (("--signature-ca-chain", self.ca_chain),),
            "sigstore": (("--signature-identity", self.identity),
                         ("--signature-issuer", self.issuer),
                         ("--signature-trust-root", self.trust_root)),
        }
        missing = [flag for flag, value in needs[self.method] if not value]
        if missing:
            raise ValueError(f"signature method {self.method} needs {', '.join(missing)}")


@dataclass(frozen=True)
class Verified:
    """Who signed the model, as verified."""

    method: Method
    signer: str  # key sha256 fingerprint, or the certificate's identity

    def __str__(self) -> str:
        return f"{self.method} {self.signer}"


def key_fingerprint(public_key_pem: bytes) -> str:
    """``sha256:<hex>`` of the key's DER SubjectPublicKeyInfo."""
    key = serialization.load_pem_public_key(public_key_pem)
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(what, f"cannot read {path}: {exc.strerror or exc}") from None


def _bundle_json(bundle: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read(bundle, "invalid bundle"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError("invalid bundle", f"not a JSON Sigstore bundle: {exc}") from None
    if not isinstance(data, dict) or "dsseEnvelope" not in data:
        raise SignatureError("invalid bundle", "not a model-signing bundle (no dsseEnvelope)")
    return data


def _bundle_chain(data: dict[str, Any]) -> list[x509.Certificate]:
    material = data.get("verificationMaterial") or {}
    raw: list[str] = []
    if "x509CertificateChain" in material:
        raw = [c.get("rawBytes", "") for c in material["x509CertificateChain"].get(
            "certificates") or []]
    elif "certificate" in material:
        raw = [material["certificate"].get("rawBytes", "")]
    if not raw:
        raise SignatureError("wrong signature kind",
                             "the bundle carries no certificate (was it signed with a key?)")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(r)) for r in raw]
    except (ValueError, binascii.Error) as exc:
        raise SignatureError("invalid bundle", f"unreadable certificate: {exc}") from None


def certificate_identities(cert: x509.Certificate) -> list[str]:
    """The certificate's subjectAltName values (email, URI, DNS), in order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.RFC822Name),
            *san.get_values_for_type(x509.UniformResourceIdentifier),
            *san.get_values_for_type(x509.DNSName)]


def _check_validity(chain: list[x509.Certificate], now: datetime) -> None:
    for i, cert in enumerate(chain):
        which = "signing certificate" if i == 0 else f"chain certificate {i}"
        subject = cert.subject.rfc4514_string()
        if now > cert.not_valid_after_utc:
            raise SignatureError("expired certificate",
                                 f"{which} {subject!r} expired "
                                 f"{cert.not_valid_after_utc.isoformat()}")
        if now < cert.not_valid_before_utc:
            raise SignatureError("certificate not yet valid",
                                 f"{which} {subject!r} is valid from "
                                 f"{cert.not_valid_before_utc.isoformat()}")


def _wrapped_trust_root(trust_root: Path, scratch: Path) -> Path:
    """A ClientTrustConfig file: the given one, or a bare TrustedRoot wrapped into one
    (verification reads only the trusted root; the signing config is never used)."""
    try:
        data = json.loads(_read(trust_root, "invalid trust root"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError("invalid trust root", f"{trust_root} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SignatureError("invalid trust root", f"{trust_root} is not a JSON object")
    if "trustedRoot" in data:
        return trust_root
    wrapped = {"mediaType": CLIENT_TRUST_CONFIG, "trustedRoot": data,
               "signingConfig": {"mediaType": SIGNING_CONFIG}}
    path = scratch / "trust-config.json"
    path.write_text(json.dumps(wrapped))
    return path


def verify(model: Path, bundle: Path, trust: Trust, *,
           now: datetime | None = None) -> Verified:
    """Verify ``bundle`` for ``model`` (a file or a directory); SignatureError otherwise."""
    # Imported here: `kustos fetch` without --signature never loads sigstore.
    import model_signing

    trust.check()
    now = now or datetime.now(UTC)
    data = _bundle_json(bundle)
    config = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
    with tempfile.TemporaryDirectory(prefix="kustos-trust-") as scratch:
        if trust.method == "key":
            assert trust.public_key is not None
            pem = _read(trust.public_key, "invalid public key")
            try:
                signer = key_fingerprint(pem)
                if not isinstance(serialization.load_pem_public_key(pem),
                                  ec.EllipticCurvePublicKey):
                    raise ValueError("not an elliptic-curve key")
            except ValueError as exc:
                raise SignatureError("invalid public key", str(exc)) from None
            if trust.key_fingerprint and signer != trust.key_fingerprint.lower():
                raise SignatureError("wrong key", f"the public key has fingerprint {signer}, "
                                     f"expected {trust.key_fingerprint}")
            if "publicKey" not in (data.get("verificationMaterial") or {}):
                raise SignatureError("wrong signature kind",
                                     "the bundle was not signed with a bare key")
            config.use_elliptic_key_verifier(public_key=trust.public_key)
        elif trust.method == "certificate":
            assert trust.ca_chain is not None
            chain = _bundle_chain(data)
            _check_validity(chain, now)
            names = certificate_identities(chain[0])
            if trust.identity is not None and trust.identity not in names:
                raise SignatureError("wrong identity",
                                     f"signing certificate is for {names or 'no name'}, "
                                     f"expected {trust.identity!r}")
            signer = trust.identity or (names[0] if names
                                        else chain[0].subject.rfc4514_string())
            try:
                config.use_certificate_verifier(certificate_chain=[trust.ca_chain])
            except (OSError, ValueError) as exc:
                raise SignatureError("invalid CA chain", str(exc)) from None
        else:
            assert trust.trust_root and trust.identity and trust.issuer
            path = _wrapped_trust_root(trust.trust_root, Path(scratch))
            try:
                config.use_sigstore_verifier(identity=trust.identity,
                                             oidc_issuer=trust.issuer, trust_config=path)
            except Exception as exc:  # any parse error of the root
                raise SignatureError("invalid trust root", _one_line(exc)) from None
            signer = f"{trust.identity} (issuer {trust.issuer})"
        try:
            config.verify(model, bundle)
        except ValueError as exc:
            text = _one_line(exc)
            if text.startswith("Signature mismatch"):
                raise SignatureError("tampered model",
                                     "the model does not match the signed manifest") from None
            raise SignatureError(_reason(trust), text) from None
        except Exception as exc:  # cryptography, sigstore, pyOpenSSL errors
            text = _one_line(exc)
            raise SignatureError(_sigstore_reason(text) if trust.method == "sigstore"
                                 else _reason(trust), text) from None
    return Verified(trust.method, signer)


def _reason(trust: Trust) -> str:
    return {
        "key": "bundle signature does not verify with the given key "
               "(wrong key or tampered bundle)",
        "certificate": "bundle does not verify with the given CA chain "
                       "(untrusted certificate or tampered bundle)",
        "sigstore": "Sigstore bundle does not verify against the trust root, identity "
                    "and issuer (or was tampered with)",
    }[trust.method]


def _sigstore_reason(text: str) -> str:
    """Name the failed check from sigstore-python's message (4.5.1 wording)."""
    if "SANs do not match" in text or "OIDCIssuer does not match" in text or \
            "does not contain OIDCIssuer" in text:
        return "wrong identity"
    if "not valid at validation time" in text or "expired at time of signing" in text:
        return "expired certificate"
    return _reason(Trust("sigstore"))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def default_bundle_uri(model_uri: str) -> str:
    """The bundle next to the model: ``<model uri>.sig`` (query strings kept last)."""
    parts = urllib.parse.urlsplit(model_uri)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path + ".sig"))


def fetch_verified(
    uri: str,
    dest: str | os.PathLike[str],
    digest: str | None,
    bundle_uri: str,
    trust: Trust,
    *,
    fetcher: Callable[..., FetchResult] = fetch,
    **options: Any,
) -> tuple[FetchResult, Verified]:
    """`fetch` the model and its bundle, verify, then move the model into ``dest``.

    The model is staged in a hidden directory beside the destination (same file system,
    so the final rename is atomic) and deleted when anything fails."""
    trust.check()
    target = Path(dest)
    if target.is_dir():
        base = urllib.parse.unquote(urllib.parse.urlsplit(uri).path.rstrip("/")
                                    .rsplit("/", 1)[-1])
        if not base:
            raise FetchError(f"cannot name a file inside {target} after the model URI")
        target = target / base
    # A fetch killed mid-way (OOM, node drain) leaves its staging directory in the pod's
    # emptyDir; a restarted init container removes it, unverified bytes included.
    with contextlib.suppress(OSError):
        for stale in target.parent.glob(f"{STAGE_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=target.parent))
    except FileNotFoundError:
        raise FetchError(f"destination directory {target.parent} does not exist") from None
    except PermissionError:
        raise FetchError(f"permission denied writing to {target.parent}") from None
    try:
        # The bundle sits apart from the model: a directory model is hashed whole.
        (stage / "model").mkdir()
        (stage / "bundle").mkdir()
        result = fetcher(uri, stage / "model" / target.name, digest, **options)
        fetcher(bundle_uri, stage / "bundle" / "model.sig", None, **options)
        verified = verify(result.path, stage / "bundle" / "model.sig", trust)
        os.replace(result.path, target)
        return FetchResult(target, result.sha256, result.size, result.attempts,
                           result.seconds), verified
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(stage)


def trust_from_args(args: argparse.Namespace) -> Trust:
    """The Trust that `kustos fetch`'s --signature-* flags describe."""
    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    trust = Trust(method=args.signature_method, public_key=path(args.signature_key),
                  key_fingerprint=args.signature_key_fingerprint,
                  ca_chain=path(args.signature_ca_chain), identity=args.signature_identity,
                  issuer=args.signature_issuer, trust_root=path(args.signature_trust_root))
    trust.check()
    return trust


def fetch_and_report(args: argparse.Namespace,
                     log: Callable[[str], None] | None) -> FetchResult:
    """`kustos fetch`'s signed path: fetch, verify, say who signed (log and --signer-file)."""
    trust = trust_from_args(args)
    result, verified = fetch_verified(
        args.uri, args.dest, args.digest, args.signature or default_bundle_uri(args.uri),
        trust, retries=args.retries, timeout=args.timeout,
        credentials_dir=args.credentials_dir, log=log,
        ca_bundle=getattr(args, "ca_bundle", None))
    line = f"verified signer: {verified}"
    if log:
        log(f"kustos fetch: {result.path}: {line}")
    if args.signer_file:
        # The kubelet keeps the termination log of a finished init container in the pod's
        # status: the signer is readable there without the logs.
        with contextlib.suppress(OSError):
            Path(args.signer_file).write_text(line + "\n")
    return result
