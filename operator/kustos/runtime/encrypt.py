"""`kustos encrypt`: encrypt a model file for publishing, with a Vault/OpenBao Transit key.

Transit makes a fresh 256-bit data key (transit/datakey/plaintext/KEY: the plaintext for
this process, the same key wrapped by KEY for the file); the model is encrypted with it in
chunks (runtime/envelope.py) and the data key is overwritten in memory afterwards. Only a
`kustos fetch` whose Vault policy allows transit/decrypt/KEY can read the result.

``--sign-key`` then signs the encrypted file with `kustos sign` (runtime/sign.py): the
ciphertext is what is signed, so `kustos fetch` verifies the publisher before it asks
Transit for anything (docs/security.md, "Encrypted models"). ``--rewrap`` re-wraps an
existing envelope's data key with the newest Transit key version after a rotation,
without decrypting the model (and invalidates a signature over it: sign again).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import hvac

    from .envelope import Header
    from .transit import Auth

DEFAULT_MOUNT = "transit"


def add_vault_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The Vault login flags `kustos encrypt` and `kustos fetch` share."""
    p.add_argument("--vault-address", help="Vault/OpenBao address (default: $VAULT_ADDR)")
    p.add_argument("--vault-token-file", help="file holding a Vault token")
    p.add_argument("--vault-role", help="Kubernetes auth role (with --vault-jwt-file)")
    p.add_argument("--vault-jwt-file", help="ServiceAccount token to log in with")
    p.add_argument("--vault-auth-path", default="kubernetes",
                   help="mount of the Kubernetes auth method, without auth/ (kubernetes)")
    p.add_argument("--vault-namespace", help="Vault Enterprise / OpenBao namespace")
    p.add_argument("--vault-ca-cert", help="PEM CA bundle to verify Vault's certificate")
    p.add_argument("--transit-mount", default=DEFAULT_MOUNT,
                   help=f"where the Transit engine is mounted ({DEFAULT_MOUNT})")


def auth_from_args(args: argparse.Namespace) -> Auth:
    """A runtime.transit.Auth from the shared flags; ValueError on a usage error."""
    from kustos.vault.client import Login

    from .transit import Auth

    address = args.vault_address or os.environ.get("VAULT_ADDR")
    if not address:
        raise ValueError("--vault-address (or VAULT_ADDR) is required")
    login = None
    if args.vault_role or args.vault_jwt_file:
        if not (args.vault_role and args.vault_jwt_file):
            raise ValueError("--vault-role and --vault-jwt-file go together")
        login = Login(address=address, role=args.vault_role, auth_path=args.vault_auth_path,
                      namespace=args.vault_namespace, ca_cert=args.vault_ca_cert)
    token_file = args.vault_token_file
    if login is None and token_file is None:
        raise ValueError("give --vault-role with --vault-jwt-file, or --vault-token-file")
    if login is not None and token_file is not None:
        raise ValueError("--vault-token-file or --vault-role/--vault-jwt-file, not both")
    return Auth(address=address, login=login, jwt_file=args.vault_jwt_file,
                token_file=token_file, namespace=args.vault_namespace,
                ca_cert=args.vault_ca_cert)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kustos encrypt",
        description="Encrypt a model file with a fresh data key wrapped by a Vault/OpenBao "
                    "Transit key; the envelope goes to MODEL.enc unless --output says.")
    p.add_argument("model", metavar="MODEL", help="model file (or, with --rewrap, envelope)")
    p.add_argument("--transit-key", required=True, help="the Transit key's name")
    p.add_argument("--output", "-o", help="envelope path (default: MODEL.enc)")
    p.add_argument("--chunk-size", type=int, default=1 << 20,
                   help="plaintext bytes per encrypted chunk (1 MiB); what a reader holds "
                        "in memory at a time")
    p.add_argument("--rewrap", action="store_true",
                   help="MODEL is an envelope: re-wrap its data key with the newest Transit "
                        "key version, in place (or to --output)")
    add_vault_arguments(p)
    sig = p.add_argument_group("signing the encrypted file (as `kustos sign`)")
    sig.add_argument("--sign-key", help="elliptic-curve private key (PEM): sign the output")
    sig.add_argument("--sign-password-file", help="file holding the private key's password")
    sig.add_argument("--sign-certificate", help="signing certificate (PEM) for --sign-key")
    sig.add_argument("--sign-chain", action="append", default=[],
                     help="CA certificate(s) for the bundle; repeatable")
    return p


@contextlib.contextmanager
def _atomic_output(target: Path) -> Iterator[BinaryIO]:
    """A file that replaces ``target`` (mode 0644, fsynced) once the block completes; on
    an error the partial file is removed and ``target`` is left as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def encrypt_file(model: Path, output: Path, client: hvac.Client, mount: str, key: str,
                 chunk_size: int = 1 << 20) -> Header:
    """Encrypt ``model`` to ``output`` (atomically); returns the envelope.Header."""
    from . import envelope, transit

    if not 0 < chunk_size <= envelope.MAX_CHUNK:
        raise ValueError(f"--chunk-size must be 1..{envelope.MAX_CHUNK}")
    sha, size = envelope.plaintext_digest(model)
    data_key, wrapped = transit.new_data_key(client, mount, key)
    header = envelope.Header(key_name=key, wrapped_key=wrapped, sha256=sha, size=size,
                             chunk_size=chunk_size)
    try:
        with _atomic_output(output) as out, model.open("rb") as src:
            envelope.encrypt(src, out, data_key, header)
    finally:
        envelope.wipe(data_key)
    return header


def rewrap_file(path: Path, output: Path, client: hvac.Client, mount: str, key: str
                ) -> Header:
    """Replace the wrapped data key of envelope ``path`` with one from the newest version
    of Transit key ``key``; the chunks are copied unchanged."""
    import shutil

    from . import envelope, transit

    with path.open("rb") as src:
        header = envelope.read_header(src)
        if header.key_name != key:
            raise envelope.EnvelopeError(f"{path} is encrypted with Transit key "
                                         f"{header.key_name!r}, not {key!r}")
        new = transit.rewrap(client, mount, key, header.wrapped_key)
        fresh = envelope.Header(key_name=header.key_name, wrapped_key=new,
                                sha256=header.sha256, size=header.size,
                                chunk_size=header.chunk_size)
        with _atomic_output(output) as out:
            out.write(fresh.to_bytes())
            shutil.copyfileobj(src, out, envelope.CHUNK_SIZE)
    return fresh


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from kustos.vault.client import VaultError

    from . import envelope, transit

    model = Path(args.model)
    if not model.is_file():
        print(f"kustos encrypt: {model} is not a file", file=sys.stderr)
        return 2
    default = model if args.rewrap else model.with_name(model.name + ".enc")
    output = Path(args.output) if args.output else default
    try:
        auth = auth_from_args(args)
    except ValueError as exc:
        print(f"kustos encrypt: {exc}", file=sys.stderr)
        return 2
    try:
        with transit.session(auth) as client:
            if args.rewrap:
                header = rewrap_file(model, output, client, args.transit_mount,
                                     args.transit_key)
            else:
                header = encrypt_file(model, output, client, args.transit_mount,
                                      args.transit_key, args.chunk_size)
    except (VaultError, envelope.EnvelopeError) as exc:
        print(f"kustos encrypt: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"kustos encrypt: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kustos encrypt: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"kustos encrypt: wrote {output} (Transit key {header.key_name} "
          f"v{header.key_version}; plaintext sha256:{header.sha256}, {header.size} bytes)",
          file=sys.stderr)
    if args.sign_key:
        from . import sign

        try:
            password = (Path(args.sign_password_file).read_text().rstrip("\n")
                        if args.sign_password_file else None)
            bundle = output.with_name(output.name + ".sig")
            sign.sign(output, bundle, Path(args.sign_key),
                      certificate=Path(args.sign_certificate) if args.sign_certificate
                      else None, chain=[Path(c) for c in args.sign_chain], password=password)
        except (OSError, ValueError, TypeError) as exc:
            print(f"kustos encrypt: signing failed: "
                  f"{' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
            return 1
        print(f"kustos encrypt: signed the encrypted file: {bundle}", file=sys.stderr)
    return 0
