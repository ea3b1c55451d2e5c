"""Inference ids: the client's when it sent one, else a fresh uuid4 (hex)."""

from __future__ import annotations

import urllib.parse
import uuid

# Header names the id may come in, in order of preference (KServe's logger reads ce-id).
HEADERS = (b"x-request-id", b"ce-id")
# gRPC: the metadata key an id may come in and is echoed in (as initial metadata).
GRPC_METADATA = "x-request-id"
# Longer ids are still echoed in the protocol's body, not in a response header.
MAX_HEADER_ID = 256


def new_id() -> str:
    return uuid.uuid4().hex


def from_headers(headers: dict[bytes, bytes]) -> str | None:
    for name in HEADERS:
        value = headers.get(name)
        if value:
            text = value.decode("latin-1").strip()
            if text:
                return text
    return None


def header_line(rid: str) -> bytes:
    """The ``x-request-id`` response header line, or nothing for an id no header can carry
    as it is (control or non-ASCII characters: a CRLF in a body id must not split headers)."""
    if len(rid) <= MAX_HEADER_ID and rid.isascii() and rid.isprintable():
        return b"x-request-id: " + rid.encode("ascii") + b"\r\n"
    return b""


def ce_value(text: str) -> bytes:
    """A CloudEvents HTTP header value: percent-encoded outside printable ASCII, and '%'
    and '"' themselves (the binding's rule)."""
    if text.isascii() and text.isprintable() and "%" not in text and '"' not in text:
        return text.encode("ascii")
    return urllib.parse.quote(text, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~").encode("ascii")
