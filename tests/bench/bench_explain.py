"""Explainer benchmark: per-row latency of `kustos explain`, in-process and over HTTP.

Not a test (not part of `make test`): its figures depend on the machine. Run:

    .venv/bin/python tests/bench/bench_explain.py [--quick]

Models, trained here and now with scikit-learn's defaults unless said:
  forest  RandomForestClassifier(n_estimators=100) on breast_cancer (30 features),
          explained with shap-tree (target: <= 20 ms per row)
  logreg  StandardScaler + LogisticRegression on breast_cancer, explained with
          shap-kernel (10 k-means centres) and shap-permutation (max_evals 500)
Both models are also explained with lime (quartile bins) at the sidecar's default 1000
samples per row and at LIME's own default of 5000: its cost is compared with the SHAP
methods on the same model, batch and path in a ratio table at the end, followed by how
far LIME's surrogate lands from the model's output (SHAP's attributions add up to it).
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

# (label, model key, method, reps for batch 1, reps for batch 32, lime samples)
CASES = [
    ("RandomForest, 100 trees", "forest", "shap-tree", 300, 60, None),
    ("RandomForest, 100 trees", "forest", "lime", 30, 3, 1000),
    ("RandomForest, 100 trees", "forest", "lime", 10, 3, 5000),
    ("LogisticRegression", "logreg", "shap-kernel", 30, 4, None),
    ("LogisticRegression", "logreg", "shap-permutation", 30, 4, None),
    ("LogisticRegression", "logreg", "lime", 30, 3, 1000),
    ("LogisticRegression", "logreg", "lime", 10, 3, 5000),
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
               batch: int, reps: int, lime_samples: int | None,
               gaps: dict[str, float] | None = None) -> list[float]:
    from kustos.runtime.explain.background import align, read_background
    from kustos.runtime.explain.methods import build
    from kustos.runtime.server.models import load_model

    model = load_model(model_file, "bench")
    bg = read_background(background, 100)
    data, names = align(bg, x.shape[1], None, None)
    explainer = build(method, model, data, names, lime_samples=lime_samples or 1000)
    rows = x[:batch]
    samples = timed(lambda: explainer.explain(rows), reps, batch)
    if gaps is not None:
        # How far LIME's surrogate (base + sum of weights) lands from the model's output,
        # over 64 rows: the price of a local fit, which SHAP does not pay.
        r = explainer.explain(x[:64])
        miss = np.abs(r.base_values + r.values.sum(axis=1) - r.outputs)
        gaps["median"], gaps["p90"] = (float(np.percentile(miss, q)) for q in (50, 90))
    return samples


@contextlib.contextmanager
def sidecar(model_file: Path, method: str, background: Path, workdir: Path,
            lime_samples: int | None) -> Iterator[int]:
    port = free_port()
    extra = ["--lime-samples", str(lime_samples)] if lime_samples else []
    digest = "sha256:" + hashlib.sha256(background.read_bytes()).hexdigest()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kustos.cli", "explain", "--model", str(model_file),
         "--name", "bench", "--method", method, "--background-uri", background.as_uri(),
         "--background-digest", digest, "--host", "127.0.0.1", "--port", str(port),
         "--global-interval", "0", "--work-dir", str(workdir / f"work-{port}"),
         "--log-level", "warning", *extra],
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
    medians: dict[tuple[str, str, int, str], float] = {}
    fits = ["| model | lime | surrogate miss, median | p90 |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="kustos-bench-explain-") as tmp:
        workdir = Path(tmp)
        files, background, x, _ = train(workdir)
        for label, key, method, reps1, reps32, lime_samples in CASES:
            shown = f"{method} ({lime_samples} samples)" if lime_samples else method
            plan = [(b, max(3, r // scale)) for b, r in zip(BATCHES, (reps1, reps32),
                                                               strict=True)]
            results: list[tuple[int, str, list[float]]] = []
            gaps: dict[str, float] = {}
            for batch, reps in plan:
                results.append((batch, "in-process",
                                in_process(files[key], method, background, x, batch, reps,
                                           lime_samples, gaps if method == "lime" else None)))
            if gaps:
                fits.append(f"| {label} | {shown} | {gaps['median']:.3f} | "
                            f"{gaps['p90']:.3f} |")
            with sidecar(files[key], method, background, workdir, lime_samples) as port:
                for batch, reps in plan:
                    results.append((batch, "http", over_http(port, x, batch, reps)))
            for batch, where, samples in sorted(results, key=lambda r: r[0]):
                p50, p99 = percentiles(samples)
                medians[label, shown, batch, where] = p50
                line = (f"| {label} | {shown} | {batch} | {where} | {p50:.2f} | "
                        f"{p99:.2f} | {len(samples)} |")
                lines.append(line)
                print(line, file=sys.stderr, flush=True)
    print(f"\nkustos explain, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, 1-minute load average {load_before:.1f} "
          f"before and {os.getloadavg()[0]:.1f} after the run\n")
    print("\n".join(lines))
    print("\n" + "\n".join(ratios(medians)))
    print("\n|base + sum(attributions) - output| of lime, 64 rows x outputs (probabilities)\n")
    print("\n".join(fits))
    return 0


def ratios(medians: dict[tuple[str, str, int, str], float]) -> list[str]:
    """lime's per-row p50 over each SHAP method's on the same model, batch and path."""
    out = ["| model | lime | peer | batch | where | lime / peer (per-row p50) |",
           "|---|---|---|---|---|---|"]
    for (label, shown, batch, where), p50 in medians.items():
        if not shown.startswith("lime"):
            continue
        for (peer_label, peer, peer_batch, peer_where), peer_p50 in medians.items():
            if (peer_label, peer_batch, peer_where) == (label, batch, where) and \
                    peer.startswith("shap"):
                out.append(f"| {label} | {shown} | {peer} | {batch} | {where} | "
                           f"{p50 / peer_p50:.1f}x |")
    return out


if __name__ == "__main__":
    sys.exit(main())
