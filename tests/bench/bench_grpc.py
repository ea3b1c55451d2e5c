"""gRPC benchmark: `kustos serve --grpc-port` vs MLServer's gRPC, same model, one run.

Not a test (not part of `make test`); its figures depend on the machine. Run it under nice:

    nice .venv/bin/python tests/bench/bench_grpc.py [--seconds 15] [--model logreg]

One model (LogisticRegression on iris, or --model forest: 100 trees on breast_cancer),
trained here and now, saved as .skops for kustos and .joblib for MLServer. One serving
process each, one after the other:

  kustos    `kustos serve --workers 1 --grpc-port P` (micro-batching on, its default)
  mlserver  MLServer 1.7 + mlserver-sklearn in its venv (tests/runtimes/venvs.py), set up
            exactly as kustos.render.runtimes renders it (parallel_workers 0)

Before the load, tritonclient.grpc checks that each server answers the expected class.
Then a client process (this file with --client) drives ``inference.GRPCInferenceService/
ModelInfer`` with one single-row request (FP64 in raw_input_contents, as tritonclient
sends it) over 64 concurrent streams on one HTTP/2 connection: a warm-up, then a fixed
duration. The server is pinned to CPU 0 and the client to CPU 1 (when there are two).
Any failed call fails the run. Target: kustos at least 3x MLServer's requests/s, with a
lower p99.

The client is Python (grpc.aio with the request serialised once, bytes in and out), so
at high rates it is the client's CPU that bounds kustos: the ratio printed is then a
lower bound. The client's CPU use is printed to show that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

METHOD = "/inference.GRPCInferenceService/ModelInfer"
TARGET_RPS_RATIO = 3.0


# --- the client process -------------------------------------------------------------------


def request_bytes(model: str, row: list[float]) -> bytes:
    import numpy as np

    from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64",
                                                   shape=[1, len(row)])
    req = pb.ModelInferRequest(model_name=model, inputs=[tensor],
                               raw_input_contents=[np.asarray(row, "<f8").tobytes()])
    return bytes(req.SerializeToString())


async def drive(target: str, payload: bytes, concurrency: int, warmup: float,
                seconds: float) -> dict[str, Any]:
    import grpc

    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)  # no (de)serialisers: bytes in, bytes out
        await call(payload, timeout=10)
        now = time.perf_counter()
        measure_from, stop_at = now + warmup, now + warmup + seconds

        async def stream() -> None:
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                try:
                    await call(payload, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                if started >= measure_from:
                    latencies.append(time.perf_counter() - started)

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(stream() for _ in range(concurrency)))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    n = len(latencies)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"requests": n, "rps": n / seconds, "errors": errors,
            "p50_ms": latencies[n // 2] * 1e3 if n else None,
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else None,
            "client_cpu": cpu / (warmup + seconds)}


def client_main(args: argparse.Namespace) -> int:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    payload = request_bytes(args.model_name, json.loads(args.row))
    result = asyncio.run(drive(args.target, payload, args.concurrency, args.warmup,
                               args.seconds))
    print(json.dumps(result))
    return 0


# --- the servers --------------------------------------------------------------------------


def check_answer(target: str, model: str, row: list[float], expected: Any) -> None:
    import numpy as np
    import tritonclient.grpc as tg

    with tg.InferenceServerClient(target) as client:
        x = np.asarray([row], dtype=np.float64)
        tensor = tg.InferInput("input-0", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
        got = result.as_numpy(result.get_response().outputs[0].name).reshape(-1).tolist()
    if got != [expected]:
        raise RuntimeError(f"{target} answered {got}, expected [{expected}]")


def wait_grpc_ready(target: str, model: str, server: Any, timeout: float = 120) -> None:
    import tritonclient.grpc as tg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.tail()}")
        with contextlib.suppress(Exception), tg.InferenceServerClient(target) as c:
            if c.is_model_ready(model):
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} gRPC not ready in {timeout}s:\n{server.tail()}")


def run_client(target: str, model: str, row: list[float], args: argparse.Namespace,
               cpu: str | None) -> dict[str, Any]:
    from bench_serving import pinned

    argv = pinned(cpu, [sys.executable, str(Path(__file__).resolve()), "--client",
                        "--target", target, "--model-name", model, "--row", json.dumps(row),
                        "--concurrency", str(args.concurrency), "--warmup", str(args.warmup),
                        "--seconds", str(args.seconds)])
    out = subprocess.run(argv, capture_output=True, text=True,
                         timeout=args.warmup + args.seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"client failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _server_class() -> Any:
    from bench_serving import Server

    class SameSession(Server):  # type: ignore[misc]
        """bench_serving's Server in a process group of its own but in this session.

        With the kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled)
        a new session is a new CPU-share group: on a machine shared with other work the
        servers' CPU share then depends on how many sessions compete, not on this run.
        Both servers are started this same way.
        """

        def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int,
                     ready_path: str, log: Path, cwd: Path) -> None:
            self.name, self.port, self.log = name, port, log
            self.ready_url = f"http://127.0.0.1:{port}{ready_path}"
            self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._out,
                                         stderr=subprocess.STDOUT, process_group=0)

    return SameSession


def start(kind: str, model: str, work: Path, cpu: str | None) -> tuple[Any, str]:
    from bench_serving import mlserver_command, pinned

    from ports import free_port

    Server = _server_class()
    scratch = work / "scratch" / kind
    scratch.mkdir(parents=True, exist_ok=True)
    model_dir = work / model
    if kind == "kustos":
        port, grpc_port = free_port(), free_port()
        digest = json.loads((model_dir / "expected.json").read_text())["digest"]
        argv = [str(Path(sys.executable).parent / "kustos"), "serve",
                "--model", str(model_dir / "model.skops"), "--name", model,
                "--format", "sklearn", "--digest", digest, "--host", "127.0.0.1",
                "--port", str(port), "--grpc-port", str(grpc_port), "--workers", "1"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch),
               "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
        server = Server(kind, pinned(cpu, argv), env, port, "/v2/health/ready",
                        work / f"{kind}.log", scratch)
    else:
        from venvs import ensure_venv

        argv, env, port = mlserver_command(ensure_venv("mlserver"), model_dir, scratch, model)
        grpc_port = int(env["MLSERVER_GRPC_PORT"])
        server = Server(kind, pinned(cpu, argv), env, port, f"/v2/models/{model}/ready",
                        work / f"{kind}.log", scratch)
    return server, f"127.0.0.1:{grpc_port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds per server")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--model", choices=("logreg", "forest"), default="logreg")
    p.add_argument("--servers", default="kustos,mlserver")
    # client mode (internal)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--model-name", help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        return client_main(args)

    sys.path.insert(0, str(REPO / "tests" / "runtimes"))
    sys.path.insert(0, str(REPO / "tests"))
    from bench_serving import machine, prepare_models, running

    two = (os.cpu_count() or 1) >= 2
    server_cpu, client_cpu = ("0", "1") if two else (None, None)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kustos-bench-grpc-") as tmp:
        work = Path(tmp)
        prepare_models(work, [args.model])
        expected = json.loads((work / args.model / "expected.json").read_text())
        for kind in args.servers.split(","):
            server, target = start(kind, args.model, work, server_cpu)
            with running(server):
                server.wait_ready()
                wait_grpc_ready(target, args.model, server)
                check_answer(target, args.model, expected["row"], expected["prediction"])
                print(f"{kind}: {target} ready and answering; {args.concurrency} streams, "
                      f"{args.warmup:g} s warm-up + {args.seconds:g} s", flush=True)
                res = run_client(target, args.model, expected["row"], args, client_cpu)
                res["rss_mib"] = round(server.rss_mib(), 1)
                results[kind] = res
                print(f"  {json.dumps(res)}", flush=True)
    info = machine()
    print(f"\nmachine: {info['nproc']} CPUs ({info['cpu']}), python {info['python']}; "
          f"model {args.model}; {args.concurrency} concurrent streams on one connection; "
          f"server on CPU {server_cpu}, client on CPU {client_cpu}\n")
    print("| server | req/s | p50 ms | p99 ms | failed calls | client CPU | server RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{sum(r['errors'].values())} | {r['client_cpu']:.0%} | {r['rss_mib']} |")
    failed = any(r["errors"] for r in results.values())
    if {"kustos", "mlserver"} <= results.keys():
        k, m = results["kustos"], results["mlserver"]
        rps_ratio, p99_ratio = k["rps"] / m["rps"], k["p99_ms"] / m["p99_ms"]
        ok = rps_ratio >= TARGET_RPS_RATIO and p99_ratio < 1
        print(f"\nkustos/mlserver req/s: {rps_ratio:.2f}x (target >= {TARGET_RPS_RATIO:g}x); "
              f"kustos p99 / mlserver p99: {p99_ratio:.2f} (target < 1): "
              f"{'met' if ok else 'NOT met'}")
    if failed:
        print("FAILED: some calls failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
