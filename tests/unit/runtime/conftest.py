"""Shared fixtures: small real models trained on sklearn's bundled data, live servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from unit_support import free_port, wait_for  # noqa: F401  # free_port: the tests import it here

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Models:
    iris_lr: Path
    iris_rf: Path
    diabetes: Path
    wine_joblib: Path
    cancer_onnx: Path
    cancer_onnx_zipmap: Path
    hgb_nan: Path
    iris_X: np.ndarray
    iris_est: Any
    rf_est: Any
    cancer_X: np.ndarray


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    import joblib
    import skops.io as sio
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = tmp_path_factory.mktemp("models")
    X, y = load_iris(return_X_y=True)
    lr = LogisticRegression(max_iter=1000).fit(X, y)
    sio.dump(lr, d / "iris_lr.skops")
    rf = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
    sio.dump(rf, d / "iris_rf.skops")
    Xd, yd = load_diabetes(return_X_y=True)
    sio.dump(Ridge().fit(Xd, yd), d / "diabetes.skops")
    Xw, yw = load_wine(return_X_y=True)
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(Xw, yw),
                d / "wine.joblib")
    Xc, yc = load_breast_cancer(return_X_y=True)
    clf = LogisticRegression(max_iter=5000).fit(Xc, yc)
    onx = to_onnx(clf, Xc[:1].astype(np.float32), options={"zipmap": False})
    (d / "cancer.onnx").write_bytes(onx.SerializeToString())
    onx_zip = to_onnx(clf, Xc[:1].astype(np.float32))
    (d / "cancer_zipmap.onnx").write_bytes(onx_zip.SerializeToString())
    sio.dump(HistGradientBoostingClassifier(max_iter=10).fit(X, y), d / "hgb.skops")
    return Models(d / "iris_lr.skops", d / "iris_rf.skops", d / "diabetes.skops",
                  d / "wine.joblib", d / "cancer.onnx", d / "cancer_zipmap.onnx",
                  d / "hgb.skops", X, lr, rf, Xc)


class Client:
    """A tiny keep-alive JSON client for the tests (http.client, no framework)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        hdrs = {"content-type": "application/json", **(headers or {})}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, data, hdrs)
                resp = self.conn.getresponse()
                payload = resp.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt == 2:
                    raise
        ctype = resp.getheader("content-type") or ""
        parsed: Any = payload
        if ctype.startswith("application/json") and payload:
            parsed = orjson.loads(payload)
        return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}

    def get(self, path: str) -> tuple[int, Any]:
        status, body, _ = self.request("GET", path)
        return status, body

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        status, data, _ = self.request("POST", path, body, raw)
        return status, data

    def close(self) -> None:
        self.conn.close()


@dataclass
class RunningServer:
    port: int
    app: Any
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    result: dict[str, int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Client:
        return Client(self.port)

    def shutdown(self, timeout: float = 15) -> int:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server thread did not stop"
        return self.result.get("code", -1)


def serve_args(model: Path, name: str = "iris", *extra: str) -> argparse.Namespace:
    from kustos.runtime.server.cli import build_parser

    return build_parser().parse_args(
        ["--model", str(model), "--name", name, "--port", "0", "--log-level", "warning",
         *extra])


def start_server(model: Path, name: str = "iris", *extra: str,
                 wait_ready: bool = True) -> RunningServer:
    """`kustos serve` in a thread of this process: the real server, without fork costs."""
    from kustos.runtime.server.cli import serve

    args = serve_args(model, name, *extra)
    started = threading.Event()
    box: dict[str, Any] = {}
    result: dict[str, int] = {}

    def on_listening(port: int, app: Any) -> None:
        box["port"], box["app"] = port, app
        started.set()

    def run() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        stop = asyncio.Event()
        box["stop"] = stop
        try:
            result["code"] = loop.run_until_complete(serve(args, on_listening=on_listening,
                                                           stop=stop))
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(20), "server did not start"
    if "port" not in box:
        raise RuntimeError(f"server exited early with {result}")
    server = RunningServer(box["port"], box["app"], thread, box["loop"], box["stop"], result)
    if wait_ready:
        wait_for(lambda: server.app.ready or not thread.is_alive(), 30)
        assert server.app.ready, f"model did not become ready ({result})"
    return server


@pytest.fixture(scope="module")
def iris_server(models: Models) -> Iterator[RunningServer]:
    server = start_server(models.iris_lr, "iris", "--model-version", "3")
    yield server
    server.shutdown()


@pytest.fixture
def client(iris_server: RunningServer) -> Iterator[Client]:
    c = iris_server.client()
    yield c
    c.close()


def spawn_cli(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    """The real `kustos` console entry point in a child process."""
    return subprocess.Popen([sys.executable, "-m", "kustos.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **kw)


def stop_process(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Kill the process and anything it forked (its own session), then collect output."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by a parent that exited
    return proc.communicate(timeout=10)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http_ready(port: int, proc: subprocess.Popen[bytes] | None = None,
                    timeout: float = 40) -> None:
    def ok() -> bool:
        if proc is not None and proc.poll() is not None:
            return True
        with contextlib.suppress(OSError, http.client.HTTPException):
            return http_get(port, "/v2/health/ready")[0] == 200
        return False

    assert wait_for(ok, timeout, 0.1), "server not ready in time"
    if proc is not None and proc.poll() is not None:
        raise AssertionError(f"server exited: {proc.communicate()[1].decode()[-2000:]}")
