"""Payload logging benchmark: `kustos serve` throughput with payload logging to a loopback
HTTP sink, and to a real Kafka broker, vs without, same model, side by side.

Not a test (not part of `make test`). Run from the repository, with wrk installed:

    nice .venv/bin/python tests/bench/bench_payload_log.py [--duration 5] [--rounds 5]

LogisticRegression on iris (the cheapest model, so the logging's cost shows most), one
`kustos serve` worker pinned to CPU 0; wrk (1 thread, single-row V2 requests) and the sink
(a minimal asyncio HTTP server answering 200, in its own process) pinned to CPU 1 at
niceness 19 (`--sink-nice`): it runs when wrk leaves that core idle, as a log collector
on another machine would not take the load generator's CPU. Modes: "without", "with"
(every prediction logged: two CloudEvents each), "sampled" (--payload-log-sample 0.1) and,
when hack/kafka.sh has fetched the broker's jars and java is installed, "kafka" (every
prediction logged to a one-node KRaft broker, tests/integration/kafka_broker.py, pinned to
CPU 1 at niceness 19 like the sink; a fresh topic per run), "relay" and "kafkarelay" (the
same sinks through `kustos payload-relay`, the pod's payload-log container, on CPU 1 at the
sink's niceness, fed by `kustos serve --payload-log-relay`), in rotating order, `--rounds`
times. Target: "with" within 5% of "without" requests/s. Each run also reports the
server's CPU per request (all of it; and that of its main thread, the one serving
predictions, and of its other threads: the sender), the sink's CPU and the events serve
counted as sent / dropped (queue full) / failed; at the end, the sender thread's own CPU
per logged prediction, measured apart on a thread of its own as in the server (HTTP, and
Kafka when there is a broker), and the serving process's side of the relay, apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODES = {"without": [], "with": ["--payload-log-sample", "1"],
         "sampled": ["--payload-log-sample", "0.1"]}


def run_sink(port: int) -> None:
    """A CloudEvents sink that reads each POST and answers 200 (no parsing beyond framing)."""
    from bench_sink import serve_canned

    serve_canned(port, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of the main thread (the event loop serving predictions) and of all
    other threads (the payload log's sender among them) of a live process."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            if task.name == str(pid):
                main += used
            else:
                other += used
    return main, other


def main_switches(pid: int) -> int:
    """Context switches of a live process's main thread so far (voluntary: it waited, for
    the GIL among others; involuntary: preempted): each GIL hand-over to the sender and
    back is one or two."""
    total = 0
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if "ctxt_switches:" in line:
            total += int(line.split(":")[1])
    return total


def sender_cpu(config: Any, predictions: int = 256 * 40) -> float:
    """Microseconds of the sender thread's CPU per logged prediction (two events) against
    the sink: the logging's own work, apart from everything else on the machine."""
    from kustos.runtime.server.payload_log import (
        Exchange,
        HttpTransport,
        KafkaTransport,
        PayloadSink,
    )

    transport = (HttpTransport(config.urls[0], config) if config.urls else
                 KafkaTransport(config.kafka, config.kafka_topic, config))
    sink = PayloadSink(transport, "bench", config)
    sink.close()  # its thread is not needed: deliver() is called here
    request = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                      "data": [5.8, 2.7, 5.1, 1.9]}]}).encode()
    response = json.dumps({"model_name": "iris", "model_version": "1",
                           "id": uuid.uuid4().hex, "outputs": [
                               {"name": "predict", "datatype": "INT64", "shape": [1],
                                "data": [2]}]}).encode()
    batch: list[Exchange] = [(uuid.uuid4().hex, "v2", request, None, response, None, time.time())
             for _ in range(256)]
    sink.deliver(batch)  # connect
    spent: list[float] = []

    def deliver() -> None:
        # On a thread of its own, as in the server: its malloc arena, its page faults.
        started = time.thread_time()
        for _ in range(predictions // len(batch)):
            sink.deliver(batch)
        spent.append(time.thread_time() - started)

    thread = threading.Thread(target=deliver)
    thread.start()
    thread.join()
    return spent[0] / predictions * 1e6


def _drain(path: str) -> None:
    """The relay's reading end, nothing more (on CPU 1): what the server pays is apart."""
    import socket

    os.sched_setaffinity(0, {1})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(4)
        conn, _ = listener.accept()
        buf = bytearray(1 << 20)
        while conn.recv_into(buf):
            pass


def relay_handoff_cpu(work: Path, seconds: float = 4.0, per_ms: int = 17) -> tuple[float, float]:
    """CPU per prediction of the serving process's side of --payload-log-relay (sample
    draw, tuple, the event loop's framing and send every 50 ms), measured apart: a uvloop
    loop on CPU 0 offering ``per_ms`` predictions a millisecond (a busy worker's rate)
    to a reader on CPU 1, against the same loop without offers. (us with, us without)."""
    import asyncio
    import multiprocessing

    import uvloop

    from kustos.runtime.server.payload_relay import RelayLogger

    request = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                      "data": [5.8, 2.7, 5.1, 1.9]}]}).encode()
    response = json.dumps({"model_name": "iris", "model_version": "1", "id": uuid.uuid4().hex,
                           "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1],
                                        "data": [2]}]}).encode()
    ids = [uuid.uuid4().hex for _ in range(per_ms)]

    async def run(offer: bool) -> float:
        path = str(work / f"handoff-{offer}.sock")
        reader = multiprocessing.get_context("fork").Process(target=_drain, args=(path,))
        reader.start()
        while not os.path.exists(path):
            await asyncio.sleep(0.01)
        logger = RelayLogger(path, "bench")
        n, started, cpu = 0, time.monotonic(), time.process_time()
        while time.monotonic() - started < seconds:
            if offer:
                for rid in ids:
                    logger.offer(rid, "v2", request, None, response, None)
            n += per_ms
            await asyncio.sleep(0.001)
        used = (time.process_time() - cpu) / n * 1e6
        logger.close()
        reader.kill()
        reader.join()
        os.unlink(path)
        return used

    os.sched_setaffinity(0, {0})
    try:
        runs: dict[bool, list[float]] = {True: [], False: []}
        for offer in (False, True, False, True, False, True):
            runs[offer].append(uvloop.run(run(offer)))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return statistics.median(runs[True]), statistics.median(runs[False])


@contextlib.contextmanager
def kafka(work: Path, nice: int) -> Iterator[Any]:
    """A real one-node Kafka broker pinned to CPU 1 at ``nice``, or None when its jars or
    java are missing (the reason printed)."""
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    with contextlib.ExitStack() as stack:
        try:  # only the start may fail quietly; an error of the run itself goes up
            from kafka_broker import kafka_broker

            broker = stack.enter_context(kafka_broker(work / "kafka"))
            assert broker.proc is not None
            pid = broker.proc.pid
            subprocess.run(["taskset", "-a", "-p", "-c", "1", str(pid)], check=True,
                           capture_output=True)
            for task in Path(f"/proc/{pid}/task").iterdir():  # niceness is per thread
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
        except BaseException as exc:  # pytest's skip outside pytest, a failed start
            if isinstance(exc, KeyboardInterrupt):
                raise
            print(f"kafka mode left out: {type(exc).__name__}: {str(exc)[:300]}",
                  file=sys.stderr)
            broker = None
        yield broker


def counted(*ports: int) -> dict[str, float]:
    """The payload log's outcomes, summed over the server and its relay."""
    text = ""
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
            text += resp.read().decode()
    out = {"sent": 0.0, "dropped": 0.0, "failed": 0.0}
    for line in text.splitlines():
        if line.startswith("kustos_payload_log_events_total{"):
            for k in out:
                if f'outcome="{k}"' in line:
                    out[k] += float(line.rsplit(" ", 1)[1])
    return out


def switches(rs: list[dict[str, Any]]) -> str:
    """The median of the runs' main thread switches per 1000 requests ("-" for a run
    saved before they were counted)."""
    counts = [r["main_switches_per_1k"] for r in rs if "main_switches_per_1k" in r]
    return f"{statistics.median(counts):.1f}" if counts else "-"


def report(results: list[dict[str, Any]]) -> None:
    """The table of a run's results (the JSON list the run prints last)."""
    modes = list(dict.fromkeys(r["mode"] for r in results))
    best_without = max(r["rps"] for r in results if r["mode"] == "without")
    without = {r["round"]: r["rps"] for r in results if r["mode"] == "without"}
    # On a shared machine other load comes and goes: the ratio to the "without" run of
    # the same round (minutes apart at most) is steadier than ratios of medians, and the
    # best run of each mode shows it least disturbed (other load only ever lowers a run).
    # Server CPU per request moves least with other load: the cost without the noise of
    # how much of the core the server got.
    cpu_without = statistics.median(r["cpu_us_per_request"] for r in results
                                    if r["mode"] == "without")
    cpu_round = {r["round"]: r["cpu_us_per_request"] for r in results
                 if r["mode"] == "without"}
    # Server-bound requests/s follow 1 / CPU per request: the same-round ratio of CPU per
    # request says what the logging costs a saturated server, whether or not the load
    # generator (sharing its core with the sink) kept this one saturated.
    print("| mode | requests/s median (min-max) | per-round ratio median (min-max) | best / "
          "best without | server CPU us/request median (min-max) | vs without | per-round "
          "CPU ratio median (min-max) | main thread us/request | other threads us/request | "
          "main thread switches / 1k requests | relay container us/request | p50 ms | p99 ms | "
          "events sent | dropped | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        rs = [r for r in results if r["mode"] == mode]
        if not rs:
            continue
        rates = [r["rps"] for r in rs]
        ratios = [r["rps"] / without[r["round"]] for r in rs]
        cpus = [r["cpu_us_per_request"] for r in rs]
        cpu = statistics.median(cpus)
        cpu_ratios = [r["cpu_us_per_request"] / cpu_round[r["round"]] for r in rs]
        print(f"| {mode} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | "
              f"{max(rates) / best_without:.3f} | {cpu:.1f} ({min(cpus):.1f}-{max(cpus):.1f}) | "
              f"{cpu / cpu_without:.3f} | {statistics.median(cpu_ratios):.3f} "
              f"({min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}) | "
              f"{statistics.median(r['main_us_per_request'] for r in rs):.1f} | "
              f"{statistics.median(r['other_us_per_request'] for r in rs):.1f} | "
              f"{switches(rs)} | "
              f"{statistics.median(r.get('relay_us_per_request', 0.0) for r in rs):.1f} | "
              f"{statistics.median(r['p50_ms'] for r in rs):.2f} | "
              f"{statistics.median(r['p99_ms'] for r in rs):.2f} | "
              f"{sum(r['sent'] for r in rs):,.0f} | {sum(r['dropped'] for r in rs):,.0f} | "
              f"{sum(r['failed'] for r in rs):,.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (5)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    p.add_argument("--rounds", type=int, default=5, help="runs per mode (5)")
    p.add_argument("--concurrency", type=int, default=8, help="wrk connections (8)")
    p.add_argument("--sink-nice", type=int, default=19,
                   help="niceness of the sink on wrk's CPU (19: it runs when wrk leaves the "
                        "core idle, as a collector elsewhere would not take wrk's CPU; 0: "
                        "they share it)")
    p.add_argument("--pace-ms", type=float, default=None, metavar="MS",
                   help="each wrk connection waits MS between requests: the same offered "
                        "load in every mode, below saturation, so CPU per request is "
                        "compared at equal load (without it wrk goes flat out, and whatever "
                        "else runs on its core changes how hard it drives the server)")
    p.add_argument("--no-kafka", action="store_true", help="leave the Kafka mode out")
    p.add_argument("--before", type=Path, default=None, metavar="DIR",
                   help="also run the logging modes with the kustos package of DIR (e.g. "
                        "`git archive REV operator | tar -x -C DIR`, DIR/operator), as "
                        "'<mode>-before': an earlier version side by side")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR",
                   help="like --before, as '<mode>-LABEL' (repeatable): e.g. the tree with "
                        "one change undone, side by side with the current code and --before")
    p.add_argument("--report", type=Path, default=None, metavar="FILE",
                   help="print the table of a saved run (its output's last line) and exit")
    p.add_argument("--sink", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report is not None:
        report(json.loads(args.report.read_text().strip().splitlines()[-1]))
        return 0
    if args.sink is not None:
        run_sink(args.sink)
        return 0

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO / "operator"))
    from bench_serving import LUA, Server, free_port, loadavg, parse_wrk, pinned, run_wrk
    from bench_sink import wait_for_sink
    from train_model import save, train

    from kustos.runtime.server.payload_log_config import PayloadLogConfig

    results: list[dict[str, Any]] = []
    sender_us: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-payload-log-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        broker: Any = None if args.no_kafka else stack.enter_context(kafka(work, args.sink_nice))
        modes = {**MODES, "relay": [],
                 **({"kafka": [], "kafkarelay": []} if broker is not None else {})}
        trees = {label: Path(d) for label, _, d in (v.partition("=") for v in args.variant)}
        if args.before is not None:
            trees = {"before": args.before, **trees}
        for label in trees:
            modes.update({f"{m}-{label}": [] for m in ("with", "kafka") if m in modes})
        model, X = train("logreg")  # LogisticRegression on iris
        save(model, str(work / "model.skops"))
        row = X[len(X) // 2].tolist()
        script = work / "request.lua"
        body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(row)],
                                       "datatype": "FP64", "data": row}]})
        script.write_text(LUA.format(body=json.dumps(body)) + (
            f"function delay()\n  return {args.pace_ms:g}\nend\n"
            if args.pace_ms is not None else ""))
        kustos = str(REPO / ".venv" / "bin" / "kustos")
        sink_port = free_port()
        sink_argv = pinned("1", [sys.executable, __file__, "--sink", str(sink_port)])
        sink = Server("sink", ["nice", "-n", str(args.sink_nice), *sink_argv],
                      {}, sink_port, "/", work / "sink.log", work)
        try:
            wait_for_sink(sink_port)
            order = list(modes)
            for rnd in range(args.rounds):
                for mode in order[rnd % len(order):] + order[:rnd % len(order)]:
                    port = free_port()
                    argv = [kustos, "serve", "--model", str(work / "model.skops"), "--name",
                            "iris", "--port", str(port), "--log-level", "warning"]
                    topic = f"bench-{rnd}-{mode}"
                    base, _, label = mode.partition("-")
                    env = ({"PYTHONPATH": str(trees[label].resolve() / "operator")}
                           if label else {})
                    if base == "kafka":
                        broker.create_topic(topic, 3)
                        argv += ["--payload-log-kafka", broker.bootstrap,
                                 "--payload-log-topic", topic]
                    elif MODES.get(base):
                        argv += ["--payload-log-url", f"http://127.0.0.1:{sink_port}/events",
                                 *MODES[base]]
                    relay: Any = None
                    if base in ("relay", "kafkarelay"):
                        # The pod's payload-log container: its own CPU (here wrk's, at the
                        # sink's niceness), the sinks as above.
                        sock = work / f"relay-{rnd}.sock"
                        relay_port = free_port()
                        sinks = (["--payload-log-kafka", broker.bootstrap,
                                  "--payload-log-topic", topic] if base == "kafkarelay"
                                 else ["--payload-log-url",
                                       f"http://127.0.0.1:{sink_port}/events"])
                        if base == "kafkarelay":
                            broker.create_topic(topic, 3)
                        relay = Server(
                            f"relay-{mode}", ["nice", "-n", str(args.sink_nice), *pinned(
                                "1", [kustos, "payload-relay", "--socket", str(sock),
                                      "--host", "127.0.0.1", "--port", str(relay_port),
                                      "--name", "iris", "--log-level", "warning", *sinks])],
                            env, relay_port, "/v2/health/live", work / f"relay-{mode}.log",
                            work)
                        relay.wait_ready()
                        argv += ["--payload-log-relay", str(sock)]
                    server = Server(f"serve-{mode}", pinned("0", argv), env, port,
                                    "/v2/health/ready", work / f"serve-{mode}.log", work)
                    ports = [port] + ([relay.port] if relay is not None else [])
                    try:
                        server.wait_ready()
                        url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
                        run_wrk(url, script, args.concurrency, args.warmup, "1")
                        before = counted(*ports)
                        relay_cpu = cpu_seconds(relay.proc.pid) if relay is not None else 0.0
                        cpu = cpu_seconds(server.proc.pid)
                        threads = thread_seconds(server.proc.pid)
                        switched = main_switches(server.proc.pid)
                        sink_cpu = cpu_seconds((broker.proc if "kafka" in base else sink.proc)
                                               .pid)
                        rps, p50, p99, n = parse_wrk(
                            run_wrk(url, script, args.concurrency, args.duration, "1"))
                        time.sleep(1.0)  # let the sender drain before counting
                        # The server's CPU per request, the sender's included: what the
                        # logging costs, whatever else loads the machine.
                        cpu = cpu_seconds(server.proc.pid) - cpu
                        main_cpu, other_cpu = (b - a for a, b in zip(
                            threads, thread_seconds(server.proc.pid), strict=True))
                        switched = main_switches(server.proc.pid) - switched
                        sink_cpu = cpu_seconds((broker.proc if "kafka" in base else sink.proc)
                                               .pid) - sink_cpu
                        if relay is not None:
                            relay_cpu = cpu_seconds(relay.proc.pid) - relay_cpu
                        after = counted(*ports)
                        results.append({"round": rnd + 1, "mode": mode, "rps": rps,
                                        "p50_ms": p50, "p99_ms": p99, "requests": n,
                                        "cpu_us_per_request": cpu / n * 1e6,
                                        "main_us_per_request": main_cpu / n * 1e6,
                                        "other_us_per_request": other_cpu / n * 1e6,
                                        "main_switches_per_1k": switched / n * 1e3,
                                        "relay_us_per_request": relay_cpu / n * 1e6,
                                        "sink_cpu_s": sink_cpu, "load": loadavg(),
                                        **{k: after[k] - before[k] for k in after}})
                        print(json.dumps(results[-1]), file=sys.stderr)
                    finally:
                        server.stop()
                        if relay is not None:
                            relay.stop()
                        if "kafka" in base:
                            broker.java("org.apache.kafka.tools.TopicCommand",
                                        "--bootstrap-server", broker.bootstrap, "--delete",
                                        "--topic", topic)
            common: dict[str, Any] = {"source": "/kustos/ns/iris/predictor", "service": "iris",
                      "namespace": "ns", "model_version": "1"}
            sender_us["http"] = sender_cpu(PayloadLogConfig(
                urls=(f"http://127.0.0.1:{sink_port}/events",), **common))
            handoff = relay_handoff_cpu(work)
            if broker is not None:
                broker.create_topic("bench-sender", 3)
                sender_us["kafka"] = sender_cpu(PayloadLogConfig(
                    urls=(), kafka=broker.bootstrap, kafka_topic="bench-sender", **common))
        finally:
            sink.stop()
    print(f"load average at the end: {loadavg()}")
    for kind, us in sender_us.items():
        print(f"sender thread CPU per logged prediction (two events), {kind}: {us:.2f} us")
    print(f"--payload-log-relay, the serving process's side apart: {handoff[0]:.2f} us per "
          f"prediction against {handoff[1]:.2f} without offers: "
          f"{handoff[0] - handoff[1]:.2f} us per logged prediction")
    report(results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
