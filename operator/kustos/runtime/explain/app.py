"""The explainer's HTTP app: explain (V1, V2), status, health and metrics.

Requests are parsed and validated on the event loop with the model server's own decoders
(so a request the server accepts for :predict/infer is accepted here for :explain, and a
malformed one gets the same 4xx); the SHAP or LIME computation runs on a worker thread so
health and status keep answering during a long explanation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from kustos.runtime.explain import metrics as m
from kustos.runtime.explain.methods import Attributions, Explainer
from kustos.runtime.explain.problems import SetupProblem
from kustos.runtime.server import v1, v2
from kustos.runtime.server.http import JSON, Reply, Request, error_body
from kustos.runtime.server.models import Model
from kustos.runtime.server.tensors import Array, ProtocolError, encode

log = logging.getLogger("kustos.explain")

NUMPY = orjson.OPT_SERIALIZE_NUMPY
Handler = Callable[[Request, Reply], None]


@dataclass
class State:
    """What the setup and global threads publish; the app only reads it."""

    method: str
    model_name: str
    model: Model | None = None
    explainer: Explainer | None = None
    background: Array | None = None
    labels: Array | None = None
    error: SetupProblem | None = None
    # (globalImportance, lastComputed, report), replaced as one so readers never mix runs.
    global_result: tuple[list[dict[str, Any]], str, dict[str, Any]] | None = None
    ready_event: threading.Event = field(default_factory=threading.Event)

    @property
    def ready(self) -> bool:
        return self.explainer is not None

    def publish_global(self, top: list[dict[str, Any]], report: dict[str, Any]) -> None:
        self.global_result = (top, report["computedAt"], report)

    def status(self) -> dict[str, Any]:
        top, last, report = self.global_result or ([], None, None)
        return {
            "ready": self.ready,
            "method": self.method,
            "model": self.model_name,
            "error": self.error.as_dict() if self.error else None,
            "globalImportance": top,
            "lastComputed": last,
            "report": report,
        }


class ExplainApp:
    def __init__(self, state: State, max_rows: int = 1000, max_pending: int = 64) -> None:
        self.state = state
        self.name = state.model_name
        self.max_rows = max_rows
        self.max_pending = max_pending
        self.pending = 0
        # One thread: SHAP and LIME are CPU-bound and mostly hold the GIL; more threads
        # would only make every request slower.
        self.pool = concurrent.futures.ThreadPoolExecutor(1, "kustos-explain")
        self.stopping = False
        self._durations = m.DURATION.labels(self.name, state.method)
        self._rows = m.ROWS.labels(self.name)
        self.routes = self._routes()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _routes(self) -> dict[str, dict[bytes, Handler]]:
        n = self.name
        get, post = b"GET", b"POST"
        return {
            "/v2/health/live": {get: self._live},
            "/v2/health/ready": {get: self._ready},
            "/v1/explainer/status": {get: self._status},
            "/metrics": {get: self._metrics},
            f"/v1/models/{n}:explain": {post: self._v1_explain},
            f"/v2/models/{n}/explain": {post: self._v2_explain},
        }

    def handle(self, request: Request, reply: Reply) -> None:
        path = request.path
        entry = self.routes.get(path)
        if entry is None and _versioned_explain(path, self.name):
            # kustos serve forwards /v2/models/{m}/versions/{v}/explain as it came, having
            # checked the version already.
            entry = self.routes[f"/v2/models/{self.name}/explain"]
        if entry is None:
            reply(404, error_body(self._not_found(path)), JSON, b"")
            return
        handler = entry.get(request.method) or (
            entry.get(b"GET") if request.method == b"HEAD" else None)
        if handler is None:
            allowed = ", ".join(sorted(x.decode() for x in entry))
            reply(405, error_body(f"method {request.method.decode()} not allowed"), JSON,
                  b"allow: " + allowed.encode() + b"\r\n")
            return
        handler(request, reply)

    def _not_found(self, path: str) -> str:
        parts = path.strip("/").split("/")
        if path.startswith("/v2/models/") and len(parts) >= 3 and parts[2] != self.name:
            return f"model {parts[2][:200]!r} not found; this explainer serves {self.name!r}"
        if path.startswith("/v1/models/") and len(parts) == 3:
            name = parts[2].rsplit(":", 1)[0]
            if name != self.name:
                return f"model {name[:200]!r} not found; this explainer serves {self.name!r}"
        return f"no such endpoint: {path[:200]}"

    # -- health, status, metrics
    def _live(self, request: Request, reply: Reply) -> None:
        reply(200, b'{"live":true}', JSON, b"")

    def _ready(self, request: Request, reply: Reply) -> None:
        ok = self.state.ready and not self.stopping
        reply(200 if ok else 503, b'{"ready":true}' if ok else b'{"ready":false}', JSON, b"")

    def _status(self, request: Request, reply: Reply) -> None:
        reply(200, orjson.dumps(self.state.status(), option=NUMPY), JSON, b"")

    def _metrics(self, request: Request, reply: Reply) -> None:
        body, ctype = m.render()
        reply(200, body, ctype.encode(), b"")

    # -- explain
    def _v1_explain(self, request: Request, reply: Reply) -> None:
        self._explain(request, reply, "v1")

    def _v2_explain(self, request: Request, reply: Reply) -> None:
        self._explain(request, reply, "v2")

    def _explain(self, request: Request, reply: Reply, protocol: str) -> None:
        state = self.state
        method = state.method

        def answer(status: int, body: bytes, extra: bytes = b"") -> None:
            reply(status, body, JSON, extra)
            m.REQUESTS.labels(self.name, method, str(status)).inc()
            self._durations.observe(time.perf_counter() - request.started)

        explainer, model = state.explainer, state.model
        if explainer is None or model is None or self.stopping:
            answer(503, _not_ready_body(state))
            return
        try:
            if protocol == "v1":
                x = self._matrix(v1.parse_predict(request.body, model), model, explainer)
                rid = None
            else:
                parsed = v2.parse_infer(request.body)
                x = self._matrix(parsed.tensors, model, explainer)
                rid = parsed.id
        except ProtocolError as exc:
            answer(exc.status, error_body(exc.message))
            return
        if self.pending >= self.max_pending:
            answer(503, error_body(f"{self.pending} explanations are queued; retry later"),
                   b"retry-after: 1\r\n")
            return
        self.pending += 1
        name = self.name

        def work() -> tuple[int, bytes]:
            try:
                result = explainer.explain(x)
            except (ValueError, TypeError, IndexError) as exc:
                return 422, error_body(f"cannot explain this input: {str(exc)[:300]}")
            except Exception as exc:
                log.error("explanation failed: %s: %s", type(exc).__name__, exc)
                m.ERRORS.labels(name, "ExplainFailed").inc()
                return 500, error_body("explanation failed; see the explainer's log")
            if protocol == "v1":
                return 200, v1_body(name, explainer, result)
            return 200, v2_body(name, rid, explainer, result)

        future = asyncio.get_running_loop().run_in_executor(self.pool, work)

        def done(fut: asyncio.Future[tuple[int, bytes]]) -> None:
            self.pending -= 1
            if fut.cancelled():
                answer(503, error_body("the explainer is shutting down"))
                return
            exc = fut.exception()
            if exc is not None:  # work() answers its own errors; this is a last resort
                log.error("explanation failed: %s", exc)
                answer(500, error_body("explanation failed; see the explainer's log"))
                return
            status, body = fut.result()
            if status == 200:
                self._rows.inc(x.shape[0])
            answer(status, body)

        future.add_done_callback(done)

    def _matrix(self, tensors: dict[str, Array], model: Model, explainer: Explainer) -> Array:
        """Request tensors -> [rows, features] in model order, validated by the model."""
        names = explainer.feature_names
        if len(tensors) > 1 or (len(names) > 1 and next(iter(tensors)) in names):
            tensors = {model.inputs[0].name: _by_feature(tensors, names)}
        x = model.prepare(tensors)[model.inputs[0].name]
        rows = x.shape[0] if x.ndim else 0
        if rows == 0:
            raise ProtocolError("the request holds no rows", 422)
        if rows > self.max_rows:
            raise ProtocolError(
                f"{rows} rows in one request; the explainer takes at most {self.max_rows} "
                "(--max-rows): split the request", 422)
        return np.ascontiguousarray(x, dtype=np.float64)


def _versioned_explain(path: str, name: str) -> bool:
    prefix = f"/v2/models/{name}/versions/"
    if not (path.startswith(prefix) and path.endswith("/explain")):
        return False
    version = path[len(prefix):-len("/explain")]
    return bool(version) and "/" not in version


def _by_feature(tensors: dict[str, Array], names: list[str]) -> Array:
    """One tensor per feature (V2 inputs or V1 instance keys named after features)."""
    unknown = sorted(set(tensors) - set(names))
    missing = [n for n in names if n not in tensors]
    if unknown or missing:
        hint = ""
        if {"name", "data"} <= set(unknown):
            hint = " (this looks like a V2 tensor: post V2 requests to /v2/models/{m}/explain)"
        raise ProtocolError(
            f"inputs named after features must name each of the model's {len(names)} "
            f"features once; unknown {unknown[:10]}, missing {missing[:10]}{hint}", 422)
    columns = []
    for n in names:
        col = tensors[n]
        if col.ndim == 2 and col.shape[1] == 1:
            col = col[:, 0]
        if col.ndim != 1:
            raise ProtocolError(f"input {n!r} must have shape [rows] or [rows, 1], got "
                                f"{list(col.shape)}", 422)
        if col.dtype.kind not in "biuf":
            raise ProtocolError(f"input {n!r} must hold numbers", 422)
        columns.append(col.astype(np.float64, copy=False))
    if len({c.shape[0] for c in columns}) != 1:
        raise ProtocolError("all feature inputs must have the same number of rows", 422)
    return np.stack(columns, axis=1)


def _not_ready_body(state: State) -> bytes:
    if state.error is not None:
        return orjson.dumps({"error": f"the explainer is not ready: {state.error.message}",
                             "reason": state.error.reason})
    return orjson.dumps({"error": "the explainer is still loading the model and background "
                                  "data; retry shortly", "reason": "Loading"})


def _parameters(explainer: Explainer) -> dict[str, Any]:
    return {"method": explainer.method, "algorithm": explainer.algorithm,
            "feature_names": explainer.feature_names,
            "output_names": explainer.target.names,
            "output_kind": explainer.target.kind}


def v2_body(name: str, rid: str | None, explainer: Explainer, result: Attributions) -> bytes:
    doc: dict[str, Any] = {"model_name": name}
    if rid is not None:
        doc["id"] = rid
    doc["outputs"] = [encode("attributions", result.values),
                      encode("base_values", result.base_values),
                      encode("output_values", result.outputs)]
    doc["parameters"] = _parameters(explainer)
    return orjson.dumps(doc, option=NUMPY)


def v1_body(name: str, explainer: Explainer, result: Attributions) -> bytes:
    features = explainer.feature_names
    outputs = explainer.target.names
    rows = []
    values = result.values.tolist()
    base = result.base_values.tolist()
    out = result.outputs.tolist()
    for r in range(len(values)):
        rows.append({"outputs": [
            {"name": o, "base_value": base[r][k], "output_value": out[r][k],
             "attributions": {f: values[r][j][k] for j, f in enumerate(features)}}
            for k, o in enumerate(outputs)]})
    return orjson.dumps({"model_name": name, **_parameters(explainer), "explanations": rows})
