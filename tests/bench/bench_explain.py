"""Explainer benchmark: per-row latency of `kustos explain`, in-process and over HTTP.

Not a test (not part of `make test`): its figures depend on the machine. Run:

    .venv/bin/python tests/bench/bench_explain.py [--quick]

Models, trained here and now with scikit-learn's defaults unless said:
  forest  RandomForestClassifier(n_estimators=100) on breast_cancer (30 features),
          explained with shap-tree (target: <= 20 ms per row)
  logreg  StandardScaler + LogisticRegression on breast_cancer, explained with
          shap-kernel (10 k-means centres) and shap-permutation (max_evals 500)
Background: 100 rows of the training data, as the sidecar's default --max-samples.

For each (model, method) and batch sizes 1 and 32, the same rows are explained
repeatedly: "in-process" calls the explainer object the sidecar builds
(kustos.runtime.explain.methods.build); "http" POSTs V2 requests over one keep-alive
connection to a real `kustos explain` process. Per-row latency = request time / rows.
Prints a markdown table (p50 / p99 over the repetitions, and how many there were).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import http.client
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from ports import free_port  # noqa: E402

# (label, model key, method, reps for batch 1, reps for batch 32)
CASES = [
    ("RandomForest, 100 trees", "forest", "shap-tree", 300, 60),
    ("LogisticRegression", "logreg", "shap-kernel", 30, 4),
    ("LogisticRegression", "logreg", "shap-permutation", 30, 4),
]
BATCHES = (1, 32)


def train(workdir: Path) -> tuple[dict[str, Path], Path, np.ndarray, list[str]]:
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    x, y = data.data, data.target
    names = [n.replace(" ", "_") for n in data.feature_names]
    files = {
        "forest": workdir / "forest.skops",
        "logreg": workdir / "logreg.skops",
    }
    sio.dump(RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y),
             files["forest"])
    sio.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y),
             files["logreg"])
    rows = x[np.random.default_rng(0).choice(len(x), 100, replace=False)]
    background = workdir / "background.csv"
    with open(background, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(rows.tolist())
    return files, background, x, names


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def timed(call: Callable[[], Any], reps: int, rows: int) -> list[float]:
    call()  # warm-up
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000 / rows)
    return out


def in_process(model_file: Path, method: str, background: Path, x: np.ndarray,
               batch: int, reps: int) -> list[float]:
    from kustos.runtime.explain.background import align, read_background
    from kustos.runtime.explain.methods import build
    from kustos.runtime.server.models import load_model

    model = load_model(model_file, "bench")
    bg = read_background(background, 100)
    data, names = align(bg, x.shape[1], None, None)
    explainer = build(method, model, data, names)
    rows = x[:batch]
    return timed(lambda: explainer.explain(rows), reps, batch)


@contextlib.contextmanager
def sidecar(model_file: Path, method: str, background: Path, workdir: Path) -> Iterator[int]:
    port = free_port()
    digest = "sha256:" + hashlib.sha256(background.read_bytes()).hexdigest()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kustos.cli", "explain", "--model", str(model_file),
         "--name", "bench", "--method", method, "--background-uri", background.as_uri(),
         "--background-digest", digest, "--host", "127.0.0.1", "--port", str(port),
         "--global-interval", "0", "--work-dir", str(workdir / f"work-{port}"),
         "--log-level", "warning"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(proc.communicate()[1].decode()[-2000:])
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v1/explainer/status")
                doc = orjson.loads(conn.getresponse().read())
                conn.close()
                if doc["error"]:
                    raise RuntimeError(f"explainer not ready: {doc['error']}")
                if doc["ready"]:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("explainer not ready in 120 s")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def over_http(port: int, x: np.ndarray, batch: int, reps: int) -> list[float]:
    rows = x[:batch]
    body = orjson.dumps({"inputs": [{"name": "input-0", "shape": list(rows.shape),
                                     "datatype": "FP64", "data": rows.reshape(-1).tolist()}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call() -> None:
        conn.request("POST", "/v2/models/bench/explain", body,
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {payload[:300]!r}")

    try:
        return timed(call, reps, batch)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a fifth of the repetitions")
    args = p.parse_args(argv)
    scale = 5 if args.quick else 1
    lines = ["| model | method | batch | where | per-row p50 ms | per-row p99 ms | reps |",
             "|---|---|---|---|---|---|---|"]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kustos-bench-explain-") as tmp:
        workdir = Path(tmp)
        files, background, x, _ = train(workdir)
        for label, key, method, reps1, reps32 in CASES:
            plan = [(b, max(3, r // scale)) for b, r in zip(BATCHES, (reps1, reps32),
                                                               strict=True)]
            results: list[tuple[int, str, list[float]]] = []
            for batch, reps in plan:
                results.append((batch, "in-process",
                                in_process(files[key], method, background, x, batch, reps)))
            with sidecar(files[key], method, background, workdir) as port:
                for batch, reps in plan:
                    results.append((batch, "http", over_http(port, x, batch, reps)))
            for batch, where, samples in sorted(results, key=lambda r: r[0]):
                p50, p99 = percentiles(samples)
                line = (f"| {label} | {method} | {batch} | {where} | {p50:.2f} | "
                        f"{p99:.2f} | {len(samples)} |")
                lines.append(line)
                print(line, file=sys.stderr, flush=True)
    print(f"\nkustos explain, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, 1-minute load average {load_before:.1f} "
          f"before and {os.getloadavg()[0]:.1f} after the run\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
