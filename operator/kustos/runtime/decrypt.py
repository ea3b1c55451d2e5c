"""`kustos fetch --transit-key`: fetch an encrypted model and decrypt it into memory.

Order: the envelope (ciphertext) is downloaded to a staging directory (a disk volume is
fine: it is encrypted) like any model, and its signature verified if one is asked for;
then the header is checked against the flags (Transit key name, the plaintext digest
spec.model.digest pins), the data key is unwrapped with Transit ``decrypt`` (the pod's own
Vault login, runtime/transit.py), and the model is decrypted chunk by chunk into a
temporary file beside ``DEST``, renamed to ``DEST`` only after every chunk authenticated
and the plaintext digest matched. ``--require-memory`` (what the operator renders) refuses
a ``DEST`` that is not on a memory file system (tmpfs), so the plaintext never reaches a
disk. The data key lives in a bytearray that is overwritten right after use.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .encrypt import add_vault_arguments
from .fetch import FetchError, FetchResult, _progress, fetch, parse_digest

MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
STAGING_PREFIX = ".kustos-envelope-"

if TYPE_CHECKING:
    from .envelope import Header


class DecryptError(FetchError):
    """The encrypted model was refused; the message says why (never key material)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "encrypted model (envelope with a Vault/OpenBao Transit key; runtime/envelope.py)",
        "With --transit-key, URI is an envelope written by `kustos encrypt`: it is "
        "decrypted into DEST after download (and signature verification); --digest then "
        "pins the decrypted model.")
    group.add_argument("--transit-key", help="the Transit key the data key is wrapped with")
    group.add_argument("--staging-dir", help="where the encrypted file is downloaded "
                       "(default: DEST's directory); removed after decryption")
    group.add_argument("--require-memory", action="store_true",
                       help="refuse unless DEST is on a memory file system (tmpfs)")
    add_vault_arguments(group)


def filesystem_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (/proc/self/mountinfo)."""
    target = str(path.resolve())
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount = fields[4].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, right.split()[0]
    except OSError:
        return ""
    return kind


def _target(uri: str, dest: str) -> Path:
    target = Path(dest)
    if target.is_dir():
        base = urllib.parse.unquote(urllib.parse.urlsplit(uri).path.rstrip("/")
                                    .rsplit("/", 1)[-1])
        base = base.removesuffix(".enc")
        if not base:
            raise FetchError(f"cannot name a file inside {target} after the URI")
        target = target / base
    return target


def _clear_leftovers(staging: Path, target: Path) -> None:
    """A killed fetch may leave its envelope or a partial plaintext behind: remove them."""
    for stale in [*staging.glob(f"{STAGING_PREFIX}*"),
                  *target.parent.glob(f".{target.name}.decrypt-*.part")]:
        with contextlib.suppress(OSError):
            stale.unlink()


def _download(args: argparse.Namespace, envelope_path: Path,
              log: Callable[[str], None] | None) -> None:
    """The envelope to ``envelope_path``, its signature verified when asked."""
    if args.signature_method:
        from . import signing

        ciphertext = copy.copy(args)
        ciphertext.dest, ciphertext.digest = str(envelope_path), None
        signing.fetch_and_report(ciphertext, log=log)
        return
    fetch(args.uri, envelope_path, None, retries=args.retries, timeout=args.timeout,
          credentials_dir=args.credentials_dir, log=log, ca_bundle=args.ca_bundle)


def fetch_and_decrypt(args: argparse.Namespace,
                      log: Callable[[str], None] | None) -> FetchResult:
    """`kustos fetch`'s encrypted path. ValueError on usage errors, FetchError otherwise."""
    import time

    from kustos.vault.client import VaultError

    from . import envelope, transit
    from .encrypt import auth_from_args

    started = time.monotonic()
    auth = auth_from_args(args)
    expected = parse_digest(args.digest) if args.digest else None
    target = _target(args.uri, args.dest)
    if not target.parent.is_dir():
        raise FetchError(f"destination directory {target.parent} does not exist")
    if args.require_memory:
        kind = filesystem_type(target.parent)
        if kind not in MEMORY_FILESYSTEMS:
            raise DecryptError(f"refusing to decrypt into {target.parent}: it is on "
                               f"{kind or 'an unknown file system'}, not in memory (tmpfs); "
                               "mount an emptyDir with medium: Memory there")
    staging = Path(args.staging_dir) if args.staging_dir else target.parent
    if not staging.is_dir():
        raise FetchError(f"staging directory {staging} does not exist")
    _clear_leftovers(staging, target)
    envelope_path = staging / f"{STAGING_PREFIX}{target.name}"
    try:
        _download(args, envelope_path, log)
        with envelope_path.open("rb") as src:
            try:
                header = envelope.read_header(src)
            except envelope.EnvelopeError as exc:
                raise DecryptError(f"encrypted model refused: {exc}") from None
            if header.key_name != args.transit_key:
                raise DecryptError(
                    f"encrypted model refused: it was encrypted with Transit key "
                    f"{header.key_name!r}, but this model's key is {args.transit_key!r}")
            if expected is not None and header.sha256 != expected:
                raise DecryptError(
                    f"encrypted model refused: its header records the plaintext "
                    f"sha256:{header.sha256}, the expected digest is sha256:{expected}")
            if envelope_path.stat().st_size != header.encoded_size + header.ciphertext_size():
                # Cheap and early; the final-chunk flag would catch it while decrypting.
                size = envelope_path.stat().st_size - header.encoded_size
                raise DecryptError(
                    f"encrypted model refused: {size} bytes of ciphertext, the header "
                    f"says {header.ciphertext_size()} (truncated or padded)")
            try:
                with transit.session(auth) as client:
                    key = transit.unwrap(client, args.transit_mount, header.key_name,
                                         header.wrapped_key)
            except VaultError as exc:
                raise DecryptError(f"cannot unwrap the data key: {exc}") from None
            if log:
                log(f"kustos fetch: unwrapped the data key with Transit key "
                    f"{header.key_name} v{header.key_version}")
            try:
                _decrypt_to(src, target, key, header, log)
            finally:
                envelope.wipe(key)
                del key
    finally:
        with contextlib.suppress(FileNotFoundError):
            envelope_path.unlink()
    return FetchResult(target, header.sha256, header.size, 1, time.monotonic() - started)


def _decrypt_to(src: BinaryIO, target: Path, key: bytearray, header: Header,
                log: Callable[[str], None] | None) -> None:
    from . import envelope

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.decrypt-", suffix=".part",
                                   dir=target.parent)
    except OSError as exc:
        raise FetchError(f"cannot write to {target.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            envelope.decrypt_file(src, out, key, header,
                                  _progress(header.size, log, target.name))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        tmp = ""
    except envelope.EnvelopeError as exc:
        raise DecryptError(f"encrypted model refused: {exc}") from None
    except OSError as exc:
        raise FetchError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
