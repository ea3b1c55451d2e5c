"""The one way the model server hands data to another service without slowing predictions.

``BoundedSender.offer`` is what the request path calls: an append to a bounded deque, or,
when the deque is full, a dropped item counted by the subclass (drop newest: what is
already queued is older and goes first; a prediction never waits). A daemon thread wakes
every ``flush_interval``, takes what is pending and hands it to ``deliver``. The drift
hand-off (hooks.DriftSender) and the payload logger (payload_log.PayloadSink) are
subclasses; ``HttpPoster`` is the kept-alive HTTP/1.1 client both post with.
"""

from __future__ import annotations

import collections
import contextlib
import io
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class SendError(Exception):
    """A POST that did not reach the peer or was not accepted (no secret in the text)."""


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    return url


def connect(host: str, port: int, timeout: float, tls: bool) -> socket.socket:
    """A TCP connection with Nagle off (each pipelined write goes out at once), TLS-wrapped
    (the system's CAs, the host name checked) when ``tls``."""
    sock = socket.create_connection((host, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    return sock


class Outbox:
    """One buffer, reused, that a batch's pieces are written into and sent (or read) from.

    ``b"".join`` of a batch allocated a few hundred KiB per write, which malloc may hand
    back to the kernel when freed and fault in again page by page on the next batch (on
    a sender thread, whose malloc arena is trimmed eagerly: 160 faults per 256-prediction
    Kafka batch, a third of the sender's CPU). A buffer kept from batch to batch faults
    once; one grown past ``keep`` bytes by a batch of large payloads is let go after."""

    def __init__(self, keep: int = 4 << 20) -> None:
        self.keep = keep
        self._buf = io.BytesIO()

    def start(self) -> None:
        """Empty it (what was written stays allocated)."""
        self._buf.seek(0)

    def add(self, pieces: Iterable[bytes]) -> int:
        """Write the pieces at the end; where the end is now."""
        self._buf.writelines(pieces)
        return self._buf.tell()

    def patch(self, at: int, data: bytes) -> None:
        """Overwrite from ``at`` (a place reserved earlier)."""
        buf = self._buf
        end = buf.tell()
        buf.seek(at)
        buf.write(data)
        buf.seek(end)

    @contextlib.contextmanager
    def view(self, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """What was written (from ``start`` to ``end``), valid within the block."""
        buf = self._buf
        stop = buf.tell() if end is None else end
        with buf.getbuffer() as whole, whole[start:stop] as part:
            yield part

    def send(self, sock: socket.socket) -> None:
        """Send what was written, then let go of a buffer grown past ``keep``."""
        with self.view() as data:
            sock.sendall(data)
        if self._buf.tell() > self.keep:
            self._buf = io.BytesIO()


class HttpPoster:
    """POSTs to one URL over a kept-alive connection, with the least Python per request.

    It runs on a sender thread that shares the GIL with the event loop serving
    predictions, so it builds the request bytes itself and reads only the status line,
    content-length and chunked framing of the answer (http.client's header parsing cost
    several times more per POST). A connection the peer closed is reopened once.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        check_url(url)
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        netloc = self.host if parts.port is None else f"{self.host}:{parts.port}"
        if ":" in self.host:
            netloc = f"[{self.host}]" + (f":{parts.port}" if parts.port else "")
        self._head = (f"POST {self.path} HTTP/1.1\r\nhost: {netloc}\r\n").encode("latin-1")
        self._sock: socket.socket | None = None
        self._outbox = Outbox()
        self._buf = b""
        self._pos = 0
        self._heads: dict[bytes, tuple[int, int | None, bool, bool]] = {}
        # The last plain answer (content-length framed) and its status: see _answers.
        self._same: tuple[bytes, int] | None = None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = b""
                self._pos = 0

    def _connect(self) -> socket.socket:
        return connect(self.host, self.port, self.timeout, self.tls)

    def _request(self, body: bytes, headers: bytes) -> bytes:
        return b"".join((self._head, headers, b"content-length: %d\r\n\r\n" % len(body),
                         body))

    def post_many(self, items: list[tuple[bytes, bytes]]) -> list[int | None]:
        """POST each (body, headers) pipelined on one connection: one write for them all,
        then the answers in order. Each answer's status, None for those that got none
        (the connection failed or was closed first). One write and a few reads per batch
        instead of per POST: a round trip per POST (system calls, thread wake-ups on the
        serving core) cost more than the bytes themselves."""
        return self.send_requests([self._request(b, h) for b, h in items])

    @property
    def head(self) -> bytes:
        """The request line and host header every POST starts with."""
        return self._head

    def send_requests(self, requests: list[bytes], count: int | None = None
                      ) -> list[int | None]:
        """``post_many`` of whole requests, each starting with ``head`` (a caller that
        formats the whole request at once spares a join per POST); with ``count``, the
        items are pieces of that many requests (joined and written as one; the statuses
        are one per request)."""
        n = len(requests) if count is None else count
        statuses: list[int | None] = []
        for attempt in (1, 2):
            fresh = self._sock is None
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._outbox.start()
                self._outbox.add(requests)
                self._outbox.send(self._sock)
                if n > 1:
                    # Let the answers gather: read them in a few large reads, not one
                    # wake-up (and GIL hand-over) per answer. ~20 us per POST, <= 5 ms.
                    time.sleep(min(0.005, 0.00002 * n))
                self._answers(statuses, n)
            except (OSError, ValueError, SendError):
                self.close()
                # A kept-alive connection the peer had closed: once more on a new one.
                if attempt == 1 and not fresh and not statuses:
                    continue
            break
        return statuses + [None] * (n - len(statuses))

    def post(self, body: bytes, headers: bytes) -> int:
        """POST ``body`` with ``headers`` (ready-made ``name: value\\r\\n`` lines); the
        answer's status code. Raises SendError when no answer came."""
        request = self._request(body, headers)
        for attempt in (1, 2):  # a kept-alive connection may have been closed: retry once
            fresh = self._sock is None
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(request)
                return self._answer()
            except (OSError, ValueError, SendError) as exc:
                self.close()
                if attempt == 2 or fresh:
                    raise SendError(f"POST to {self.host}:{self.port} failed: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
        raise AssertionError("unreachable")

    def _recv(self) -> bytes:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            raise SendError("connection closed by the peer")
        return data

    def _more(self, buf: bytes, pos: int) -> tuple[bytes, int]:
        """``buf[pos:]`` plus what the socket has next (the consumed prefix dropped)."""
        return buf[pos:] + self._recv(), 0

    def _answers(self, statuses: list[int | None], n: int) -> None:
        """Read answers into ``statuses`` until it holds ``n`` or the peer closed.

        A sink answers event after event with the same bytes (status line, headers, an
        empty body): once one such answer is parsed, a run of k more is matched with one
        comparison against k copies of it, not parsed one by one (the Python per answer
        was a third of the sender's work). Any other answer is parsed, and after a few
        differing ones in a batch the rest of it too."""
        limit, misses = n, 0
        while len(statuses) < n:
            same = self._same
            if same is not None and misses < 4:
                buf, pos = self._buf, self._pos
                size = len(same[0])
                k = min(n - len(statuses), (len(buf) - pos) // size, limit)
                if k and buf.startswith(same[0] * k, pos):
                    statuses.extend([same[1]] * k)
                    pos += k * size
                    self._buf, self._pos = (b"", 0) if pos >= len(buf) else (buf, pos)
                    limit = n
                    continue
                if k > 1:  # another answer within these k: a shorter run may match
                    limit = k // 2
                    continue
                if k == 0 and buf.startswith(same[0][:len(buf) - pos], pos):
                    # Only part of the next answer has arrived, and it matches so far.
                    self._buf, self._pos = self._more(buf, pos)
                    continue
                misses += 1  # the next answer differs: parse it (it becomes the model)
            statuses.append(self._answer())
            limit = n
            if self._sock is None:  # the peer closed after this answer
                return

    def _answer(self) -> int:
        # buf/pos: answers to pipelined POSTs arrive together; an offset, not a slice per
        # answer (that copied the rest of the buffer each time).
        buf, pos = self._buf, self._pos
        while (end := buf.find(b"\r\n\r\n", pos)) < 0:
            if len(buf) - pos > 65536:
                raise SendError("response header too large")
            buf, pos = self._more(buf, pos)
        start = pos
        head = buf[pos:end]
        pos = end + 4
        # A sink answers with the same header block again and again: parse it once.
        known = self._heads.get(head)
        if known is None:
            known = _parse_head(head)
            if len(self._heads) < 64:
                self._heads[head] = known
        status, length, chunked, close = known
        if chunked:
            while True:
                while (eol := buf.find(b"\r\n", pos)) < 0:
                    buf, pos = self._more(buf, pos)
                size = int(buf[pos:eol].split(b";")[0], 16)
                while len(buf) < eol + 2 + size + 2:
                    buf, pos = self._more(buf, pos)
                    eol = buf.find(b"\r\n")
                pos = eol + 2 + size + 2
                if size == 0:
                    break
        elif length is not None:
            if len(buf) - pos < length:
                start = -1  # its head is dropped from the buffer below: not kept
            while len(buf) - pos < length:
                buf, pos = self._more(buf, pos)
            pos += length
            if start >= 0 and not close and length <= 1024:
                self._same = (buf[start:pos], status)  # the next answers may repeat it
        elif status not in (204, 304) and not 100 <= status < 200:
            close = True  # body delimited by the close: not reusable
        if pos >= len(buf):
            buf, pos = b"", 0
        self._buf, self._pos = buf, pos
        if close:
            self.close()
        return status


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, content-length, chunked, connection: close) of a response header block."""
    lines = head.split(b"\r\n")
    status_line = lines[0].split(None, 2)
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise SendError("malformed response status line")
    length, chunked, close = None, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise SendError("malformed content-length")
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    return int(status_line[1]), length, chunked, close


class BoundedSender(Generic[T]):
    """A bounded deque drained by a daemon thread; subclasses say what delivery means."""

    def __init__(self, name: str, maxsize: int, flush_interval: float = 0.05,
                 max_batch: int = 1024) -> None:
        # A deque, not a queue.Queue: append and popleft are atomic under the GIL, so the
        # request path pays no lock or condition variable per request (at ~30k requests/s
        # queue.Queue's put alone cost several percent of the serving core).
        self.maxsize = maxsize
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._pending: collections.deque[T] = collections.deque()
        self._held = 0  # items taken off the deque, being delivered (written by the thread)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, item: T) -> bool:
        """Queue ``item`` unless the queue is full (then False: the caller counts the drop).
        ``maxsize`` bounds what is queued plus what is being delivered."""
        if len(self._pending) + self._held >= self.maxsize:
            return False
        self._pending.append(item)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Stop after sending what is pending (for at most ``timeout`` seconds)."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def tick(self, now: float) -> None:
        """Called once per round before delivery (sampling, metrics)."""

    def deliver(self, batch: list[T]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            closing = self._closing.wait(self.flush_interval)
            self.tick(time.monotonic())
            # What is pending now; later arrivals wait for the next round (a slow peer
            # must not keep this loop from its per-round work).
            left = len(self._pending)
            while left > 0:
                batch: list[T] = []
                while left > 0 and len(batch) < self.max_batch:
                    self._held += 1  # before the pop: never under the true count
                    batch.append(self._pending.popleft())
                    left -= 1
                try:
                    self.deliver(batch)
                finally:
                    self._held = 0
            if closing:
                return
