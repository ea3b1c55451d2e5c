"""A small HTTP/1.1 server on asyncio + httptools, built for many tiny JSON requests.

Why not a framework: at ~0.1 ms per prediction, routing layers, middleware and
per-request coroutines cost more than the model. This server parses with httptools,
hands each complete request to ``App.handle(request, reply)`` as a plain callback, and
writes pre-built header blocks. Keep-alive and pipelining are handled: responses leave
in request order even when a later request finishes first (micro-batches complete
together). Bodies over ``max_body`` get 413 without being buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

import httptools

log = logging.getLogger("kustos.serve")

JSON = b"application/json"
# Stop parsing a connection's pipelined requests while this many responses are pending.
MAX_PIPELINE = 64


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


class _Slot:
    """One request's place in the connection's response order."""

    __slots__ = ("close", "data")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False


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
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False
        self.last_active = time.monotonic()
        self.in_message = False
        self.broken = False  # parser state unusable: answer what is pending, then close

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if len(self.slots) < MAX_PIPELINE:
            self._resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fatal(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._fatal(400, "malformed HTTP request")

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = 0
        self.too_large = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        length = self.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self.too_large = True
        if self.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport:
            if self.too_large:  # the client has not sent the body yet: refuse now
                self._fatal(413, f"request body larger than {self.max_body} bytes")
                return
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
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
        if self.closed:
            return
        slot = _Slot()
        self.slots.append(slot)
        keep_alive = bool(self.parser.should_keep_alive()) and not self.server.draining
        method = self.parser.get_method()
        if self.too_large:
            keep_alive = False
            self._reply(slot, method, False, 413,
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
            self._reply(slot, method, keep_alive, 400, error_body("malformed URL"), JSON, b"")
            return
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = Request(method, spath, squery, self.headers, body, keep_alive)

        def reply(status: int, data: bytes, content_type: bytes = JSON, extra: bytes = b"") -> None:
            self._reply(slot, method, keep_alive, status, data, content_type, extra)

        try:
            self.app.handle(request, reply)
        except Exception:  # the app answers errors itself; this is the last line of defence
            log.exception("unhandled error in request handler")
            if slot.data is None:
                reply(500, error_body("internal server error"), JSON, b"")
        if len(self.slots) >= MAX_PIPELINE:
            self._pause_reading()

    # -- writing
    def _reply(self, slot: _Slot, method: bytes, keep_alive: bool, status: int, data: bytes,
               content_type: bytes, extra: bytes) -> None:
        if slot.data is not None:
            return
        close = not keep_alive or self.server.draining
        head = _head(status, content_type) + extra
        head += b"content-length: %d\r\n" % len(data)
        if close:
            head += b"connection: close\r\n"
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
                self._close()
                return
        self.last_active = time.monotonic()
        if not slots and self.server.draining and not self.in_message:
            self._close()
        elif len(slots) < MAX_PIPELINE and not self.writing_paused:
            self._resume_reading()

    def _fatal(self, status: int, message: str) -> None:
        """A protocol-level error: answer once, in order, and close."""
        self.broken = True
        self.in_message = False
        self._pause_reading()
        slot = _Slot()
        self.slots.append(slot)
        self._reply(slot, b"GET", False, status, error_body(message), JSON, b"")

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    @property
    def idle(self) -> bool:
        return not self.slots and not self.in_message

    def close_if_idle(self) -> None:
        if self.idle:
            self._close()


class HttpServer:
    """Owns the listening socket(s) and the live connections, for timeouts and draining."""

    def __init__(self, app: App, max_body: int = 16 << 20, keepalive_timeout: float = 75.0,
                 header_timeout: float = 30.0) -> None:
        self.app = app
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False,
                    sock: socket.socket | None = None) -> int:
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: HttpProtocol(self), sock=sock,
                                                    backlog=2048)
        else:
            self._server = await loop.create_server(
                lambda: HttpProtocol(self), host, port, reuse_port=reuse_port or None,
                backlog=2048)
        self._sweeper = loop.create_task(self._sweep())
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def _sweep(self) -> None:
        """Close idle keep-alive connections and stalled half-sent requests."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                quiet = now - conn.last_active
                if (conn.idle and quiet > self.keepalive_timeout) or (
                        conn.in_message and quiet > self.header_timeout):
                    conn._close()

    async def shutdown(self, drain_timeout: float = 20.0) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close everything."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = time.monotonic() + drain_timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn.close_if_idle()
        for conn in list(self.connections):
            conn._close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
