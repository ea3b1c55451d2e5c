"""Routing and handlers: one model, three protocols, health, metrics and OpenAPI.

Routes for the served model are an exact-match table built once (no regex per request);
anything else falls through to ``_unmatched``, which tells an unknown model or version
(404 in the protocol's error form) from an unknown path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from kustos.runtime.server import ids, openapi, seldon, truth_link, v1, v2
from kustos.runtime.server import metrics as m
from kustos.runtime.server.batching import Batcher, Outcome
from kustos.runtime.server.hooks import DriftSender, ExplainForwarder
from kustos.runtime.server.http import JSON, Reply, Request, error_body
from kustos.runtime.server.models import Model
from kustos.runtime.server.payload_log import PayloadLogConfig, PayloadLogger
from kustos.runtime.server.payload_relay import RelayLogger
from kustos.runtime.server.shadow import ShadowMirror
from kustos.runtime.server.shadow_tls import MirrorTls
from kustos.runtime.server.tensors import Array, ProtocolError

log = logging.getLogger("kustos.serve")

Handler = Callable[[Request, Reply], None]
PLAIN = b"text/plain; charset=utf-8"
OCTETS = b"application/octet-stream"
SELDON_PREFIX = "/api/v1.0/"
# Seldon's model-microservice paths (what its executor calls inside a graph).
SELDON_ALIASES = ("/predict", "/send-feedback", "/health/ping", "/health/status", "/metadata")
# What a protocol's render gives back: a JSON body, or (body, content type, extra header
# lines, length of the body's JSON header when the rest is binary tensor data).
Rendered = bytes | tuple[bytes, bytes, bytes, int | None]


@dataclass(frozen=True)
class AppOptions:
    name: str
    version: str = "1"
    drift_url: str | None = None
    explainer_url: str | None = None
    explainer_timeout: float = 30.0
    batching: bool = True
    max_batch_rows: int = 256
    drift_queue: int = 8192
    drift_max_rows_per_second: float = 2000
    payload_log: PayloadLogConfig | None = None
    shadow_url: str | None = None
    shadow_percent: float = 100.0
    shadow_queue: int = 4096
    shadow_tls: MirrorTls | None = None  # how an https shadow URL is checked (shadow_tls.py)
    truth_url: str | None = None  # the ground-truth monitor (runtime/server/truth_link.py)


def _seldon_path(path: str) -> bool:
    return path.startswith(SELDON_PREFIX) or path in SELDON_ALIASES


def prediction_log(config: PayloadLogConfig | None, model: str
                   ) -> PayloadLogger | RelayLogger | None:
    """``--payload-log-*``: sinks in this process, or the hand-over to the relay."""
    if config is None:
        return None
    if config.relay is not None:
        return RelayLogger(config.relay, model, config.sample, config.queue)
    return PayloadLogger(config, model)


class ServingApp:
    def __init__(self, opts: AppOptions, server_version: str = "0") -> None:
        self.opts = opts
        self.name = opts.name
        self.version = opts.version
        self.model: Model | None = None
        self.batcher: Batcher | None = None
        self.stats = m.RequestMetrics(opts.name)
        self.responses = v2.Responses(opts.name, opts.version, server_version)
        self.drift = (DriftSender(opts.drift_url, opts.name, opts.version,
                                  maxsize=opts.drift_queue,
                                  max_rows_per_second=opts.drift_max_rows_per_second)
                      if opts.drift_url else None)
        self.payload_log = prediction_log(opts.payload_log, opts.name)
        self.truth: truth_link.FeedbackForwarder | None = None
        if opts.truth_url:  # every prediction and all feedback to the monitor
            if not isinstance(self.payload_log, RelayLogger):  # else the relay sends them
                self.payload_log = truth_link.TruthLogger(opts.truth_url, opts.name,
                                                          opts.version, self.payload_log)
            self.truth = truth_link.FeedbackForwarder(opts.truth_url, opts.name)
        self.shadow = (ShadowMirror(opts.shadow_url, opts.name, opts.shadow_percent,
                                    opts.shadow_queue, tls=opts.shadow_tls)
                       if opts.shadow_url and opts.shadow_percent > 0 else None)
        self.explainer = (ExplainForwarder(opts.explainer_url, opts.explainer_timeout)
                          if opts.explainer_url else None)
        self.stopping = False
        # How many client connections are open (set by the server); decides whether a
        # request may wait one loop turn to share a model call.
        self.peers: Callable[[], int] = lambda: 2
        self._tasks: set[asyncio.Task[None]] = set()
        self._openapi = b""
        self._ready_gauge = m.MODEL_READY.labels(opts.name, opts.version)
        self._ready_gauge.set(0)
        self.routes = self._routes()

    # -- lifecycle
    def set_model(self, model: Model) -> None:
        self.batcher = Batcher(model, self.stats, self.opts.max_batch_rows, self.opts.batching,
                               peers=self.peers)
        self._openapi = orjson.dumps(openapi.document(model, self.responses.server))
        m.LOAD_SECONDS.labels(self.name, self.version).set(model.load_seconds)
        self.model = model
        if self.payload_log is not None and model.inputs:
            self.payload_log.set_input_name(model.inputs[0].name)
        self._ready_gauge.set(1)

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.stopping

    def begin_shutdown(self) -> None:
        self.stopping = True
        self._ready_gauge.set(0)

    def close(self) -> None:
        if self.drift is not None:
            self.drift.close()
        if self.payload_log is not None:
            self.payload_log.close()
        if self.shadow is not None:
            self.shadow.close()
        if self.truth is not None:
            self.truth.close()
        if self.explainer is not None:
            self.explainer.close()

    # -- routing
    def _routes(self) -> dict[str, dict[bytes, tuple[Handler, str]]]:
        n, v = self.name, self.version
        get, post = b"GET", b"POST"
        table: dict[str, dict[bytes, tuple[Handler, str]]] = {
            "/v2": {get: (self._v2_server, "v2_server")},
            "/v2/health/live": {get: (self._live, "health")},
            "/v2/health/ready": {get: (self._ready, "health")},
            "/v2/docs/openapi.json": {get: (self._openapi_doc, "openapi")},
            "/openapi.json": {get: (self._openapi_doc, "openapi")},
            "/metrics": {get: (self._metrics, "metrics")},
            "/v1/models": {get: (self._v1_list, "v1_models")},
            f"/v1/models/{n}": {get: (self._v1_status, "v1_model")},
            f"/v1/models/{n}:predict": {post: (self._v1_predict, "v1_predict")},
            f"/v1/models/{n}:explain": {post: (self._explain, "v1_explain")},
            "/api/v1.0/predictions": {post: (self._seldon_predict, "seldon_predictions")},
            "/api/v1.0/feedback": {post: (self._seldon_feedback, "seldon_feedback")},
            "/api/v1.0/metadata": {get: (self._seldon_metadata, "seldon_metadata")},
            f"/api/v1.0/metadata/{n}": {get: (self._seldon_metadata, "seldon_metadata")},
            "/api/v1.0/health/status": {get: (self._seldon_status, "health")},
            "/api/v1.0/health/ping": {get: (self._seldon_ping, "health")},
            "/predict": {post: (self._seldon_predict, "seldon_predictions")},
            "/send-feedback": {post: (self._seldon_feedback, "seldon_feedback")},
            "/metadata": {get: (self._seldon_metadata, "seldon_metadata")},
            "/health/status": {get: (self._seldon_status, "health")},
            "/health/ping": {get: (self._seldon_ping, "health")},
        }
        for base in (f"/v2/models/{n}", f"/v2/models/{n}/versions/{v}"):
            table[base] = {get: (self._v2_metadata, "v2_metadata")}
            table[base + "/ready"] = {get: (self._v2_model_ready, "v2_ready")}
            table[base + "/infer"] = {post: (self._v2_infer, "v2_infer")}
            table[base + "/explain"] = {post: (self._explain, "v2_explain")}
            table[base + "/feedback"] = {post: (self._v2_feedback, "v2_feedback")}
        return table

    def handle(self, request: Request, reply: Reply) -> None:
        entry = self.routes.get(request.path)
        if entry is None:
            self._unmatched(request, reply)
            return
        method = request.method
        target = entry.get(method) or (entry.get(b"GET") if method == b"HEAD" else None)
        if target is None:
            allowed = sorted({x.decode() for x in entry} | ({"HEAD"} if b"GET" in entry else set()))
            self._finish(request, reply, "other", "", 405,
                         self._error(request.path, 405, f"method {method.decode()} not allowed"),
                         JSON, b"allow: " + ", ".join(allowed).encode() + b"\r\n")
            return
        handler, endpoint = target
        stats = self.stats
        stats.inflight.inc()

        def done(status: int, body: bytes, content_type: bytes = JSON, extra: bytes = b"") -> None:
            reply(status, body, content_type, extra)
            stats.inflight.dec()
            stats.observe(endpoint, self.name, status, time.perf_counter() - request.started)

        handler(request, done)

    def _finish(self, request: Request, reply: Reply, endpoint: str, model: str, status: int,
                body: bytes, content_type: bytes = JSON, extra: bytes = b"") -> None:
        reply(status, body, content_type, extra)
        self.stats.observe(endpoint, model, status, time.perf_counter() - request.started)

    def _error(self, path: str, status: int, message: str) -> bytes:
        return seldon.error_body(status, message) if _seldon_path(path) else error_body(message)

    def _unmatched(self, request: Request, reply: Reply) -> None:
        path = request.path
        parts = path.strip("/").split("/")
        message = f"no such endpoint: {path[:200]}"
        if path.startswith("/v2/models/") and len(parts) >= 3:
            if parts[2] != self.name:
                message = f"model {parts[2][:200]!r} not found"
            elif len(parts) >= 5 and parts[3] == "versions" and parts[4] != self.version:
                message = f"model {self.name!r} has no version {parts[4][:200]!r}"
        elif path.startswith("/v1/models/") and len(parts) == 3:
            name = parts[2].rsplit(":", 1)[0] if ":" in parts[2] else parts[2]
            if name != self.name:
                message = f"model {name[:200]!r} not found"
        self._finish(request, reply, "other", "", 404, self._error(path, 404, message))

    # -- health and metadata
    def _v2_server(self, request: Request, reply: Reply) -> None:
        reply(200, self.responses.server, JSON, b"")

    def _live(self, request: Request, reply: Reply) -> None:
        reply(200, b'{"live":true}', JSON, b"")

    def _ready(self, request: Request, reply: Reply) -> None:
        if self.ready:
            reply(200, b'{"ready":true}', JSON, b"")
        else:
            reply(503, b'{"ready":false}', JSON, b"")

    def _v2_model_ready(self, request: Request, reply: Reply) -> None:
        if self.ready:
            reply(200, self.responses.model_ready, JSON, b"")
        else:
            reply(503, self.responses.model_not_ready, JSON, b"")

    def _not_ready(self, request: Request, reply: Reply) -> None:
        reply(503, self._error(request.path, 503, f"model {self.name!r} is not ready"), JSON, b"")

    def _v2_metadata(self, request: Request, reply: Reply) -> None:
        if self.model is None:
            self._not_ready(request, reply)
            return
        reply(200, orjson.dumps(self.model.metadata()), JSON, b"")

    def _openapi_doc(self, request: Request, reply: Reply) -> None:
        if self.model is None:
            self._not_ready(request, reply)
            return
        reply(200, self._openapi, JSON, b"")

    def _metrics(self, request: Request, reply: Reply) -> None:
        body, ctype = m.render()
        reply(200, body, ctype.encode(), b"")

    # -- inference
    def _submit(self, request: Request, reply: Reply, inputs: dict[str, Array],
                outputs: tuple[str, ...], render: Callable[[dict[str, Array]], Rendered],
                rid: str, kind: str, logged: bytes, logged_json_length: int | None = None
                ) -> None:
        """Predict, then answer ``render(outputs)`` with the inference id ``rid`` in an
        ``x-request-id`` header; ``logged`` (the request body as parsed) and the answer go
        to the payload log."""
        assert self.batcher is not None
        rows = v2.batch_rows(inputs)
        if rows == 0:
            raise ProtocolError("the request holds no rows", 422)
        drift = self.drift
        payload_log = self.payload_log
        shadow = self.shadow
        path = request.path
        id_header = ids.header_line(rid)

        def done(outcome: Outcome) -> None:
            if isinstance(outcome, BaseException):
                status, message = _prediction_error(outcome)
                reply(status, self._error(path, status, message), JSON, id_header)
                return
            try:
                rendered = render(outcome)
            except Exception as exc:  # an output the protocol cannot carry
                log.warning("cannot encode outputs: %s", exc)
                reply(500, self._error(path, 500, "cannot encode the model's outputs"), JSON,
                      id_header)
                return
            if isinstance(rendered, tuple):
                body, ctype, extra, json_length = rendered
                reply(200, body, ctype, extra + id_header)
            else:
                body, json_length = rendered, None
                reply(200, body, JSON, id_header)
            if drift is not None:
                drift.offer(inputs)
            if payload_log is not None:
                payload_log.offer(rid, kind, logged, logged_json_length, body, json_length)
            if shadow is not None:  # after the answer is written: a copy to the candidate
                shadow.offer(path, kind, request.body, request.headers, rid, body,
                             json_length, rows)

        self.batcher.submit(inputs, outputs, rows, done)

    def _v2_infer(self, request: Request, reply: Reply) -> None:
        model = self.model
        if model is None or (self.stopping and model is None):
            self._not_ready(request, reply)
            return
        try:
            body = request.body
            json_length = v2.header_length(request.headers.get(v2.HEADER_LENGTH), len(body))
            parsed = v2.parse_infer(body, json_length)
            outputs = v2.select_outputs(model, parsed.outputs)
            inputs = model.prepare(parsed.tensors)
            rid = parsed.id or ids.from_headers(request.headers) or ids.new_id()
            responses = self.responses
            render: Callable[[dict[str, Array]], Rendered]
            if parsed.any_binary:
                def render(out: dict[str, Array]) -> Rendered:
                    data, size = responses.infer_binary(rid, out, parsed)
                    return (data, OCTETS, b"inference-header-content-length: %d\r\n" % size,
                            size)
            else:
                def render(out: dict[str, Array]) -> Rendered:
                    return responses.infer(rid, out)
            self._submit(request, reply, inputs, outputs, render, rid, "v2", body,
                         json_length)
        except ProtocolError as exc:
            reply(exc.status, error_body(exc.message), JSON, b"")

    def _v1_list(self, request: Request, reply: Reply) -> None:
        reply(200, orjson.dumps({"models": [self.name]}), JSON, b"")

    def _v1_status(self, request: Request, reply: Reply) -> None:
        reply(200 if self.ready else 503, v1.model_status(self.name, self.ready), JSON, b"")

    def _v1_predict(self, request: Request, reply: Reply) -> None:
        model = self.model
        if model is None:
            self._not_ready(request, reply)
            return
        try:
            inputs = model.prepare(v1.parse_predict(request.body, model))
            outputs = model.default_outputs
            rid = ids.from_headers(request.headers) or ids.new_id()
            self._submit(request, reply, inputs, outputs,
                         lambda out: v1.predictions(out, outputs), rid, "v1",
                         request.body)
        except ProtocolError as exc:
            reply(exc.status, error_body(exc.message), JSON, b"")

    def _seldon_body(self, request: Request) -> bytes:
        ctype = request.headers.get(b"content-type", b"")
        # curl -d labels JSON as a form too: only a body that is not JSON is a form.
        if (ctype.startswith(b"application/x-www-form-urlencoded")
                and request.body[:1] not in (b"{", b"[")):
            # Old Seldon clients post form data with the message in the "json" field.
            fields = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
            if "json" not in fields:
                raise ProtocolError("form body must carry the message in a 'json' field")
            return fields["json"][0].encode()
        return request.body

    def _seldon_predict(self, request: Request, reply: Reply) -> None:
        model = self.model
        if model is None:
            self._not_ready(request, reply)
            return
        try:
            body = self._seldon_body(request)
            req = seldon.parse_predict(body, model)
            inputs = model.prepare(req.tensors)
            name, _ = seldon.output_for(model)
            puid = req.meta.get("puid")
            rid = (puid if isinstance(puid, str) and puid
                   else ids.from_headers(request.headers) or ids.new_id())
            req.meta["puid"] = rid  # echoed in the response's meta
            self._submit(request, reply, inputs, (name,),
                         lambda out: seldon.response(model, req, out), rid, "seldon",
                         body)
        except ProtocolError as exc:
            reply(exc.status, seldon.error_body(exc.status, exc.message), JSON, b"")

    def _seldon_feedback(self, request: Request, reply: Reply) -> None:
        model = self.model
        if model is None:
            self._not_ready(request, reply)
            return
        try:
            body = self._seldon_body(request)
            reward = seldon.parse_feedback(body, model)
            rid = ids.from_headers(request.headers)
            if self.truth is not None and truth_link.check_feedback(
                    truth_link.SELDON_PATH, body, rid, model.classes):
                self.truth.forward(truth_link.SELDON_PATH, body, rid)
        except ProtocolError as exc:
            reply(exc.status, seldon.error_body(exc.status, exc.message), JSON, b"")
            return
        m.FEEDBACK.labels(self.name).inc()
        if reward is not None:
            m.FEEDBACK_REWARD.labels(self.name).inc(max(reward, 0.0))
        reply(200, orjson.dumps({"data": {"names": [], "ndarray": []},
                                 "meta": {"requestPath": {self.name: self.version}}}), JSON, b"")

    def _v2_feedback(self, request: Request, reply: Reply) -> None:
        """Labels by inference id, checked and forwarded to the ground-truth monitor."""
        if self.truth is None:
            reply(404, error_body(f"no ground-truth monitor is configured for model "
                                  f"{self.name!r} (kustos serve --truth-url)"), JSON, b"")
            return
        try:
            truth_link.check_feedback(request.path, request.body, None,
                                      self.model.classes if self.model else None)
        except ProtocolError as exc:
            reply(exc.status, error_body(exc.message), JSON, b"")
            return
        self.truth.forward(f"/v2/models/{self.name}/feedback", request.body)
        reply(202, b'{"forwarded":true}', JSON, b"")

    def _seldon_metadata(self, request: Request, reply: Reply) -> None:
        if self.model is None:
            self._not_ready(request, reply)
            return
        reply(200, seldon.metadata(self.model), JSON, b"")

    def _seldon_status(self, request: Request, reply: Reply) -> None:
        if self.ready:
            reply(200, orjson.dumps({"status": {"code": 200, "status": "SUCCESS"},
                                     "meta": {"requestPath": {self.name: self.version}}}),
                  JSON, b"")
        else:
            self._not_ready(request, reply)

    def _seldon_ping(self, request: Request, reply: Reply) -> None:
        reply(200, b"pong", PLAIN, b"")

    # -- explain
    def _explain(self, request: Request, reply: Reply) -> None:
        explainer = self.explainer
        if explainer is None:
            reply(404, error_body(f"no explainer is configured for model {self.name!r}"),
                  JSON, b"")
            return
        hist = m.EXPLAIN_FORWARD_DURATION.labels(self.name)

        async def forward() -> None:
            started = time.perf_counter()
            try:
                res = await explainer.forward(request.path, request.body,
                                              request.headers.get(b"content-type", JSON))
            except Exception as exc:  # never leave the client without an answer
                reply(502, error_body(f"explainer forwarding failed: {exc}"), JSON, b"")
                return
            hist.observe(time.perf_counter() - started)
            reply(res.status, res.body, res.content_type, b"")

        task = asyncio.get_running_loop().create_task(forward())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _prediction_error(exc: BaseException) -> tuple[int, str]:
    """The model itself refused: input the checks let through is still the client's."""
    if isinstance(exc, ValueError | TypeError | IndexError):
        return 422, f"the model could not use this input: {str(exc)[:300]}"
    log.error("prediction failed: %s: %s", type(exc).__name__, exc)
    return 500, "prediction failed"
