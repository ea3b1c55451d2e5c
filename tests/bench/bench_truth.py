"""Ground-truth monitor ingestion benchmark: CloudEvents per second `kustos truth` takes on
POST /v1/events, against the same server answering the same POSTs without the monitor's
work (an unknown path: HTTP framing and routing only), side by side.

Not a test (not part of `make test`). Run from the repository:

    nice .venv/bin/python tests/bench/bench_truth.py [--pairs 5000] [--rounds 3]
        [--preload 300000]
    nice .venv/bin/python tests/bench/bench_truth.py --evaluate 100000

One `kustos truth` process (store in a temporary directory, SQLite WAL); the client is the
payload logger's own HTTP client (sender.HttpPoster: pipelined POSTs on one kept-alive
connection, batches of 256 as `kustos serve --truth-url` sends them). Each pair is the V2
request event and the response event (label and probabilities) of one single-row
prediction of 30 features, as logged, with a random 32-hex inference id as kustos serve
makes them. --preload fills the store first. Modes in rotating order, --rounds times:
"events" (POST /v1/events) and "baseline" (POST /v1/nothing, answered 404). Also reports
the labels per second of V2 feedback posts of 1000 labels each, the store's size, and
the server's CPU time per event (/proc: less sensitive to a shared machine's load than
the rate).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from kustos.runtime.server.sender import HttpPoster  # noqa: E402
from ports import free_port  # noqa: E402

BATCH = 256


def rid_of(i: int) -> str:
    """A random-looking 32-hex id, as kustos serve makes them (uuid4().hex): random ids
    are what the store's id index gets, and they cost more than ordered ones."""
    return hashlib.md5(b"%d" % i).hexdigest()


def events(n: int, start: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(start, start + n):
        rid = rid_of(i)
        req = orjson.dumps({"id": rid, "inputs": [{"name": "input-0", "datatype": "FP64",
                                                   "shape": [1, 30],
                                                   "data": [float(j) for j in range(30)]}]})
        resp = orjson.dumps({"model_name": "m", "model_version": "1", "id": rid, "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [1], "data": [1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [1, 2],
             "data": [0.25, 0.75]}]})
        common = (b"content-type: application/json\r\nce-specversion: 1.0\r\n"
                  b"ce-id: %s\r\nce-modelversion: 1\r\n" % rid.encode())
        out.append((req, common + b"ce-type: org.kubeflow.serving.inference.request\r\n"))
        out.append((resp, common + b"ce-type: org.kubeflow.serving.inference.response\r\n"))
    return out


def send(port: int, path: str, items: list[tuple[bytes, bytes]]) -> tuple[float, int]:
    poster = HttpPoster(f"http://127.0.0.1:{port}{path}", timeout=60)
    started = time.perf_counter()
    bad = 0
    for i in range(0, len(items), BATCH):
        statuses = poster.post_many(items[i:i + BATCH])
        bad += sum(1 for s in statuses if s is None or (path == "/v1/events" and s != 202))
    took = time.perf_counter() - started
    poster.close()
    return len(items) / took, bad


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): the server's own cost,
    which the other work on a shared machine changes less than the wall-clock rate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def preload(directory: Path, n: int) -> None:
    from kustos.runtime.truth.store import Prediction, Store

    store = Store(directory, 1_000_000, 7 * 86400.0)
    # Two hours old: outside the evaluation's 1h window (the evaluation at start would
    # otherwise read them all while the rounds run), inside the retention.
    now, classes = time.time() - 7200, ["0", "1"]
    for k in range(0, n, 10_000):
        store.add_predictions([Prediction(rid_of(-1 - i), 0, "1", now, "1", None,
                                          [0.25, 0.75], classes, None)
                               for i in range(k, min(n, k + 10_000))])
    store.close()


def evaluation(n: int) -> None:
    """In-process: Monitor.evaluate over a window of ``n`` predictions (30 features, half
    labelled), twice; CPU and wall seconds."""
    from kustos.runtime.truth import config, parse
    from kustos.runtime.truth.metrics import TruthMetrics
    from kustos.runtime.truth.monitor import Monitor
    from kustos.runtime.truth.store import Prediction, Store

    with tempfile.TemporaryDirectory(prefix="bench-truth-eval-") as tmp:
        cfg = config.parse({"model": "m", "window": "1h", "minSamples": 10})
        mon = Monitor(cfg, Store(tmp, cfg.max_rows, cfg.retention_seconds),
                      TruthMetrics("m"))
        now, classes = time.time(), ["0", "1"]
        feats = {str(j): float(j) for j in range(30)}
        for k in range(0, n, 5000):
            mon.store.add_predictions([
                Prediction(rid_of(i), 0, "1", now - 100 + i * 1e-4, str(i % 2), None,
                           [0.3, 0.7], classes, feats) for i in range(k, min(n, k + 5000))])
        mon.labels([parse.make_label(rid_of(i), 0, (i // 3) % 2, None, "classification",
                                     "bench") for i in range(0, n, 2)], "v2", now=now)
        for _ in range(2):
            cpu, wall = time.thread_time(), time.perf_counter()
            mon.evaluate(now=now)
            print(f"evaluate {n} predictions: {time.thread_time() - cpu:.2f} s CPU, "
                  f"{time.perf_counter() - wall:.2f} s wall")
        mon.store.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preload", type=int, default=0,
                    help="predictions written to the store before the server starts (a "
                         "store that has been running for a while: its id index no "
                         "longer fits in few pages)")
    ap.add_argument("--evaluate", type=int, default=0, metavar="N",
                    help="only time the evaluation of a window of N predictions")
    args = ap.parse_args()
    if args.evaluate:
        evaluation(args.evaluate)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-truth-") as tmp:
        if args.preload:
            preload(Path(tmp) / "store", args.preload)
        config = Path(tmp) / "c.json"
        config.write_bytes(orjson.dumps({"model": "m", "evaluationInterval": "1h",
                                         "maxRows": 1_000_000}))
        port = free_port()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "kustos"), "truth", "--config", str(config),
             "--data-dir", str(Path(tmp) / "store"), "--host", "127.0.0.1", "--port",
             str(port), "--log-level", "warning"], start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                           timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        print("kustos truth did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            results: dict[str, list[float]] = {"events": [], "baseline": []}
            cpu: dict[str, list[float]] = {"events": [], "baseline": []}
            offset = stored = 0
            for r in range(args.rounds):
                for mode in (("events", "baseline") if r % 2 == 0 else
                             ("baseline", "events")):
                    items = events(args.pairs, offset)
                    offset += args.pairs
                    stored += args.pairs if mode == "events" else 0
                    used = cpu_seconds(proc.pid)
                    rate, bad = send(port, "/v1/events" if mode == "events"
                                     else "/v1/nothing", items)
                    used = (cpu_seconds(proc.pid) - used) / len(items) * 1e6
                    results[mode].append(rate)
                    cpu[mode].append(used)
                    print(f"round {r + 1} {mode:8s} {rate:9.0f} events/s, server CPU "
                          f"{used:5.1f} us/event" + (f" ({bad} not accepted)" if bad else ""))
            labels = [(orjson.dumps({"labels": [{"id": rid_of(i), "label": i % 2}
                                                for i in range(k, k + 1000)]}),
                       b"content-type: application/json\r\n")
                      for k in range(0, min(offset, 20_000), 1000)]
            rate, _ = send(port, "/v2/models/m/feedback", labels)
            ev, base = statistics.median(results["events"]), statistics.median(
                results["baseline"])
            print(f"\nmedian: /v1/events {ev:.0f} events/s ({ev / 2:.0f} predictions/s), "
                  f"baseline (404, HTTP only) {base:.0f} POSTs/s, ratio {ev / base:.2f}")
            ev_cpu, base_cpu = (statistics.median(cpu[m]) for m in ("events", "baseline"))
            print(f"server CPU per event: /v1/events {ev_cpu:.1f} us, baseline {base_cpu:.1f} "
                  f"us (at most {1e6 / ev_cpu:.0f} events/s on one free core)")
            print(f"V2 feedback: {rate * 1000:.0f} labels/s (posts of 1000)")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        # After the stop: closing the store folded the WAL (up to ~40 MB) into the file.
        size = sum(f.stat().st_size for f in (Path(tmp) / "store").iterdir())
        total = stored + args.preload  # the baseline's POSTs store nothing
        print(f"store after {total} predictions: {size / 1e6:.1f} MB "
              f"({size / total:.0f} bytes per prediction)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
