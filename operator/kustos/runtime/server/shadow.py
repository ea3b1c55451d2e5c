"""Shadow traffic: a sampled copy of live predictions mirrored to a candidate model server.

The caller is served by the stable model as always. After its answer is written,
``ShadowMirror.offer`` draws the sample and appends one item to a bounded deque
(sender.BoundedSender: drop newest when full, counted as ``dropped``; never waits). The
sender thread POSTs each item to the candidate at the same path with the same body bytes
and the inference id as ``x-request-id``, pipelined on one kept-alive connection, reads the
candidate's answers, and compares them row by row with the stable's answer to the same
request: class labels (or the argmax of a probability row) must be equal, numbers (a
regressor's values) equal within a relative tolerance. The caller never sees any of it.

sender.HttpPoster reads only answer statuses, and the comparison needs the bodies, so
``PipelinedClient`` here is a small HTTP/1.1 client in the same spirit: one write for a
batch of requests, then the answers in order, status and content-length (or chunked) only.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson

from kustos.runtime.server import metrics as m
from kustos.runtime.server.sender import BoundedSender, SendError, check_url, connect
from kustos.runtime.server.shadow_tls import MirrorTls, ReloadingClientContext

log = logging.getLogger("kustos.serve")

# Two regression values agree when they differ by at most this share of the larger one
# (float32 vs float64 models, a retrained model with tiny numeric drift).
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-9
# Request headers passed on besides the body (the V2 binary extension's framing).
FORWARDED = (b"content-type", b"inference-header-content-length")


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    json_length: int | None
    seconds: float


class PipelinedClient:
    """POSTs to one origin over a kept-alive HTTP/1.1 connection, pipelined, and returns
    each answer's status and body (None for those that got no answer). ``tls``: how an
    https origin is checked (shadow_tls); None: the system's CAs and the host name."""

    def __init__(self, url: str, timeout: float = 5.0, tls: MirrorTls | None = None) -> None:
        check_url(url)
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self._context = (ReloadingClientContext(tls) if self.tls and tls is not None
                         else None)
        self._handshake_error = ""  # the last one logged: each new reason once
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        self._host_line = b"host: " + netloc.encode("idna") + b"\r\n"
        self._sock: socket.socket | None = None
        self._buf = b""
        self._pos = 0  # how much of _buf is consumed
        self._reads = 0
        self._waiting = 0  # answers still to come in this batch
        self._pace = 0.0001  # seconds per answer the peer took lately
        self._heads: dict[bytes, tuple[int, int | None, bool, bool, int | None]] = {}

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = b""
                self._pos = 0

    def request_bytes(self, path: str, headers: bytes, body: bytes) -> bytes:
        return b"".join((b"POST ", (self.prefix + path).encode("latin-1"), b" HTTP/1.1\r\n",
                         self._host_line, headers, b"content-length: %d\r\n\r\n" % len(body),
                         body))

    def _connect(self) -> socket.socket:
        if self._context is None:
            return connect(self.host, self.port, self.timeout, self.tls)
        sock = connect(self.host, self.port, self.timeout, False)
        try:
            return self._context.current().wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLError as exc:
            sock.close()
            reason = exc.reason or type(exc).__name__
            if reason != self._handshake_error:  # a candidate with another certificate
                self._handshake_error = reason
                log.warning("shadow mirror: TLS handshake with %s:%d failed: %s",
                            self.host, self.port, reason)
            raise

    def send(self, requests: list[bytes]) -> list[Answer | None]:
        """Write all ``requests`` at once, then read their answers in order. A kept-alive
        connection the peer had closed is reopened once (nothing answered yet)."""
        answers: list[Answer | None] = []
        for attempt in (1, 2):
            fresh = self._sock is None
            try:
                if self._sock is None:
                    self._sock = self._connect()
                started = time.perf_counter()
                self._reads = 0
                self._sock.sendall(b"".join(requests))
                if len(requests) > 1:
                    # Let the answers gather: a few large reads, not one wake-up (and GIL
                    # hand-over to and from the serving loop) per answer. ~20 us per
                    # request, <= 5 ms (as sender.HttpPoster does).
                    time.sleep(min(0.005, 0.00002 * len(requests)))
                while len(answers) < len(requests):
                    self._waiting = len(requests) - len(answers)
                    status, body, json_length, close = self._answer()
                    answers.append(Answer(status, body, json_length,
                                          time.perf_counter() - started))
                    if close:
                        self.close()
                        break
            except (OSError, ValueError, SendError):
                self.close()
                if attempt == 1 and not fresh and not answers:
                    continue
            break
        if answers and answers[-1] is not None:
            self._pace = 0.8 * self._pace + 0.2 * answers[-1].seconds / len(answers)
        return answers + [None] * (len(requests) - len(answers))

    def _recv(self) -> None:
        assert self._sock is not None
        if self._reads:
            # The peer answers pipelined requests one by one as it computes them: a read
            # per answer would cost a wake-up (and a GIL hand-over with the serving loop)
            # each. Sleep about as long as the rest take, by the peer's recent pace.
            time.sleep(min(0.005, max(0.001, self._pace * self._waiting)))
        self._reads += 1
        data = self._sock.recv(262144)
        if not data:
            raise SendError("connection closed by the peer")
        # The consumed prefix goes only here, once per read, not once per answer.
        self._buf = self._buf[self._pos:] + data
        self._pos = 0

    def _answer(self) -> tuple[int, bytes, int | None, bool]:
        while (end := self._buf.find(b"\r\n\r\n", self._pos)) < 0:
            if len(self._buf) - self._pos > 65536:
                raise SendError("response header too large")
            self._recv()
        head = self._buf[self._pos:end]
        self._pos = end + 4
        # The candidate's header blocks differ by their x-request-id line only (and the
        # length): without it, a block seen before is not parsed again.
        i = head.find(b"\r\nx-request-id:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            head = head[:i] + (head[j:] if j >= 0 else b"")
        known = self._heads.get(head)
        if known is None:
            known = _parse_head(head)
            if len(self._heads) < 256:
                self._heads[head] = known
        status, length, chunked, close, json_length = known
        if chunked:
            parts = []
            while True:
                while (eol := self._buf.find(b"\r\n", self._pos)) < 0:
                    self._recv()
                size = int(self._buf[self._pos:eol].split(b";")[0], 16)
                while len(self._buf) < eol + 2 + size + 2:
                    offset = eol - self._pos
                    self._recv()
                    eol = self._pos + offset
                parts.append(self._buf[eol + 2:eol + 2 + size])
                self._pos = eol + 2 + size + 2
                if size == 0:
                    break
            body = b"".join(parts)
        elif length is not None:
            while len(self._buf) - self._pos < length:
                self._recv()
            body = self._buf[self._pos:self._pos + length]
            self._pos += length
        else:
            raise SendError("answer without content-length")
        return status, body, json_length, close


def _field(lowered: bytes, name: bytes) -> bytes | None:
    """A header's value in a lowered header block (a few finds in C, no split per line)."""
    i = lowered.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    start = i + len(name) + 3
    j = lowered.find(b"\r\n", start)
    return lowered[start:j if j >= 0 else len(lowered)].strip()


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool, int | None]:
    """(status, content-length, chunked, connection: close, inference-header-content-length)."""
    parts = head[:64].split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise SendError("malformed response status line")
    low = head.lower()
    length = _field(low, b"content-length")
    json_length = _field(low, b"inference-header-content-length")
    encoding = _field(low, b"transfer-encoding")
    connection = _field(low, b"connection")
    if (length is not None and not length.isdigit()) or (
            json_length is not None and not json_length.isdigit()):
        raise SendError("malformed content length")
    return (int(parts[1]), int(length) if length is not None else None,
            encoding is not None and b"chunked" in encoding,
            connection is not None and b"close" in connection,
            int(json_length) if json_length is not None else None)


# ---------------------------------------------------------------- reading answers' rows

Row = Any  # a label (str/int/bool), a number (float), or None when unreadable


def _row(value: Any) -> Row:
    """One row of an answer as a comparable value: a probability (or score) row becomes
    the index of its largest entry, a one-element row its element."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, list):
        if value and all(isinstance(v, int | float) and not isinstance(v, bool)
                         for v in value):
            return ("argmax", max(range(len(value)), key=value.__getitem__))
        return tuple(_row(v) for v in value)
    if isinstance(value, dict):  # V1 rows of a multi-output model: the first output
        return _row(next(iter(value.values()))) if value else None
    return value


def _rows_of_tensor(data: list[Any], shape: list[int]) -> list[Row]:
    """A V2 / Seldon tensor's flat data split into rows by its shape."""
    if not shape:
        return [_row(data)]
    n = shape[0]
    if n <= 0:
        return []
    width = len(data) // n if len(data) % n == 0 else 0
    if width <= 1:
        return [_row(v) for v in data[:n]]
    return [_row(data[i * width:(i + 1) * width]) for i in range(n)]


def rows(kind: str, body: bytes, json_length: int | None = None) -> list[Row] | None:
    """The rows of one answer (V2, V1 or Seldon JSON), None when it cannot be read
    (binary tensor data, an error object, an unknown shape)."""
    if json_length is not None:
        return None  # binary tensor data: not compared
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if kind == "v2":
        outputs = doc.get("outputs")
        if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
            return None
        first = outputs[0]
        data, shape = first.get("data"), first.get("shape")
        if not isinstance(data, list) or not isinstance(shape, list):
            return None
        return _rows_of_tensor(data, shape)
    if kind == "v1":
        preds = doc.get("predictions", doc.get("outputs"))
        return [_row(p) for p in preds] if isinstance(preds, list) else None
    data = doc.get("data")
    if isinstance(data, dict):
        if isinstance(data.get("ndarray"), list):
            return [_row(r) for r in data["ndarray"]]
        tensor = data.get("tensor")
        if isinstance(tensor, dict) and isinstance(tensor.get("values"), list):
            return _rows_of_tensor(tensor["values"], list(tensor.get("shape") or []))
    if "strData" in doc or "jsonData" in doc:
        return [_row(doc.get("strData", doc.get("jsonData")))]
    return None


def _outputs(kind: str, body: bytes) -> bytes:
    """The part of an answer that holds the predictions, as bytes: equal parts of two
    answers to one request mean every row agrees (the rest names the model's version)."""
    if kind == "v2":
        i = body.find(b'"outputs":')
        return body[i:] if i >= 0 else body
    if kind == "seldon":
        j = body.find(b',"meta":')
        return body[:j] if j >= 0 else body
    return body


def same(a: Row, b: Row, rel: float = RELATIVE_TOLERANCE) -> bool:
    """Whether two rows agree: labels exactly, numbers within the relative tolerance."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if (isinstance(a, float) or isinstance(b, float)) and isinstance(a, int | float) \
            and isinstance(b, int | float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= max(rel * max(abs(a), abs(b)), ABSOLUTE_TOLERANCE)
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) \
            and not (a and a[0] == "argmax"):
        return all(same(x, y, rel) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def agreement(stable: list[Row], candidate: list[Row],
              rel: float = RELATIVE_TOLERANCE) -> tuple[int, int]:
    """(agreeing, disagreeing) rows; rows only one side has count as disagreeing."""
    agree = sum(1 for a, b in zip(stable, candidate, strict=False) if same(a, b, rel))
    return agree, max(len(stable), len(candidate)) - agree


# ---------------------------------------------------------------- the mirror


# What ``offer`` queues: references to the request's and the answer's parts as they are
# (path, kind, request body, request headers, inference id, stable answer, its binary
# header length, rows); the candidate's request is built from it on the sender thread.
Offered = tuple[str, str, bytes, dict[bytes, bytes], str, bytes, int | None, int]


def candidate_path(path: str) -> str:
    """A versioned V2 path goes to the unversioned one: the candidate serves another
    version of the model."""
    if "/versions/" not in path:
        return path
    head, _, rest = path.partition("/versions/")
    return head + rest[rest.find("/"):] if "/" in rest else head


def header_lines(headers: dict[bytes, bytes], rid: str,
                 cache: dict[tuple[bytes | None, bytes | None], bytes] | None = None) -> bytes:
    """The forwarded header lines plus x-request-id; ``cache`` keeps the forwarded part
    by its values (a handful of distinct ones: built once, not once per request)."""
    key = (headers.get(FORWARDED[0]), headers.get(FORWARDED[1]))
    fixed = cache.get(key) if cache is not None else None
    if fixed is None:
        fixed = b"".join(b"%s: %s\r\n" % (name, value)
                         for name, value in zip(FORWARDED, key, strict=True)
                         if value is not None)
        if cache is not None and len(cache) < 64:
            cache[key] = fixed
    if rid.isascii() and rid.isprintable() and len(rid) <= 256:
        return fixed + b"x-request-id: " + rid.encode("ascii") + b"\r\n"
    return fixed


class ShadowMirror(BoundedSender[Offered]):
    """The request path's ``offer`` plus the sender thread that mirrors and compares."""

    def __init__(self, url: str, model: str, percent: float = 100.0, queue: int = 4096,
                 timeout: float = 5.0, max_batch: int = 256,
                 rel_tolerance: float = RELATIVE_TOLERANCE,
                 flush_interval: float = 0.05, tls: MirrorTls | None = None) -> None:
        if not 0.0 <= percent <= 100.0:
            raise ValueError("the shadow percentage must be within 0..100")
        if queue < 1:
            raise ValueError("the shadow queue must hold at least one request")
        super().__init__("kustos-shadow", queue, flush_interval=flush_interval,
                         max_batch=max_batch)
        self.client = PipelinedClient(url, timeout, tls)
        self.fraction = percent / 100.0
        self.rel = rel_tolerance
        self.sent = m.SHADOW_REQUESTS.labels(model, "sent")
        self.dropped = m.SHADOW_REQUESTS.labels(model, "dropped")
        self.failed = m.SHADOW_REQUESTS.labels(model, "failed")
        self.agree = m.SHADOW_ROWS.labels(model, "agree")
        self.disagree = m.SHADOW_ROWS.labels(model, "disagree")
        self.duration = m.SHADOW_DURATION.labels(model)
        self._header_cache: dict[tuple[bytes | None, bytes | None], bytes] = {}
        self.start()

    def offer(self, path: str, kind: str, body: bytes, headers: dict[bytes, bytes], rid: str,
              stable: bytes, stable_json_length: int | None, rows: int) -> None:
        """Called after the caller's answer is written: the sample draw (a C call, only
        below 100 %) and one deque append of references. The candidate's request (path,
        header lines) is built on the sender thread, not on the serving loop."""
        if self.fraction < 1.0 and random.random() >= self.fraction:
            return
        if not self.enqueue((path, kind, body, headers, rid, stable, stable_json_length,
                             rows)):
            self.dropped.inc()

    def deliver(self, batch: list[Offered]) -> None:
        client = self.client
        cache = self._header_cache
        answers = client.send([client.request_bytes(candidate_path(o[0]),
                                                    header_lines(o[3], o[4], cache), o[2])
                               for o in batch])
        sent = failed = agree = disagree = 0
        seconds: list[float] = []
        for i, (item, answer) in enumerate(zip(batch, answers, strict=True)):
            if i % 32 == 31:
                time.sleep(0)  # let the serving loop have the GIL between chunks
            if answer is None or not 200 <= answer.status < 300:
                failed += 1
                continue
            sent += 1
            seconds.append(answer.seconds)
            kind, stable, stable_json_length = item[1], item[5], item[6]
            if (answer.json_length is None and stable_json_length is None
                    and _outputs(kind, stable) == _outputs(kind, answer.body)):
                agree += item[7]  # the same bytes: no need to read them
                continue
            mine = rows(kind, stable, stable_json_length)
            theirs = rows(kind, answer.body, answer.json_length)
            if mine is None or theirs is None:
                continue  # not comparable (binary tensors): counted as sent only
            a, d = agreement(mine, theirs, self.rel)
            agree += a
            disagree += d
        if sent:
            self.sent.inc(sent)
            m.observe_many(self.duration, seconds, m.LATENCY_BOUNDS)
        if failed:
            self.failed.inc(failed)
            log.debug("shadow: %d request(s) got no answer from the candidate", failed)
        if agree:
            self.agree.inc(agree)
        if disagree:
            self.disagree.inc(disagree)

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        if not self._thread.is_alive():
            self.client.close()
