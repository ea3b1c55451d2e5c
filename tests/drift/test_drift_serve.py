"""End to end on 127.0.0.1: a real `kustos serve` (main venv) with --drift-url pointing at a
real `kustos drift` (drift venv); predictions fill the sidecar's windows."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from drift_support import free_port, sidecar, wait_for, write_csv

pytestmark = pytest.mark.slow


def infer(port: int, x: np.ndarray) -> int:
    body = orjson.dumps({"inputs": [{"name": "input-0", "datatype": "FP64",
                                     "shape": list(x.shape), "data": x.reshape(-1).tolist()}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v2/models/cancer/infer", body,
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_served_predictions_reach_the_drift_sidecar(
        drift_venv: Path, cancer: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    x, names = cancer
    model = tmp_path / "cancer.skops"
    sio.dump(LogisticRegression(max_iter=5000).fit(*load_breast_cancer(return_X_y=True)),
             model)
    ref = write_csv(tmp_path / "cancer.csv", x[:300], names)
    with sidecar(drift_venv, tmp_path, "--detector", "ks", "--reference-uri", str(ref),
                 "--window-size", "100", "--window-max-age", "0", "--name", "cancer") as s:
        port = free_port()
        log = (tmp_path / "serve.log").open("wb")
        serve = subprocess.Popen(
            [str(Path(sys.executable).parent / "kustos"), "serve", "--model", str(model),
             "--name", "cancer", "--port", str(port),
             "--drift-url", f"http://127.0.0.1:{s.port}/v1/inputs"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert s.wait_loaded()["ready"]

            def ready() -> bool:
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/v2/health/ready")
                    return conn.getresponse().status == 200
                except OSError:
                    return False

            assert wait_for(ready, 60), (tmp_path / "serve.log").read_text()
            for i in range(5):  # 5 predictions of 20 rows: one window of 100
                assert infer(port, x[300 + 20 * i:320 + 20 * i]) == 200
            st = s.wait_windows(1, timeout=30)
            assert st["inputsAccepted"] == 100 and not st["drift"], st

            shifted = x[400:500].copy()
            j = names.index("worst_area")
            shifted[:, j] *= 1.5
            for i in range(5):
                assert infer(port, shifted[20 * i:20 * (i + 1)]) == 200
            st = s.wait_windows(2, timeout=30)
            assert st["drift"] and "worst_area" in st["driftingFeatures"], st
            assert st["inputsAccepted"] == 200 and st["inputsDropped"] == 0
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(20)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait(5)
            log.close()
