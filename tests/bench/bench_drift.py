"""Drift sidecar benchmark: (a) `kustos serve` throughput with the drift sidecar attached
vs without, side by side; (b) time to evaluate one 500-row x 20-feature window per detector.

Not a test (not part of `make test`). Run from the repository, with wrk installed
(hack/bench-serving.sh installs it) and the drift venv built by hack/drift-env.sh:

    .venv/bin/python tests/bench/bench_drift.py [--duration 10] [--rounds 2]

(a) LogisticRegression on iris (the cheapest model, so the hand-off's cost shows most; or
`--model forest`, a 100-tree forest on breast_cancer), one `kustos serve` worker pinned to
CPU 0; wrk (1 thread, single-row V2 requests) and the sidecar (ks, window 500) pinned to
CPU 1, as a sidecar container has its own CPU budget. "without" and "with" alternate,
`--rounds` times per concurrency. Target: with the sidecar,
requests/s within 5% of without. (b) runs in the drift venv (alibi-detect) on
breast_cancer's first 20 features (569 reference rows; the window is 500 rows drawn from
them), timing the detector's build and its evaluation of one window.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# mmd first: building any other detector hides TensorFlow from alibi-detect in-process.
DETECTORS = ("mmd", "ks", "chisquare", "tabular", "cvm-online")


# --- (b) detection time: runs inside the drift venv -------------------------------------


def detection_times(repeats: int) -> list[dict[str, Any]]:
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    from kustos.runtime.drift import detectors
    from kustos.runtime.drift.reference import Reference

    data = load_breast_cancer()
    x = data.data[:, :20]
    names = [n.replace(" ", "_") for n in data.feature_names[:20]]
    window = x[np.random.default_rng(0).choice(len(x), 500)]
    cuts = np.quantile(x, [0.25, 0.5, 0.75], axis=0)
    cats = np.stack([np.digitize(x[:, k], cuts[:, k]) for k in range(20)], 1).astype(float)
    wcats = np.stack([np.digitize(window[:, k], cuts[:, k]) for k in range(20)], 1)
    mixed, wmixed = x.copy(), window.copy()
    mixed[:, 15:], wmixed[:, 15:] = cats[:, 15:], wcats[:, 15:]
    inputs = {"ks": (x, window), "chisquare": (cats, wcats.astype(float)),
              "tabular": (mixed, wmixed), "mmd": (x, window), "cvm-online": (x, window)}
    out = []
    for name in DETECTORS:
        ref, win = inputs[name]
        settings = detectors.Settings(detector=name, categorical=tuple(range(15, 20)))
        started = time.perf_counter()
        det = detectors.build(settings, Reference(ref, names, "bench"))
        build = time.perf_counter() - started
        times = []
        for _ in range(1 if name == "cvm-online" else repeats):
            started = time.perf_counter()
            det.evaluate(win)
            times.append(time.perf_counter() - started)
        out.append({"detector": name, "build_s": build, "evaluate_s": statistics.median(times),
                    "runs": len(times)})
    return out


# --- (a) serving throughput: runs in the main venv --------------------------------------


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/drift/status", timeout=5) as r:
        return dict(json.loads(r.read()))


def dropped_by_serve(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("kustos_drift_handoff_dropped_total"))


def serving(args: argparse.Namespace, venv: Path, work: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(HERE))
    import numpy as np
    from bench_serving import LUA, Server, free_port, parse_wrk, pinned, run_wrk
    from train_model import save, train

    model, X = train(args.model)
    save(model, str(work / "model.skops"))
    names = [f"f{i}" for i in range(X.shape[1])]
    ref = work / "reference.csv"
    np.savetxt(ref, X, delimiter=",", header=",".join(n.replace(",", " ") for n in names),
               comments="", fmt="%.17g")
    row = X[len(X) // 2].tolist()
    script = work / "request.lua"
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(row)],
                                   "datatype": "FP64", "data": row}]})
    script.write_text(LUA.format(body=json.dumps(body)))
    kustos = str(REPO / ".venv" / "bin" / "kustos")

    drift_port = free_port()
    # --sidecar-nice models a sidecar with a CPU budget of its own on a machine with too
    # few cores to give it one: it runs only when serve and wrk leave the core idle.
    nice = ["nice", "-n", str(args.sidecar_nice)] if args.sidecar_nice else []
    sidecar = Server("drift", nice + pinned("1", [
        str(venv / "bin" / "kustos"), "drift", "--detector", "ks", "--reference-uri", str(ref),
        "--window-size", "500", "--host", "127.0.0.1", "--port", str(drift_port),
        "--work-dir", str(work / "drift"), "--name", args.model]), {}, drift_port,
        "/v2/health/ready", work / "drift.log", work)
    model_name = args.model
    results: list[dict[str, Any]] = []
    try:
        sidecar.wait_ready(300)
        for c in args.concurrency:
            for rnd in range(args.rounds):
                # Alternate the order so that neither mode always runs first.
                for mode in ("without", "with") if rnd % 2 == 0 else ("with", "without"):
                    port = free_port()
                    argv = [kustos, "serve", "--model", str(work / "model.skops"), "--name",
                            model_name, "--port", str(port), "--log-level", "warning"]
                    if mode == "with":
                        argv += ["--drift-url", f"http://127.0.0.1:{drift_port}/v1/inputs"]
                    server = Server(f"serve-{mode}", pinned("0", argv), {}, port,
                                    "/v2/health/ready", work / f"serve-{mode}.log", work)
                    try:
                        server.wait_ready()
                        url = f"http://127.0.0.1:{port}/v2/models/{model_name}/infer"
                        run_wrk(url, script, c, args.warmup, "1")
                        time.sleep(0.5)
                        before = status(drift_port)
                        rps, p50, p99, n = parse_wrk(run_wrk(url, script, c, args.duration, "1"))
                        time.sleep(1.0)  # let the hand-off drain before counting
                        after = status(drift_port)
                        results.append({
                            "concurrency": c, "round": rnd + 1, "mode": mode, "rps": rps,
                            "p50_ms": p50, "p99_ms": p99, "requests": n,
                            "sidecar_rows": after["inputsAccepted"] - before["inputsAccepted"],
                            "sidecar_posts": after["posts"] - before["posts"],
                            "serve_dropped": dropped_by_serve(port)})
                        print(json.dumps(results[-1]), file=sys.stderr)
                    finally:
                        server.stop()
        st = status(drift_port)
        results.append({"sidecar": {k: st[k] for k in ("windowsEvaluated", "inputsAccepted",
                                                       "inputsDropped", "drift")}})
    finally:
        sidecar.stop()
    return results


def markdown(serve: list[dict[str, Any]], detect: list[dict[str, Any]], loadavg: str) -> str:
    lines = ["### Serving with and without the drift sidecar", "",
             "| concurrency | without (req/s) | with (req/s) | ratio | p99 without (ms) | "
             "p99 with (ms) | rows the sidecar got | requests per POST | dropped by serve |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = [r for r in serve if "concurrency" in r]
    for c in sorted({r["concurrency"] for r in rows}):
        wo = [r for r in rows if r["concurrency"] == c and r["mode"] == "without"]
        wi = [r for r in rows if r["concurrency"] == c and r["mode"] == "with"]
        a = statistics.mean(r["rps"] for r in wo)
        b = statistics.mean(r["rps"] for r in wi)
        per_post = (sum(r["sidecar_rows"] for r in wi)
                    / max(1, sum(r["sidecar_posts"] for r in wi)))
        lines.append(
            f"| {c} | {a:,.0f} | {b:,.0f} | {b / a:.3f} | "
            f"{statistics.mean(r['p99_ms'] for r in wo):.2f} | "
            f"{statistics.mean(r['p99_ms'] for r in wi):.2f} | "
            f"{sum(r['sidecar_rows'] for r in wi):,} of {sum(r['requests'] for r in wi):,} | "
            f"{per_post:.1f} | "
            f"{sum(r['serve_dropped'] for r in wi):,.0f} |")
    lines += ["", f"Load average during the run: {loadavg}.", "",
              "### One 500-row x 20-feature window", "",
              "| detector | build (s) | evaluate one window (s) | runs |", "|---|---|---|---|"]
    for d in detect:
        lines.append(f"| {d['detector']} | {d['build_s']:.2f} | {d['evaluate_s']:.4f} | "
                     f"{d['runs']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (2)")
    p.add_argument("--rounds", type=int, default=2, help="without/with pairs per level (2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    p.add_argument("--repeats", type=int, default=3, help="evaluations per detector (3)")
    p.add_argument("--model", choices=("logreg", "forest"), default="logreg",
                   help="logreg (iris, 4 features) or forest (100 trees, breast_cancer, 30)")
    p.add_argument("--skip-detect", action="store_true", help="only part (a)")
    p.add_argument("--sidecar-nice", type=int, default=0,
                   help="run the sidecar at this nice level (19: it only gets idle CPU, as "
                        "a sidecar with its own CPU budget never takes the server's)")
    p.add_argument("--detect-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.detect_only:  # inside the drift venv
        print(json.dumps(detection_times(args.repeats)))
        return 0
    venv = Path(subprocess.run(["bash", str(REPO / "hack" / "drift-env.sh"), str(REPO)],
                               check=True, capture_output=True, text=True).stdout.split()[-1])
    detect = [] if args.skip_detect else json.loads(subprocess.run(
        [str(venv / "bin" / "python"), __file__, "--detect-only", "--repeats",
         str(args.repeats)], check=True, capture_output=True, text=True,
        timeout=1200).stdout.splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="kustos-bench-drift-") as tmp:
        serve = serving(args, venv, Path(tmp))
    from bench_serving import loadavg

    print(markdown(serve, detect, loadavg()))
    print("\n<!-- raw: " + json.dumps({"serve": serve, "detect": detect}) + " -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
