"""Serving benchmark: kustos serve vs MLServer vs a bare-minimum baseline, side by side.

Not a test (not part of `make test`): it takes minutes and its figures depend on the
machine. Run it through hack/bench-serving.sh, which installs wrk when missing:

    hack/bench-serving.sh [--quick] [--output docs/benchmarks.md]

For each model (LogisticRegression on iris, a 100-tree RandomForest on breast_cancer,
both trained here and now) and each server, one at a time, with one serving process:

  kustos    `kustos serve --workers 1` on the .skops file (micro-batching on, its default)
  kustos-nobatch  the same with --no-batching: one predict per request, like the others
  mlserver  MLServer 1.7 + mlserver-sklearn in its own venv, configured exactly as
            kustos.render.runtimes renders it (parallel_workers 0), on the .joblib file
  baseline  tests/bench/baseline_server.py: predict behind raw asyncio + httptools

every server gets the same single-row KServe V2 request from wrk at concurrency 1, 8
and 64 (warm-up, then a fixed duration), with the server pinned to CPU 0 and wrk to
CPU 1. Any non-2xx answer or socket error fails the run. Targets: at c=64 kustos serves
at least 3x MLServer's requests/s at no more than 1/3 of its p99; at c=1 kustos' p50 is
within 1.3x of the baseline's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "runtimes"))
sys.path.insert(0, str(REPO / "tests"))

from rendered import local_command  # noqa: E402
from train_model import save, train  # noqa: E402
from venvs import build_seconds, ensure_venv  # noqa: E402

from kustos.render.runtimes import ServingSpec, runtime_container  # noqa: E402
from ports import free_port  # noqa: E402

SERVERS = ("kustos", "kustos-nobatch", "mlserver", "baseline")
MODELS = ("logreg", "forest")
MODEL_LABEL = {"logreg": "LogisticRegression (iris, 4 features)",
               "forest": "RandomForest 100 trees (breast_cancer, 30 features)"}
TARGET_RPS_RATIO = 3.0  # kustos rps / mlserver rps at c=64, at least
TARGET_P99_RATIO = 1 / 3  # kustos p99 / mlserver p99 at c=64, at most
TARGET_P50_BASELINE = 1.3  # kustos p50 / baseline p50 at c=1, at most
START_TIMEOUT = 120.0


class BenchError(RuntimeError):
    """The benchmark itself is invalid: a server failed, answered wrongly or errored."""


@dataclass
class Result:
    server: str
    model: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


# --- servers ----------------------------------------------------------------------------



def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def _rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
    return total / 1024


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int,
                 ready_path: str, log: Path, cwd: Path) -> None:
        self.name, self.port, self.log = name, port, log
        self.ready_url = f"http://127.0.0.1:{port}{ready_path}"
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} at start-up:"
                                 f"\n{self.tail()}")
            if _answers_200(self.ready_url):
                return time.monotonic() - started
            time.sleep(0.2)
        raise BenchError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def tail(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def rss_mib(self) -> float:
        return _rss_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()


def mlserver_command(venv: Path, model_dir: Path, scratch: Path, name: str,
                     parallel_workers: int = 0) -> tuple[list[str], dict[str, str], int]:
    """The rendered MLServer container, moved to 127.0.0.1 and free ports."""
    spec = ServingSpec(kind="mlserver", image="bench", model_name=name, model_version="1",
                       model_file="model.joblib", model_format="sklearn")
    argv, env = local_command(runtime_container(spec), venv, model_dir, scratch)
    port = free_port()
    env.update(MLSERVER_HOST="127.0.0.1", MLSERVER_HTTP_PORT=str(port),
               MLSERVER_GRPC_PORT=str(free_port()), MLSERVER_METRICS_PORT=str(free_port()),
               MLSERVER_PARALLEL_WORKERS=str(parallel_workers))
    return argv, env, port


def start_server(kind: str, model: str, work: Path, mlserver_venv: Path,
                 cpu: str | None) -> Server:
    model_dir = work / model
    scratch = work / "scratch" / f"{kind}-{model}"
    scratch.mkdir(parents=True, exist_ok=True)
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch),
                "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
    log = work / f"{kind}-{model}.log"
    if kind in ("kustos", "kustos-nobatch"):
        port = free_port()
        digest = json.loads((model_dir / "expected.json").read_text())["digest"]
        kustos = Path(sys.executable).parent / "kustos"
        argv = [str(kustos), "serve", "--model", str(model_dir / "model.skops"),
                "--name", model, "--model-version", "1", "--format", "sklearn",
                "--digest", digest, "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1"]
        if kind == "kustos-nobatch":
            argv.append("--no-batching")
        server = Server(kind, pinned(cpu, argv), base_env, port, "/v2/health/ready", log,
                        scratch)
    elif kind == "mlserver":
        argv, env, port = mlserver_command(mlserver_venv, model_dir, scratch, model)
        server = Server(kind, pinned(cpu, argv), env, port, f"/v2/models/{model}/ready", log,
                        scratch)
    elif kind == "baseline":
        port = free_port()
        argv = [sys.executable, str(HERE / "baseline_server.py"),
                str(model_dir / "model.skops"), model, str(port)]
        server = Server(kind, pinned(cpu, argv), base_env, port, "/v2/health/ready", log,
                        scratch)
    else:
        raise ValueError(kind)
    return server


def probe_mlserver_parallel_workers(venv: Path, work: Path) -> str:
    """Start MLServer with parallel_workers=1 and say what happens."""
    scratch = work / "scratch" / "mlserver-pw1"
    scratch.mkdir(parents=True, exist_ok=True)
    argv, env, port = mlserver_command(venv, work / "logreg", scratch, "logreg",
                                       parallel_workers=1)
    uvloop = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import uvloop; print(uvloop.__version__)"],
                            capture_output=True, text=True).stdout.strip() or "absent"
    server = Server("mlserver-pw1", argv, env, port, "/v2/models/logreg/ready",
                    work / "mlserver-pw1.log", scratch)
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            log = server.tail()
            if "There is no current event loop" in log:
                return (f"MLServer 1.7 with parallel_workers=1 fails at start-up here: its "
                        f"inference worker dies with \"RuntimeError: There is no current "
                        f"event loop in thread 'MainThread'\" (uvloop {uvloop}), so the model "
                        f"never loads. The benchmark uses parallel_workers=0, as Kustos "
                        f"renders it.")
            if server.proc.poll() is not None:
                return f"MLServer with parallel_workers=1 exited ({server.proc.returncode})."
            if _answers_200(server.ready_url):
                return (f"MLServer with parallel_workers=1 started and loaded the "
                        f"model here (uvloop {uvloop}).")
            time.sleep(0.5)
        return "MLServer with parallel_workers=1 neither failed nor became ready in 45s."
    finally:
        server.stop()


# --- load -------------------------------------------------------------------------------


def v2_request(row: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64",
                        "data": row}]}


def check_answer(server: Server, model: str, row: list[float], expected: Any) -> None:
    body = json.dumps(v2_request(row)).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/v2/models/{model}/infer",
                                 data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise BenchError(f"{server.name}: infer answered {err.code}: {err.read()[:500]!r}"
                         ) from err
    got = answer["outputs"][0]["data"]
    if got != [expected]:
        raise BenchError(f"{server.name}: predicted {got}, the model says {[expected]}")


LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise BenchError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, requests); raises on any error wrk reports."""
    errors = []
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m and int(m.group(1)):
        errors.append(f"{m.group(1)} non-2xx responses")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m and any(int(x) for x in m.groups()):
        errors.append(m.group(0))
    if errors:
        raise BenchError("; ".join(errors))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and total):
        raise BenchError(f"cannot parse wrk output:\n{out}")
    if int(total.group(1)) == 0:
        raise BenchError("no request completed")
    return float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1))


def run_wrk(url: str, script: Path, concurrency: int, seconds: float,
            cpu: str | None) -> str:
    threads = 1 if cpu is not None else min(concurrency, 2)
    argv = pinned(cpu, ["wrk", "-t", str(threads), "-c", str(concurrency),
                        "-d", f"{seconds:g}s", "--timeout", "30s", "--latency",
                        "-s", str(script), url])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise BenchError(f"wrk failed ({out.returncode}): {out.stderr}")
    return out.stdout


# --- report -----------------------------------------------------------------------------


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": mem,
            "kernel": platform.release(), "python": platform.python_version()}


def versions(mlserver_venv: Path) -> dict[str, str]:
    import importlib.metadata as md

    out = {p: md.version(p) for p in ("kustos", "scikit-learn", "numpy", "skops")}
    # Which kustos serve was measured: the commit, and whether the server's code differed.
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if head:
        dirty = subprocess.run([*git, "status", "--porcelain", "operator/kustos"],
                               capture_output=True, text=True).stdout.strip()
        out["kustos commit"] = head + (" (with uncommitted changes)" if dirty else "")
    script = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p "
              "in ('mlserver', 'mlserver-sklearn', 'scikit-learn', 'uvloop', 'uvicorn')}))")
    theirs = json.loads(subprocess.run([str(mlserver_venv / "bin" / "python"), "-c", script],
                                       check=True, capture_output=True, text=True).stdout)
    out.update({f"{k} (MLServer venv)": v for k, v in theirs.items()})
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    out["wrk"] = (wrk.stdout + wrk.stderr).split("[")[0].strip()
    return out


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None else format(x, spec)


def tables(results: list[Result], concurrencies: list[int]) -> tuple[str, str, list[str]]:
    """Markdown figures table, ratio table and the target verdicts."""
    by = {(r.server, r.model, r.concurrency): r for r in results}
    lines = ["| model | c | server | req/s | p50 ms | p99 ms | requests |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.model} | {r.concurrency} | {r.server} | {r.rps:,.0f} | "
                     f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.requests:,} |")
    ratio = ["| model | c | kustos/mlserver req/s | kustos p99 / mlserver p99 | "
             "kustos p50 / baseline p50 | kustos/baseline req/s | "
             "kustos --no-batching / mlserver req/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    verdicts: list[str] = []
    models = list(dict.fromkeys(r.model for r in results))
    for model in models:
        for c in concurrencies:
            k, nb, m, b = (by.get((s, model, c)) for s in SERVERS)
            rps_ratio = k.rps / m.rps if k and m else None
            p99_ratio = k.p99_ms / m.p99_ms if k and m else None
            p50_base = k.p50_ms / b.p50_ms if k and b else None
            rps_base = k.rps / b.rps if k and b else None
            nb_ratio = nb.rps / m.rps if nb and m else None
            ratio.append(f"| {model} | {c} | {_fmt(rps_ratio)} | {_fmt(p99_ratio)} | "
                         f"{_fmt(p50_base)} | {_fmt(rps_base)} | {_fmt(nb_ratio)} |")
            if c == max(concurrencies) and rps_ratio is not None and p99_ratio is not None:
                ok = rps_ratio >= TARGET_RPS_RATIO
                verdicts.append(f"{'PASS' if ok else 'MISS'}: {model} c={c} kustos req/s = "
                                f"{rps_ratio:.2f}x MLServer (target >= {TARGET_RPS_RATIO:g}x)")
                ok = p99_ratio <= TARGET_P99_RATIO
                verdicts.append(f"{'PASS' if ok else 'MISS'}: {model} c={c} kustos p99 = "
                                f"{p99_ratio:.3g}x MLServer's (target <= 1/3)")
            if c == min(concurrencies) and p50_base is not None:
                ok = p50_base <= TARGET_P50_BASELINE
                verdicts.append(f"{'PASS' if ok else 'MISS'}: {model} c={c} kustos p50 = "
                                f"{p50_base:.2f}x baseline (target <= "
                                f"{TARGET_P50_BASELINE:g}x)")
    return "\n".join(lines), "\n".join(ratio), verdicts


def markdown(args: argparse.Namespace, info: dict[str, Any], results: list[Result],
             concurrencies: list[int]) -> str:
    figures, ratios, verdicts = tables(results, concurrencies)
    mach, vers = info["machine"], info["versions"]
    pinning = ("No CPU pinning (--no-pin)" if args.no_pin else
               f"The server runs pinned to CPU {args.server_cpu}, wrk (1 thread) to CPU "
               f"{args.client_cpu}")
    start = "\n".join(f"| {s} | {m} | {t:.1f} | {rss:.0f} |"
                      for (s, m), (t, rss) in info["startup"].items())
    return f"""# Serving benchmarks

Measured by `tests/bench/bench_serving.py` on {info['date']}, with:

```
{info['command']}
```

Not part of `make test`. Figures hold for this machine only; compare servers side by
side on one machine, never against numbers measured elsewhere.

## Machine

| | |
|---|---|
| CPUs (nproc) | {mach['nproc']} |
| CPU model | {mach['cpu']} |
| memory | {mach['memory']} |
| kernel | {mach['kernel']} |
| Python | {mach['python']} |
| load average (1, 5, 15 min) at start / end | {info['load_start']} / {info['load_end']} |

Versions: {', '.join(f'{k} {v}' for k, v in vers.items())}.

## Method

- Models trained at run time: {'; '.join(f'`{k}` = {v}' for k, v in MODEL_LABEL.items())}.
  One fitted estimator per model is saved twice: `.skops` for kustos serve and the
  baseline, `.joblib` for MLServer (mlserver-sklearn loads joblib only).
- One serving process each. kustos serve: `--workers 1`, its defaults otherwise
  (micro-batching on: concurrent requests are merged into one predict call);
  `kustos-nobatch` is the same with `--no-batching`, row-at-a-time like the others.
  MLServer: the environment `kustos.render.runtimes` renders for kind `mlserver`,
  moved to 127.0.0.1 and free ports, `parallel_workers: 0`.
  Baseline: `tests/bench/baseline_server.py`, predict behind raw asyncio + httptools.
- {pinning}.
- Each server's answer is checked against the model's own prediction first. Then per
  concurrency: {args.warmup:g} s warm-up, then {args.duration:g} s measured, the same
  single-row KServe V2 request (`POST /v2/models/NAME/infer`, shape [1, n], FP64).
  Any non-2xx answer or socket error fails the run; wrk's timeout is 30 s, so a
  request that waits longer than that counts as an error too, and slow ones count in
  the percentiles.
- {info['mlserver_pw']}

## Results

{figures}

### Ratios

{ratios}

### Targets

{chr(10).join(f'- {v}' for v in verdicts)}

### Start-up and memory

| server | model | seconds to ready | RSS MiB after the run |
|---|---|---:|---:|
{start}

## Reading these figures

- At c=8 and c=64 kustos serve merges concurrent single-row requests into one `predict`
  call (micro-batching, on by default); MLServer's adaptive batching is off by default
  and the baseline has none. `kustos-nobatch` shows kustos serve without it, one
  `predict` per request like the others: compare it with the baseline to see the
  server's own overhead, and with MLServer for a like-for-like server comparison.
- The baseline and MLServer (parallel_workers 0) run `predict` on their event loop, so
  under load their p99 is set by how unevenly they serve connections, not by the model.
- MLServer writes a uvicorn access-log line per request by default; it is left on, as
  rendered.
- The machine may be shared with other work (see the load average): differences of a
  few percent between runs are noise.
"""


# --- main -------------------------------------------------------------------------------


def prepare_models(work: Path, models: list[str]) -> None:
    """Fit each model once; save it as .skops and .joblib with a few expected answers."""
    import hashlib

    for kind in models:
        model, X = train(kind)
        out = work / kind
        out.mkdir(parents=True)
        save(model, str(out / "model.skops"))
        save(model, str(out / "model.joblib"))
        digest = "sha256:" + hashlib.sha256((out / "model.skops").read_bytes()).hexdigest()
        row = X[len(X) // 2].tolist()
        (out / "expected.json").write_text(json.dumps(
            {"digest": digest, "row": row, "prediction": model.predict([row]).tolist()[0]}))


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (2 s per point)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds (3)")
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated (1,8,64)")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {MODELS}")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"subset of {SERVERS}")
    p.add_argument("--output", type=Path, help="also write the figures as markdown here")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and wrk to CPUs")
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--client-cpu", default="1")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 1.0)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    models = [m for m in args.models.split(",") if m]
    servers = [s for s in args.servers.split(",") if s]
    if unknown := (set(models) - set(MODELS)) | (set(servers) - set(SERVERS)):
        p.error(f"unknown models/servers: {sorted(unknown)}")
    for tool in ("wrk", *(() if args.no_pin else ("taskset",))):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (hack/bench-serving.sh installs wrk)",
                  file=sys.stderr)
            return 2
    server_cpu = None if args.no_pin else args.server_cpu
    client_cpu = None if args.no_pin else args.client_cpu

    t0 = time.monotonic()
    mlserver_venv = ensure_venv("mlserver")
    print(f"mlserver venv: {mlserver_venv} (built in {build_seconds(mlserver_venv)}s; "
          f"ready after {time.monotonic() - t0:.1f}s this run)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="kustos-bench-"))
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        # hack/bench-serving.sh says it launched us, so the command shown is the one to run.
        "command": " ".join(shlex.quote(a) for a in
                            [os.environ.get("KUSTOS_BENCH_LAUNCHER",
                                            "tests/bench/bench_serving.py"),
                             *(argv or sys.argv[1:])]),
        "machine": machine(), "versions": versions(mlserver_venv), "startup": {},
        "load_start": loadavg(),
    }
    results: list[Result] = []
    try:
        prepare_models(work, models)
        if "mlserver" in servers:
            info["mlserver_pw"] = probe_mlserver_parallel_workers(mlserver_venv, work)
            print(info["mlserver_pw"], flush=True)
        else:
            info["mlserver_pw"] = "MLServer not run."
        for model in models:
            expected = json.loads((work / model / "expected.json").read_text())
            script = work / f"{model}.lua"
            body = json.dumps(v2_request(expected["row"]))
            script.write_text(LUA.format(body=json.dumps(body)))
            for kind in servers:
                server = start_server(kind, model, work, mlserver_venv, server_cpu)
                with running(server):
                    ready = server.wait_ready()
                    check_answer(server, model, expected["row"], expected["prediction"])
                    url = f"http://127.0.0.1:{server.port}/v2/models/{model}/infer"
                    for c in concurrencies:
                        try:
                            if args.warmup > 0:
                                parse_wrk(run_wrk(url, script, c, args.warmup, client_cpu))
                            out = run_wrk(url, script, c, args.duration, client_cpu)
                            rps, p50, p99, n = parse_wrk(out)
                        except BenchError as exc:
                            raise BenchError(f"{kind} {model} c={c}: {exc}\n{server.tail()}"
                                             ) from exc
                        results.append(Result(kind, model, c, rps, p50, p99, n))
                        print(f"{model:7s} c={c:<3d} {kind:14s} {rps:10,.0f} req/s  "
                              f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", flush=True)
                    info["startup"][(kind, model)] = (ready, server.rss_mib())
                    if server.proc.poll() is not None:
                        raise BenchError(f"{kind} died during the run:\n{server.tail()}")
    except BenchError as exc:
        print(f"\nBENCHMARK FAILED: {exc}\n(logs in {work})", file=sys.stderr)
        return 1  # the work directory stays, with the servers' logs

    info["load_end"] = loadavg()
    figures, ratios, verdicts = tables(results, concurrencies)
    print(f"\n{figures}\n\n{ratios}\n")
    print("\n".join(verdicts))
    if args.output:
        args.output.write_text(markdown(args, info, results, concurrencies))
        print(f"\nwrote {args.output}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    missed = any(v.startswith("MISS") for v in verdicts)
    return 3 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
