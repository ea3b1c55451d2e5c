"""Shadow traffic end to end: two real `kustos serve` processes on 127.0.0.1, the stable
one mirroring its predictions to the candidate with --shadow-url, both serving sklearn
models trained here. The agreement counts the stable exports must equal what this test
computes with the same estimators."""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY
from unit_support import free_port, wait_for

from kustos.runtime.server.shadow import ShadowMirror, same

from .conftest import spawn_cli, stop_process, wait_http_ready

N = 90  # requests per scenario


@dataclass
class Proc:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, orjson.dumps(body), {"content-type": "application/json"})
            resp = conn.getresponse()
            return resp.status, orjson.loads(resp.read())
        finally:
            conn.close()

    def metric(self, series: str) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(series + " "))


def serve(model: Path, name: str, *extra: str) -> Proc:
    port = free_port()
    proc = spawn_cli("serve", "--model", str(model), "--name", name, "--port", str(port),
                     "--log-level", "warning", *extra)
    wait_http_ready(port, proc)
    return Proc(port, proc)


@dataclass
class Trained:
    X: np.ndarray
    stable: Any
    flipped: Any
    stable_path: Path
    flipped_path: Path
    Xd: np.ndarray
    ridge: Any
    ridge2: Any
    ridge_path: Path
    ridge2_path: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    import skops.io as sio
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.linear_model import LogisticRegression, Ridge

    d = tmp_path_factory.mktemp("shadow")
    X, y = load_iris(return_X_y=True)
    stable = LogisticRegression(max_iter=1000).fit(X, y)
    # The candidate learnt from labels of which 40 % were moved to the next class: it
    # disagrees with the stable on a share of rows.
    rng = np.random.default_rng(7)
    moved = rng.random(len(y)) < 0.4
    flipped = LogisticRegression(max_iter=1000).fit(X, np.where(moved, (y + 1) % 3, y))
    sio.dump(stable, d / "stable.skops")
    sio.dump(flipped, d / "flipped.skops")
    Xd, yd = load_diabetes(return_X_y=True)
    ridge, ridge2 = Ridge(alpha=1.0).fit(Xd, yd), Ridge(alpha=1.0).fit(Xd[:300], yd[:300])
    sio.dump(ridge, d / "ridge.skops")
    sio.dump(ridge2, d / "ridge2.skops")
    return Trained(X, stable, flipped, d / "stable.skops", d / "flipped.skops", Xd, ridge,
                   ridge2, d / "ridge.skops", d / "ridge2.skops")


def requests(X: np.ndarray) -> Iterator[tuple[str, Any, np.ndarray]]:
    """N prediction requests over every REST protocol: (path, body, rows sent)."""
    for i in range(N):
        rows = X[(i * 7) % len(X):(i * 7) % len(X) + 1 + i % 3]
        data = rows.tolist()
        v2 = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                          "data": data}]}
        match i % 5:
            case 0:
                yield "/v2/models/iris/infer", v2, rows
            case 1:  # probabilities: compared by their argmax
                yield "/v2/models/iris/infer", {**v2, "outputs": [{"name": "predict_proba"}]}, rows
            case 2:  # a versioned path: the candidate serves another version
                yield "/v2/models/iris/versions/3/infer", v2, rows
            case 3:
                yield "/v1/models/iris:predict", {"instances": data}, rows
            case _:
                yield "/api/v1.0/predictions", {"data": {"ndarray": data}}, rows


def shadow(kind: str) -> str:
    return f'kustos_shadow_requests_total{{model="iris",outcome="{kind}"}}'


def rows_series(kind: str, model: str = "iris") -> str:
    # /metrics lists labels in name order
    return f'kustos_shadow_rows_total{{agreement="{kind}",model="{model}"}}'


@pytest.fixture(scope="module")
def candidates(trained: Trained) -> Iterator[dict[str, Proc]]:
    procs = {"same": serve(trained.stable_path, "iris", "--model-version", "4"),
             "flipped": serve(trained.flipped_path, "iris", "--model-version", "4")}
    yield procs
    for p in procs.values():
        stop_process(p.proc)


def run_scenario(trained: Trained, candidate: Proc) -> tuple[Proc, int]:
    stable = serve(trained.stable_path, "iris", "--model-version", "3", "--shadow-url",
                   candidate.url, "--shadow-percent", "100")
    try:
        total_rows = 0
        before = candidate.metric(
            'kustos_requests_total{code="200",endpoint="v2_infer",model="iris"}')
        for path, body, rows in requests(trained.X):
            status, _ = stable.post(path, body)
            assert status == 200
            total_rows += len(rows)
        assert wait_for(lambda: stable.metric(shadow("sent")) >= N, 60, 0.05), \
            stable.metric(shadow("sent"))
        assert stable.metric(shadow("sent")) == N
        assert stable.metric(shadow("failed")) == stable.metric(shadow("dropped")) == 0
        # The candidate really answered them (3 of 5 are V2 requests).
        assert candidate.metric(
            'kustos_requests_total{code="200",endpoint="v2_infer",model="iris"}'
        ) - before == N * 3 // 5
        assert stable.metric('kustos_shadow_duration_seconds_count{model="iris"}') == N
        return stable, total_rows
    except BaseException:
        stop_process(stable.proc)
        raise


def test_identical_candidate_agrees_on_every_row(trained: Trained,
                                                 candidates: dict[str, Proc]) -> None:
    stable, total_rows = run_scenario(trained, candidates["same"])
    try:
        assert stable.metric(rows_series("agree")) == total_rows
        assert stable.metric(rows_series("disagree")) == 0
    finally:
        stop_process(stable.proc)


def test_flipping_candidate_disagreement_matches_local_computation(
        trained: Trained, candidates: dict[str, Proc]) -> None:
    expected = 0
    total = 0
    for _, _, rows in requests(trained.X):
        expected += int((trained.stable.predict(rows) != trained.flipped.predict(rows)).sum())
        total += len(rows)
    assert 0 < expected < total  # the scenario has both outcomes
    stable, total_rows = run_scenario(trained, candidates["flipped"])
    try:
        assert total_rows == total
        assert stable.metric(rows_series("disagree")) == expected
        assert stable.metric(rows_series("agree")) == total - expected
    finally:
        stop_process(stable.proc)


def test_regression_within_relative_tolerance(trained: Trained) -> None:
    candidate = serve(trained.ridge2_path, "dia")
    stable = serve(trained.ridge_path, "dia", "--shadow-url", candidate.url)
    try:
        X = trained.Xd
        # Rows the two ridges predict alike within 1e-3 and rows they do not.
        a, b = trained.ridge.predict(X), trained.ridge2.predict(X)
        close = np.flatnonzero(np.abs(a - b) <= 1e-3 * np.maximum(np.abs(a), np.abs(b)))
        chosen = list(range(40)) + close[:10].tolist()
        expected = sum(1 for i in chosen if same(float(a[i]), float(b[i])))
        for i in chosen:
            assert stable.post("/v1/models/dia:predict",
                               {"instances": [X[i].tolist()]})[0] == 200
        series = 'kustos_shadow_requests_total{model="dia",outcome="sent"}'
        assert wait_for(lambda: stable.metric(series) >= len(chosen), 60, 0.05)
        assert stable.metric(rows_series("agree", "dia")) == expected
        assert stable.metric(rows_series("disagree", "dia")) == len(chosen) - expected
        # The prediction-value histogram saw every row the stable predicted.
        assert stable.metric('kustos_prediction_value_count{model="dia"}') >= len(chosen)
    finally:
        stop_process(stable.proc)
        stop_process(candidate.proc)


def test_candidate_down_counts_failed_and_callers_are_unaffected(trained: Trained) -> None:
    dead = free_port()  # nothing listens there
    stable = serve(trained.stable_path, "iris", "--shadow-url", f"http://127.0.0.1:{dead}")
    try:
        for path, body, _ in requests(trained.X):
            status, answer = stable.post(path.replace("/versions/3", ""), body)
            assert status == 200, answer
        assert wait_for(lambda: stable.metric(shadow("failed")) >= N, 60, 0.05)
        assert stable.metric(shadow("failed")) == N
        assert stable.metric(shadow("sent")) == 0
        assert stable.metric(rows_series("agree")) + stable.metric(rows_series("disagree")) == 0
        code = 'kustos_requests_total{code="200",endpoint="v2_infer",model="iris"}'
        assert stable.metric(code) == N * 3 // 5
    finally:
        stop_process(stable.proc)


@pytest.mark.parametrize(("flags", "message"), [
    (["--shadow-url", "ftp://candidate:80"], "--shadow-url"),
    (["--shadow-url", "http://"], "--shadow-url"),
    (["--shadow-url", "http://127.0.0.1:1", "--shadow-percent", "150"],
     "--shadow-percent must be within 0..100"),
    (["--shadow-url", "http://127.0.0.1:1", "--shadow-percent", "ten"], "--shadow-percent"),
    (["--shadow-percent", "10"], "--shadow-percent needs --shadow-url"),
])
def test_malformed_shadow_flags_are_refused(trained: Trained, flags: list[str],
                                            message: str) -> None:
    proc = spawn_cli("serve", "--model", str(trained.stable_path), "--name", "iris",
                     "--port", "0", *flags)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert message in err.decode()
    assert "Traceback" not in err.decode()


def test_full_queue_drops_the_newest_and_never_blocks() -> None:
    """A candidate that accepts connections and never answers: the mirror's one batch in
    flight stalls, the queue fills, every later offer is dropped at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    model = "iris-queue"
    mirror = ShadowMirror(f"http://127.0.0.1:{port}", model, 100.0, queue=4, timeout=3.0)

    def count(outcome: str) -> float:
        value = REGISTRY.get_sample_value("kustos_shadow_requests_total",
                                          {"model": model, "outcome": outcome})
        return value or 0.0

    body = b'{"instances": [[1, 2, 3, 4]]}'
    try:
        for i in range(20):
            mirror.offer("/v1/models/iris:predict", "v1", body, {}, f"id-{i}",
                         b'{"predictions": [0]}', None, 1)
        # Never more than the queue's 4 are held: the other 16 are dropped, at once.
        assert count("dropped") == 16
        assert wait_for(lambda: count("failed") == 4, 30, 0.05)
        assert count("sent") == 0
        assert accepted, "the mirror never connected"
    finally:
        mirror.close(5)
        stop.set()
        thread.join(5)
        for s in accepted:
            s.close()
        listener.close()
