"""Drift hand-off and explainer forwarding, against small real sidecars on 127.0.0.1."""

from __future__ import annotations

import http.server
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from unit_support import loopback_server

from .conftest import Models, free_port, start_server, wait_for

ROW = [5.1, 3.5, 1.4, 0.2]


class Sidecar:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.delay = 0.0
        self.status = 200
        self.server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def sidecar() -> Iterator[Sidecar]:
    state = Sidecar()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            time.sleep(state.delay)
            state.posts.append((self.path, orjson.loads(body)))
            out = orjson.dumps({"explanations": [[0.1, 0.2, 0.3, 0.4]], "path": self.path})
            self.send_response(state.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    with loopback_server(Handler) as state.server:
        yield state


def metric(server: Any, prefix: str) -> float:
    c = server.client()
    try:
        _, text, _ = c.request("GET", "/metrics")
    finally:
        c.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith(prefix))


def test_drift_receives_inputs_in_the_documented_payload(models: Models,
                                                          sidecar: Sidecar) -> None:
    server = start_server(models.iris_lr, "drifty", "--drift-url", sidecar.url + "/inputs")
    try:
        c = server.client()
        for rows in ([ROW], [ROW, ROW]):
            status, _ = c.post("/v2/models/drifty/infer", {"inputs": [
                {"name": "input-0", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]})
            assert status == 200
        assert c.post("/v1/models/drifty:predict", {"instances": [ROW]})[0] == 200
        c.close()
        assert wait_for(lambda: sum(p[1]["parameters"]["requests"] for p in sidecar.posts) == 3)
        rows = 0
        for path, payload in sidecar.posts:
            assert path == "/inputs"
            assert payload["model_name"] == "drifty" and payload["model_version"] == "1"
            (tensor,) = payload["inputs"]
            assert tensor["name"] == "input-0" and tensor["datatype"] == "FP64"
            assert tensor["shape"][1] == 4
            data = np.array(tensor["data"]).reshape(tensor["shape"])
            np.testing.assert_allclose(data[0], np.float32(ROW), rtol=1e-6)
            rows += tensor["shape"][0]
        assert rows == 4
        assert wait_for(
            lambda: metric(server, 'kustos_drift_handoff_sent_total{model="drifty"}') == 3)
    finally:
        server.shutdown()


def test_drift_sidecar_down_never_fails_predictions(models: Models) -> None:
    server = start_server(models.iris_lr, "lonely", "--drift-url",
                          f"http://127.0.0.1:{free_port()}/")
    try:
        c = server.client()
        for _ in range(5):
            started = time.perf_counter()
            status, _ = c.post("/v2/models/lonely/infer", {"inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}]})
            assert status == 200 and time.perf_counter() - started < 1.0
        c.close()
        dropped = 'kustos_drift_handoff_dropped_total{model="lonely",reason="send_failed"}'
        assert wait_for(lambda: metric(server, dropped) == 5)
    finally:
        server.shutdown()


def test_drift_queue_overflow_drops_and_counts(models: Models, sidecar: Sidecar) -> None:
    from kustos.runtime.server.hooks import DriftSender

    sidecar.delay = 0.5
    sender = DriftSender(sidecar.url, "overflow", "1", maxsize=2, max_requests_per_post=1)
    try:
        x = {"input-0": np.zeros((1, 4))}
        started = time.perf_counter()
        for _ in range(20):
            sender.offer(x)
        assert time.perf_counter() - started < 0.1  # offer never blocks
        from kustos.runtime.server import metrics as m

        dropped = m.DRIFT_DROPPED.labels("overflow", "queue_full")._value.get()
        assert 17 <= dropped <= 18  # 1 in flight + 2 queued at most
    finally:
        sidecar.delay = 0
        sender.close()


def test_explain_is_forwarded_with_the_same_path(models: Models, sidecar: Sidecar) -> None:
    server = start_server(models.iris_lr, "iris", "--explainer-url", sidecar.url)
    forwarded = 'kustos_explain_forward_duration_seconds_count{model="iris"}'
    try:
        before = metric(server, forwarded)  # servers of other tests share the registry
        c = server.client()
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
        status, out = c.post("/v2/models/iris/explain", body)
        assert status == 200 and out["path"] == "/v2/models/iris/explain"
        status, out = c.post("/v1/models/iris:explain", {"instances": [ROW]})
        assert status == 200 and out["path"] == "/v1/models/iris:explain"
        assert sidecar.posts[0][1] == body
        sidecar.status = 422
        status, out = c.post("/v1/models/iris:explain", {"instances": [ROW]})
        assert status == 422  # the explainer's own answer is relayed
        c.close()
        assert metric(server, forwarded) - before == 3
        # The sidecar's own name: kustos serve must not export it with other labels.
        c = server.client()
        _, text, _ = c.request("GET", "/metrics")
        c.close()
        assert b"kustos_explain_forward_duration_seconds_bucket{" in text
        assert b"kustos_explain_duration_seconds" not in text
    finally:
        server.shutdown()


def test_explainer_down_is_502_and_slow_is_504(models: Models, sidecar: Sidecar) -> None:
    server = start_server(models.iris_lr, "iris", "--explainer-url",
                          f"http://127.0.0.1:{free_port()}")
    try:
        c = server.client()
        status, out = c.post("/v2/models/iris/explain", {"inputs": []})
        assert status == 502 and "explainer unavailable" in out["error"]
        c.close()
    finally:
        server.shutdown()
    sidecar.delay = 1.5
    server = start_server(models.iris_lr, "iris", "--explainer-url", sidecar.url,
                          "--explainer-timeout", "0.3")
    try:
        c = server.client()
        started = time.perf_counter()
        status, out = c.post("/v2/models/iris/explain", {"inputs": []})
        assert status == 504 and "did not answer" in out["error"]
        assert time.perf_counter() - started < 1.4
        # Predictions keep flowing while an explain waits.
        assert c.post("/v2/models/iris/infer", {"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}]})[0] == 200
        c.close()
    finally:
        sidecar.delay = 0
        server.shutdown()


def test_drift_sample_every_nth_request_above_the_row_rate(sidecar: Sidecar) -> None:
    from kustos.runtime.server import metrics as m
    from kustos.runtime.server.hooks import DriftSender, sample_every

    assert sample_every(500, 2000) == 1
    assert sample_every(2000, 2000) == 1
    assert sample_every(20_000, 2000) == 10
    assert sample_every(20_001, 2000) == 11
    assert sample_every(50_000, 0) == 1

    # A real stream over the cap: after the first second the sender thinned it out.
    sender = DriftSender(sidecar.url, "sampled", "1", max_rows_per_second=200)
    everything = DriftSender(sidecar.url, "unsampled", "1", max_rows_per_second=0)
    try:
        x = {"input-0": np.zeros((1, 4))}
        # Offer until the sender has adapted and 1000 more requests went by (bounded in
        # time): judged on observed progress, so a loaded machine only makes it slower.
        started, i, adapted_at = time.monotonic(), 0, None
        while time.monotonic() - started < 30:
            sender.offer({"input-0": np.full((1, 4), i, dtype=np.float64)})
            everything.offer(x)
            i += 1
            if adapted_at is None and sender._every >= 3:
                adapted_at = i
            if adapted_at is not None and i - adapted_at >= 1000:
                break
            time.sleep(0.0005)  # ~1000-2000 requests/s, well over the cap of 200 rows/s
        assert adapted_at is not None and i - adapted_at >= 1000, (i, adapted_at)

        def rows(model: str) -> list[float]:
            return [v for _, body in sidecar.posts if body["model_name"] == model
                    for inp in body["inputs"] for v in inp["data"][::4]]

        sampled = m.DRIFT_SAMPLED_OUT.labels("sampled")
        assert wait_for(lambda: len(rows("sampled")) + sampled._value.get() == i, timeout=10)
        kept = rows("sampled")
        after = [v for v in kept if v >= adapted_at]
        assert len(after) < (i - adapted_at) / 2 and sampled._value.get() > (i - adapted_at) / 2
        # Every n-th request: the kept ones are spread over the whole stream.
        assert max(kept) > 0.9 * i
        assert wait_for(lambda: len(rows("unsampled")) == i, timeout=10)
        assert m.DRIFT_SAMPLED_OUT.labels("unsampled")._value.get() == 0
    finally:
        sender.close()
        everything.close()
