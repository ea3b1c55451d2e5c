"""Open Inference Protocol (KServe V2) over gRPC: ``inference.GRPCInferenceService``.

It runs in the worker's event loop beside the HTTP server (grpc.aio) and shares the
ServingApp: the same model, the same micro-batching Batcher, the same request metrics
(endpoints ``grpc_*``, with the HTTP status a REST client would have got as ``code``, so
one alert on 5xx covers both), the same drift hand-off. Client mistakes are answered with
INVALID_ARGUMENT or NOT_FOUND, a model that is not loaded (or a server that drains) with
UNAVAILABLE; INTERNAL is left for the model failing on input it accepted. The standard
grpc.health.v1 service reports SERVING only while the model is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kustos.runtime.server import grpc_tensors as gt
from kustos.runtime.server import ids, v2
from kustos.runtime.server.app import ServingApp
from kustos.runtime.server.batching import Outcome
from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb
from kustos.runtime.server.tensors import Array, ProtocolError

log = logging.getLogger("kustos.serve")

SERVICE = "inference.GRPCInferenceService"
# How long a call may wait for company before it goes to the Batcher (see _submit): half
# a model call, within these bounds (the event loop's timers count milliseconds).
GATHER_SECONDS = 0.001
MAX_GATHER_SECONDS = 0.005
# This many windows in a row with one call each and the calls go straight on.
LONE_LIMIT = 4
# Calls one at a time (a sequential client) never wait; every this many calls one waits
# to see whether the load has become concurrent.
PROBE_EVERY = 1000
# HTTP status of a refusal (what REST answers and the metrics record) -> gRPC code.
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.INVALID_ARGUMENT,
          503: grpc.StatusCode.UNAVAILABLE}


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def grpc_code(status: int) -> Any:
    if status in _CODES:
        return _CODES[status]
    return grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL


def _prediction_error(exc: BaseException) -> Refused:
    """The model refused input the checks let through: still the client's input."""
    if isinstance(exc, ValueError | TypeError | IndexError):
        return Refused(422, f"the model could not use this input: {str(exc)[:300]}")
    log.error("prediction failed: %s: %s", type(exc).__name__, exc)
    return Refused(500, "prediction failed")


class InferenceService:
    """The six RPCs, over one ServingApp."""

    def __init__(self, app: ServingApp, server_version: str) -> None:
        self.app = app
        self.server_version = server_version
        self.active = 0  # ModelInfer calls in progress: tells the Batcher company may come
        self.window = GATHER_SECONDS
        self._call_seconds = 0.0  # moving average of a window's model call
        self._gathered: list[tuple[dict[str, Array], tuple[str, ...], int, Callable[[Outcome],
                                                                                  None]]] = []
        self._gather_timer: asyncio.TimerHandle | None = None
        self._gathered_rows = 0
        self._gathering = False  # do windows gather company (fewer than two lone ones)
        self._lone = 0  # windows in a row that gathered one call only
        self._probe_in = 1  # the first call looks for company

    # -- helpers
    def _check_model(self, name: str, version: str) -> None:
        if name != self.app.name:
            raise Refused(404, f"model {name[:200]!r} not found")
        if version and version != self.app.version:
            raise Refused(404, f"model {name!r} has no version {version[:200]!r}")

    # -- RPCs (each returns the response or raises Refused; ``context`` is grpc.aio's)
    async def server_live(self, request: Any, context: Any = None) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any = None) -> Any:
        return pb.ServerReadyResponse(ready=self.app.ready)

    async def model_ready(self, request: Any, context: Any = None) -> Any:
        self._check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.app.ready)

    async def server_metadata(self, request: Any, context: Any = None) -> Any:
        return pb.ServerMetadataResponse(name="kustos", version=self.server_version)

    async def model_metadata(self, request: Any, context: Any = None) -> Any:
        self._check_model(request.name, request.version)
        model = self.app.model
        if model is None:
            raise Refused(503, f"model {self.app.name!r} is not ready")
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform=model.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                    for t in model.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in model.outputs])

    async def model_infer(self, request: Any, context: Any = None) -> Any:
        self.active += 1
        try:
            return await self._infer(request, context)
        finally:
            self.active -= 1

    async def _infer(self, request: Any, context: Any) -> Any:
        app = self.app
        self._check_model(request.model_name, request.model_version)
        model, batcher = app.model, app.batcher
        if model is None or batcher is None or app.stopping:
            raise Refused(503, f"model {app.name!r} is not ready")
        try:
            raw = request.raw_input_contents
            if raw and len(raw) != len(request.inputs):
                raise ProtocolError(f"raw_input_contents has {len(raw)} entries for "
                                    f"{len(request.inputs)} inputs")
            if not request.inputs:
                raise ProtocolError("'inputs' must hold at least one tensor")
            tensors: dict[str, Array] = {}
            for i, tensor in enumerate(request.inputs):
                name = tensor.name
                if not name:
                    raise ProtocolError(f"inputs[{i}]: 'name' must be a non-empty string")
                if name in tensors:
                    raise ProtocolError(f"input {name!r} given twice")
                tensors[name] = gt.decode_input(tensor, raw[i] if raw else None,
                                                f"input {name!r}")
            requested = tuple(dict.fromkeys(o.name for o in request.outputs)) or None
            outputs = v2.select_outputs(model, requested)
            inputs = model.prepare(tensors)
            rows = v2.batch_rows(inputs)
            if rows == 0:
                raise ProtocolError("the request holds no rows", 422)
        except ProtocolError as exc:
            raise Refused(exc.status, exc.message) from None
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome) -> None:
            if not future.done():  # the client may have cancelled meanwhile
                future.set_result(outcome)

        self._submit(inputs, outputs, rows, done)
        outcome = await future
        if isinstance(outcome, BaseException):
            raise _prediction_error(outcome)
        response = self._response(request, outcome)
        # Every prediction carries an id: the request's, else the x-request-id metadata
        # (as the HTTP header), else a new one; echoed in the response and its metadata.
        if not response.id:
            response.id = (metadata_id(context) if context is not None else None) \
                or ids.new_id()
        if context is not None and ids.header_line(response.id):
            await context.send_initial_metadata(((ids.GRPC_METADATA, response.id),))
        if app.drift is not None:
            app.drift.offer(inputs)
        if app.payload_log is not None:
            app.payload_log.offer(response.id, "grpc", request, None, response, None)
        return response

    def _submit(self, inputs: dict[str, Array], outputs: tuple[str, ...], rows: int,
                done: Callable[[Outcome], None]) -> None:
        """To the Batcher, after a short gathering window when other calls are in flight.

        grpc.aio accepts one new call per turn of the event loop and a call's handler runs
        to its end in one turn, so calls never overlap and the Batcher's one-turn merge
        would always see one request. Holding calls for up to ``window`` seconds lets
        those of concurrent streams arrive and reach the Batcher in one turn, which makes
        them one model call. Only while windows do gather company: a sequential client
        is answered at once (bar one probing call every PROBE_EVERY). A slow model (a
        forest) blocks the loop for its call, and calls queue meanwhile; half its call
        time lets them be accepted before the next one.
        """
        batcher = self.app.batcher
        assert batcher is not None
        if self.active <= 1 and not self._gathering and not self._gather_timer:
            self._probe_in -= 1
            if self._probe_in > 0:
                batcher.submit(inputs, outputs, rows, done)
                return
            self._probe_in = PROBE_EVERY
        self._gathered.append((inputs, outputs, rows, done))
        self._gathered_rows += rows
        if self._gathered_rows >= batcher.max_batch_rows:
            self._release()
        elif self._gather_timer is None:
            self._gather_timer = asyncio.get_running_loop().call_later(self.window,
                                                                       self._release)

    def _release(self) -> None:
        if self._gather_timer is not None:
            self._gather_timer.cancel()
            self._gather_timer = None
        items, self._gathered, self._gathered_rows = self._gathered, [], 0
        self._lone = 0 if len(items) > 1 else self._lone + 1
        self._gathering = self._lone < LONE_LIMIT
        batcher = self.app.batcher
        if batcher is None:
            for *_, done in items:
                done(RuntimeError("the model is gone"))
            return
        started = time.perf_counter()
        first = items[0][3]

        def timed(outcome: Outcome) -> None:
            # The Batcher answers the first call of a window once its model call is done.
            took = time.perf_counter() - started
            self._call_seconds += (took - self._call_seconds) * 0.2
            self.window = min(MAX_GATHER_SECONDS, max(GATHER_SECONDS, self._call_seconds / 2))
            first(outcome)

        items[0] = (*items[0][:3], timed)
        for inputs, outputs, rows, done in items:
            batcher.submit(inputs, outputs, rows, done)

    def _response(self, request: Any, outcome: dict[str, Array]) -> Any:
        # As Triton does: raw outputs to a client that sent raw inputs (and for FP16,
        # which has no typed field), typed contents otherwise.
        raw = bool(request.raw_input_contents) or gt.needs_raw(outcome)
        params = {o.name: o.parameters for o in request.outputs if o.parameters}
        response = pb.ModelInferResponse(model_name=self.app.name,
                                         model_version=self.app.version, id=request.id)
        try:
            for name, arr in outcome.items():
                datatype = gt.output_datatype(arr)
                out = response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
                if name in params:
                    for key, value in params[name].items():
                        out.parameters[key].CopyFrom(value)
                if raw:
                    response.raw_output_contents.append(gt.raw_bytes(arr))
                else:
                    gt.fill_contents(out.contents, arr, datatype)
        except Exception as exc:  # an output the protocol cannot carry
            log.warning("cannot encode outputs: %s", exc)
            raise Refused(500, "cannot encode the model's outputs") from None
        return response


def metadata_id(context: Any) -> str | None:
    """The ``x-request-id`` a client sent as call metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == ids.GRPC_METADATA and isinstance(value, str) and value.strip():
            return value.strip()
    return None


Rpc = Callable[[Any, Any], Awaitable[Any]]


class GrpcServer:
    """The grpc.aio server of one worker: the inference service plus grpc.health.v1."""

    def __init__(self, app: ServingApp, server_version: str,
                 max_message_bytes: int = 16 << 20) -> None:
        self.app = app
        self.service = InferenceService(app, server_version)
        self.health = health.aio.HealthServicer()
        self.max_message_bytes = max_message_bytes
        self.server: Any = None

    @property
    def active(self) -> int:
        return self.service.active

    def _metered(self, rpc: Rpc, endpoint: str) -> Callable[[Any, Any], Awaitable[Any]]:
        app = self.app
        stats = app.stats

        async def handle(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            stats.inflight.inc()
            status, model = 200, app.name
            try:
                return await rpc(request, context)
            except Refused as exc:
                status = exc.status
                if status == 404:
                    model = ""  # as REST: an unknown model is not a label value
                await context.abort(grpc_code(status), exc.message)
            finally:
                stats.inflight.dec()
                stats.observe(endpoint, model, status, time.perf_counter() - started)

        return handle

    def _handlers(self) -> dict[str, Any]:
        s = self.service
        # Each method <Name> takes pb.<Name>Request and answers pb.<Name>Response.
        table: list[tuple[str, Rpc, str]] = [
            ("ServerLive", s.server_live, "grpc_health"),
            ("ServerReady", s.server_ready, "grpc_health"),
            ("ModelReady", s.model_ready, "grpc_ready"),
            ("ServerMetadata", s.server_metadata, "grpc_server"),
            ("ModelMetadata", s.model_metadata, "grpc_metadata"),
            ("ModelInfer", s.model_infer, "grpc_infer"),
        ]
        return {name: grpc.unary_unary_rpc_method_handler(
                    self._metered(rpc, endpoint),
                    request_deserializer=getattr(pb, f"{name}Request").FromString,
                    response_serializer=getattr(pb, f"{name}Response").SerializeToString)
                for name, rpc, endpoint in table}

    async def start(self, host: str, port: int, reuse_port: bool = False,
                    credentials: Any = None) -> int:
        """Listen (TLS when ``credentials`` are given); the bound port. OSError if it cannot."""
        options = [
            # Workers share the port like the HTTP one; alone, a taken port must fail.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        server = grpc.aio.server(options=options)
        handlers = self._handlers()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if hasattr(server, "add_registered_method_handlers"):
            server.add_registered_method_handlers(SERVICE, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = (server.add_secure_port(address, credentials) if credentials is not None
                     else server.add_insecure_port(address))
        except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
            raise OSError(f"cannot bind {address}: {exc}") from None
        if not bound:
            raise OSError(f"cannot bind {address}")
        await server.start()
        self.server = server
        await self.update_health()
        return int(bound)

    async def update_health(self) -> None:
        """grpc.health.v1 status from the app: SERVING only while the model is ready."""
        status = (health_pb2.HealthCheckResponse.SERVING if self.app.ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let those in flight finish within ``grace`` seconds."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.server = None
