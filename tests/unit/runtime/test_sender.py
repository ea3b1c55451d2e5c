"""HttpPoster against a loopback server that answers pipelined POSTs with the framings a
sink may use: content-length, chunked, none (closes), and a close mid-batch."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kustos.runtime.server.sender import HttpPoster

ANSWERS = {
    b"/length": b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/fail": b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n",
}


class Server:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.close_after = 0  # close the connection after this many answers (0: never)
        self.answer: Callable[[bytes], bytes] | None = None  # by request body, not path
        self.tls: ssl.SSLContext | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._wrapped, args=(conn,), daemon=True).start()

    def _wrapped(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                return
        self._conn(conn)

    def _conn(self, conn: socket.socket) -> None:
        buf, answered = b"", 0
        with conn:
            while True:
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head = buf[:end].split(b"\r\n")
                length = next(int(h.split(b":")[1]) for h in head
                              if h.lower().startswith(b"content-length"))
                while len(buf) < end + 4 + length:
                    buf += conn.recv(65536)
                path = head[0].split()[1]
                self.requests.append(buf[end + 4:end + 4 + length])
                buf = buf[end + 4 + length:]
                body = self.requests[-1]
                conn.sendall(self.answer(body) if self.answer else ANSWERS[path])
                answered += 1
                if self.close_after and answered == self.close_after:
                    return


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.sock.close()


@pytest.mark.parametrize(("path", "status"), [("/length", 202), ("/chunked", 200),
                                              ("/empty", 204), ("/fail", 503)])
def test_pipelined_answers_in_every_framing(server: Server, path: str, status: int) -> None:
    poster = HttpPoster(f"http://127.0.0.1:{server.port}{path}", timeout=10)
    try:
        items = [(b"event-%d" % i, b"ce-id: %d\r\n" % i) for i in range(50)]
        assert poster.post_many(items) == [status] * 50
        assert poster.post_many(items[:3]) == [status] * 3  # the same connection again
        assert server.requests == [b for b, _ in items] + [b for b, _ in items[:3]]
    finally:
        poster.close()


def test_runs_of_equal_answers_and_the_odd_ones_between(server: Server) -> None:
    # A sink answers mostly the same bytes (matched in runs, not parsed one by one), but
    # now and then another status, or the same status with another header (a date that
    # ticked over, a longer body): each answer still gets its own status, in order.
    def answer(body: bytes) -> bytes:
        i = int(body.split(b"-")[1])
        if i % 37 == 5:
            return b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n"
        if i % 50 == 7:
            return b"HTTP/1.1 200 OK\r\ndate: tick %d\r\ncontent-length: 2\r\n\r\nok" % i
        return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    server.answer = answer
    poster = HttpPoster(f"http://127.0.0.1:{server.port}/", timeout=10)
    try:
        for first, count in ((0, 300), (300, 1), (301, 64)):
            items = [(b"event-%d" % i, b"") for i in range(first, first + count)]
            want = [503 if i % 37 == 5 else 200 for i in range(first, first + count)]
            assert poster.post_many(items) == want
    finally:
        poster.close()


def test_a_close_mid_batch_leaves_the_rest_unanswered(server: Server) -> None:
    server.close_after = 4
    poster = HttpPoster(f"http://127.0.0.1:{server.port}/length", timeout=10)
    try:
        statuses = poster.post_many([(b"x", b"") for _ in range(10)])
        assert statuses[:4] == [202] * 4 and statuses[4:] == [None] * 6
        # A new connection for the next batch.
        server.close_after = 0
        assert poster.post_many([(b"y", b"")]) == [202]
    finally:
        poster.close()


def test_nobody_listening_is_no_answer() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    poster = HttpPoster(f"http://127.0.0.1:{port}/", timeout=2)
    assert poster.post_many([(b"x", b""), (b"y", b"")]) == [None, None]


def test_https_sink_is_verified(server: Server, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An https sink: the certificate is checked against the system's trust store (here
    SSL_CERT_FILE, as a CA bundle mounted into the pod would be)."""
    from .test_serve_tls import make_ca, make_leaf

    ca = make_ca("sink-ca")
    cert, key, _ = make_leaf(ca, "sink")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server.tls = context
    url = f"https://localhost:{server.port}/length"
    # Not trusted: no answer, so the events would be retried and then counted as failed.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "tls.crt"))  # not a CA
    assert HttpPoster(url, timeout=10).post_many([(b"x", b"")]) == [None]
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))
    poster = HttpPoster(url, timeout=10)
    try:
        assert poster.post_many([(b"a", b""), (b"b", b"")]) == [202, 202]
        assert server.requests[-2:] == [b"a", b"b"]
    finally:
        poster.close()
