"""Fixtures for the explainer: real models trained here on sklearn's bundled datasets, each
with an extra constant column the model cannot use, background files, and live sidecars."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import http.client
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from unit_support import free_port, wait_for

CONSTANT = 3.0  # the value of the extra column every model is trained with


def with_constant(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.full((len(x), 1), CONSTANT)])


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def write_csv(path: Path, names: list[str] | None, rows: np.ndarray) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        if names is not None:
            w.writerow(names)
        w.writerows(rows.tolist())
    return path


@dataclass
class Trained:
    """A fitted estimator, its data (with the constant column last) and its files."""

    est: Any
    x: np.ndarray
    names: list[str]
    skops: Path
    background: Path  # CSV with a header row

    @property
    def constant(self) -> int:
        return len(self.names) - 1


@dataclass
class Zoo:
    cancer_rf: Trained  # RandomForestClassifier, 100 shallow trees, breast_cancer
    cancer_gb: Trained  # GradientBoostingClassifier (binary), breast_cancer
    iris_lr: Trained  # LogisticRegression, iris (3 classes)
    diabetes_lin: Trained  # LinearRegression, diabetes
    wine_rf: Trained  # RandomForestClassifier, wine (3 classes)
    dir: Path


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression

    d = tmp_path_factory.mktemp("explain-models")
    rng = np.random.default_rng(0)

    def make(name: str, data: Any, est: Any) -> Trained:
        x = with_constant(data.data)
        names = [str(n).replace(" ", "_") for n in data.feature_names] + ["constant"]
        est.fit(x, data.target)
        sio.dump(est, d / f"{name}.skops")
        rows = x[rng.choice(len(x), min(len(x), 60), replace=False)]
        bg = write_csv(d / f"{name}-bg.csv", names, rows)
        return Trained(est, x, names, d / f"{name}.skops", bg)

    return Zoo(
        cancer_rf=make("cancer_rf", load_breast_cancer(),
                       RandomForestClassifier(n_estimators=100, max_depth=4, random_state=0)),
        cancer_gb=make("cancer_gb", load_breast_cancer(),
                       GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0)),
        iris_lr=make("iris_lr", load_iris(), LogisticRegression(max_iter=2000)),
        diabetes_lin=make("diabetes_lin", load_diabetes(), LinearRegression()),
        wine_rf=make("wine_rf", load_wine(),
                     RandomForestClassifier(n_estimators=30, max_depth=3, random_state=0)),
        dir=d,
    )


# ------------------------------------------------------------------------- HTTP


def request(port: int, method: str, path: str, body: Any = None, raw: bytes | None = None,
            timeout: float = 30.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        conn.request(method, path, data, {"content-type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        ctype = resp.getheader("content-type") or ""
        if ctype.startswith("application/json") and payload:
            return resp.status, orjson.loads(payload)
        return resp.status, payload
    finally:
        conn.close()


def status(port: int) -> dict[str, Any]:
    code, body = request(port, "GET", "/v1/explainer/status")
    assert code == 200
    assert isinstance(body, dict)
    return body


def wait_status(port: int, cond: Callable[[dict[str, Any]], bool],
                proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def check() -> bool:
        if proc is not None and proc.poll() is not None:
            return True
        with contextlib.suppress(OSError, http.client.HTTPException):
            box["s"] = status(port)
            return cond(box["s"])
        return False

    assert wait_for(check, timeout, 0.1), f"status condition not met: {box.get('s')}"
    if proc is not None and proc.poll() is not None:
        raise AssertionError(f"sidecar exited: {proc.communicate()[1].decode()[-3000:]}")
    found: dict[str, Any] = box["s"]
    return found


# ------------------------------------------------------------------ processes


def spawn(*args: str) -> subprocess.Popen[bytes]:
    """The real `kustos` entry point in a child process (its own session)."""
    return subprocess.Popen([sys.executable, "-m", "kustos.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate(timeout=10)


def sidecar_args(model: Path, name: str, background: str, *extra: str,
                 port: int = 0, work_dir: Path | None = None) -> list[str]:
    args = ["--model", str(model), "--name", name, "--background-uri", background,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--global-delay", "0"]
    if work_dir is not None:
        args += ["--work-dir", str(work_dir)]
    return [*args, *extra]


@dataclass
class Sidecar:
    port: int
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    stop_event: asyncio.Event
    runtime: Any

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(20)
        assert not self.thread.is_alive(), "sidecar thread did not stop"


def start_in_thread(argv: list[str]) -> Sidecar:
    """`kustos explain` in a thread of this process: the real server without a fork."""
    from kustos.runtime.explain.cli import build_parser, serve

    args: argparse.Namespace = build_parser().parse_args(argv)
    started = threading.Event()
    box: dict[str, Any] = {}

    def on_listening(port: int, app: Any, runtime: Any) -> None:
        box["port"], box["runtime"] = port, runtime
        started.set()

    def run() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        box["stop"] = asyncio.Event()
        try:
            loop.run_until_complete(serve(args, on_listening=on_listening, stop=box["stop"]))
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(20) and "port" in box, "sidecar did not start"
    return Sidecar(box["port"], thread, box["loop"], box["stop"], box["runtime"])


@pytest.fixture
def in_thread(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    running: list[Sidecar] = []

    def start(model: Path, name: str, background: str, *extra: str) -> Sidecar:
        car = start_in_thread(sidecar_args(model, name, background, *extra,
                                           work_dir=tmp_path / f"work-{len(running)}"))
        running.append(car)
        return car

    yield start
    for car in running:
        car.close()


@pytest.fixture(scope="session")
def tree_sidecar(zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`kustos explain` as a process: shap-tree on the breast_cancer forest, background by
    file:// with its digest; the global report on (every 600 s, first one at once)."""
    port = free_port()
    work = tmp_path_factory.mktemp("explain-work")
    m = zoo.cancer_rf
    proc = spawn("explain", *sidecar_args(
        m.skops, "cancer", m.background.as_uri(), "--method", "shap-tree",
        "--background-digest", sha256(m.background), "--digest", sha256(m.skops),
        "--global-interval", "600", "--top-k", "5", port=port, work_dir=work))
    try:
        wait_status(port, lambda s: s["ready"] and s["report"] is not None, proc)
        yield port
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err.decode()[-2000:]  # SIGTERM: drained, clean exit
    assert b"Traceback" not in err, err.decode()[-2000:]
