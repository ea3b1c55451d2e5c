"""Shadow traffic benchmark: what mirroring every prediction to a candidate costs the caller.

Not a test (not part of `make test`). Run from the repository, with wrk installed:

    nice .venv/bin/python tests/bench/bench_shadow.py [--duration 2] [--budget 200]

LogisticRegression on iris (the cheapest model, so the mirroring's cost shows most),
single-row V2 requests. Placement, so that the two sides do not compete for one core on
this small machine: the three stable `kustos serve` processes (one worker each) are pinned
to CPU 0 (taskset); wrk, the candidate (a second real `kustos serve` with the same model,
at niceness `--candidate-nice`), the sink and this driver (os.sched_setaffinity) to CPU 1.
Modes: "off" (no --shadow-url), "shadow" (--shadow-percent 100 to the real candidate) and
"shadow-sink" (100 % to a stand-in that answers the candidate's answer without computing
it: the stable's own cost of mirroring, without a second model server's CPU, which on a
cluster runs in its own pods). All three stable servers stay up for the whole run (an idle
one costs nothing) and are measured in short runs, interleaved: every round runs each
mode once per load, in an order that rotates from round to round, and rounds repeat until
`--budget` seconds are spent. Loads: one connection (a caller's own latency); 8
connections each waiting `--pace-ms` between requests (steady, below saturation); "8"
(flat out, saturation) on request. Shared-machine noise comes and goes within seconds, so
each run is compared with the "off" run of the same round and load (seconds apart): the
table gives the median of those per-round ratios and their interquartile range. Target:
"shadow" p99 within 5 % of "off" (paced and c=1). Each run also reports the stable's CPU
per request and what it counted as mirrored: sent / dropped (queue full) / failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODES = ("off", "shadow", "shadow-sink")


def run_sink(port: int, answer_file: str) -> None:
    """A stand-in candidate that answers every request with one canned prediction (the
    real candidate's answer to the benchmark's row), at almost no CPU: what the stable's
    mirroring costs, apart from the load a real candidate adds to this 2-core machine."""
    from bench_sink import serve_canned

    body = Path(answer_file).read_bytes()
    serve_canned(port, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                       b"content-length: %d\r\n\r\n%s" % (len(body), body))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counted(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out = {"sent": 0.0, "dropped": 0.0, "failed": 0.0, "agree": 0.0, "disagree": 0.0}
    for line in text.splitlines():
        if line.startswith(("kustos_shadow_requests_total{", "kustos_shadow_rows_total{")):
            for k in out:
                if f'="{k}"' in line:
                    out[k] += float(line.rsplit(" ", 1)[1])
    return out


def percentile(wrk_out: str, which: str) -> float:
    """One line of wrk's latency distribution, in milliseconds."""
    import re

    found = re.search(rf"^\s+{re.escape(which)}\s+([\d.]+)(us|ms|s)\s*$", wrk_out, re.M)
    if not found:
        raise RuntimeError(f"no {which} latency in wrk's output")
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q1, q3


def report(results: list[dict[str, Any]], loads: list[str], modes: list[str]) -> None:
    print("| load | mode | rounds | requests/s | p50 ms | p99 ms | p99 vs off: median "
          "[IQR] | p50 vs off | requests/s vs off | stable CPU us/request (+ vs off) | "
          "mirrored sent | dropped | failed | rows agree | disagree |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for load in loads:
        off = {r["round"]: r for r in results if r["mode"] == "off" and r["load"] == load}
        for mode in modes:
            rs = [r for r in results if r["mode"] == mode and r["load"] == load
                  and r["round"] in off]
            if not rs:
                continue

            def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return float(statistics.median(r[key] for r in rs))

            def ratio(key: str, rs: list[dict[str, Any]] = rs,
                      off: dict[int, dict[str, Any]] = off) -> str:
                q2, q1, q3 = spread([r[key] / off[r["round"]][key] for r in rs])
                return f"{q2:.3f} [{q1:.3f}-{q3:.3f}]"

            cpu_added = statistics.median(
                r["cpu_us_per_request"] - off[r["round"]]["cpu_us_per_request"] for r in rs)
            name = f"{load[:-1]} paced" if load.endswith("p") else f"{load} conn"
            print(f"| {name} | {mode} | {len(rs)} | {med('rps'):,.0f} | {med('p50_ms'):.3f} | "
                  f"{med('p99_ms'):.3f} | {ratio('p99_ms')} | {ratio('p50_ms')} | "
                  f"{ratio('rps')} | {med('cpu_us_per_request'):.1f} ({cpu_added:+.1f}) | "
                  f"{sum(r['sent'] for r in rs):,.0f} | {sum(r['dropped'] for r in rs):,.0f} | "
                  f"{sum(r['failed'] for r in rs):,.0f} | {sum(r['agree'] for r in rs):,.0f} | "
                  f"{sum(r['disagree'] for r in rs):,.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=int, default=2, help="seconds per wrk run (2)")
    p.add_argument("--warmup", type=int, default=1,
                   help="seconds of warm-up per server and load, once (1)")
    p.add_argument("--budget", type=float, default=200.0,
                   help="seconds of interleaved rounds; no round starts that would end "
                        "later (200)")
    p.add_argument("--max-rounds", type=int, default=1000, help="at most this many rounds")
    p.add_argument("--loads", nargs="+", default=["1", "8p"],
                   help="wrk connections per set of runs, 'p' for paced (1 8p)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="modes to interleave; 'off' is always included")
    p.add_argument("--pace-ms", type=float, default=2.0,
                   help="milliseconds each paced connection waits between requests (2)")
    p.add_argument("--candidate-nice", type=int, default=10,
                   help="niceness of the candidate on wrk's CPU (10)")
    p.add_argument("--sink", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sink is not None:
        run_sink(int(args.sink[0]), args.sink[1])
        return 0
    modes = ["off", *[m for m in args.modes if m != "off"]]

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO / "tests" / "runtimes"))
    sys.path.insert(0, str(REPO / "tests"))
    from bench_serving import LUA, Server, loadavg, parse_wrk, pinned, run_wrk
    from bench_sink import wait_for_sink
    from train_model import save, train

    from ports import free_port

    # The driver (metrics polls, bookkeeping) stays off the stable's CPU.
    os.sched_setaffinity(0, {1})
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        work = Path(tmp)
        model, X = train("logreg")  # LogisticRegression on iris
        save(model, str(work / "model.skops"))
        row = X[len(X) // 2].tolist()
        script = work / "request.lua"
        body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(row)],
                                       "datatype": "FP64", "data": row}]})
        script.write_text(LUA.format(body=json.dumps(body)))
        paced = work / "paced.lua"
        paced.write_text(LUA.format(body=json.dumps(body))
                         + f"function delay()\n  return {args.pace_ms:g}\nend\n")
        kustos = str(REPO / ".venv" / "bin" / "kustos")
        base = [kustos, "serve", "--model", str(work / "model.skops"), "--name", "iris",
                "--log-level", "warning"]
        cport = free_port()
        candidate = Server("candidate", ["nice", "-n", str(args.candidate_nice),
                                         *pinned("1", [*base, "--port", str(cport)])],
                           dict(os.environ), cport, "/v2/health/ready",
                           work / "candidate.log", work)
        servers: list[Server] = [candidate]
        try:
            candidate.wait_ready()
            # The sink answers what the candidate answers to the benchmark's row.
            with urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{cport}/v2/models/iris/infer", data=body.encode(),
                    headers={"content-type": "application/json"}), timeout=30) as resp:
                (work / "answer.json").write_bytes(resp.read())
            sport = free_port()
            servers.append(Server("sink", ["nice", "-n", str(args.candidate_nice), *pinned(
                "1", [sys.executable, __file__, "--sink", str(sport),
                      str(work / "answer.json")])], dict(os.environ), sport, "/",
                work / "sink.log", work))
            wait_for_sink(sport)
            stable: dict[str, Server] = {}
            for mode in modes:
                port = free_port()
                argv_ = [*base, "--port", str(port)]
                if mode != "off":
                    target = cport if mode == "shadow" else sport
                    argv_ += ["--shadow-url", f"http://127.0.0.1:{target}",
                              "--shadow-percent", "100"]
                stable[mode] = Server(f"stable-{mode}", pinned("0", argv_), dict(os.environ),
                                      port, "/v2/health/ready", work / f"{mode}.log", work)
                servers.append(stable[mode])
            for mode in modes:
                stable[mode].wait_ready()

            def url(mode: str) -> str:
                return f"http://127.0.0.1:{stable[mode].port}/v2/models/iris/infer"

            def settle(mode: str, target: float) -> dict[str, float]:
                """Wait until the stable has mirrored ``target`` requests in all (so no
                candidate work spills into the next run), at most 10 s."""
                after = counted(stable[mode].port)
                deadline = time.monotonic() + 10
                while (mode != "off" and time.monotonic() < deadline
                       and sum(after[k] for k in ("sent", "dropped", "failed")) < target):
                    time.sleep(0.05)
                    after = counted(stable[mode].port)
                return after

            for load in args.loads:
                conc = int(load.rstrip("p"))
                for mode in modes:
                    run_wrk(url(mode), paced if load.endswith("p") else script, conc,
                            args.warmup, "1")
            for mode in modes[1:]:  # the warm-ups' mirrored requests, before round 1
                seen: dict[str, float] = {}
                last = counted(stable[mode].port)
                deadline = time.monotonic() + 10
                while last != seen and time.monotonic() < deadline:
                    time.sleep(0.2)
                    seen, last = last, counted(stable[mode].port)
            rounds_started = time.monotonic()
            round_seconds = 0.0
            rnd = 0
            while rnd < args.max_rounds and (
                    time.monotonic() - rounds_started + round_seconds <= args.budget):
                t0 = time.monotonic()
                rnd += 1
                for li, load in enumerate(args.loads):
                    conc = int(load.rstrip("p"))
                    lua = paced if load.endswith("p") else script
                    shift = (rnd + li) % len(modes)
                    for mode in modes[shift:] + modes[:shift]:
                        server = stable[mode]
                        before = counted(server.port)
                        cpu = cpu_seconds(server.proc.pid)
                        out = run_wrk(url(mode), lua, conc, args.duration, "1")
                        rps, p50, p99, n = parse_wrk(out)
                        after = settle(mode, sum(before[k] for k in ("sent", "dropped",
                                                                     "failed")) + n)
                        # After the mirror's last batch: its whole work is counted (plus
                        # a /metrics read or a few, in every mode).
                        cpu = cpu_seconds(server.proc.pid) - cpu
                        results.append({
                            "round": rnd, "mode": mode, "load": load,
                            "rps": rps, "p50_ms": p50, "p90_ms": percentile(out, "90%"),
                            "p99_ms": p99, "requests": n,
                            "cpu_us_per_request": cpu / n * 1e6,
                            **{k: after[k] - before[k] for k in after}})
                        print(json.dumps(results[-1]), file=sys.stderr)
                round_seconds = time.monotonic() - t0
        finally:
            for server in servers:
                server.stop()
    print(f"{len(results)} runs ({rnd} rounds of {args.duration}s runs) in "
          f"{time.monotonic() - started:.0f}s; load average before: {load_before}, "
          f"after: {loadavg()}")
    report(results, args.loads, modes)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
