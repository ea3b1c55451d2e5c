"""`kustos batch` throughput against a plain `model.predict` loop over the same file.

Not a test (not part of `make test`). Run from the repository:

    nice .venv/bin/python tests/bench/bench_batch.py [--rows 100000] [--chunk-size 10000]
        [--model forest|logistic] [--rounds 3]
        [--input-format csv|parquet] [--output-format csv|jsonl|parquet] [--row-group N]

The model is trained here on scikit-learn's breast_cancer (30 features); the input is its
rows repeated to --rows, a CSV with a header (in a temporary directory, deleted after).
Both sides run in one process pinned to CPU 0 (taskset), alternately, --rounds times:

- peer: read the file chunk by chunk (numpy.loadtxt over --chunk-size lines, the fastest
  reader without pandas) and call the estimator's predict on each chunk; the predictions
  are kept in memory, nothing is written;
- kustos batch: the same chunks through the serving Model (prepare + predict), each
  chunk written as part-NNNNNN.csv with the inference id per row, synced and renamed.

With --input-format parquet the file is Parquet (fastparquet, row groups of --row-group
rows) and the peer reads it row group by row group with fastparquet (to_pandas, then
to_numpy) before the same predict; `kustos batch` reads it the same way (the chunks cut
from the row groups) and writes --output-format.

Figures: rows/s of each side's loop (the peer's whole run; `kustos batch`'s own report,
from the start of the loop: the model loaded, as the peer's is) and the ratio; then
`kustos batch`'s rows/s over the whole process (interpreter start, imports and model
load included), which is what a short run pays; and the ratio of the best rounds (on a
shared machine other jobs only slow rounds down); then each loop's rows per CPU second
(process CPU time, all threads; `kustos batch` run through a wrapper that times its
runner's loop) with min..max, steady where the wall clock scatters. Target: loop ratio
>= 0.80 against this peer (the plain predict loop; --peer-writes is a second reference).
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
start, cpu = time.perf_counter(), time.process_time()
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
print(rows, time.perf_counter() - start, time.process_time() - cpu)
"""

PEER_PARQUET = r"""
import os, sys, time
import fastparquet, numpy as np, pandas as pd, skops.io as sio
path, model_path, out_dir = sys.argv[1], sys.argv[2], sys.argv[4]
est = sio.load(model_path, trusted=sio.get_untrusted_types(file=model_path))
start, cpu = time.perf_counter(), time.process_time()
rows, out = 0, []
pf = fastparquet.ParquetFile(path)
for k, frame in enumerate(pf.iter_row_groups()):
    x = frame.to_numpy(dtype=np.float64)
    y = est.predict(x)
    if out_dir == "-":
        out.append(y)
    else:  # --peer-writes: each group's predictions to a Parquet file (no ids, no sync)
        fastparquet.write(os.path.join(out_dir, f"{k}.parquet"), pd.DataFrame({"predict": y}),
                          write_index=False)
    rows += len(x)
print(rows, time.perf_counter() - start, time.process_time() - cpu)
"""


# `kustos batch` itself (python -m kustos.cli), its runner's loop also timed in CPU seconds
# of the process (all its threads), printed to stderr.
BATCH = r"""
import sys, time
from kustos.runtime.batch import runner
loop = runner.run
def timed(*args, **kwargs):
    cpu = time.process_time()
    try:
        return loop(*args, **kwargs)
    finally:
        print("cpu-seconds", time.process_time() - cpu, file=sys.stderr)
runner.run = timed
from kustos.cli import main
sys.exit(main(sys.argv[1:]))
"""


def pinned(cmd: list[str]) -> list[str]:
    return (["taskset", "-c", "0", *cmd]) if shutil.which("taskset") else cmd


def make_data(d: Path, rows: int, kind: str, fmt: str = "csv",
              row_group: int = 10000) -> tuple[Path, Path]:
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
    if fmt == "parquet":
        import fastparquet
        import pandas as pd

        path = d / "in.parquet"
        frame = pd.DataFrame({f"f{i}": data[:, i] for i in range(x.shape[1])})
        fastparquet.write(str(path), frame, write_index=False, compression="SNAPPY",
                          row_group_offsets=list(range(0, rows, row_group)))
        return model, path
    path = d / "in.csv"
    with path.open("w") as f:
        f.write(",".join(f"f{i}" for i in range(x.shape[1])) + "\n")
        np.savetxt(f, data, delimiter=",", fmt="%.17g")
    return model, path


def run_peer(path: Path, model: Path, chunk: int, fmt: str = "csv",
             out_dir: Path | None = None) -> tuple[int, float, float]:
    code = PEER_PARQUET if fmt == "parquet" else PEER
    if out_dir is not None:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir()
    out = subprocess.run(pinned([sys.executable, "-c", code, str(path), str(model), str(chunk),
                                 str(out_dir or "-")]),
                         capture_output=True, text=True, check=True, timeout=1800)
    rows, seconds, cpu = out.stdout.split()
    return int(rows), float(seconds), float(cpu)


def run_batch(path: Path, model: Path, chunk: int, out: Path, input_format: str = "csv",
              output_format: str = "csv",
              predictions: tuple[str, ...] = ()) -> tuple[int, float, float, float]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run(pinned([sys.executable, "-c", BATCH, "batch", "--model",
                                  str(model), "--input", str(path), "--output", str(out),
                                  "--input-format", input_format,
                                  "--output-format", output_format,
                                  "--chunk-size", str(chunk), "--quiet",
                                  *(f"--prediction={n}" for n in predictions)]),
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"kustos batch failed: {proc.stdout}{proc.stderr}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = next(float(line.split()[1]) for line in proc.stderr.splitlines()
               if line.startswith("cpu-seconds "))
    return int(report["rows"]), float(report["seconds"]), wall, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100000)
    p.add_argument("--chunk-size", type=int, default=10000)
    p.add_argument("--model", choices=("forest", "logistic"), default="forest")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--input-format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--output-format", choices=("csv", "jsonl", "parquet"), default="csv")
    p.add_argument("--row-group", type=int, default=10000,
                   help="rows per Parquet row group (--input-format parquet)")
    p.add_argument("--peer-writes", action="store_true",
                   help="Parquet: the peer also writes each row group's predictions to a "
                        "Parquet file (no ids, not synced)")
    p.add_argument("--prediction", action="append", default=[],
                   help="kustos batch's outputs (repeatable; default: the model's own, "
                        "`predict`): predict_proba adds float64 columns to write. The "
                        "peer still calls predict only, so the ratio is not the target's")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        d = Path(tmp)
        model, path = make_data(d, args.rows, args.model, args.input_format, args.row_group)
        size = path.stat().st_size / 2**20
        print(f"model {args.model} (breast_cancer, 30 features), {args.rows} rows "
              f"({size:.1f} MiB {args.input_format}"
              + (f", row groups of {args.row_group}" if args.input_format == "parquet" else "")
              + f"), chunk {args.chunk_size}, output {args.output_format}, CPU 0 only, "
              f"{args.rounds} rounds"
              + (f", kustos batch outputs {', '.join(args.prediction)}" if args.prediction
                 else ""))
        peer_name = ("peer: fastparquet + predict loop" if args.input_format == "parquet"
                     else "peer: loadtxt + predict loop")
        if args.peer_writes and args.input_format == "parquet":
            peer_name = "peer: fastparquet, predict, write"
        peer, ours, whole = [], [], []
        peer_cpu: list[float] = []
        ours_cpu: list[float] = []
        for _ in range(args.rounds):
            rows, seconds, cpu = run_peer(path, model, args.chunk_size, args.input_format,
                                          d / "peer" if args.peer_writes else None)
            peer.append(rows / seconds)
            peer_cpu.append(rows / cpu)
            done, loop, wall, cpu = run_batch(path, model, args.chunk_size, d / "out",
                                              args.input_format, args.output_format,
                                              tuple(args.prediction))
            assert done == rows, (done, rows)
            ours.append(done / loop)
            ours_cpu.append(done / cpu)
            whole.append(done / wall)
        peer_m, ours_m = statistics.median(peer), statistics.median(ours)
        print(f"{'':34} {'rows/s (median)':>16}  rounds")
        print(f"{peer_name:34} {peer_m:16,.0f}  "
              + " ".join(f"{r:,.0f}" for r in peer))
        print(f"{'kustos batch (its loop)':34} {ours_m:16,.0f}  "
              + " ".join(f"{r:,.0f}" for r in ours))
        print(f"{'kustos batch (whole process)':34} {statistics.median(whole):16,.0f}  "
              + " ".join(f"{r:,.0f}" for r in whole))
        ratio = ours_m / peer_m
        print(f"ratio kustos batch / peer (loop): {ratio:.2f} "
              f"({'meets' if ratio >= 0.8 else 'below'} the 0.80 target)")
        # Other jobs on a shared machine only ever slow a round down: the best round of
        # each side is the steadier comparison when the medians scatter.
        print(f"ratio of the best rounds: {max(ours) / max(peer):.2f} "
              f"({max(ours):,.0f} / {max(peer):,.0f})")
        # Rows per CPU second of each loop (the process's CPU time, all threads): other
        # jobs on the shared core do not count here, the waits of `kustos batch` for its
        # disk (fsync) do not either, which is why the wall-clock ratio above stays the
        # target's measure where the machine is quiet.
        cpu_ratio = statistics.median(ours_cpu) / statistics.median(peer_cpu)
        print(f"rows per CPU second (median): peer {statistics.median(peer_cpu):,.0f} "
              f"[{min(peer_cpu):,.0f}..{max(peer_cpu):,.0f}], kustos batch "
              f"{statistics.median(ours_cpu):,.0f} "
              f"[{min(ours_cpu):,.0f}..{max(ours_cpu):,.0f}]; ratio {cpu_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
