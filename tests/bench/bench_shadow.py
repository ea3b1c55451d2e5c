"""Shadow traffic benchmark: what mirroring every prediction to a candidate costs the caller.

Not a test (not part of `make test`). Run from the repository:

    nice .venv/bin/python tests/bench/bench_shadow.py [--budget 200]               # paired
    nice .venv/bin/python tests/bench/bench_shadow.py --method wrk --duration 1   # wrk rounds

LogisticRegression on iris (the cheapest model, so the mirroring's cost shows most),
single-row V2 requests. Placement, so that the two sides do not compete for one core on
this small machine: the stable `kustos serve` processes (one worker each) are pinned to
CPU 0 (taskset), where they share whatever noise that core sees; the client (this driver,
os.sched_setaffinity, or wrk), the candidate (a second real `kustos serve` with the same
model, at niceness `--candidate-nice`) and the sink on CPU 1. Modes, one stable server
each, all up for the whole run: "off" (no --shadow-url), "twin" (a second "off": the
paired method's A/A control, which shows its noise floor), "shadow" (--shadow-percent 100
to the real candidate) and "shadow-sink" (100 % to a stand-in that answers the candidate's
answer without computing it: the stable's own cost of mirroring, without a second model
server's CPU, which on a cluster runs in its own pods). Target: "shadow" p99 within 5 % of
"off".

Method "paired" (the default; paired_latency.py): one client interleaves at request
granularity. Each group sends the request once to every mode's server, in an order
shuffled per group, on kept-alive connections; each request's latency is taken with
perf_counter_ns. Loads: "1" (one request at a time: a caller's own latency) and "8p" (8
such clients on one selector, each waiting `--pace-ms` after every answer, so the mirror's
sender thread competes with callers), alternating in `--chunk`-second pieces until
`--budget` is spent. All samples of a mode are pooled; the report gives p50/p90/p99/p99.9
per mode and the p99 ratio to "off" with bootstrap 95 % intervals, resampling groups
(pairs) one by one and in blocks of `--block` consecutive groups (noise that lasts several
requests stays together). A stall from another process lands on whichever request is in
flight, by chance: noise for every mode alike, not bias for one. For the one-at-a-time
load it also gives each mode's p99 by the mode of the request just before (where work a
server does after answering lands). `--save run.npz` keeps a run's samples; `--pool
a.npz b.npz ...` reports saved runs of the same modes pooled, without servers.

Method "wrk" (the earlier one): every mode in short wrk runs (`--duration` s), interleaved
by round in an order that rotates, each run compared with the "off" run of its round: the
median of those per-round ratios and their interquartile range. Both methods report the
stable's CPU per request and what each mirror counted: sent / dropped (queue full) /
failed, rows agreeing / disagreeing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# "twin": a second server without mirroring, the paired method's A/A control.
MODES = ("off", "twin", "shadow", "shadow-sink")
INFER = "/v2/models/iris/infer"


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


@dataclass
class Bench:
    """What both methods share: the stable servers by mode, the request, scratch space."""

    stable: dict[str, Any]  # mode -> bench_serving.Server
    body: bytes
    work: Path

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.stable[mode].port}{INFER}"

    def quiet(self, modes: list[str], timeout: float = 10.0) -> dict[str, dict[str, float]]:
        """Counters per mode once the mirrors have nothing left to send (no change for
        0.2 s; at most ``timeout`` seconds)."""
        seen: dict[str, dict[str, float]] = {}
        last = {m: counted(self.stable[m].port) for m in modes}
        deadline = time.monotonic() + timeout
        while last != seen and time.monotonic() < deadline:
            time.sleep(0.2)
            seen, last = last, {m: counted(self.stable[m].port) for m in modes}
        return last


@contextlib.contextmanager
def servers(modes: list[str], candidate_nice: int) -> Iterator[Bench]:
    """The candidate and the sink on CPU 1, one stable server per mode on CPU 0, all up
    and answering; stopped on the way out."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO / "tests" / "runtimes"))
    sys.path.insert(0, str(REPO / "tests"))
    from bench_serving import Server, pinned
    from bench_sink import wait_for_sink
    from train_model import save, train

    from ports import free_port

    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        work = Path(tmp)
        model, X = train("logreg")  # LogisticRegression on iris
        save(model, str(work / "model.skops"))
        row = X[len(X) // 2].tolist()
        body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(row)],
                                       "datatype": "FP64", "data": row}]}).encode()
        kustos = str(REPO / ".venv" / "bin" / "kustos")
        base = [kustos, "serve", "--model", str(work / "model.skops"), "--name", "iris",
                "--log-level", "warning"]
        cport = free_port()
        candidate = Server("candidate", ["nice", "-n", str(candidate_nice),
                                         *pinned("1", [*base, "--port", str(cport)])],
                           dict(os.environ), cport, "/v2/health/ready",
                           work / "candidate.log", work)
        started: list[Server] = [candidate]
        try:
            candidate.wait_ready()
            # The sink answers what the candidate answers to the benchmark's row.
            with urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{cport}{INFER}", data=body,
                    headers={"content-type": "application/json"}), timeout=30) as resp:
                (work / "answer.json").write_bytes(resp.read())
            sport = free_port()
            started.append(Server("sink", ["nice", "-n", str(candidate_nice), *pinned(
                "1", [sys.executable, __file__, "--sink", str(sport),
                      str(work / "answer.json")])], dict(os.environ), sport, "/",
                work / "sink.log", work))
            wait_for_sink(sport)
            stable: dict[str, Server] = {}
            for mode in modes:
                port = free_port()
                argv_ = [*base, "--port", str(port)]
                if mode in ("shadow", "shadow-sink"):
                    target = cport if mode == "shadow" else sport
                    argv_ += ["--shadow-url", f"http://127.0.0.1:{target}",
                              "--shadow-percent", "100"]
                stable[mode] = Server(f"stable-{mode}", pinned("0", argv_), dict(os.environ),
                                      port, "/v2/health/ready", work / f"{mode}.log", work)
                started.append(stable[mode])
            for mode in modes:
                stable[mode].wait_ready()
            yield Bench(stable, body, work)
        finally:
            for server in started:
                server.stop()


def wrk_rounds(bench: Bench, args: argparse.Namespace, modes: list[str]
               ) -> list[dict[str, Any]]:
    """Short wrk runs per mode, interleaved by round (the earlier method; see the
    module's docstring)."""
    from bench_serving import LUA, parse_wrk, run_wrk

    body = bench.body.decode()
    script = bench.work / "request.lua"
    script.write_text(LUA.format(body=json.dumps(body)))
    paced = bench.work / "paced.lua"
    paced.write_text(LUA.format(body=json.dumps(body))
                     + f"function delay()\n  return {args.pace_ms:g}\nend\n")
    stable = bench.stable

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
            run_wrk(bench.url(mode), paced if load.endswith("p") else script, conc,
                    args.warmup, "1")
    bench.quiet(modes[1:])  # the warm-ups' mirrored requests, before round 1
    results: list[dict[str, Any]] = []
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
                out = run_wrk(bench.url(mode), lua, conc, args.duration, "1")
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
    print(f"{len(results)} runs ({rnd} rounds of {args.duration}s runs)")
    return results


@dataclass
class Measured:
    """The paired method's samples: per load, latencies in ms as (groups, modes) in the
    order the groups completed; the stable's CPU seconds per mode and what each mirror
    counted (None when pooled from saved runs)."""

    modes: list[str]
    ms: dict[str, np.ndarray]
    orders: dict[str, np.ndarray]
    seconds: dict[str, float]
    cpu: dict[str, list[float]] | None = None
    mirrored: dict[str, dict[str, float]] | None = None

    def save(self, path: str) -> None:
        arrays: dict[str, Any] = {
            "modes": np.array(self.modes), "loads": np.array(list(self.ms)),
            "seconds": np.array(list(self.seconds.values())),
            **{f"ms_{load}": v for load, v in self.ms.items()},
            **{f"orders_{load}": v for load, v in self.orders.items()}}
        np.savez_compressed(path, **arrays)

    @staticmethod
    def pool(paths: list[str]) -> Measured:
        """Saved runs of the same modes and loads, their groups concatenated."""
        runs = [np.load(p) for p in paths]
        modes, loads = [str(m) for m in runs[0]["modes"]], [str(x) for x in runs[0]["loads"]]
        for path, run in zip(paths, runs, strict=True):
            if list(run["modes"]) != modes or list(run["loads"]) != loads:
                raise SystemExit(f"{path}: other modes or loads than {paths[0]}")
        return Measured(modes, {load: np.concatenate([r[f"ms_{load}"] for r in runs])
                                for load in loads},
                        {load: np.concatenate([r[f"orders_{load}"] for r in runs])
                         for load in loads},
                        {load: float(sum(r["seconds"][i] for r in runs))
                         for i, load in enumerate(loads)})


def paired_run(bench: Bench, args: argparse.Namespace, modes: list[str]) -> Measured:
    """Request-level interleaving (paired_latency): per load, the samples of every
    chunk, the stable's CPU per mode, and what each mirror counted."""
    import paired_latency as pl

    ports = [bench.stable[m].port for m in modes]
    requests = [pl.post_bytes(p, INFER, bench.body, "application/json") for p in ports]

    def measure(load: str, seconds: float, seed: int) -> pl.Samples:
        slots = int(load.rstrip("p"))
        if slots == 1 and not load.endswith("p"):
            return pl.alternate(ports, requests, seconds, seed)
        pace = args.pace_ms / 1000 if load.endswith("p") else 0.0
        return pl.paced(ports, requests, seconds, slots, pace, seed)

    for load in args.loads:
        measure(load, args.warmup, 0)
    before = bench.quiet(modes)
    chunks: dict[str, list[pl.Samples]] = {load: [] for load in args.loads}
    cpu: dict[str, list[float]] = {load: [0.0] * len(modes) for load in args.loads}
    started = time.monotonic()
    seed = 0
    while time.monotonic() - started + args.chunk * len(args.loads) <= args.budget:
        for load in args.loads:
            seed += 1
            used = [cpu_seconds(bench.stable[m].proc.pid) for m in modes]
            chunks[load].append(measure(load, args.chunk, seed))
            for i, m in enumerate(modes):
                cpu[load][i] += cpu_seconds(bench.stable[m].proc.pid) - used[i]
            print(f"{load}: chunk {len(chunks[load])}, {chunks[load][-1].groups} groups",
                  file=sys.stderr)
    after = bench.quiet(modes)
    mirrored = {m: {k: after[m][k] - before[m][k] for k in after[m]} for m in modes}
    return Measured(modes, {load: np.concatenate([c.matrix() for c in chunks[load]])
                            for load in args.loads},
                    {load: np.concatenate([c.orders() for c in chunks[load]])
                     for load in args.loads},
                    {load: sum(c.seconds for c in chunks[load]) for load in args.loads},
                    cpu, mirrored)


def paired_report(measured: Measured, args: argparse.Namespace) -> None:
    import paired_latency as pl

    modes = measured.modes
    print(f"| load | mode | requests | p50 ms | p90 ms | p99 ms | p99.9 ms | p50 vs off | "
          f"p99 vs off [95 % CI: pairs; blocks of {args.block}] | p99.9 vs off [95 % CI: "
          f"blocks] | stable CPU us/request (+ vs off) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    summary: list[dict[str, Any]] = []
    for load, ms in measured.ms.items():
        n = len(ms)
        cpu_us = ([c / n * 1e6 for c in measured.cpu[load]] if measured.cpu is not None
                  else None)
        name = (f"{load[:-1]} paced ({args.pace_ms:g} ms)" if load.endswith("p")
                else "1 conn, alternating" if load == "1" else f"{load} conn")
        base = ms[:, 0]
        for i, mode in enumerate(modes):
            q = pl.quantiles(ms[:, i])
            row: dict[str, Any] = {"load": load, "mode": mode, "requests": n,
                                   "seconds": measured.seconds[load], "p50_ms": q[0],
                                   "p90_ms": q[1], "p99_ms": q[2], "p999_ms": q[3]}
            if i == 0:
                cells = "1 | 1 | 1"
            else:
                other = ms[:, i]
                pair = pl.bootstrap_ratio(base, other, 99, args.reps, 1, seed=i)
                blocks = pl.bootstrap_ratio(base, other, 99, args.reps, args.block, seed=i)
                tail = pl.bootstrap_ratio(base, other, 99.9, args.reps, args.block, seed=i)
                r50 = q[0] / float(np.percentile(base, 50))
                r99 = q[2] / float(np.percentile(base, 99))
                r999 = q[3] / float(np.percentile(base, 99.9))
                row.update(p99_ratio=r99, p99_ci_pairs=pair, p99_ci_blocks=blocks,
                           p999_ratio=r999, p999_ci_blocks=tail, p50_ratio=r50)
                cells = (f"{r50:.3f} | {r99:.3f} [{pair[0]:.3f}-{pair[1]:.3f}; "
                         f"{blocks[0]:.3f}-{blocks[1]:.3f}] | {r999:.3f} "
                         f"[{tail[0]:.3f}-{tail[1]:.3f}]")
            cpu = "—"
            if cpu_us is not None:
                row["cpu_us_per_request"] = cpu_us[i]
                cpu = f"{cpu_us[i]:.1f} ({cpu_us[i] - cpu_us[0]:+.1f})"
            summary.append(row)
            print(f"| {name} | {mode} | {n:,} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} | "
                  f"{q[3]:.3f} | {cells} | {cpu} |")
    if "1" in measured.ms:
        print()
        print("One at a time, p99 ms (requests) by the mode of the request just before:")
        print()
        print("| mode | " + " | ".join(f"after {m}" for m in modes) + " |")
        print("|---|" + "---|" * len(modes))
        for mode, row_ in zip(modes, pl.by_predecessor(measured.ms["1"],
                                                       measured.orders["1"]), strict=True):
            print(f"| {mode} | " + " | ".join(f"{v:.3f} ({n:,})" for v, n in row_) + " |")
    if measured.mirrored is not None:
        print()
        print("| mode | mirrored sent | dropped | failed | rows agree | disagree |")
        print("|---|---|---|---|---|---|")
        for mode in modes:
            c = measured.mirrored[mode]
            print(f"| {mode} | {c['sent']:,.0f} | {c['dropped']:,.0f} | {c['failed']:,.0f} | "
                  f"{c['agree']:,.0f} | {c['disagree']:,.0f} |")
    print(json.dumps({"summary": summary, "mirrored": measured.mirrored}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--method", choices=("paired", "wrk"), default="paired",
                   help="paired: one client alternating requests between the servers "
                        "(default); wrk: short wrk runs per mode, interleaved by round")
    p.add_argument("--budget", type=float, default=200.0,
                   help="seconds of measurement; nothing starts that would end later (200)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of warm-up per load (per server with wrk), once (1)")
    p.add_argument("--loads", nargs="+", default=["1", "8p"],
                   help="connections per server, 'p' for paced (1 8p); paired: '1' "
                        "alternates one request at a time, 'Np' runs N such clients")
    p.add_argument("--modes", nargs="+", default=None, choices=MODES,
                   help="modes to compare with 'off', which is always included (paired: "
                        "twin shadow shadow-sink; wrk: shadow shadow-sink)")
    p.add_argument("--pace-ms", type=float, default=2.0,
                   help="milliseconds each paced connection waits between requests (2)")
    p.add_argument("--candidate-nice", type=int, default=10,
                   help="niceness of the candidate on the client's CPU (10)")
    p.add_argument("--chunk", type=float, default=10.0,
                   help="paired: seconds per load before switching to the next (10)")
    p.add_argument("--block", type=int, default=100,
                   help="paired: consecutive groups per bootstrap block (100)")
    p.add_argument("--reps", type=int, default=1000,
                   help="paired: bootstrap resamples (1000)")
    p.add_argument("--save", default=None,
                   help="paired: write the samples to this .npz file")
    p.add_argument("--pool", nargs="+", default=None, metavar="NPZ",
                   help="paired: no servers; report the samples of these saved runs "
                        "(same modes and loads) pooled")
    p.add_argument("--duration", type=int, default=2, help="wrk: seconds per run (2)")
    p.add_argument("--max-rounds", type=int, default=1000, help="wrk: at most this many "
                   "rounds")
    p.add_argument("--sink", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sink is not None:
        run_sink(int(args.sink[0]), args.sink[1])
        return 0
    if args.pool is not None:
        paired_report(Measured.pool(args.pool), args)
        return 0
    chosen = args.modes or (["twin", "shadow", "shadow-sink"] if args.method == "paired"
                            else ["shadow", "shadow-sink"])
    modes = ["off", *[m for m in dict.fromkeys(chosen) if m != "off"]]

    sys.path.insert(0, str(HERE))
    from bench_serving import loadavg

    # The driver (the paired client, metrics polls, bookkeeping) stays off the stable's CPU.
    os.sched_setaffinity(0, {1})
    started = time.monotonic()
    load_before = loadavg()
    with servers(modes, args.candidate_nice) as bench:
        if args.method == "wrk":
            results = wrk_rounds(bench, args, modes)
        else:
            measured = paired_run(bench, args, modes)
    load_after = loadavg()
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # the bootstrap: any CPU
    print(f"{args.method}: {time.monotonic() - started:.0f}s; load average before: "
          f"{load_before}, after: {load_after}")
    if args.method == "wrk":
        report(results, args.loads, modes)
        print(json.dumps(results))
    else:
        if args.save:
            measured.save(args.save)
        paired_report(measured, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
