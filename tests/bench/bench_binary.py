"""Binary tensor data vs JSON on the same `kustos serve`, side by side.

Not a test: its figures depend on the machine. One server (a LogisticRegression on
breast_cancer's 30 features, trained here, served by `kustos serve --workers 1`), one
1000 x 30 FP32 input, and two ways to send it over REST V2:

  json    the tensor as JSON numbers, the outputs as JSON
  binary  the tensor as 120,000 raw bytes after the JSON header (Inference-Header-
          Content-Length), the outputs asked for as binary too

Each request body is encoded once up front (what is measured is the server and the wire,
not the client's encoder; the client's encode time is printed separately). Each mode runs
for a fixed duration on keep-alive connections from ``--concurrency`` threads, modes
alternating in short rounds so both see the same machine; requests/s is the median
round's, latency percentiles are over every request. Every answer is checked (status 200
and the same predictions in both modes) before timing starts. Target: binary serves at
least 3x the requests/s of JSON.

    nice .venv/bin/python tests/bench/bench_binary.py [--seconds 1] [--rounds 10] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ports import free_port  # noqa: E402

ROWS, COLS = 1000, 30
PATH = "/v2/models/cancer/infer"


def train(dest: Path) -> tuple[Path, np.ndarray]:
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    x, y = load_breast_cancer(return_X_y=True)
    sio.dump(LogisticRegression(max_iter=5000).fit(x, y), dest / "cancer.skops")
    rows = np.resize(x, (ROWS, COLS)).astype(np.float32)
    return dest / "cancer.skops", rows


def bodies(rows: np.ndarray) -> dict[str, tuple[bytes, dict[str, str], float]]:
    """mode -> (body, headers, client encode seconds)."""
    started = time.perf_counter()
    json_body = orjson.dumps({"inputs": [{"name": "input-0", "shape": [ROWS, COLS],
                                          "datatype": "FP32", "data": rows.reshape(-1)}],
                              "outputs": [{"name": "predict"}]},
                             option=orjson.OPT_SERIALIZE_NUMPY)
    json_encode = time.perf_counter() - started
    started = time.perf_counter()
    raw = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    head = orjson.dumps({"inputs": [{"name": "input-0", "shape": [ROWS, COLS],
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "predict", "parameters": {"binary_data": True}}]})
    binary_body = head + raw
    binary_encode = time.perf_counter() - started
    return {
        "json": (json_body, {"content-type": "application/json"}, json_encode),
        "binary": (binary_body, {"content-type": "application/octet-stream",
                                 "inference-header-content-length": str(len(head))},
                   binary_encode),
    }


def predictions(status: int, headers: dict[str, str], data: bytes) -> np.ndarray:
    if status != 200:
        raise SystemExit(f"server answered {status}: {data[:300]!r}")
    size = headers.get("inference-header-content-length")
    if size is None:
        return np.asarray(orjson.loads(data)["outputs"][0]["data"], dtype=np.int64)
    return np.frombuffer(data[int(size):], dtype="<i8")


def post(conn: http.client.HTTPConnection, body: bytes,
         headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn.request("POST", PATH, body, headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def run(port: int, body: bytes, headers: dict[str, str], seconds: float,
        concurrency: int) -> list[float]:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures: list[str] = []
    deadline = time.perf_counter() + seconds

    def worker(out: list[float]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while (now := time.perf_counter()) < deadline:
                status, _, data = post(conn, body, headers)
                if status != 200:
                    failures.append(f"{status}: {data[:200]!r}")
                    return
                out.append(time.perf_counter() - now)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(lat,)) for lat in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"request failed: {failures[0]}")
    return [x for lat in latencies for x in lat]


def parse_costs(modes: dict[str, tuple[bytes, dict[str, str], float]]) -> dict[str, float]:
    """What the server spends turning each body into arrays, without the wire or client."""
    from kustos.runtime.server.v2 import header_length, parse_infer

    out: dict[str, float] = {}
    for mode, (body, headers, _) in modes.items():
        given = headers.get("inference-header-content-length")
        times = []
        for _ in range(200):
            started = time.perf_counter()
            length = header_length(given.encode(), len(body)) if given else None
            parse_infer(body, length)
            times.append(time.perf_counter() - started)
        out[mode] = float(np.median(times))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per mode and round")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-binary-") as tmp:
        model, rows = train(Path(tmp))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "kustos.cli", "serve", "--model", str(model),
             "--name", "cancer", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--log-level", "warning"], start_new_session=True)
        try:
            return bench(port, proc, rows, args)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def bench(port: int, proc: subprocess.Popen[bytes], rows: np.ndarray,
          args: argparse.Namespace) -> int:
    deadline = time.monotonic() + 60
    while True:  # poll readiness
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("server did not become ready")
        time.sleep(0.1)
    modes = bodies(rows)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    answers = {m: predictions(*post(conn, b, h)) for m, (b, h, _) in modes.items()}
    conn.close()
    if not np.array_equal(answers["json"], answers["binary"]) or len(answers["json"]) != ROWS:
        raise SystemExit("json and binary predictions differ")
    for _ in range(3):  # warm-up
        for body, headers, _ in modes.values():
            run(port, body, headers, 0.3, args.concurrency)
    results: dict[str, list[float]] = {m: [] for m in modes}
    # Requests/s of each short round: on a shared machine the load changes from second to
    # second, so the modes alternate often and the median round speaks for each.
    rounds: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, (body, headers, _) in modes.items():
            started = time.perf_counter()
            lat = run(port, body, headers, args.seconds, args.concurrency)
            rounds[mode].append(len(lat) / (time.perf_counter() - started))
            results[mode] += lat
    print(f"{ROWS} x {COLS} FP32 input, predict output; concurrency {args.concurrency}, "
          f"{args.rounds} alternating rounds x {args.seconds:g}s per mode")
    print(f"{'mode':<8} {'body bytes':>11} {'encode ms':>10} {'req/s':>9} {'(min-max)':>15} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    rps: dict[str, float] = {}
    p50: dict[str, float] = {}
    for mode, lat in results.items():
        arr = np.sort(np.asarray(lat)) * 1000
        rps[mode] = float(np.median(rounds[mode]))
        p50[mode] = float(np.percentile(arr, 50))
        body, _, encode = modes[mode]
        spread = f"{min(rounds[mode]):.0f}-{max(rounds[mode]):.0f}"
        print(f"{mode:<8} {len(body):>11} {encode * 1000:>10.2f} {rps[mode]:>9.1f} "
              f"{spread:>15} {p50[mode]:>8.2f} {float(np.percentile(arr, 99)):>8.2f}")
    parse = parse_costs(modes)
    print("request parsing in-process (kustos.runtime.server.v2.parse_infer, median of 200): "
          + ", ".join(f"{m} {t * 1e6:.0f} us" for m, t in parse.items())
          + f" ({parse['json'] / parse['binary']:.0f}x)")
    ratio = rps["binary"] / rps["json"]
    print(f"binary/json requests/s (median rounds): {ratio:.2f}x; json/binary p50: "
          f"{p50['json'] / p50['binary']:.2f}x (target >= 3x: "
          f"{'met' if ratio >= 3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
