"""The bytes between `kustos serve --payload-log-relay` and `kustos payload-relay`.

One Unix stream connection per serving worker. It opens with ``MAGIC`` (a version: a relay
refuses a stream it cannot read instead of misreading it), then records, each a fixed
``HEAD`` followed by the inference id (UTF-8), the request and the response:

    id length u16, kind u8, 0 u8, request length u32, response length u32,
    request JSON length i32 (-1: all of it), response JSON length i32, unix time f64

A gRPC prediction's request and response are the serialised protobuf messages; the other
kinds' are the bodies as served (a V2 binary-extension body with its JSON length). Kind
``CONTROL`` carries the model's input name in the id field (the relay redacts that input
when it is sent without its name). Little-endian, no padding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

MAGIC = b"KPLR1\n"
HEAD = struct.Struct("<HBBIIiid")
KINDS = ("v2", "v1", "seldon", "grpc")
KIND_CODES = {k: i for i, k in enumerate(KINDS)}
CONTROL = 255
# A record larger than this is a broken stream, not a prediction (the server's body limit
# is far below).
MAX_RECORD = 1 << 30

# (inference id, kind, request, request JSON length, response, response JSON length, time):
# payload_log.Exchange, with bytes for gRPC's messages until the relay parses them.
Record = tuple[str, str, Any, int | None, Any, int | None, float]


def _bytes(payload: Any) -> bytes:
    if type(payload) is bytes:
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    return bytes(payload.SerializeToString())  # a protobuf message (gRPC)


def encode(records: Iterable[Record]) -> bytes:
    """The records, framed, as one write."""
    pieces: list[bytes] = []
    add = pieces.extend
    pack, codes = HEAD.pack, KIND_CODES
    for rid, kind, request, request_json, response, response_json, when in records:
        key = rid.encode()
        req, resp = _bytes(request), _bytes(response)
        add((pack(len(key), codes[kind], 0, len(req), len(resp),
                  -1 if request_json is None else request_json,
                  -1 if response_json is None else response_json, when), key, req, resp))
    return b"".join(pieces)


def control(input_name: str) -> bytes:
    key = input_name.encode()
    return HEAD.pack(len(key), CONTROL, 0, 0, 0, -1, -1, 0.0) + key


class StreamError(Exception):
    """The stream is not one this relay can read."""


class Decoder:
    """Records out of a stream's bytes, however the reads cut them."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._started = False
        self.input_names: list[str] = []  # control records, in order

    def feed(self, data: bytes | memoryview) -> list[Record]:
        buf = self._buf
        buf += data
        at = 0
        if not self._started:
            if len(buf) < len(MAGIC):
                return []
            if buf[:len(MAGIC)] != MAGIC:
                raise StreamError("not a payload-log relay stream (or another version)")
            self._started, at = True, len(MAGIC)
        out: list[Record] = []
        size, unpack = HEAD.size, HEAD.unpack_from
        end = len(buf)
        while end - at >= size:
            k, code, _, n, m, nj, mj, when = unpack(buf, at)
            total = size + k + n + m
            if total > MAX_RECORD:
                raise StreamError(f"a record of {total} bytes")
            if end - at < total:
                break
            start = at + size
            rid = buf[start:start + k].decode()
            if code == CONTROL:
                self.input_names.append(rid)
            elif code < len(KINDS):
                req = bytes(buf[start + k:start + k + n])
                resp = bytes(buf[start + k + n:start + total - size])
                out.append((rid, KINDS[code], req, None if nj < 0 else nj, resp,
                            None if mj < 0 else mj, when))
            else:
                raise StreamError(f"unknown record kind {code}")
            at += total
        del buf[:at]
        return out
