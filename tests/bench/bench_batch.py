"""`kustos batch` throughput against a plain `model.predict` loop over the same file.

Not a test (not part of `make test`). Run from the repository:

    nice .venv/bin/python tests/bench/bench_batch.py [--rows 100000] [--chunk-size 10000]
        [--model forest|logistic] [--rounds 3]

The model is trained here on scikit-learn's breast_cancer (30 features); the input is its
rows repeated to --rows, a CSV with a header (in a temporary directory, deleted after).
Both sides run in one process pinned to CPU 0 (taskset), alternately, --rounds times:

- peer: read the file chunk by chunk (numpy.loadtxt over --chunk-size lines, the fastest
  reader without pandas) and call the estimator's predict on each chunk; the predictions
  are kept in memory, nothing is written;
- kustos batch: the same chunks through the serving Model (prepare + predict), each
  chunk written as part-NNNNNN.csv with the inference id per row, synced and renamed.

Figures: rows/s of each side's loop (the peer's whole run; `kustos batch`'s own report,
from the start of the loop: the model loaded, as the peer's is) and the ratio; then
`kustos batch`'s rows/s over the whole process (interpreter start, imports and model
load included), which is what a short run pays. Target: loop ratio >= 0.80.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

PEER = r"""
import itertools, sys, time
import numpy as np, skops.io as sio
path, model_path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
est = sio.load(model_path, trusted=sio.get_untrusted_types(file=model_path))
start = time.perf_counter()
rows, out = 0, []
with open(path, encoding="utf-8", newline="") as f:
    next(f)
    while True:
        lines = list(itertools.islice(f, chunk))
        if not lines:
            break
        x = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
        out.append(est.predict(x))
        rows += len(lines)
print(rows, time.perf_counter() - start)
"""


def pinned(cmd: list[str]) -> list[str]:
    return (["taskset", "-c", "0", *cmd]) if shutil.which("taskset") else cmd


def make_data(d: Path, rows: int, kind: str) -> tuple[Path, Path]:
    import numpy as np
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    est = (RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1) if kind == "forest"
           else make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)))
    est.fit(x, y)
    model = d / "model.skops"
    sio.dump(est, model)
    reps = -(-rows // len(x))
    data = np.tile(x, (reps, 1))[:rows]
    path = d / "in.csv"
    with path.open("w") as f:
        f.write(",".join(f"f{i}" for i in range(x.shape[1])) + "\n")
        np.savetxt(f, data, delimiter=",", fmt="%.17g")
    return model, path


def run_peer(path: Path, model: Path, chunk: int) -> tuple[int, float]:
    out = subprocess.run(pinned([sys.executable, "-c", PEER, str(path), str(model), str(chunk)]),
                         capture_output=True, text=True, check=True, timeout=1800)
    rows, seconds = out.stdout.split()
    return int(rows), float(seconds)


def run_batch(path: Path, model: Path, chunk: int, out: Path) -> tuple[int, float, float]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run(pinned([sys.executable, "-m", "kustos.cli", "batch", "--model",
                                  str(model), "--input", str(path), "--output", str(out),
                                  "--chunk-size", str(chunk), "--quiet"]),
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"kustos batch failed: {proc.stdout}{proc.stderr}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(report["rows"]), float(report["seconds"]), wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100000)
    p.add_argument("--chunk-size", type=int, default=10000)
    p.add_argument("--model", choices=("forest", "logistic"), default="forest")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        d = Path(tmp)
        model, path = make_data(d, args.rows, args.model)
        size = path.stat().st_size / 2**20
        print(f"model {args.model} (breast_cancer, 30 features), {args.rows} rows "
              f"({size:.0f} MiB CSV), chunk {args.chunk_size}, CPU 0 only, "
              f"{args.rounds} rounds")
        peer, ours, whole = [], [], []
        for _ in range(args.rounds):
            rows, seconds = run_peer(path, model, args.chunk_size)
            peer.append(rows / seconds)
            done, loop, wall = run_batch(path, model, args.chunk_size, d / "out")
            assert done == rows, (done, rows)
            ours.append(done / loop)
            whole.append(done / wall)
        peer_m, ours_m = statistics.median(peer), statistics.median(ours)
        print(f"{'':34} {'rows/s (median)':>16}  rounds")
        print(f"{'peer: loadtxt + predict loop':34} {peer_m:16,.0f}  "
              + " ".join(f"{r:,.0f}" for r in peer))
        print(f"{'kustos batch (its loop)':34} {ours_m:16,.0f}  "
              + " ".join(f"{r:,.0f}" for r in ours))
        print(f"{'kustos batch (whole process)':34} {statistics.median(whole):16,.0f}  "
              + " ".join(f"{r:,.0f}" for r in whole))
        ratio = ours_m / peer_m
        print(f"ratio kustos batch / peer (loop): {ratio:.2f} "
              f"({'meets' if ratio >= 0.8 else 'below'} the 0.80 target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
