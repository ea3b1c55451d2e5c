"""`kustos sign`: sign a model file (or directory) for publishing, writing the bundle.

An OpenSSF model-signing bundle (`model_signing` 1.1.1) that `kustos fetch --signature-*`
verifies: with an elliptic-curve private key alone (verify with its public key), or with
a private key and its signing certificate plus the CA chain (verify with the CA chain and
optionally the certificate's identity). Keyless Sigstore signing needs an OIDC login and
the public Sigstore services; use `python -m model_signing sign sigstore` for that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kustos sign",
        description="Sign a model for publishing; the bundle goes next to it (MODEL.sig) "
                    "where `kustos fetch` looks by default.")
    p.add_argument("model", metavar="MODEL", help="model file or directory to sign")
    p.add_argument("--key", required=True, help="elliptic-curve private key (PEM)")
    p.add_argument("--password-file", help="file holding the private key's password")
    p.add_argument("--certificate", help="signing certificate (PEM) for --key")
    p.add_argument("--chain", action="append", default=[],
                   help="CA certificate(s) (PEM) to put in the bundle; repeatable")
    p.add_argument("--output", "-o", help="bundle path (default: MODEL.sig)")
    return p


def sign(model: Path, output: Path, key: Path, *, certificate: Path | None = None,
         chain: list[Path] | None = None, password: str | None = None) -> None:
    """Write the bundle for ``model`` to ``output``; ValueError/OSError on bad input."""
    import model_signing

    config = model_signing.signing.Config()  # type: ignore[no-untyped-call]
    if certificate is not None:
        if password is not None:
            raise ValueError("--password-file works with --key alone (model_signing 1.1.1 "
                             "reads a certificate's key unencrypted)")
        config.use_certificate_signer(private_key=key, signing_certificate=certificate,
                                      certificate_chain=chain or [])
    else:
        if chain:
            raise ValueError("--chain needs --certificate")
        config.use_elliptic_key_signer(private_key=key, password=password)
    config.sign(model, output)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    model = Path(args.model)
    if not model.exists():
        print(f"kustos sign: {model} does not exist", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else model.with_name(model.name + ".sig")
    try:
        password = (Path(args.password_file).read_text().rstrip("\n")
                    if args.password_file else None)
        sign(model, output, Path(args.key),
             certificate=Path(args.certificate) if args.certificate else None,
             chain=[Path(c) for c in args.chain], password=password)
    except (OSError, ValueError, TypeError) as exc:
        # Never echo key material: the messages name files and checks only.
        print(f"kustos sign: {' '.join(str(exc).split()) or type(exc).__name__}",
              file=sys.stderr)
        return 1
    print(f"kustos sign: wrote {output}", file=sys.stderr)
    if args.certificate is None:
        # What spec.model.signature.publicKey.fingerprint pins (the key's public half).
        from cryptography.hazmat.primitives import serialization

        from .signing import key_fingerprint

        private = serialization.load_pem_private_key(
            Path(args.key).read_bytes(), password.encode() if password else None)
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        print(f"kustos sign: public key fingerprint {key_fingerprint(public)}", file=sys.stderr)
    return 0
