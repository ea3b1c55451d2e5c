"""`kustos serve --grpc-port`: the Open Inference Protocol over gRPC, as tritonclient sees it.

The server runs as a real subprocess on loopback with models trained here; the client is
tritonclient.grpc (Triton's own V2 client), plus grpc.health.v1 and, for what tritonclient
cannot send (typed FP16, malformed raw data), the server's own stubs.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb
from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from .conftest import Models, free_port, http_get, spawn_cli, stop_process, wait_http_ready
from .test_serve_cli import listening_sockets

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])
SPECIES = np.array(["setosa", "versicolor", "virginica"])


@dataclass
class Server:
    port: int
    grpc_port: int
    proc: object

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self) -> tg.InferenceServerClient:
        return tg.InferenceServerClient(self.target)

    def rest_infer(self, body: dict[str, object]) -> tuple[int, dict[str, object]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/v2/models/iris/infer", orjson.dumps(body))
            resp = conn.getresponse()
            return resp.status, orjson.loads(resp.read())
        finally:
            conn.close()


class DriftSink:
    """A stand-in drift sidecar: counts the POSTs `kustos serve` hands it."""

    def __init__(self) -> None:
        sink = self
        self.bodies: list[bytes] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bodies.append(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/inputs"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _start(model: Path, *extra: str) -> Server:
    port, grpc_port = free_port(), free_port()
    proc = spawn_cli("serve", "--model", str(model), "--name", "iris", "--port", str(port),
                     "--grpc-port", str(grpc_port), "--log-level", "warning", *extra)
    wait_http_ready(port, proc)
    return Server(port, grpc_port, proc)


@pytest.fixture(scope="module")
def drift() -> Iterator[DriftSink]:
    sink = DriftSink()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def server(models: Models, drift: DriftSink) -> Iterator[Server]:
    srv = _start(models.iris_lr, "--drift-url", drift.url, "--drift-max-rows-per-second", "0")
    yield srv
    stop_process(srv.proc)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def species_model(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Path:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    path = tmp_path_factory.mktemp("species") / "species.skops"
    sio.dump(LogisticRegression(max_iter=1000).fit(X, SPECIES[y]), path)
    return path


@pytest.fixture(scope="module")
def species(species_model: Path) -> Iterator[Server]:
    srv = _start(species_model)
    yield srv
    stop_process(srv.proc)  # type: ignore[arg-type]


def _input(x: np.ndarray, datatype: str, name: str = "input-0") -> tg.InferInput:
    tensor = tg.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _outputs(*names: str) -> list[tg.InferRequestedOutput]:
    return [tg.InferRequestedOutput(n) for n in names]


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# -- health and metadata


def test_liveness_readiness_and_metadata(server: Server, models: Models) -> None:
    c = server.client()
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("iris") and c.is_model_ready("iris", "1")
    meta = c.get_server_metadata(as_json=True)
    assert meta["name"] == "kustos" and meta["version"]
    model = c.get_model_metadata("iris", as_json=True)
    assert model["name"] == "iris" and model["versions"] == ["1"]
    assert model["platform"].startswith("sklearn-")
    assert model["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "4"]}]
    assert [o["name"] for o in model["outputs"]] == ["predict", "predict_proba"]
    with pytest.raises(InferenceServerException) as exc:
        c.is_model_ready("nope")
    assert _status(exc) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as exc:
        c.get_model_metadata("iris", "9")
    assert _status(exc) == "StatusCode.NOT_FOUND"


def test_health_service_reports_serving(server: Server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as exc:
            stub.Check(health_pb2.HealthCheckRequest(service="other"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND


# -- inference


def test_fp64_classifier_outputs_agree_with_rest_and_echo_the_id(server: Server,
                                                                 models: Models) -> None:
    result = server.client().infer("iris", [_input(ROWS, "FP64")], request_id="req-42",
                                   outputs=_outputs("predict", "predict_proba"))
    response = result.get_response()
    assert response.id == "req-42" and response.model_name == "iris"
    assert response.model_version == "1"
    assert len(response.raw_output_contents) == 2  # raw in, raw out (as Triton)
    proba = result.as_numpy("predict_proba")
    labels = result.as_numpy("predict")
    assert labels.dtype == np.int64 and proba.dtype == np.float64
    np.testing.assert_array_equal(labels, models.iris_est.predict(ROWS))
    np.testing.assert_allclose(proba, models.iris_est.predict_proba(ROWS), rtol=1e-12)
    status, body = server.rest_infer({
        "id": "rest", "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                                  "data": ROWS.reshape(-1).tolist()}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}]})
    assert status == 200
    rest = {o["name"]: np.array(o["data"]).reshape(o["shape"])  # type: ignore[index]
            for o in body["outputs"]}  # type: ignore[attr-defined]
    np.testing.assert_array_equal(rest["predict"], labels)
    np.testing.assert_array_equal(rest["predict_proba"], proba)  # bit for bit


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BOOL", "FP16", "UINT8", "UINT16",
                                      "UINT32", "UINT64", "INT8", "INT16", "INT32"])
def test_every_numeric_datatype_raw_gives_the_models_answer(server: Server, models: Models,
                                                            datatype: str) -> None:
    dtype = tg.triton_to_np_dtype(datatype)
    x = (ROWS > 3).astype(dtype) if datatype == "BOOL" else np.round(ROWS).astype(dtype)
    result = server.client().infer("iris", [_input(x, datatype)],
                                   outputs=_outputs("predict_proba"))
    np.testing.assert_allclose(result.as_numpy("predict_proba"),
                               models.iris_est.predict_proba(x.astype(np.float64)),
                               rtol=1e-12)


TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
         "INT32": "int_contents", "INT8": "int_contents", "UINT8": "uint_contents",
         "UINT64": "uint64_contents", "BOOL": "bool_contents"}


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_contents_in_typed_contents_out(server: Server, models: Models,
                                              datatype: str) -> None:
    x = (ROWS > 3) if datatype == "BOOL" else np.round(ROWS).astype(
        tg.triton_to_np_dtype(datatype))
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype=datatype,
                                                   shape=x.shape)
    getattr(tensor.contents, TYPED[datatype]).extend(x.reshape(-1).tolist())
    request = pb.ModelInferRequest(model_name="iris", id="typed", inputs=[tensor])
    with grpc.insecure_channel(server.target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert response.id == "typed" and not response.raw_output_contents
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("predict", "INT64", [3])
    assert list(out.contents.int64_contents) == models.iris_est.predict(
        x.astype(np.float64)).tolist()


def test_bytes_output_of_a_string_labelled_classifier(species: Server, models: Models) -> None:
    c = species.client()
    assert c.get_model_metadata("iris", as_json=True)["outputs"][0]["datatype"] == "BYTES"
    result = c.infer("iris", [_input(ROWS, "FP64")], outputs=_outputs("predict"))
    labels = [v.decode() for v in result.as_numpy("predict").tolist()]
    assert labels == SPECIES[models.iris_est.predict(ROWS)].tolist()
    # Typed: bytes_contents.
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[3, 4])
    tensor.contents.fp64_contents.extend(ROWS.reshape(-1).tolist())
    with grpc.insecure_channel(species.target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="iris", inputs=[tensor]), timeout=10)
    assert [b.decode() for b in response.outputs[0].contents.bytes_contents] == labels


def test_bytes_input_is_decoded_then_refused_by_a_numeric_model(server: Server) -> None:
    x = np.array([[b"a", b"b", b"c", b"d"]], dtype=np.object_)
    with pytest.raises(InferenceServerException) as exc:
        server.client().infer("iris", [_input(x, "BYTES")])
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    assert "takes numbers, got BYTES" in exc.value.message()


# -- refusals


@pytest.mark.parametrize(("mutate", "code", "words"), [
    (lambda r: setattr(r, "model_name", "nope"), "NOT_FOUND", "not found"),
    (lambda r: setattr(r, "model_version", "7"), "NOT_FOUND", "no version"),
    (lambda r: r.inputs[0].shape.__setitem__(1, 3), "INVALID_ARGUMENT",
     "needs 9 elements, fp64_contents has 12"),
    (lambda r: r.inputs[0].ClearField("shape") or r.inputs[0].shape.extend([4, 3]),
     "INVALID_ARGUMENT", "input shape must be [-1, 4]"),
    (lambda r: setattr(r.inputs[0], "datatype", "FP8"), "INVALID_ARGUMENT", "unknown datatype"),
    (lambda r: setattr(r.inputs[0], "datatype", "FP16"), "INVALID_ARGUMENT", "raw_input_contents"),
    (lambda r: r.inputs.add(name="input-0", datatype="FP64", shape=[1]), "INVALID_ARGUMENT",
     "given twice"),
    (lambda r: setattr(r.inputs[0], "name", "a") or r.inputs.add(
        name="b", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0),
     "INVALID_ARGUMENT", "takes one input 'input-0', got ['a', 'b']"),
    (lambda r: r.outputs.add(name="decision"), "INVALID_ARGUMENT", "unknown output"),
    (lambda r: r.raw_input_contents.append(b"\0" * 96), "INVALID_ARGUMENT", "both in"),
])
def test_client_mistakes_get_a_clear_status_never_internal(server: Server, mutate: object,
                                                           code: str, words: str) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64", shape=[3, 4])
    tensor.contents.fp64_contents.extend(ROWS.reshape(-1).tolist())
    request = pb.ModelInferRequest(model_name="iris", inputs=[tensor])
    mutate(request)  # type: ignore[operator]
    with grpc.insecure_channel(server.target) as channel, \
            pytest.raises(grpc.RpcError) as exc:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert exc.value.code() == getattr(grpc.StatusCode, code)
    assert words in exc.value.details()


@pytest.mark.parametrize(("datatype", "raw", "words"), [
    ("FP64", b"\0" * 95, "needs 96 raw bytes, got 95"),
    ("FP64", b"", "needs 96 raw bytes, got 0"),
    ("BOOL", b"\x02" * 12, "BOOL raw bytes must be 0 or 1"),
    ("BYTES", b"\x05\0\0", "truncated length"),
    ("BYTES", b"\x05\0\0\0ab", "claims 5 bytes, only 2 remain"),
    ("BYTES", b"\x01\0\0\0a" * 11, "needs 12 BYTES elements, got 11"),
    ("BYTES", b"\x01\0\0\0a" * 13, "more BYTES elements than shape [3, 4] holds"),
])
def test_malformed_raw_tensors_are_invalid_argument(server: Server, datatype: str, raw: bytes,
                                                    words: str) -> None:
    # The same decoder and messages as the REST binary extension (tensors.decode_raw).
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype=datatype,
                                                   shape=[3, 4])
    request = pb.ModelInferRequest(model_name="iris", inputs=[tensor], raw_input_contents=[raw])
    with grpc.insecure_channel(server.target) as channel, \
            pytest.raises(grpc.RpcError) as exc:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in exc.value.details()


def test_bad_shape_and_unknown_model_through_tritonclient(server: Server) -> None:
    c = server.client()
    with pytest.raises(InferenceServerException) as exc:
        c.infer("iris", [_input(np.ones((2, 3)), "FP64")])
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as exc:
        c.infer("other", [_input(ROWS, "FP64")])
    assert _status(exc) == "StatusCode.NOT_FOUND"


# -- what REST has too: metrics, drift


def _metric(port: int, prefix: str) -> float:
    _, text = http_get(port, "/metrics")
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.decode().splitlines()
               if ln.startswith(prefix))


def test_requests_are_counted_and_inputs_reach_the_drift_sidecar(server: Server,
                                                                 drift: DriftSink) -> None:
    ok = 'kustos_requests_total{code="200",endpoint="grpc_infer",model="iris"}'
    bad = 'kustos_requests_total{code="422",endpoint="grpc_infer",model="iris"}'
    before_ok, before_bad = _metric(server.port, ok), _metric(server.port, bad)
    posts = len(drift.bodies)
    c = server.client()
    for _ in range(3):
        c.infer("iris", [_input(ROWS, "FP64")])
    with pytest.raises(InferenceServerException):
        c.infer("iris", [_input(np.ones((1, 3)), "FP64")])
    assert _metric(server.port, ok) == before_ok + 3
    assert _metric(server.port, bad) == before_bad + 1
    deadline = time.monotonic() + 10
    while len(drift.bodies) == posts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(drift.bodies) > posts
    assert b"5.1" in b"".join(drift.bodies[posts:])  # our rows, not something else


def test_concurrent_calls_share_model_calls(server: Server, models: Models) -> None:
    """64 calls in flight on one channel: every answer is its own rows' answer, and the
    server merges concurrent calls into fewer model calls (kustos_batch_rows)."""
    c = server.client()
    rng = np.random.default_rng(0)

    def batch_stats() -> tuple[float, float]:
        return (_metric(server.port, 'kustos_batch_rows_count{model="iris"}'),
                _metric(server.port, 'kustos_batch_rows_sum{model="iris"}'))

    count0, rows0 = batch_stats()
    merged = False
    # A server that saw one call at a time answers at once and probes for company every
    # 1000 calls: rounds of 64 until it has merged some (or 2560 calls, a failure).
    for _ in range(40):
        batches = [rng.uniform(0, 8, size=(1 + i % 3, 4)) for i in range(64)]
        results: list[object] = [None] * len(batches)
        done = threading.Semaphore(0)

        def callback(i: int, results: list[object] = results,
                     done: threading.Semaphore = done) -> object:
            def on_done(result: object, error: object) -> None:  # tritonclient's keywords
                results[i] = error or result
                done.release()
            return on_done

        for i, x in enumerate(batches):
            c.async_infer("iris", [_input(x, "FP64")], callback(i),
                          outputs=_outputs("predict_proba"))
        for _ in batches:
            assert done.acquire(timeout=30)
        for x, answer in zip(batches, results, strict=True):
            assert isinstance(answer, tg.InferResult), answer
            np.testing.assert_allclose(answer.as_numpy("predict_proba"),
                                       models.iris_est.predict_proba(x), rtol=1e-12)
        count, rows = batch_stats()
        if count - count0 < (rows - rows0) / 1.5:  # on average 1.5 calls or more merged
            merged = True
            break
    assert merged, "concurrent gRPC calls were never merged into one model call"


# -- workers and shutdown


def test_workers_share_the_grpc_port_and_drain_on_sigterm(models: Models) -> None:
    port, grpc_port = free_port(), free_port()
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris", "--port",
                     str(port), "--grpc-port", str(grpc_port), "--workers", "2",
                     "--log-level", "warning")
    try:
        wait_http_ready(port, proc)
        deadline = time.monotonic() + 30
        while listening_sockets(grpc_port) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listening_sockets(grpc_port) == 2  # one SO_REUSEPORT socket per worker
        for _ in range(20):  # a new channel (connection) each time: the kernel spreads them
            with tg.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c:
                assert c.infer("iris", [_input(ROWS, "FP64")]).as_numpy("predict").shape == (3,)
        total = _metric(port, 'kustos_requests_total{code="200",endpoint="grpc_infer"')
        assert total == 20  # aggregated over both workers
        proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        assert proc.wait(30) == 0
        assert listening_sockets(grpc_port) == 0
    finally:
        stop_process(proc)


def test_a_taken_grpc_port_fails_the_start(models: Models) -> None:
    port = free_port()
    with grpc_holder() as taken:
        proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris", "--port",
                         str(port), "--grpc-port", str(taken))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert b"cannot serve gRPC" in err and b"Traceback" not in err


@contextlib.contextmanager
def grpc_holder() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_before_the_model_loads_and_while_draining_infer_is_unavailable(
        models: Models) -> None:
    """In process: a ServingApp with no model yet, then one that begins to shut down."""
    import asyncio

    from kustos.runtime.server.app import AppOptions, ServingApp
    from kustos.runtime.server.grpc_v2 import GrpcServer
    from kustos.runtime.server.models import load_model

    async def scenario(model_path: Path) -> None:
        app = ServingApp(AppOptions(name="iris"))
        server = GrpcServer(app, "test")
        port = await server.start("127.0.0.1", 0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)

                async def status() -> int:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    return int(reply.status)

                tensor = pb.ModelInferRequest.InferInputTensor(
                    name="input-0", datatype="FP64", shape=[1, 4])
                tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
                request = pb.ModelInferRequest(model_name="iris", inputs=[tensor])
                assert (await stub.ServerLive(pb.ServerLiveRequest())).live
                assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
                assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.ModelInfer(request, timeout=5)
                assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"), timeout=5)
                assert exc.value.code() == grpc.StatusCode.UNAVAILABLE

                app.set_model(load_model(model_path, "iris"))
                await server.update_health()
                assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
                assert await status() == health_pb2.HealthCheckResponse.SERVING
                reply = await stub.ModelInfer(request, timeout=5)
                assert list(reply.outputs[0].contents.int64_contents) == [0]

                app.begin_shutdown()
                await server.update_health()
                assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.ModelInfer(request, timeout=5)
                assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop(1)
            app.close()

    asyncio.run(scenario(models.iris_lr))



def test_output_parameters_come_back_on_their_tensor(server: Server) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64",
                                                   shape=[1, 4])
    tensor.contents.fp64_contents.extend(ROWS[0].tolist())
    request = pb.ModelInferRequest(model_name="iris", inputs=[tensor])
    request.parameters["trace"].string_param = "ignored but accepted"
    out = request.outputs.add(name="predict_proba")
    out.parameters["content_type"].string_param = "np"
    out.parameters["top"].int64_param = 3
    with grpc.insecure_channel(server.target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    (tensor_out,) = response.outputs
    assert tensor_out.name == "predict_proba" and list(tensor_out.shape) == [1, 3]
    assert tensor_out.parameters["content_type"].string_param == "np"
    assert tensor_out.parameters["top"].int64_param == 3
    assert len(tensor_out.contents.fp64_contents) == 3


# -- what Kustos does not implement


def _triton_only_methods() -> list[tuple[str, bool, bool, type]]:
    """Triton's GRPCInferenceService methods that Kustos's service lacks (from tritonclient's
    own descriptor): (name, client streaming, server streaming, request message class)."""
    from google.protobuf import message_factory
    from tritonclient.grpc import service_pb2

    ours = {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return [(m.name, m.client_streaming, m.server_streaming,
             message_factory.GetMessageClass(m.input_type))
            for m in theirs.methods if m.name not in ours]


def test_rpcs_kustos_does_not_implement_answer_unimplemented(server: Server,
                                                             models: Models) -> None:
    extra = _triton_only_methods()
    # What docs/serving.md names: repository, statistics, shared memory, streaming, trace,
    # logging (ModelConfig too).
    assert {"RepositoryIndex", "RepositoryModelLoad", "ModelStatistics", "ModelConfig",
            "SystemSharedMemoryStatus", "CudaSharedMemoryRegister", "ModelStreamInfer",
            "TraceSetting", "LogSettings"} <= {name for name, *_ in extra}
    with grpc.insecure_channel(server.target) as channel:
        for name, client_streaming, server_streaming, request in extra:
            path = f"/inference.GRPCInferenceService/{name}"
            with pytest.raises(grpc.RpcError) as exc:
                if client_streaming and server_streaming:
                    call = channel.stream_stream(path, request_serializer=request.SerializeToString)
                    list(call(iter([request()]), timeout=10))
                else:
                    call = channel.unary_unary(path, request_serializer=request.SerializeToString)
                    call(request(), timeout=10)
            assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
        # A service Kustos does not serve at all (Seldon v1's gRPC) answers the same.
        with pytest.raises(grpc.RpcError) as exc:
            channel.unary_unary("/seldon.protos.Seldon/Predict")(b"", timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # tritonclient's own calls for them get the status, and the server still infers.
    c = server.client()
    for ask in (c.get_model_repository_index, lambda: c.get_inference_statistics("iris"),
                lambda: c.get_model_config("iris"), c.get_system_shared_memory_status,
                c.get_trace_settings, c.get_log_settings, lambda: c.load_model("iris")):
        with pytest.raises(InferenceServerException) as texc:
            ask()
        assert _status(texc) == "StatusCode.UNIMPLEMENTED"
    result = c.infer("iris", [_input(ROWS, "FP64")], outputs=_outputs("predict"))
    assert result.as_numpy("predict").tolist() == models.iris_est.predict(ROWS).tolist()
