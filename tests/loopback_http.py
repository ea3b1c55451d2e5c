"""HTTP on 127.0.0.1 for the tests: one request to a server they started, with its JSON (or
text) answer; a server's /metrics as a map of series to value; and a threaded server of
their own for a handler. tests/ is on sys.path (pyproject's pythonpath), so every test
directory imports this as ``loopback_http``."""

from __future__ import annotations

import contextlib
import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0
            ) -> tuple[int, Any]:
    """(status, the parsed body when it is JSON, else its text); one connection each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, {"content-type": "application/json",
                                          **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    ctype = resp.getheader("content-type") or ""
    return resp.status, orjson.loads(data) if "json" in ctype else data.decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}; comments skipped."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def metrics(port: int) -> dict[str, float]:
    """The server's GET /metrics, parsed (it must answer 200)."""
    code, text = request(port, "GET", "/metrics")
    assert code == 200, text
    return parse_metrics(text)


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """A threaded HTTP server on a free loopback port, serving in a daemon thread until the
    block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
