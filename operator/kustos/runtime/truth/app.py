"""HTTP endpoints of the ground-truth monitor, on the model server's asyncio/httptools
server: events in, labels in, status and metrics out. Bad input gets 4xx with a JSON
error naming the problem.

Events are group-committed: each POST /v1/events is parsed at once and its answer held;
the batch is written in one transaction, then every held answer goes out. The write is
scheduled with ``call_soon``, so it runs after the loop has handed over everything it
read in this turn (all the POSTs pipelined in a connection's read, and those of the other
connections that were readable): no timer, no added wait when events trickle in. A batch
is written at once when it reaches MAX_BATCH events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from kustos.runtime.server.http import JSON, Reply, Request
from kustos.runtime.truth import parse
from kustos.runtime.truth.monitor import Monitor

log = logging.getLogger("kustos.truth")
GET_PATHS = ("/v1/truth/status", "/metrics", "/v2/health/live", "/v2/health/ready")
SELDON_FEEDBACK = ("/api/v1.0/feedback", "/send-feedback")
MAX_BATCH = 2048  # events per transaction at most
STORE_FAILED = b'{"error":"the event could not be stored"}'


def _json(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


class TruthApp:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.v2_feedback = f"/v2/models/{monitor.cfg.model}/feedback"
        # Answers held until the batch they belong to is written: (reply, accepted rows).
        self._held: list[tuple[Reply, int, str]] = []
        self._flush_scheduled = False
        events = monitor.metrics.events
        self._accepted = {k: events.labels(k, "accepted") for k in ("request", "response")}

    def handle(self, request: Request, reply: Reply) -> None:
        path, method = request.path, request.method
        get = method in (b"GET", b"HEAD")
        if path in GET_PATHS:
            if not get:
                reply(405, _json({"error": "use GET"}), JSON, b"allow: GET, HEAD\r\n")
            elif path == "/v1/truth/status":
                reply(200, _json(self.monitor.status()), JSON, b"")
            elif path == "/metrics":
                body, ctype = self.monitor.metrics.render()
                reply(200, body, ctype, b"")
            elif path == "/v2/health/live":
                reply(200, b'{"live":true}', JSON, b"")
            else:
                reply(200, b'{"ready":true}', JSON, b"")
            return
        if path == "/v1/events" or path in SELDON_FEEDBACK or (
                path.startswith("/v2/models/") and path.endswith("/feedback")):
            if method != b"POST":
                reply(405, _json({"error": "use POST"}), JSON, b"allow: POST\r\n")
            elif path == "/v1/events":
                self._event(request, reply)
            elif path in SELDON_FEEDBACK:
                self._seldon(request, reply)
            elif path == self.v2_feedback:
                self._v2(request, reply)
            else:
                name = path[len("/v2/models/"):-len("/feedback")]
                reply(404, _json({"error": f"model {name[:200]!r} not found: this monitor "
                                           f"watches {self.monitor.cfg.model!r}"}), JSON, b"")
            return
        reply(404, _json({"error": f"no such endpoint: {path[:200]}"}), JSON, b"")

    def _event(self, request: Request, reply: Reply) -> None:
        kind = "unknown"
        try:
            ev = parse.parse_event(request.headers, request.body)
            kind = ev.kind
            rows = self.monitor.take(ev)
        except parse.ProtocolError as exc:
            self.monitor.metrics.events.labels(kind, "invalid").inc()
            reply(exc.status, _json({"error": exc.message}), JSON, b"")
            return
        self._held.append((reply, rows, kind))
        if len(self._held) >= MAX_BATCH:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the batch, then answer its events: 202 once stored, 500 if the store
        failed (the sender retries)."""
        self._flush_scheduled = False
        held, self._held = self._held, []
        try:
            self.monitor.flush()
        except Exception:
            log.exception("writing %d events failed", len(held))
            for reply, _, kind in held:
                self.monitor.metrics.events.labels(kind, "failed").inc()
                reply(500, STORE_FAILED, JSON, b"")
            return
        kinds = [kind for _, _, kind in held]
        for kind, counter in self._accepted.items():
            counter.inc(kinds.count(kind))
        for reply, rows, _ in held:
            reply(202, b'{"accepted":%d}' % rows, JSON, b"")

    def _labels(self, reply: Reply, source: str, items: list[parse.LabelIn]) -> None:
        self.flush()  # the events before these labels are in the store: joins are exact
        joined = self.monitor.labels(items, source)
        reply(200, _json({"accepted": len(items), "joined": joined}), JSON, b"")

    def _v2(self, request: Request, reply: Reply) -> None:
        try:
            items = parse.parse_v2_feedback(request.body, self.monitor.cfg.task)
        except parse.ProtocolError as exc:
            self.monitor.metrics.labels.labels("v2", "invalid").inc()
            reply(exc.status, _json({"error": exc.message}), JSON, b"")
            return
        self._labels(reply, "v2", items)

    def _seldon(self, request: Request, reply: Reply) -> None:
        cfg = self.monitor.cfg
        header = request.headers.get(b"x-request-id")
        try:
            items = parse.parse_seldon_feedback(
                request.body, header.decode("utf-8", "replace") if header else None,
                cfg.task, cfg.classes)
        except parse.ProtocolError as exc:
            self.monitor.metrics.labels.labels("seldon", "invalid").inc()
            reply(exc.status, orjson.dumps({"status": {
                "code": exc.status, "info": exc.message, "reason": "MICROSERVICE_BAD_DATA",
                "status": "FAILURE"}}), JSON, b"")
            return
        self._labels(reply, "seldon", items)
