"""`kustos serve` as a process: the rendered flags, SIGTERM draining, SO_REUSEPORT workers."""

from __future__ import annotations

import http.client
import http.server
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from kustos.render.runtimes import ServingSpec, kustos_serve_args
from kustos.runtime.server.cli import build_parser

from .conftest import Models, free_port, http_get, spawn_cli, stop_process, wait_http_ready

BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                                 "data": [5.1, 3.5, 1.4, 0.2]}]})


def test_parser_takes_exactly_what_the_operator_renders() -> None:
    spec = ServingSpec(kind="kustos", image="kustos:dev", model_name="iris", model_version="7",
                       model_file="model.skops", model_format="sklearn",
                       digest="sha256:" + "a" * 64, workers=2,
                       drift_url="http://127.0.0.1:8081/inputs",
                       explainer_url="http://127.0.0.1:8082")
    argv = kustos_serve_args(spec)
    assert argv[0] == "serve"
    args = build_parser().parse_args(argv[1:])
    assert (args.model, args.name, args.model_version, args.format) == (
        "/mnt/models/model.skops", "iris", "7", "sklearn")
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 8080, 2)
    assert args.digest == spec.digest
    assert args.drift_url == spec.drift_url and args.explainer_url == spec.explainer_url


def test_env_vars_set_the_sidecar_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUSTOS_DRIFT_URL", "http://127.0.0.1:1/d")
    monkeypatch.setenv("KUSTOS_EXPLAINER_URL", "http://127.0.0.1:2")
    args = build_parser().parse_args(["--model", "m.skops", "--name", "m"])
    assert args.drift_url == "http://127.0.0.1:1/d" and args.explainer_url == "http://127.0.0.1:2"


def test_unloadable_model_exits_1_with_a_clear_line(models: Models) -> None:
    proc = spawn_cli("serve", "--model", str(models.wine_joblib), "--name", "wine",
                     "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    line = [ln for ln in err.decode().splitlines() if "ERROR" in ln]
    assert len(line) == 1 and "refusing to unpickle" in line[0]
    assert "Traceback" not in err.decode()


def test_bad_flags_exit_2(models: Models) -> None:
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "i", "--workers", "2",
                     "--port", "0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"explicit --port" in err


@pytest.fixture
def slow_explainer() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            time.sleep(1.0)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "11")
            self.end_headers()
            self.wfile.write(b'{"done": 1}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_sigterm_drains_in_flight_requests_then_exits_0(models: Models,
                                                        slow_explainer: str) -> None:
    port = free_port()
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris", "--port",
                     str(port), "--explainer-url", slow_explainer)
    try:
        wait_http_ready(port, proc)
        result: dict[str, object] = {}

        def slow_call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/v2/models/iris/explain", BODY)
            resp = conn.getresponse()
            result["status"], result["body"] = resp.status, resp.read()
            result["connection"] = resp.getheader("connection")

        t = threading.Thread(target=slow_call)
        t.start()
        time.sleep(0.3)  # the explain request is now in flight
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(OSError):  # no longer accepting
            http_get(port, "/v2/health/live", timeout=1)
        t.join(10)
        assert result["status"] == 200 and result["body"] == b'{"done": 1}'
        assert result["connection"] == "close"
        assert proc.wait(10) == 0
    finally:
        stop_process(proc)


def listening_sockets(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                count += 1
    return count


def test_workers_share_the_port_and_metrics(models: Models) -> None:
    port = free_port()
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris", "--port",
                     str(port), "--workers", "2")
    try:
        wait_http_ready(port, proc)
        deadline = time.monotonic() + 30
        while listening_sockets(port) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listening_sockets(port) == 2  # one SO_REUSEPORT socket per worker
        sent = 40
        for _ in range(sent):  # a new connection each time: the kernel spreads them
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/v2/models/iris/infer", BODY)
            assert conn.getresponse().status == 200
            conn.close()
        _, text = http_get(port, "/metrics")
        lines = text.decode().splitlines()
        total = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(
            'kustos_requests_total{code="200",endpoint="v2_infer",model="iris"'))
        assert total == sent  # aggregated over both workers' counters
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        stop_process(proc)
