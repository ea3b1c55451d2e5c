"""Shadow traffic benchmark: what mirroring every prediction to a candidate costs the caller.

Not a test (not part of `make test`). Run from the repository, with wrk installed:

    nice .venv/bin/python tests/bench/bench_shadow.py [--duration 5] [--rounds 3]

LogisticRegression on iris (the cheapest model, so the mirroring's cost shows most). The
stable `kustos serve` (one worker) is pinned to CPU 0; wrk (single-row V2 requests) and the
candidate, a second real `kustos serve` with the same model, are pinned to CPU 1, the
candidate at niceness `--candidate-nice` (on a cluster it runs in another pod, not on the
stable's core). Modes "off" (no --shadow-url), "shadow" (--shadow-percent 100 to the
candidate) and "shadow-sink" (100 % to a stand-in that answers the candidate's answer
without computing it: the stable's own cost of mirroring, without the real candidate's CPU
on this machine), in rotating order, `--rounds` times, each at wrk concurrency 1 (a caller's
own latency), 8 paced (each connection waits `--pace-ms` between requests: a steady load
below saturation, where a caller's latency is what the mirroring adds) and 8 unpaced
(throughput at saturation). Target: "shadow" p99 within 5 % of "off" (paced and c=1).
Each run also reports the server's CPU per request and what the stable counted as
mirrored: sent / dropped (queue full) / failed.
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
    import asyncio

    body = Path(answer_file).read_bytes()
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(body), body))

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            out = []
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                head = self.buf[:end].lower()
                i = head.find(b"content-length:")
                length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
                if len(self.buf) < end + 4 + length:
                    break
                self.buf = self.buf[end + 4 + length:]
                out.append(answer)
            if out:
                self.transport.write(b"".join(out))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up (1)")
    p.add_argument("--rounds", type=int, default=3, help="runs per mode and concurrency (3)")
    p.add_argument("--loads", nargs="+", default=["1", "8p", "8"],
                   help="wrk connections per set of runs, 'p' for paced (1 8p 8)")
    p.add_argument("--pace-ms", type=float, default=2.0,
                   help="milliseconds each paced connection waits between requests (2)")
    p.add_argument("--candidate-nice", type=int, default=10,
                   help="niceness of the candidate on wrk's CPU (10)")
    p.add_argument("--sink", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sink is not None:
        run_sink(int(args.sink[0]), args.sink[1])
        return 0

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO / "tests" / "runtimes"))
    from bench_serving import LUA, Server, free_port, loadavg, parse_wrk, pinned, run_wrk
    from train_model import save, train

    results: list[dict[str, Any]] = []
    started = time.monotonic()
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
        sink: Server | None = None
        try:
            candidate.wait_ready()
            # The sink answers what the candidate answers to the benchmark's row.
            with urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{cport}/v2/models/iris/infer", data=body.encode(),
                    headers={"content-type": "application/json"}), timeout=30) as resp:
                (work / "answer.json").write_bytes(resp.read())
            sport = free_port()
            sink = Server("sink", ["nice", "-n", str(args.candidate_nice), *pinned(
                "1", [sys.executable, __file__, "--sink", str(sport),
                      str(work / "answer.json")])], dict(os.environ), sport, "/",
                work / "sink.log", work)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(urllib.request.Request(
                        f"http://127.0.0.1:{sport}/", data=b"x"), timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.2)
            for rnd in range(args.rounds):
                for load in args.loads:
                    conc = int(load.rstrip("p"))
                    lua = paced if load.endswith("p") else script
                    order = MODES[rnd % 3:] + MODES[:rnd % 3]
                    for mode in order:
                        port = free_port()
                        argv_ = [*base, "--port", str(port)]
                        if mode != "off":
                            target = cport if mode == "shadow" else sport
                            argv_ += ["--shadow-url", f"http://127.0.0.1:{target}",
                                      "--shadow-percent", "100"]
                        server = Server(f"stable-{mode}", pinned("0", argv_), dict(os.environ),
                                        port, "/v2/health/ready", work / f"{mode}.log", work)
                        try:
                            server.wait_ready()
                            url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
                            run_wrk(url, lua, conc, args.warmup, "1")
                            before = counted(port)
                            cpu = cpu_seconds(server.proc.pid)
                            out = run_wrk(url, lua, conc, args.duration, "1")
                            rps, p50, p99, n = parse_wrk(out)
                            p90 = percentile(out, "90%")
                            cpu = cpu_seconds(server.proc.pid) - cpu
                            # Let the mirror finish what it holds before counting.
                            deadline = time.monotonic() + 10
                            after = counted(port)
                            while (mode != "off" and time.monotonic() < deadline
                                   and sum(after[k] for k in ("sent", "dropped", "failed"))
                                   < sum(before[k] for k in ("sent", "dropped", "failed"))
                                   + n):
                                time.sleep(0.1)
                                after = counted(port)
                            results.append({
                                "round": rnd + 1, "mode": mode, "load": load,
                                "rps": rps, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
                                "requests": n,
                                "cpu_us_per_request": cpu / n * 1e6,
                                **{k: after[k] - before[k] for k in after}})
                            print(json.dumps(results[-1]), file=sys.stderr)
                        finally:
                            server.stop()
        finally:
            candidate.stop()
            if sink is not None:
                sink.stop()
    print(f"{len(results)} runs in {time.monotonic() - started:.0f}s; "
          f"load average at the end: {loadavg()}")
    # On a shared machine other load comes and goes: ratios to the "off" run of the same
    # round and concurrency (seconds apart) are steadier than ratios of medians.
    print("| load | mode | requests/s | p50 ms | p90 ms | p99 ms | p99 vs off (median "
          "of per-round ratios) | p90 vs off | p50 vs off | requests/s vs off | "
          "server CPU us/request | mirrored sent | dropped | failed | rows agree | disagree |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for load in args.loads:
        off = {r["round"]: r for r in results if r["mode"] == "off" and r["load"] == load}
        for mode in MODES:
            rs = [r for r in results if r["mode"] == mode and r["load"] == load]

            def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return float(statistics.median(r[key] for r in rs))

            def ratio(key: str, rs: list[dict[str, Any]] = rs,
                      off: dict[int, dict[str, Any]] = off) -> float:
                return float(statistics.median(r[key] / off[r["round"]][key] for r in rs))

            name = f"{load[:-1]} paced" if load.endswith("p") else load
            print(f"| {name} | {mode} | {med('rps'):,.0f} | {med('p50_ms'):.2f} | "
                  f"{med('p90_ms'):.2f} | {med('p99_ms'):.2f} | {ratio('p99_ms'):.3f} | "
                  f"{ratio('p90_ms'):.3f} | {ratio('p50_ms'):.3f} | "
                  f"{ratio('rps'):.3f} | {med('cpu_us_per_request'):.1f} | "
                  f"{sum(r['sent'] for r in rs):,.0f} | {sum(r['dropped'] for r in rs):,.0f} | "
                  f"{sum(r['failed'] for r in rs):,.0f} | {sum(r['agree'] for r in rs):,.0f} | "
                  f"{sum(r['disagree'] for r in rs):,.0f} |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
