"""A small HTTP/1.1 server on asyncio + httptools, built for many tiny JSON requests.

Why not a framework: at ~0.1 ms per prediction, routing layers, middleware and
per-request coroutines cost more than the model. This server parses with httptools,
hands each complete request to ``App.handle(request, reply)`` as a plain callback, and
writes pre-built header blocks. Keep-alive and pipelining are handled: responses leave
in request order even when a later request finishes first (micro-batches complete
together). Bodies over ``max_body`` get 413 without being buffered.

Limits against slow or hostile peers (all configurable on ``HttpServer``):

* URL over ``max_url_bytes`` -> 414; header section over ``max_header_bytes`` -> 431.
* Deadlines count from the request's first byte, not from the last byte received, so
  trickling one byte at a time buys nothing: the header section must be complete within
  ``header_timeout``, the whole request within ``body_timeout``; a connection waits at
  most ``keepalive_timeout`` for its next request (``header_timeout`` for its first).
  A request in progress gets 408 on expiry; an idle connection is just closed.
* At most ``max_connections`` open connections: at the cap the listening sockets are
  not read (new clients wait in the kernel's backlog) until one closes.
* Malformed framing (which httptools/llhttp rejects: CL with TE, duplicate CL, obs-fold,
  bad chunk sizes) gets 400, an unsupported Transfer-Encoding 501, and then the
  connection is aborted rather than closed gracefully.

TLS (``tls=`` a ``kustos.runtime.server.tls.ReloadingContext``): each accepted socket is
wrapped with the context current at accept time, so a reloaded certificate serves the next
connection and open ones keep theirs. The handshake must finish within
``header_timeout``; it runs while the connection counts against ``max_connections``. A
client that speaks plain HTTP to the TLS port (its first byte is a letter, not a TLS
record) gets a plain 400 and the connection is closed. Handshake failures are counted,
not logged (asyncio logs them at debug level only): a port scan must not flood the log.
Without TLS the accept path is the same as before: one branch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol

import httptools

if TYPE_CHECKING:
    from kustos.runtime.server.tls import ReloadingContext

log = logging.getLogger("kustos.serve")

JSON = b"application/json"
# Stop parsing a connection's pipelined requests while this many responses are pending.
MAX_PIPELINE = 64

DEFAULT_MAX_URL_BYTES = 8 << 10
DEFAULT_MAX_HEADER_BYTES = 32 << 10
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
DEFAULT_MAX_CONNECTIONS = 4096
BACKLOG = 2048
_ACCEPT_BATCH = 128  # accepts per wake-up, so one busy listener cannot starve the loop
_FD_SPARE = 64  # descriptors kept for model files, sidecar clients, metrics files
_ABORT_GRACE = 1.0  # seconds a final answer may take to leave before the socket is cut
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PLAIN_TO_TLS_BODY = b'{"error":"this port speaks HTTPS: the client sent plain HTTP"}'
_PLAIN_TO_TLS = (b"HTTP/1.1 400 Bad Request\r\nserver: kustos\r\n"
                 b"content-type: application/json\r\ncontent-length: %d\r\n"
                 b"connection: close\r\n\r\n" % len(_PLAIN_TO_TLS_BODY)) + _PLAIN_TO_TLS_BODY

# What a connection's deadline means when it passes.
_NONE = 0  # waiting for the app: no deadline
_IDLE = 1  # between requests: close
_HEAD = 2  # header section incomplete: 408
_BODY = 3  # body incomplete: 408
_BROKEN = 4  # final answer queued behind earlier responses: abort


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "started")

    def __init__(self, method: bytes, path: str, query: str, headers: dict[bytes, bytes],
                 body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.started = time.perf_counter()


# reply(status, body, content_type, extra_header_lines)
Reply = Callable[[int, bytes, bytes, bytes], None]


class App(Protocol):
    def handle(self, request: Request, reply: Reply) -> None: ...


class OnlyPaths:
    """An App that passes only ``paths`` on to ``app`` and answers 404 to the rest: the
    plain-HTTP health port beside an mTLS port, which the kubelet's probes (they present
    no client certificate) and Prometheus reach without serving inference in the clear."""

    def __init__(self, app: App, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    def handle(self, request: Request, reply: Reply) -> None:
        if request.path in self.paths:
            self.app.handle(request, reply)
        else:
            reply(404, error_body("not served on this port"), JSON, b"")


_HEADS: dict[tuple[int, bytes], bytes] = {}


def _head(status: int, content_type: bytes) -> bytes:
    key = (status, content_type)
    head = _HEADS.get(key)
    if head is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        head = b"HTTP/1.1 %d %s\r\nserver: kustos\r\ncontent-type: %s\r\n" % (
            status, phrase.encode(), content_type)
        _HEADS[key] = head
    return head


def error_body(message: str) -> bytes:
    import orjson

    return orjson.dumps({"error": message})


class _Reject(Exception):
    """Raised in a parser callback to stop parsing: answer ``status`` once, then close."""

    def __init__(self, status: int, message: str, abort: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.abort = abort


class _Slot:
    """One request's place in the connection's response order."""

    __slots__ = ("abort", "close", "data")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False
        self.abort = False


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.max_body = server.max_body
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.slots: deque[_Slot] = deque()
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.hidden_bytes = 0  # bytes of a header httptools holds until it is complete
        self.head_progress = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False
        self.paused_at = 0.0
        self.in_message = False
        self.headers_done = False
        self.http10 = False
        self.expect_continue = False  # a 100 Continue is owed once earlier answers are out
        self.request_started = 0.0
        self.deadline = math.inf
        self.deadline_kind = _NONE
        self.broken = False  # parser state unusable: answer what is pending, then close
        self.reject: _Reject | None = None

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.server.connections.add(self)
        # Go's rule: a new connection's first request has header_timeout from accept.
        self._set_deadline(time.monotonic() + self.server.header_timeout, _IDLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connection_lost(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if len(self.slots) < MAX_PIPELINE:
            self._resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        self.head_progress = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fatal(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            reject, self.reject = self.reject, None
            if reject is not None:
                self._fatal(reject.status, reject.message, reject.abort)
            else:
                self._fatal(400, f"malformed HTTP request: {exc}")
        else:
            if self.in_message and not self.headers_done:
                # httptools buffers a header until it ends; a chunk that completed nothing
                # went into that buffer, so count it too.
                self.hidden_bytes = 0 if self.head_progress else self.hidden_bytes + len(data)
                if self.header_bytes + self.hidden_bytes > self.server.max_header_bytes:
                    self._fatal(431, f"request header section larger than "
                                     f"{self.server.max_header_bytes} bytes")

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.in_message = True
        self.headers_done = False
        self.head_progress = True
        self.url = b""
        self.headers = {}
        self.header_bytes = 0
        self.hidden_bytes = 0
        self.body = []
        self.body_size = 0
        self.too_large = False
        now = time.monotonic()
        self.request_started = now
        self._set_deadline(now + self.server.header_timeout, _HEAD)

    def on_url(self, url: bytes) -> None:
        self.head_progress = True
        self.url += url
        if len(self.url) > self.server.max_url_bytes:
            self._reject(414, f"URL longer than {self.server.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_progress = True
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_bytes > self.server.max_header_bytes:
            self._reject(431, f"request header section larger than "
                              f"{self.server.max_header_bytes} bytes")
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.head_progress = True
        self.http10 = self.parser.get_http_version() == "1.0"
        headers = self.headers
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            # llhttp accepts e.g. "gzip, chunked" and leaves the decoding to us; we do none.
            if coding.strip().lower() != b"chunked":
                self._reject(501, "only Transfer-Encoding: chunked is supported")
            if self.http10:  # RFC 9112 6.1: faulty framing, a smuggling shape
                self._reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self.too_large = True
        if headers.get(b"expect", b"").lower() == b"100-continue" and not self.http10:
            if self.too_large:  # the client has not sent the body yet: refuse now
                self._reject(413, f"request body larger than {self.max_body} bytes",
                             abort=False)
            if self.slots:  # in pipeline order: only after the answers before it
                self.expect_continue = True
            elif self.transport is not None:
                self.transport.write(_CONTINUE)
        self._set_deadline(self.request_started + self.server.body_timeout, _BODY)

    def on_body(self, body: bytes) -> None:
        self.expect_continue = False  # the client did not wait for it
        if self.too_large:
            return  # drained, not kept, so the client can still read the 413
        self.body_size += len(body)
        if self.body_size > self.max_body:
            self.too_large = True
            self.body = []
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.expect_continue = False
        if self.closed:
            return
        self._set_deadline(math.inf, _NONE)  # the app answers; _flush sets the idle clock
        slot = _Slot()
        self.slots.append(slot)
        keep_alive = bool(self.parser.should_keep_alive()) and not self.server.draining
        http10 = self.http10
        method = self.parser.get_method()
        if self.too_large:
            self._reply(slot, method, False, http10, 413,
                        error_body(f"request body larger than {self.max_body} bytes"), JSON, b"")
            return
        raw = self.url
        path, _, query = raw.partition(b"?")
        try:
            spath = path.decode("ascii")
            if "%" in spath:
                from urllib.parse import unquote

                spath = unquote(spath, errors="strict")
            squery = query.decode("latin-1")
        except (UnicodeDecodeError, ValueError):
            self._reply(slot, method, keep_alive, http10, 400, error_body("malformed URL"),
                        JSON, b"")
            return
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = Request(method, spath, squery, self.headers, body, keep_alive)

        def reply(status: int, data: bytes, content_type: bytes = JSON, extra: bytes = b"") -> None:
            self._reply(slot, method, keep_alive, http10, status, data, content_type, extra)

        try:
            self.app.handle(request, reply)
        except Exception:  # the app answers errors itself; this is the last line of defence
            log.exception("unhandled error in request handler")
            if slot.data is None:
                reply(500, error_body("internal server error"), JSON, b"")
        if len(self.slots) >= MAX_PIPELINE:
            self._pause_reading()

    # -- writing
    def _reply(self, slot: _Slot, method: bytes, keep_alive: bool, http10: bool, status: int,
               data: bytes, content_type: bytes, extra: bytes) -> None:
        if slot.data is not None:
            return
        close = not keep_alive or self.server.draining
        head = _head(status, content_type) + extra
        head += b"content-length: %d\r\n" % len(data)
        if close:
            head += b"connection: close\r\n"
        elif http10:  # an HTTP/1.0 client closes unless keep-alive is confirmed
            head += b"connection: keep-alive\r\n"
        slot.close = close
        slot.data = head + b"\r\n" + (data if method != b"HEAD" else b"")
        if self.slots and self.slots[0] is slot:
            self._flush()

    def _flush(self) -> None:
        transport = self.transport
        slots = self.slots
        while slots and slots[0].data is not None:
            slot = slots.popleft()
            if transport is None or self.closed:
                continue
            transport.write(slot.data)  # type: ignore[arg-type]
            if slot.close:
                slots.clear()
                if slot.abort:
                    self._abort()
                else:
                    self._close()
                return
        if not slots and not self.closed:
            if self.in_message:
                if self.expect_continue and transport is not None:
                    self.expect_continue = False
                    transport.write(_CONTINUE)
            elif self.server.draining:
                self._close()
                return
            else:
                self._set_deadline(time.monotonic() + self.server.keepalive_timeout, _IDLE)
        if len(slots) < MAX_PIPELINE and not self.writing_paused:
            self._resume_reading()

    def _reject(self, status: int, message: str, abort: bool = True) -> None:
        """Stop the parser from inside a callback; data_received answers."""
        self.reject = _Reject(status, message, abort)
        raise self.reject

    def _fatal(self, status: int, message: str, abort: bool = True) -> None:
        """A protocol-level error: answer once, in order, and close (abort: no goodbye)."""
        if self.closed:
            return
        self.broken = True
        self.in_message = False
        self.expect_continue = False
        self._pause_reading()
        # Earlier pipelined answers may still be computed; they get a bounded wait.
        self._set_deadline(time.monotonic() + self.server.body_timeout, _BROKEN)
        slot = _Slot()
        slot.abort = abort
        self.slots.append(slot)
        self._reply(slot, b"GET", False, False, status, error_body(message), JSON, b"")

    # -- deadlines
    def _set_deadline(self, when: float, kind: int) -> None:
        self.deadline = when
        self.deadline_kind = kind

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep once ``now`` is past ``self.deadline``."""
        kind = self.deadline_kind
        if kind in (_HEAD, _BODY):
            if self.reading_paused and not self.writing_paused:
                return  # our pipeline limit holds the request back: its clock is stopped
            if kind == _HEAD:
                what, limit = "header section", self.server.header_timeout
            else:
                what, limit = "request body", self.server.body_timeout
            self._fatal(408, f"{what} not received within {limit:g}s of the request's start")
        elif kind == _IDLE:
            self._close()
        elif kind == _BROKEN:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # -- closing and flow control
    def _close(self) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            self.closed = True
            transport.close()
            if transport.get_write_buffer_size():
                # close() waits for the peer to read what is queued: not forever.
                asyncio.get_running_loop().call_later(self.server.keepalive_timeout,
                                                      transport.abort)

    def _abort(self) -> None:
        """Drop the connection without reading more from the peer."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.closed = True
        if transport.get_write_buffer_size():
            # The final answer is still queued: give it a moment, then cut.
            transport.close()
            asyncio.get_running_loop().call_later(_ABORT_GRACE, transport.abort)
        else:
            transport.abort()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.paused_at = time.monotonic()
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if (self.reading_paused and self.transport is not None and not self.closed
                and not self.broken):
            self.reading_paused = False
            if self.deadline_kind in (_HEAD, _BODY):  # time we held it does not count
                self.deadline += time.monotonic() - max(self.paused_at, self.request_started)
            self.transport.resume_reading()

    @property
    def idle(self) -> bool:
        return not self.slots and not self.in_message

    def close_if_idle(self) -> None:
        if self.idle:
            self._close()


def _raise_fd_limit(want: int) -> int:
    """Connections the open-files limit allows, after raising the soft limit if it can."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return want
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    need = want + in_use + _FD_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY:
        return want
    return max(1, min(want, soft - in_use - _FD_SPARE))


def _bind(host: str | None, port: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets as loop.create_server makes them (each address, v6-only)."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for af, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(af, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{addr!r}: {exc.strerror}") from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class HttpServer:
    """Owns the listening socket(s) and the live connections: limits, timeouts, draining.

    It accepts by itself (add_reader on the listening sockets) rather than through
    loop.create_server, so that at ``max_connections`` it can stop reading the listener
    and leave new clients in the kernel backlog, instead of accepting and dropping them.
    """

    def __init__(self, app: App, max_body: int = 16 << 20,
                 keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 tls: ReloadingContext | None = None) -> None:
        self.app = app
        self.tls = tls
        self.tls_failures = 0  # handshakes that failed or timed out (tests read it)
        self.plain_to_tls = 0  # plain HTTP clients refused on the TLS port
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self.accepting = False
        self.accept_pauses = 0  # times the cap stopped accepting (tests read it)
        self._listeners: list[socket.socket] = []
        self._opening: set[asyncio.Task[object]] = set()
        self._fd_backoff = False
        self._cap_logged = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tls_watch: asyncio.Task[None] | None = None

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._listeners)

    async def start(self, host: str, port: int, reuse_port: bool = False,
                    sock: socket.socket | None = None) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        allowed = _raise_fd_limit(self.max_connections)
        if allowed < self.max_connections:
            log.warning("max connections lowered from %d to %d by the open-files limit "
                        "(ulimit -n)", self.max_connections, allowed)
            self.max_connections = allowed
        if sock is not None:
            sock.listen(BACKLOG)
            sock.setblocking(False)
            self._listeners = [sock]
        else:
            self._listeners = _bind(host, port, reuse_port)
        self._resume_accepting()
        self._sweeper = loop.create_task(self._sweep())
        if self.tls is not None:
            self._tls_watch = loop.create_task(self.tls.watch())
        bound: int = self._listeners[0].getsockname()[1]
        return bound

    # -- accepting, with the connection cap
    @property
    def open_connections(self) -> int:
        return len(self.connections) + len(self._opening)

    def _on_acceptable(self, listener: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        for _ in range(_ACCEPT_BATCH):
            if self.open_connections >= self.max_connections:
                self._pause_accepting()
                now = time.monotonic()
                if now - self._cap_logged > 60:
                    self._cap_logged = now
                    log.warning("at the connection cap (%d): new clients wait in the "
                                "backlog", self.max_connections)
                return
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: retry in a second, as asyncio does.
                    log.error("cannot accept a connection: %s; retrying in 1s", exc.strerror)
                    self._pause_accepting()
                    self._fd_backoff = True
                    loop.call_later(1.0, self._end_fd_backoff)
                else:
                    log.error("accept failed: %s", exc)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task: asyncio.Task[object]
            if self.tls is None:
                task = loop.create_task(
                    loop.connect_accepted_socket(lambda: HttpProtocol(self), conn))
            else:
                task = loop.create_task(self._open_tls(conn))
            self._opening.add(task)
            task.add_done_callback(functools.partial(self._opened, conn))

    async def _open_tls(self, conn: socket.socket) -> object:
        """The TLS handshake on an accepted socket, after a look at its first byte."""
        loop = self._loop
        assert loop is not None and self.tls is not None
        first = await self._peek(conn)
        if not first:
            raise ConnectionAbortedError("closed or silent before the TLS handshake")
        if first.isalpha():  # a TLS client starts with a handshake record, 0x16
            self._refuse_plain(conn)
            return None
        return await loop.connect_accepted_socket(
            lambda: HttpProtocol(self), conn, ssl=self.tls.context,
            ssl_handshake_timeout=self.header_timeout)

    async def _peek(self, conn: socket.socket) -> bytes:
        """The first byte the client sent, left in the socket; b"" on EOF or timeout."""
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        loop = self._loop
        assert loop is not None
        readable: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await asyncio.wait_for(readable, self.header_timeout)
            return conn.recv(1, socket.MSG_PEEK)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return b""
        finally:
            loop.remove_reader(fd)

    def _refuse_plain(self, conn: socket.socket) -> None:
        """Answer a plain-HTTP request on the TLS port with a plain 400, then close."""
        self.plain_to_tls += 1
        with contextlib.suppress(OSError):
            conn.recv(65536)  # what arrived, so that closing does not reset the answer
            conn.send(_PLAIN_TO_TLS)
            conn.shutdown(socket.SHUT_WR)
        conn.close()

    def _opened(self, conn: socket.socket, task: asyncio.Task[object]) -> None:
        self._opening.discard(task)
        if task.cancelled() or task.exception() is not None:
            if self.tls is not None and not task.cancelled():
                self.tls_failures += 1
            conn.close()
        # Until this callback runs, an opened connection counts twice (in connections and
        # in _opening), which may have paused accepting below the cap: look again.
        self._resume_accepting()

    def _end_fd_backoff(self) -> None:
        self._fd_backoff = False
        self._resume_accepting()

    def _pause_accepting(self) -> None:
        if self.accepting and self._loop is not None:
            self.accepting = False
            self.accept_pauses += 1
            for sock in self._listeners:
                self._loop.remove_reader(sock.fileno())

    def _resume_accepting(self) -> None:
        if (self.accepting or self.draining or self._fd_backoff or self._loop is None
                or self.open_connections >= self.max_connections):
            return
        self.accepting = True
        for sock in self._listeners:
            self._loop.add_reader(sock.fileno(), self._on_acceptable, sock)

    def _connection_lost(self, conn: HttpProtocol) -> None:
        self.connections.discard(conn)
        if not self.accepting:
            self._resume_accepting()

    # -- timeouts and shutdown
    async def _sweep(self) -> None:
        """Enforce each connection's deadline (idle, header section, body)."""
        shortest = min(self.header_timeout, self.body_timeout, self.keepalive_timeout)
        interval = min(1.0, max(0.05, shortest / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                if now >= conn.deadline and not conn.closed:
                    conn.check_deadline(now)

    async def shutdown(self, drain_timeout: float = 20.0) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close everything."""
        self.draining = True
        self._pause_accepting()
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = time.monotonic() + drain_timeout
        while (self.connections or self._opening) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn.close_if_idle()
        for conn in list(self.connections):
            conn._close()
        for task in (self._sweeper, self._tls_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
