"""HTTP endpoints of the drift sidecar, on the model server's asyncio/httptools server."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson

from kustos.runtime.drift.monitor import Monitor
from kustos.runtime.drift.reference import Array
from kustos.runtime.server.http import JSON, Reply, Request
from kustos.runtime.server.tensors import ProtocolError, check_shape, decode, loads_object

log = logging.getLogger("kustos.drift")
# A bound on one POST's tensors (the body size is bounded by the HTTP server).
MAX_TENSORS = 1024


def _json(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_rows(body: bytes, names: list[str]) -> Array:
    """The DriftSender's payload -> (rows, features) float64, checked against the reference.

    One tensor of shape [N, F] (or [N] for one feature, or [N, ...] flattened per row), or
    several tensors with the same N whose columns are concatenated; when the tensor names
    are exactly the feature names they are put in feature order.
    """
    tensors = loads_object(body).get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise ProtocolError("'inputs' must be a non-empty list of V2 tensors")
    if len(tensors) > MAX_TENSORS:
        raise ProtocolError(f"at most {MAX_TENSORS} input tensors per request")
    columns: list[tuple[str, Array]] = []
    rows: int | None = None
    for i, t in enumerate(tensors):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise ProtocolError(f"{where} must be a tensor object")
        name = t.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"{where}: 'name' must be a string")
        where = f"input {name!r}"
        if "data" not in t:
            raise ProtocolError(f"{where}: 'data' is missing")
        shape = check_shape(t.get("shape"), where)
        datatype = t.get("datatype")
        if not isinstance(datatype, str):
            raise ProtocolError(f"{where}: 'datatype' must be a string such as FP64")
        if datatype == "BYTES":
            raise ProtocolError(f"{where}: drift detection needs numeric inputs, got BYTES")
        arr = decode(t["data"], shape, datatype, where)
        if arr.ndim == 0:
            raise ProtocolError(f"{where}: needs a batch dimension, got shape []")
        arr = arr.reshape(len(arr), -1)
        if rows is not None and len(arr) != rows:
            raise ProtocolError(f"{where}: {len(arr)} rows, but the first input has {rows}")
        rows = len(arr)
        columns.append((name, arr))
    if len(columns) > 1 and sorted(n for n, _ in columns) == sorted(names):
        order = {n: i for i, n in enumerate(names)}
        columns.sort(key=lambda c: order[c[0]])
    x = (columns[0][1] if len(columns) == 1 else np.concatenate([c for _, c in columns],
                                                                axis=1)).astype(np.float64)
    if x.shape[1] != len(names):
        raise ProtocolError(
            f"inputs have {x.shape[1]} features per row, the reference has {len(names)} "
            f"({', '.join(names[:20])}{', ...' if len(names) > 20 else ''})", 422)
    if not np.isfinite(x).all():
        raise ProtocolError("inputs contain infinite or NaN values", 422)
    return x


class DriftApp:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def handle(self, request: Request, reply: Reply) -> None:
        path, method = request.path, request.method
        get = method in (b"GET", b"HEAD")
        if path == "/v1/inputs":
            if method != b"POST":
                reply(405, _json({"error": "use POST"}), JSON, b"allow: POST\r\n")
                return
            self._inputs(request, reply)
        elif path == "/v1/drift/status" and get:
            reply(200, _json(self.monitor.status()), JSON, b"")
        elif path == "/v2/health/live" and get:
            reply(200, b'{"live":true}', JSON, b"")
        elif path == "/v2/health/ready" and get:
            ready = self.monitor.ready
            reply(200 if ready else 503, _json({"ready": ready}), JSON, b"")
        elif path == "/metrics" and get:
            body, ctype = self.monitor.metrics.render()
            reply(200, body, ctype, b"")
        elif path in ("/v1/drift/status", "/v2/health/live", "/v2/health/ready", "/metrics"):
            reply(405, _json({"error": "use GET"}), JSON, b"allow: GET, HEAD\r\n")
        else:
            reply(404, _json({"error": f"no such endpoint: {path}"}), JSON, b"")

    def _inputs(self, request: Request, reply: Reply) -> None:
        monitor = self.monitor
        if not monitor.ready:
            err = monitor.error
            why = (f"{err['reason']}: {err['message']}" if err
                   else "the reference data is still loading")
            reply(503, _json({"error": f"drift detector not ready: {why}"}), JSON,
                  b"retry-after: 5\r\n")
            return
        try:
            rows = decode_rows(request.body, monitor.names)
        except ProtocolError as exc:
            reply(exc.status, _json({"error": exc.message}), JSON, b"")
            return
        monitor.add(rows)
        reply(202, _json({"accepted": len(rows)}), JSON, b"")
