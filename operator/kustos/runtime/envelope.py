"""The encrypted model file (envelope encryption): format, encryption and decryption.

A random 256-bit data key encrypts the model with AES-256-GCM in fixed-size chunks; the
data key itself is stored only wrapped by a Vault/OpenBao Transit key (``vault:vN:...``),
so reading the model needs a Transit ``decrypt`` the Vault policy allows. Layout
(docs/security.md, "Encrypted models"):

    MAGIC (8 bytes) | header length (4 bytes, big-endian) | header (JSON, UTF-8) | chunks

Chunk ``i`` is AES-256-GCM over at most ``chunkSize`` plaintext bytes (every chunk but the
last is full; an empty model is one empty final chunk), ciphertext followed by the 16-byte
tag, with

- nonce: ``i`` as 12 bytes big-endian. A data key encrypts exactly one file, so a counter
  never repeats a (key, nonce) pair;
- associated data: sha256 of the header's bound fields, ``i`` (8 bytes) and a final flag
  (1 byte). A chunk moved elsewhere, dropped from the end, or a header field changed
  (key name, digest, size, chunk size) fails authentication.

The wrapped key is the one header field outside the associated data: `kustos encrypt
--rewrap` replaces it with the same data key wrapped by the newest Transit key version.
Any other wrapped key unwraps to another data key, and chunk 0 fails authentication.

The plaintext's sha256 and size are in the header (what spec.model.digest pins);
decryption checks both. Everything streams: memory holds one chunk, never the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"KUSTOSE\x01"
VERSION = 1
CIPHER = "AES-256-GCM"
CHUNK_SIZE = 1 << 20
TAG = 16
KEY_BYTES = 32
MAX_HEADER = 64 * 1024
MAX_CHUNK = 64 << 20


class EnvelopeError(Exception):
    """The envelope is malformed, tampered with, or does not decrypt. Messages never
    contain key material."""


@dataclass(frozen=True)
class Header:
    key_name: str  # the Transit key that wraps the data key
    wrapped_key: str  # vault:vN:... (Transit ciphertext)
    sha256: str  # hex digest of the plaintext
    size: int  # plaintext bytes
    chunk_size: int = CHUNK_SIZE
    version: int = VERSION

    @property
    def key_version(self) -> int:
        """The Transit key version that wrapped the data key (vault:vN:...)."""
        parts = self.wrapped_key.split(":")
        if len(parts) >= 3 and parts[1].startswith("v") and parts[1][1:].isdigit():
            return int(parts[1][1:])
        return 0

    @property
    def chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    def bound(self) -> dict[str, object]:
        """The fields every chunk authenticates (all but the wrapped key)."""
        return {"version": self.version, "cipher": CIPHER, "chunkSize": self.chunk_size,
                "keyName": self.key_name, "sha256": self.sha256, "size": self.size}

    def bound_digest(self) -> bytes:
        text = json.dumps(self.bound(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()

    def to_bytes(self) -> bytes:
        doc = {**self.bound(), "wrappedKey": self.wrapped_key}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return MAGIC + len(text).to_bytes(4, "big") + text

    @property
    def encoded_size(self) -> int:
        return len(self.to_bytes())

    def ciphertext_size(self) -> int:
        """Bytes after the header a complete envelope has."""
        return self.size + self.chunks * TAG


def read_header(fh: BinaryIO) -> Header:
    """Parse the header at the start of ``fh`` (left positioned at the first chunk)."""
    start = fh.read(len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or start[:len(MAGIC)] != MAGIC:
        raise EnvelopeError("not a Kustos encrypted model (no envelope header); was it "
                            "written by `kustos encrypt`?")
    length = int.from_bytes(start[len(MAGIC):], "big")
    if length > MAX_HEADER:
        raise EnvelopeError(f"envelope header of {length} bytes is larger than allowed")
    raw = fh.read(length)
    if len(raw) != length:
        raise EnvelopeError("truncated envelope header")
    try:
        doc = json.loads(raw)
        version = doc["version"]
        if version != VERSION:
            raise EnvelopeError(f"envelope format version {version!r} is not supported "
                                f"(this kustos reads version {VERSION})")
        if doc["cipher"] != CIPHER:
            raise EnvelopeError(f"unsupported cipher {doc['cipher']!r}")
        header = Header(key_name=str(doc["keyName"]), wrapped_key=str(doc["wrappedKey"]),
                        sha256=str(doc["sha256"]), size=int(doc["size"]),
                        chunk_size=int(doc["chunkSize"]), version=int(version))
    except EnvelopeError:
        raise
    except (ValueError, KeyError, TypeError):
        raise EnvelopeError("malformed envelope header") from None
    if not 0 < header.chunk_size <= MAX_CHUNK or header.size < 0:
        raise EnvelopeError("malformed envelope header (chunk size or plaintext size)")
    if not header.wrapped_key.startswith("vault:") or header.key_version < 1:
        raise EnvelopeError("malformed envelope header (the wrapped key is not Transit "
                            "ciphertext vault:vN:...)")
    return header


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(bound: bytes, index: int, final: bool) -> bytes:
    return bound + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _read_full(fh: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        block = fh.read(left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def plaintext_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """sha256 (hex) and size of a file, streamed."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_SIZE):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def encrypt(src: BinaryIO, out: BinaryIO, key: bytearray, header: Header) -> None:
    """Write the envelope of ``src`` (whose digest and size ``header`` holds) to ``out``."""
    aead = AESGCM(key)  # copied into OpenSSL; no extra Python bytes copy
    bound = header.bound_digest()
    out.write(header.to_bytes())
    digest, done = hashlib.sha256(), 0
    for index in range(header.chunks):
        block = _read_full(src, header.chunk_size)
        final = index == header.chunks - 1
        digest.update(block)
        done += len(block)
        out.write(aead.encrypt(_nonce(index), block, _aad(bound, index, final)))
    if done != header.size or digest.hexdigest() != header.sha256 or src.read(1):
        raise EnvelopeError("the model changed while it was being encrypted")


def decrypt_chunks(fh: BinaryIO, key: bytearray, header: Header) -> Iterator[bytes]:
    """The plaintext chunks of the envelope body at ``fh``'s position, each authenticated
    before it is yielded; the digest and size are checked after the last chunk."""
    aead = AESGCM(key)  # copied into OpenSSL; no extra Python bytes copy
    bound = header.bound_digest()
    digest, done = hashlib.sha256(), 0
    for index in range(header.chunks):
        final = index == header.chunks - 1
        want = (header.size - index * header.chunk_size if final else header.chunk_size) + TAG
        sealed = _read_full(fh, want)
        if len(sealed) != want:
            raise EnvelopeError(f"truncated encrypted model: chunk {index} of "
                                f"{header.chunks} is incomplete")
        try:
            block = aead.decrypt(_nonce(index), sealed, _aad(bound, index, final))
        except InvalidTag:
            if index == 0:
                raise EnvelopeError(
                    "chunk 0 failed authentication: the wrapped data key does not belong "
                    "to this model, or the header or the first chunk was tampered with"
                ) from None
            raise EnvelopeError(f"chunk {index} of {header.chunks} failed authentication "
                                "(tampered with or reordered)") from None
        digest.update(block)
        done += len(block)
        yield block
    if fh.read(1):
        raise EnvelopeError("unexpected data after the final chunk")
    if done != header.size or digest.hexdigest() != header.sha256:
        raise EnvelopeError("the decrypted model does not match the digest in its header")


def decrypt_file(src: BinaryIO, out: BinaryIO, key: bytearray, header: Header,
                 progress: Callable[[int], None] | None = None) -> None:
    done = 0
    for block in decrypt_chunks(src, key, header):
        out.write(block)
        done += len(block)
        if progress:
            progress(done)


def wipe(buf: bytearray) -> None:
    """Overwrite a key buffer in place (what Python allows: copies made by bytes(),
    base64 and OpenSSL's own key schedule are beyond reach)."""
    for i in range(len(buf)):
        buf[i] = 0
