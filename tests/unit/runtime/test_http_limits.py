"""The HTTP server against slow, greedy and malformed peers, over raw sockets.

Limits (414/431), deadlines counted from the request's start (408), the connection cap
(the listener is paused, not accept-and-drop), 100 Continue in pipeline order, HTTP/1.0
keep-alive, request-smuggling shapes (400/501 and the connection closed), and a normal
request answered while 1500 slowloris connections are open.

Most tests run kustos.runtime.server.http.HttpServer with a toy app on both event loops
(plain asyncio, as the other unit tests, and uvloop, as `kustos serve` runs), with small
deadlines so they finish fast. The smuggling shapes and the slowloris test run the real
`kustos serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest

from kustos.runtime.server.http import JSON, HttpServer, Reply, Request

from .conftest import Models, RunningServer, free_port, spawn_cli, stop_process, wait_http_ready
from .test_http_layer import infer_request

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 0.5
MAX_URL = 1024
MAX_HEADER = 4096
LOOPS = ("asyncio", "uvloop")


# --- a toy app behind the real HttpServer -------------------------------------------------


class ToyApp:
    """`/delay/MS` answers after MS milliseconds (a pending response), `/echo` the body size,
    anything else at once."""

    def handle(self, request: Request, reply: Reply) -> None:
        if request.path.startswith("/delay/"):
            delay = int(request.path.rsplit("/", 1)[1]) / 1000
            asyncio.get_running_loop().call_later(delay, reply, 200, b'{"delayed":true}',
                                                  JSON, b"")
        elif request.path == "/echo":
            reply(200, orjson.dumps({"bytes": len(request.body)}), JSON, b"")
        else:
            reply(200, b'{"ok":true}', JSON, b"")


@dataclass
class Toy:
    host: str
    port: int
    server: HttpServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(1.0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()


def start_toy(loop_kind: str, **limits: Any) -> Toy:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    server = HttpServer(ToyApp(), max_body=4096, **limits)
    # A loopback address of its own: other test runs on this machine that probe ports
    # of 127.0.0.1 (free_port races) cannot connect here and skew the connection counts.
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    ready = threading.Event()
    box: dict[str, int] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["port"] = loop.run_until_complete(server.start(host, 0))
        finally:
            ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10) and "port" in box
    return Toy(host, box["port"], server, loop, thread)


@pytest.fixture(scope="module", params=LOOPS)
def toy(request: pytest.FixtureRequest) -> Iterator[Toy]:
    server = start_toy(request.param, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT,
                       keepalive_timeout=KEEPALIVE_TIMEOUT, max_url_bytes=MAX_URL,
                       max_header_bytes=MAX_HEADER)
    yield server
    server.stop()


# --- raw-socket client --------------------------------------------------------------------


class Conn:
    """A raw client socket with a read buffer, parsing content-length framed responses."""

    def __init__(self, addr: int | tuple[str, int], timeout: float = 10.0) -> None:
        if isinstance(addr, int):
            addr = ("127.0.0.1", addr)
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed; buffered {self.buf[:200]!r}"
        self.buf += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, v in (ln.split(":", 1) for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True once the server closed (EOF or reset) with nothing more sent; bounded."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return not self.buf
                self.buf += chunk
        except ConnectionResetError:
            return not self.buf
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets with data or EOF; poll, not select: descriptors may exceed 1024 here."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


def trickle_until_answered(conn: Conn, head: bytes, byte: bytes, every: float,
                           limit: float) -> float:
    """Send ``head``, then one ``byte`` every ``every`` seconds until the server sends
    anything or closes; seconds from the first byte. Fails after ``limit`` seconds."""
    started = time.monotonic()
    conn.send(head)
    while time.monotonic() - started < limit:
        if readable([conn.sock], every):
            return time.monotonic() - started
        try:
            conn.send(byte)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError(f"the server neither answered nor closed within {limit}s")


def test_serve_flags_default_to_the_servers_limits() -> None:
    """cli.py repeats http.py's defaults (parsing flags must not need httptools)."""
    from kustos.runtime.server import http
    from kustos.runtime.server.cli import _check, build_parser

    args = build_parser().parse_args(["--model", "m.skops", "--name", "m"])
    assert (args.header_timeout, args.body_timeout, args.keepalive_timeout,
            args.max_connections, args.max_url_bytes, args.max_header_bytes) == (
        http.DEFAULT_HEADER_TIMEOUT, http.DEFAULT_BODY_TIMEOUT, http.DEFAULT_KEEPALIVE_TIMEOUT,
        http.DEFAULT_MAX_CONNECTIONS, http.DEFAULT_MAX_URL_BYTES,
        http.DEFAULT_MAX_HEADER_BYTES)
    assert _check(args) is None
    for bad in (["--header-timeout", "0"], ["--body-timeout", "-1"],
                ["--max-connections", "0"], ["--max-header-bytes", "100"]):
        assert _check(build_parser().parse_args(["--model", "m", "--name", "m", *bad]))


# --- size limits ----------------------------------------------------------------------------


def test_url_over_the_limit_is_414_and_closed(toy: Toy) -> None:
    with Conn(toy.addr) as c:
        c.send(b"GET /" + b"a" * (MAX_URL - 100) + b" HTTP/1.1\r\nhost: t\r\n\r\n")
        assert c.response()[0] == 200  # under the limit
        c.send(b"GET /" + b"a" * (MAX_URL + 1) + b" HTTP/1.1\r\nhost: t\r\n\r\n")
        status, headers, body = c.response()
        assert status == 414 and headers["connection"] == "close"
        assert str(MAX_URL) in orjson.loads(body)["error"]
        assert c.closed_by_server()


def test_url_trickled_past_the_limit_is_414(toy: Toy) -> None:
    with Conn(toy.addr) as c:
        c.send(b"GET /")
        for _ in range(MAX_URL // 256 + 1):  # never ends, in pieces
            c.send(b"a" * 256)
        assert c.response()[0] == 414
        assert c.closed_by_server()


def test_header_section_over_the_limit_is_431_and_closed(toy: Toy) -> None:
    lines = [b"x-h%d: %s\r\n" % (i, b"v" * 50) for i in range(MAX_HEADER // 50)]
    many = b"".join(lines)
    with Conn(toy.addr) as c:
        c.send(b"GET /a HTTP/1.1\r\nhost: t\r\n" + b"".join(lines[: len(lines) // 2]) + b"\r\n")
        assert c.response()[0] == 200  # under the limit
        c.send(b"GET /a HTTP/1.1\r\nhost: t\r\n" + many + b"\r\n")
        status, headers, _ = c.response()
        assert status == 431 and headers["connection"] == "close"
        assert c.closed_by_server()
    with Conn(toy.addr) as c:  # one huge header, sent whole
        c.send(b"GET /a HTTP/1.1\r\nhost: t\r\nx-big: " + b"v" * (MAX_HEADER + 1) + b"\r\n\r\n")
        assert c.response()[0] == 431


def test_header_that_never_ends_is_431_before_the_deadline(toy: Toy) -> None:
    """httptools holds an unfinished header itself; those bytes count against the limit."""
    with Conn(toy.addr) as c:
        c.send(b"GET /a HTTP/1.1\r\nhost: t\r\nx-big: ")
        for _ in range(4 * MAX_HEADER // 512):  # never a CRLF
            if readable([c.sock], 0.01):
                break
            c.send(b"v" * 512)
        assert c.response()[0] == 431
        assert c.closed_by_server()


# --- deadlines --------------------------------------------------------------------------------


def test_trickled_headers_get_408_at_the_header_deadline(toy: Toy) -> None:
    """One byte every 0.1 s used to keep a connection forever: the deadline counts from the
    request's first byte."""
    with Conn(toy.addr) as c:
        took = trickle_until_answered(c, b"POST /echo HTTP/1.1\r\nhost: t\r\nx-slow: ", b"a",
                                      every=0.1, limit=10)
        status, headers, body = c.response()
        assert status == 408 and headers["connection"] == "close"
        assert b"header section" in body
        assert c.closed_by_server()
    assert HEADER_TIMEOUT * 0.9 <= took < 5, took
    print(f"\n408 after {took:.2f}s of trickled headers (header timeout {HEADER_TIMEOUT}s)")


def test_trickled_body_gets_408_at_the_body_deadline(toy: Toy) -> None:
    with Conn(toy.addr) as c:
        took = trickle_until_answered(
            c, b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n", b"b",
            every=0.1, limit=10)
        status, _, body = c.response()
        assert status == 408 and b"request body" in body
        assert c.closed_by_server()
    assert BODY_TIMEOUT * 0.9 <= took < 6, took


def test_chunked_body_trickled_gets_408(toy: Toy) -> None:
    with Conn(toy.addr) as c:
        took = trickle_until_answered(
            c, b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n",
            b"1\r\nx\r\n", every=0.1, limit=10)
        assert c.response()[0] == 408
        assert c.closed_by_server()
    assert BODY_TIMEOUT * 0.9 <= took < 6, took


def test_idle_connections_are_closed_without_an_answer(toy: Toy) -> None:
    with Conn(toy.addr) as c:  # a new connection that never sends a byte
        started = time.monotonic()
        assert c.closed_by_server(timeout=10)
        assert HEADER_TIMEOUT * 0.9 <= time.monotonic() - started < 5
    with Conn(toy.addr) as c:  # keep-alive after an answered request
        c.send(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\n")
        assert c.response()[0] == 200
        started = time.monotonic()
        assert c.closed_by_server(timeout=10)  # no 408: nothing was in progress
        assert KEEPALIVE_TIMEOUT * 0.9 <= time.monotonic() - started < 5


def test_a_slow_answer_is_not_a_timeout(toy: Toy) -> None:
    """Deadlines are the client's: a response the app takes longer than them to compute
    still arrives, and the connection stays usable."""
    with Conn(toy.addr) as c:
        c.send(b"GET /delay/%d HTTP/1.1\r\nhost: t\r\n\r\n" % int(BODY_TIMEOUT * 1500))
        status, headers, _ = c.response()
        assert status == 200 and "connection" not in headers
        c.send(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\n")
        assert c.response()[0] == 200


# --- connection cap ---------------------------------------------------------------------------


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_connection_cap_pauses_the_listener_and_resumes_below_it(loop_kind: str) -> None:
    cap = 4
    server = start_toy(loop_kind, max_connections=cap, header_timeout=30,
                       keepalive_timeout=30)
    held: list[Conn] = []
    try:
        for _ in range(cap):
            c = Conn(server.addr)
            c.send(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\n")
            assert c.response()[0] == 200
            held.append(c)
        with Conn(server.addr) as waiting:  # TCP connects (backlog), but is not accepted
            waiting.send(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\n")
            assert not readable([waiting.sock], 0.3), "over the cap, yet answered or dropped"
            assert len(server.server.connections) == cap and not server.server.accepting
            assert server.server.accept_pauses >= 1
            held.pop().close()  # one below the cap: the waiting one is accepted and answered
            assert waiting.response()[0] == 200
        assert len(server.server.connections) <= cap
    finally:
        for c in held:
            c.close()
        server.stop()


# --- protocol details -------------------------------------------------------------------------


def test_100_continue_waits_for_earlier_pipelined_answers(toy: Toy) -> None:
    with Conn(toy.addr) as c:
        # Alone: the interim answer comes at once, before the body is sent.
        c.send(b"POST /echo HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\n"
               b"content-length: 5\r\n\r\n")
        assert c.response()[0] == 100
        c.send(b"hello")
        status, _, body = c.response()
        assert status == 200 and orjson.loads(body) == {"bytes": 5}
    with Conn(toy.addr) as c:
        # Behind a pending answer: the 100 must not overtake it.
        c.send(b"GET /delay/200 HTTP/1.1\r\nhost: t\r\n\r\n"
               b"POST /echo HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\n"
               b"content-length: 5\r\n\r\n")
        status, _, body = c.response()
        assert (status, body) == (200, b'{"delayed":true}')
        assert c.response()[0] == 100
        c.send(b"hello")
        status, _, body = c.response()
        assert status == 200 and orjson.loads(body) == {"bytes": 5}


def test_http10_keep_alive_is_confirmed_and_kept(toy: Toy) -> None:
    with Conn(toy.addr) as c:
        for _ in range(3):
            c.send(b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            status, headers, _ = c.response()
            assert status == 200 and headers["connection"] == "keep-alive"
        c.send(b"GET /a HTTP/1.0\r\n\r\n")  # without it: answered, then closed
        status, headers, _ = c.response()
        assert status == 200 and headers["connection"] == "close"
        assert c.closed_by_server()


def test_a_peer_that_sent_garbage_cannot_keep_sending(toy: Toy) -> None:
    with Conn(toy.addr) as c:
        c.send(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nNOT HTTP\r\n\r\n")
        assert c.response()[0] == 200
        status, headers, _ = c.response()
        assert status == 400 and headers["connection"] == "close"
        assert c.closed_by_server()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(50):
                c.send(b"x" * 1024)
                time.sleep(0.01)


# --- request smuggling shapes, against the real `kustos serve` --------------------------------

INFER = b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
SMUGGLED = b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n"

SHAPES: dict[str, tuple[bytes, int]] = {
    "content-length and transfer-encoding": (
        INFER + b"content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400),
    "transfer-encoding and content-length": (
        INFER + b"transfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400),
    "duplicate content-length": (
        INFER + b"content-length: 2\r\ncontent-length: 2\r\n\r\n{}" + SMUGGLED, 400),
    "conflicting content-length": (
        INFER + b"content-length: 2\r\ncontent-length: 50\r\n\r\n{}" + SMUGGLED, 400),
    "content-length list": (INFER + b"content-length: 2, 2\r\n\r\n{}" + SMUGGLED, 400),
    "signed content-length": (INFER + b"content-length: +2\r\n\r\n{}" + SMUGGLED, 400),
    "content-length overflow": (
        INFER + b"content-length: 99999999999999999999999\r\n\r\n{}", 400),
    "obs-fold in transfer-encoding": (
        INFER + b"transfer-encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "obs-fold continuing transfer-encoding": (
        INFER + b"transfer-encoding: gzip,\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "space before colon": (
        INFER + b"transfer-encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "chunk size 0x10": (
        INFER + b"transfer-encoding: chunked\r\n\r\n0x10\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n",
        400),
    "negative chunk size": (
        INFER + b"transfer-encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n" + SMUGGLED, 400),
    "huge chunk size": (
        INFER + b"transfer-encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        400),
    "chunk size with trailing space": (
        INFER + b"transfer-encoding: chunked\r\n\r\n2 \r\n{}\r\n0\r\n\r\n" + SMUGGLED, 400),
    "transfer-encoding twice": (
        INFER + b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"
                b"0\r\n\r\n" + SMUGGLED, 400),
    "transfer-encoding chunked, gzip": (
        INFER + b"transfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "transfer-encoding gzip": (INFER + b"transfer-encoding: gzip\r\n\r\nabc" + SMUGGLED, 501),
    "transfer-encoding gzip, chunked": (
        INFER + b"transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 501),
    "transfer-encoding identity": (
        INFER + b"transfer-encoding: identity\r\n\r\n" + SMUGGLED, 501),
    "transfer-encoding in HTTP/1.0": (
        INFER.replace(b"HTTP/1.1", b"HTTP/1.0")
        + b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "bare LF line ends": (INFER.replace(b"\r\n", b"\n") + b"content-length: 2\n\n{}", 400),
    "NUL in the URL": (b"GET /v2/health/live\x00 HTTP/1.1\r\nhost: t\r\n\r\n", 400),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_smuggling_shape_is_refused_and_the_connection_closed(iris_server: RunningServer,
                                                              shape: str) -> None:
    raw, want = SHAPES[shape]
    with Conn(iris_server.port) as c:
        c.send(raw)
        status, headers, body = c.response()
        assert (status, headers["connection"]) == (want, "close"), body
        assert "error" in orjson.loads(body)
        # nothing else is answered (no smuggled request) and the server hung up
        assert c.closed_by_server(), c.buf[:200]


def test_a_valid_chunked_request_still_works(iris_server: RunningServer) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                                     "data": [5.1, 3.5, 1.4, 0.2]}]})
    with Conn(iris_server.port) as c:
        c.send(INFER + b"transfer-encoding: Chunked\r\n\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n"
               % (len(body), body))
        status, _, answer = c.response()
        assert status == 200 and orjson.loads(answer)["outputs"][0]["data"] == [0]


# --- slowloris --------------------------------------------------------------------------------

SLOWLORIS = 1500


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # no /proc: trust the trickle rounds
        return SLOWLORIS


def test_normal_requests_are_answered_while_1500_slowloris_connections_are_open(
        models: Models) -> None:
    """The requirement is 1 s; the assertion is 10 s so a loaded CI machine cannot flake it,
    and the real latency is printed (and measured properly in tests/bench)."""
    _raise_nofile(SLOWLORIS + 512)
    port = free_port()
    # Deadlines long enough that the slowloris connections stay open while we measure.
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris",
                     "--port", str(port), "--header-timeout", "120", "--log-level", "warning")
    loris: list[socket.socket] = []
    stop = threading.Event()
    rounds = [0]

    def trickle() -> None:  # one more header byte on every slowloris connection, in turns
        while not stop.is_set():
            for s in loris:
                with contextlib.suppress(OSError):
                    s.send(b"a")
            rounds[0] += 1
            stop.wait(0.2)

    try:
        wait_http_ready(port, proc)
        for _ in range(SLOWLORIS):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.send(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: t\r\nx-loris: ")
            loris.append(s)
        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        deadline = time.monotonic() + 30
        while rounds[0] < 3 or _open_files(proc.pid) < SLOWLORIS:  # all accepted, trickling
            assert time.monotonic() < deadline, (
                f"trickled {rounds[0]} rounds, the server holds {_open_files(proc.pid)} files")
            time.sleep(0.05)
        row = [6.7, 3.0, 5.2, 2.3]
        want = int(models.iris_est.predict(np.array([row]))[0])
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            with Conn(port, timeout=10) as c:
                c.send(infer_request([row], close=True))
                status, _, body = c.response()
            latencies.append(time.monotonic() - started)
            assert status == 200
            assert orjson.loads(body)["outputs"][0]["data"] == [want]
        # the slowloris connections are still open: nothing was answered or closed
        answered = readable(loris, 0)
        assert not answered, f"{len(answered)} slowloris connections were answered/closed"
        assert proc.poll() is None
        print(f"\n{SLOWLORIS} slowloris connections open ({rounds[0]} trickle rounds): "
              f"a new-connection prediction took p50 {statistics.median(latencies) * 1e3:.1f} "
              f"ms, max {max(latencies) * 1e3:.1f} ms (requirement 1 s)")
        assert max(latencies) < 10
    finally:
        stop.set()
        for s in loris:
            s.close()
        stop_process(proc)


def test_slowloris_connections_are_cut_at_the_header_deadline(models: Models) -> None:
    """The same attack with the deadline in force: every connection is answered 408 and
    closed although it never stopped sending."""
    _raise_nofile(512)
    port = free_port()
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris",
                     "--port", str(port), "--header-timeout", "1", "--log-level", "warning")
    conns: list[Conn] = []
    try:
        wait_http_ready(port, proc)
        for _ in range(100):
            c = Conn(port)
            c.send(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: t\r\nx-loris: ")
            conns.append(c)
        started = time.monotonic()
        open_ = {c.sock: c for c in conns}
        answered: dict[int, float] = {}
        while open_ and time.monotonic() - started < 15:
            for s in readable(list(open_), 0.1):
                answered[s.fileno()] = time.monotonic() - started
                del open_[s]
            for s in open_:
                with contextlib.suppress(OSError):
                    s.send(b"a")
        assert not open_, f"{len(open_)} of 100 trickling connections are still open"
        for c in conns:
            assert c.response()[0] == 408
            assert c.closed_by_server()
        assert max(answered.values()) < 10
    finally:
        for c in conns:
            c.close()
        stop_process(proc)
