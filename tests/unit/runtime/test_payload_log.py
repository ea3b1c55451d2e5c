"""Inference ids and payload logging: a real `kustos serve` process on 127.0.0.1 and a
loopback HTTP sink in this process that collects the CloudEvents it is sent."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from unit_support import loopback_server

from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb
from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from .conftest import Models, free_port, spawn_cli, stop_process, wait_for, wait_http_ready

ROW = [5.1, 3.5, 1.4, 0.2]
SECRET_ROW = [6.25, 2.75, 4.875, 1.625]  # values that must never reach the sink
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Event:
    headers: dict[str, str]
    body: bytes
    path: str = ""

    @property
    def id(self) -> str:
        return self.headers["ce-id"]

    @property
    def type(self) -> str:
        return self.headers["ce-type"]

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Sink:
    """Collects CloudEvents. ``fail_next`` POSTs answer 503; ``always_fail`` answers 500;
    while ``stall`` is clear every POST waits for it."""

    events: list[Event] = field(default_factory=list)
    posts: int = 0
    fail_next: int = 0
    always_fail: bool = False
    stall: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def by_id(self) -> dict[str, dict[str, Event]]:
        out: dict[str, dict[str, Event]] = {}
        with self.lock:
            for e in self.events:
                out.setdefault(e.id, {})[e.type] = e
        return out


@pytest.fixture
def sink() -> Iterator[Sink]:
    with collecting_sink() as state:
        yield state


@contextlib.contextmanager
def collecting_sink() -> Iterator[Sink]:
    """A Sink on 127.0.0.1 that collects what it is sent (any path)."""
    state = Sink()
    state.stall.set()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            assert state.stall.wait(60)
            with state.lock:
                state.posts += 1
                status = 200
                if state.always_fail:
                    status = 500
                elif state.fail_next > 0:
                    state.fail_next -= 1
                    status = 503
                else:
                    state.events.append(Event({k.lower(): v for k, v in self.headers.items()},
                                              body, self.path))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with loopback_server(Handler) as state.server:
        yield state
        state.stall.set()


@dataclass
class Serve:
    port: int
    grpc_port: int
    proc: subprocess.Popen[bytes]
    # With --payload-log-relay: the payload-log container's process and HTTP port.
    relay: subprocess.Popen[bytes] | None = None
    relay_port: int | None = None

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None
             ) -> tuple[int, Any, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body if isinstance(body, bytes) else orjson.dumps(body),
                         {"content-type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, orjson.loads(data), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def v2(self, rows: list[list[float]], rid: str | None = None,
           headers: dict[str, str] | None = None, **extra: Any) -> tuple[int, Any, dict[str, str]]:
        body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": [len(rows), 4],
                                            "datatype": "FP64", "data": rows}], **extra}
        if rid is not None:
            body["id"] = rid
        return self.post("/v2/models/iris/infer", body, headers)

    def metric(self, name: str) -> float:
        """The sum over the server and, with a relay, the relay (as Prometheus' sum())."""
        total = 0.0
        for port in (self.port, self.relay_port):
            if port is None:
                continue
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
            finally:
                conn.close()
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith(name))
        return total

    def stop(self) -> None:
        stop_process(self.proc)
        if self.relay is not None:
            stop_process(self.relay)


def events(outcome: str) -> str:
    return f'kustos_payload_log_events_total{{model="iris",outcome="{outcome}"}}'


def start(models: Models, *extra: str) -> Serve:
    port, grpc_port = free_port(), free_port()
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris", "--port",
                     str(port), "--grpc-port", str(grpc_port), "--log-level", "warning", *extra)
    wait_http_ready(port, proc)
    return Serve(port, grpc_port, proc)


def start_relay(socket_path: Path, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    """`kustos payload-relay` (the pod's payload-log container) on 127.0.0.1, ready."""
    port = free_port()
    proc = spawn_cli("payload-relay", "--socket", str(socket_path), "--host", "127.0.0.1",
                     "--port", str(port), "--name", "iris", "--log-level", "warning", *flags)
    wait_http_ready(port, proc)
    return proc, port


def start_relayed(models: Models, tmp: Path, relay_flags: tuple[str, ...],
                  *serve_flags: str) -> Serve:
    """A relay with ``relay_flags`` (its sinks), then `kustos serve` handing it over."""
    sock = tmp / "relay.sock"
    relay, relay_port = start_relay(sock, *relay_flags)
    try:
        serve = start(models, "--payload-log-relay", str(sock), *serve_flags)
    except BaseException:
        stop_process(relay)
        raise
    serve.relay, serve.relay_port = relay, relay_port
    return serve


@pytest.fixture(params=["in-process", "relay"])
def logged(request: pytest.FixtureRequest, models: Models, sink: Sink,
           tmp_path: Path) -> Iterator[Serve]:
    """Payload logging with redaction: sent by the server itself, or handed to the
    payload-log relay (the pod's container), which must send the same events."""
    sink_flags = ("--payload-log-url", sink.url, "--payload-log-redact", "input-0,customer",
                  "--payload-log-namespace", "team-a")
    if request.param == "in-process":
        serve = start(models, *sink_flags, "--model-version", "v3")
    else:
        serve = start_relayed(models, tmp_path, (*sink_flags, "--model-version", "v3"),
                              "--model-version", "v3")
    yield serve
    serve.stop()


def grpc_call(serve: Serve, rid: str, metadata: tuple[tuple[str, str], ...] = ()
              ) -> tuple[Any, dict[str, str]]:
    """A real grpc client's ModelInfer: the response and the initial metadata it got."""
    request = pb.ModelInferRequest(model_name="iris", id=rid)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(SECRET_ROW)
    with grpc.insecure_channel(f"127.0.0.1:{serve.grpc_port}") as channel:
        response, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, timeout=30, metadata=metadata)
        return response, dict(call.initial_metadata())


def grpc_infer(serve: Serve, rid: str) -> Any:
    return grpc_call(serve, rid)[0]


def test_every_protocol_carries_an_inference_id(logged: Serve) -> None:
    # V2: the body's id wins, then X-Request-Id, then ce-id, else a new uuid4 (hex).
    status, body, headers = logged.v2([ROW], rid="from-body",
                                      headers={"x-request-id": "from-header"})
    assert status == 200 and body["id"] == "from-body" and headers["x-request-id"] == "from-body"
    status, body, headers = logged.v2([ROW], headers={"x-request-id": "from-header"})
    assert body["id"] == "from-header" == headers["x-request-id"]
    status, body, headers = logged.v2([ROW], headers={"ce-id": "from-ce"})
    assert body["id"] == "from-ce" == headers["x-request-id"]
    status, body, headers = logged.v2([ROW])
    assert HEX_ID.match(body["id"]) and headers["x-request-id"] == body["id"]
    assert logged.v2([ROW])[1]["id"] != body["id"]
    # An id no header can carry is echoed in the body only: no header injection.
    status, body, headers = logged.v2([ROW], rid="a\r\nx-evil: 1")
    assert status == 200 and body["id"] == "a\r\nx-evil: 1"
    assert "x-evil" not in headers and "x-request-id" not in headers
    # V1: a response header.
    status, body, headers = logged.post("/v1/models/iris:predict", {"instances": [ROW]},
                                        {"x-request-id": "v1-id"})
    assert status == 200 and body == {"predictions": [0]} and headers["x-request-id"] == "v1-id"
    status, body, headers = logged.post("/v1/models/iris:predict", {"instances": [ROW]})
    assert HEX_ID.match(headers["x-request-id"])
    # Seldon: meta.puid and the header.
    msg = {"data": {"ndarray": [ROW]}}
    status, body, headers = logged.post("/api/v1.0/predictions",
                                        {**msg, "meta": {"puid": "seldon-1"}})
    assert status == 200 and body["meta"]["puid"] == "seldon-1" == headers["x-request-id"]
    status, body, headers = logged.post("/api/v1.0/predictions", msg, {"ce-id": "seldon-ce"})
    assert body["meta"]["puid"] == "seldon-ce" == headers["x-request-id"]
    status, body, headers = logged.post("/api/v1.0/predictions", msg)
    assert HEX_ID.match(body["meta"]["puid"]) and headers["x-request-id"] == body["meta"]["puid"]
    # gRPC: the request's id wins, then the x-request-id metadata (as the HTTP header),
    # else a new one; the response carries it and so does its x-request-id metadata.
    response, md = grpc_call(logged, "grpc-1", (("x-request-id", "grpc-header"),))
    assert response.id == "grpc-1" == md["x-request-id"]
    response, md = grpc_call(logged, "", (("x-request-id", "grpc-header"),))
    assert response.id == "grpc-header" == md["x-request-id"]
    response, md = grpc_call(logged, "")
    assert HEX_ID.match(response.id) and md["x-request-id"] == response.id
    assert grpc_infer(logged, "").id != response.id
    # An id no metadata value can carry is echoed in the response only.
    response, md = grpc_call(logged, "a\r\nx-evil: 1")
    assert response.id == "a\r\nx-evil: 1" and "x-request-id" not in md


def test_each_prediction_logs_request_and_response_events(logged: Serve, sink: Sink) -> None:
    answered: dict[str, str] = {}  # inference id -> protocol
    for i in range(5):
        _, body, _ = logged.v2([SECRET_ROW], parameters={"customer": f"alice-{i}"})
        answered[body["id"]] = "v2"
        _, _, headers = logged.post("/v1/models/iris:predict", {"instances": [SECRET_ROW]})
        answered[headers["x-request-id"]] = "v1"
        _, body, _ = logged.post("/api/v1.0/predictions", {
            "data": {"names": ["a", "b", "c", "input-0"], "ndarray": [[*ROW[:3], 6.25]]},
            "meta": {"tags": {"customer": "bob"}}})
        answered[body["meta"]["puid"]] = "seldon"
        answered[grpc_infer(logged, f"g-{i}").id] = "grpc"
    # Refused requests are not predictions: nothing logged.
    assert logged.post("/v2/models/iris/infer", {"inputs": []})[0] == 400
    assert wait_for(lambda: len(sink.events) >= 2 * len(answered), 30)
    assert wait_for(lambda: logged.metric(events("sent")) == 2 * len(answered), 10)
    got = sink.by_id()
    assert set(got) == set(answered) and len(sink.events) == 2 * len(answered)
    for rid, protocol in answered.items():
        pair = got[rid]
        assert set(pair) == {"org.kubeflow.serving.inference.request",
                             "org.kubeflow.serving.inference.response"}, protocol
        for e in pair.values():
            h = e.headers
            assert h["ce-specversion"] == "1.0" and h["content-type"] == "application/json"
            assert h["ce-source"] == "/kustos/team-a/iris/predictor"
            assert (h["ce-inferenceservicename"], h["ce-namespace"], h["ce-component"],
                    h["ce-endpoint"]) == ("iris", "team-a", "predictor", "default")
            assert h["ce-modelversion"] == "v3"  # the served model's --model-version
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", h["ce-time"])
            # Redacted before it left the process: neither the input values nor the
            # customer field.
            text = e.body.decode()
            assert "6.25" not in text and "alice" not in text and "bob" not in text
        request = pair["org.kubeflow.serving.inference.request"].json()
        response = pair["org.kubeflow.serving.inference.response"].json()
        if protocol == "v2":
            assert request["inputs"][0]["data"] == "[redacted]"
            assert request["parameters"]["customer"] == "[redacted]"
            assert response["id"] == rid and response["outputs"][0]["name"] == "predict"
        elif protocol == "v1":
            assert request == {"instances": "[redacted]"}
            assert response == {"predictions": [response["predictions"][0]]}
        elif protocol == "seldon":
            assert request["data"]["ndarray"] == [[*ROW[:3], "[redacted]"]]
            assert request["meta"]["tags"]["customer"] == "[redacted]"
            assert response["meta"]["puid"] == rid
        else:
            assert request["inputs"][0]["contents"] == "[redacted]"
            assert response["id"] == rid and response["outputs"][0]["name"] == "predict"
    assert logged.metric(events("dropped")) == 0 and logged.metric(events("failed")) == 0


def test_a_stalled_sink_drops_the_newest_and_never_blocks(models: Models, sink: Sink) -> None:
    serve = start(models, "--payload-log-url", sink.url, "--payload-log-queue", "3",
                  "--payload-log-timeout", "60")
    try:
        sink.stall.clear()
        for _ in range(20):  # each is answered while the sink holds the first event
            assert serve.v2([ROW])[0] == 200
        # The queue holds 3 predictions, those being sent included: the other 17 are
        # dropped (both their events; one more if a drop raced the sender's take).
        assert wait_for(lambda: serve.metric(events("dropped")) >= 34, 10)
        dropped = serve.metric(events("dropped"))
        assert dropped in (34, 36), dropped
        sink.stall.set()
        assert wait_for(lambda: serve.metric(events("sent")) == 40 - dropped, 30)
        assert len(sink.by_id()) == (40 - dropped) / 2
        assert serve.metric(events("failed")) == 0
    finally:
        sink.stall.set()
        stop_process(serve.proc)


def test_sink_failures_are_retried_then_counted(models: Models, sink: Sink) -> None:
    serve = start(models, "--payload-log-url", sink.url, "--payload-log-retries", "2")
    retries = 'kustos_payload_log_retries_total{model="iris"}'
    try:
        sink.fail_next = 2  # the request event fails twice, the third try gets through
        _, body, _ = serve.v2([ROW])
        assert wait_for(lambda: serve.metric(events("sent")) == 2, 20)
        assert serve.metric(retries) == 2 and serve.metric(events("failed")) == 0
        assert set(sink.by_id()[body["id"]]) == {"org.kubeflow.serving.inference.request",
                                                 "org.kubeflow.serving.inference.response"}
        sink.always_fail = True  # 3 tries per event, then failed
        posts = sink.posts
        assert serve.v2([ROW])[0] == 200
        assert wait_for(lambda: serve.metric(events("failed")) == 2, 20)
        assert sink.posts - posts == 6 and serve.metric(retries) == 2 + 4
        assert serve.metric(events("sent")) == 2
    finally:
        stop_process(serve.proc)
    # A sink nobody listens on: refused connections are failures too.
    serve = start(models, "--payload-log-url", f"http://127.0.0.1:{free_port()}/",
                  "--payload-log-retries", "1")
    try:
        assert serve.v2([ROW])[0] == 200
        assert wait_for(lambda: serve.metric(events("failed")) == 2, 20)
        assert serve.metric(retries) == 2
    finally:
        stop_process(serve.proc)


def test_the_sample_rate_is_respected(models: Models, sink: Sink) -> None:
    serve = start(models, "--payload-log-url", sink.url, "--payload-log-sample", "0.25")
    try:
        n = 400
        ids = {serve.v2([ROW])[1]["id"] for _ in range(n)}
        # SIGTERM: the server drains and its sender sends what is still queued.
        serve.proc.send_signal(signal.SIGTERM)
        serve.proc.wait(60)
        # Every sampled prediction has both its events; the count is Binomial(400, 0.25):
        # mean 100, sd 8.7, so 60..140 fails about once in 10^5 runs.
        got = sink.by_id()
        assert set(got) <= ids and all(len(pair) == 2 for pair in got.values())
        assert 60 <= len(got) <= 140, len(got)
    finally:
        stop_process(serve.proc)


def test_bad_payload_log_flags_are_refused(models: Models) -> None:
    for flags, message in ((["--payload-log-url", "ftp://x"], "expected an http(s) URL"),
                           (["--payload-log-url", "http://x", "--payload-log-sample", "1.5"],
                            "within 0..1"),
                           (["--payload-log-url", "http://x", "--payload-log-queue", "0"],
                            ">= 1"),
                           (["--payload-log-kafka", "k:9092"], "go together"),
                           (["--payload-log-kafka", "k", "--payload-log-topic", "t"],
                            "expected host:port"),
                           (["--payload-log-kafka", "k:9092", "--payload-log-topic", "a b"],
                            "topic name")):
        proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris", *flags)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and message in err.decode(), err.decode()[-500:]


@pytest.mark.parametrize("body_size", [40, 20000])
def test_a_batch_of_same_length_ids_is_posted_byte_for_byte_as_its_events(
        body_size: int) -> None:
    """The vectorised HTTP framing (batch_frame: ids of one length, bodies sent as they
    are) writes the same bytes, POST by POST, as the per-event framing of the same batch."""
    import random
    import socketserver
    import time
    import uuid

    from kustos.runtime.server.batch_frame import http_requests
    from kustos.runtime.server.payload_log import (
        RESPONSE_TYPE,
        HttpTransport,
        PayloadLogConfig,
        PayloadSink,
        plain_columns,
    )

    posts: list[bytes] = []

    class RawSink(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while head := self.rfile.readline():
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    head += line
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = self.rfile.read(length)
                posts.append(head + b"\r\n" + body)
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), RawSink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rng = random.Random(7)
    start = int(time.time()) + 0.9  # the batch crosses a second
    batch: list[Any] = []
    for i in range(200):
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        request = orjson.dumps({"inputs": [{"name": "input-0", "data": "x" * (
            body_size + rng.randrange(100))}]})  # 20000: content-length past the table
        response = orjson.dumps({"id": rid, "outputs": [{"name": "predict", "data": [i]}]})
        batch.append((rid, "v2", request, None, response, None, start + i * 0.000731))
    config = PayloadLogConfig(urls=(f"http://127.0.0.1:{server.server_address[1]}/e",),
                              service="iris", namespace="ns", model_version="3")
    transport = HttpTransport(config.urls[0], config)
    sink = PayloadSink(transport, "iris", config)
    sink.close()
    try:
        columns = plain_columns(batch)
        assert columns is not None
        assert http_requests(*columns, transport._start, (b"", b"")) is not None  # taken
        assert transport.send_batch(batch, sink.payloads, True) == [200] * 400
        fast, posts[:] = list(posts), []
        assert transport.send_batch(batch, sink.payloads, False) == [200] * 400
        assert len(fast) == 400 and fast == posts
        assert fast[1].startswith(b"POST /e HTTP/1.1\r\n") and RESPONSE_TYPE in fast[1]
    finally:
        transport.close()
        server.shutdown()
        server.server_close()
