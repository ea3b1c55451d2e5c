"""HTTP stack benchmark: kustos serve's own HTTP/1.1 server vs uvicorn, side by side.

Does the hand-written server (kustos/runtime/server/http.py) earn its keep against the
standard choice? Not a test (not part of `make test`); it needs wrk (installed
with hack/host-packages.sh when missing) and takes about two minutes:

    .venv/bin/python tests/bench/bench_http_stack.py [--quick] [--output FILE]

One model, trained here and now: LogisticRegression on iris (sklearn's bundled data).
The same single-row KServe V2 inference request (`POST /v2/models/logreg/infer`) goes to

  uvicorn         uvicorn (http=httptools, loop=uvloop, one worker, access log off) with
                  a raw ASGI app: orjson parse, numpy, predict, orjson answer; no
                  framework, no validation, no metrics
  uvicorn-batch   the same app on uvicorn with kustos serve's batching rule (the rows
                  of the requests parsed in one event-loop turn share one predict): is
                  batching, not the HTTP stack, what wins?
  http.py         the same minimal app, line for line, on kustos' HttpServer (uvloop):
                  the HTTP stacks compared with nothing else different
  kustos-nobatch  `kustos serve --workers 1 --no-batching`: one predict per request
  kustos          `kustos serve --workers 1`: micro-batching on (its default)

one server at a time, pinned to CPU 0, with wrk (one thread, keep-alive connections) on
CPU 1: per concurrency a warm-up, then a fixed duration. Any non-2xx answer or socket
error fails the run. Then a slowloris phase per server: SLOWLORIS connections that send a
partial header one byte at a time, while fresh connections time normal predictions
(the requirement: answered within 1 s); and how many slowloris connections the server
has cut by the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import resource
import select
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_serving as bs  # noqa: E402  # its server handling, wrk driver and report bits

SERVERS = ("uvicorn", "uvicorn-batch", "http.py", "kustos-nobatch", "kustos")
MODEL = "logreg"
SLOWLORIS = 1500
# "Clearly wins": at least this much more req/s than uvicorn at every concurrency with
# the same app code on both stacks (http.py vs uvicorn).
CLEAR_WIN = 1.25


# --- the servers --------------------------------------------------------------------------


def asgi_app(model: Any, name: str) -> Any:
    """The least an ASGI app can do for a V2 prediction: what a hand-rolled service on
    uvicorn would write, minus validation and metrics (kustos serve has both)."""
    ready = b'{"ready":true}'

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        status, payload = 200, ready
        if scope["method"] == "POST":
            status, payload = predict_v2(model, name, body)
        await answer(send, status, payload)

    return app


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def answer(send: Any, status: int, payload: bytes) -> None:
    # content-length as any framework sets it: without it uvicorn sends chunked
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def batching_asgi_app(model: Any, name: str) -> Any:
    """asgi_app with micro-batching as kustos serve does it (runtime/server/batching.py):
    a request queues its rows and schedules one flush on the next loop turn; the flush
    predicts the rows of every request parsed meanwhile in one call."""
    import asyncio

    import numpy as np
    import orjson

    pending: list[tuple[Any, asyncio.Future[Any]]] = []
    scheduled = False

    def flush() -> None:
        nonlocal scheduled
        scheduled = False
        items = pending[:]
        pending.clear()
        try:
            predictions = model.predict(np.concatenate([rows for rows, _ in items]))
        except Exception as exc:  # the bench sends no bad rows; fail them all
            for _, done in items:
                done.set_exception(exc)
            return
        start = 0
        for rows, done in items:
            done.set_result(predictions[start:start + len(rows)])
            start += len(rows)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal scheduled
        assert scope["type"] == "http"
        body = await read_body(receive)
        status, payload = 200, b'{"ready":true}'
        if scope["method"] == "POST":
            try:
                tensor = orjson.loads(body)["inputs"][0]
                rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
                loop = asyncio.get_running_loop()
                done: asyncio.Future[Any] = loop.create_future()
                pending.append((rows, done))
                if not scheduled:
                    scheduled = True
                    loop.call_soon(flush)
                predictions = await done
                payload = orjson.dumps(
                    {"model_name": name, "outputs": [{
                        "name": "predict", "shape": [len(predictions)], "datatype": "INT64",
                        "data": predictions}]},
                    option=orjson.OPT_SERIALIZE_NUMPY)
            except Exception as exc:
                status, payload = 400, orjson.dumps({"error": str(exc)})
        await answer(send, status, payload)

    return app


def predict_v2(model: Any, name: str, body: bytes) -> tuple[int, bytes]:
    """The ASGI app's work without ASGI, for HttpServer."""
    import numpy as np
    import orjson

    try:
        tensor = orjson.loads(body)["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        predictions = model.predict(rows)
        return 200, orjson.dumps(
            {"model_name": name, "outputs": [{
                "name": "predict", "shape": [len(predictions)], "datatype": "INT64",
                "data": predictions}]},
            option=orjson.OPT_SERIALIZE_NUMPY)
    except Exception as exc:
        return 400, orjson.dumps({"error": str(exc)})


def load(path: str) -> Any:
    import sklearn
    import skops.io as sio

    model = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    sklearn.set_config(assume_finite=True)  # as kustos serve does
    return model


def serve_httpserver(path: str, name: str, port: int) -> int:
    import asyncio

    from kustos.runtime import process
    from kustos.runtime.server.http import JSON, HttpServer, Reply, Request

    model = load(path)

    class RawApp:
        def handle(self, request: Request, reply: Reply) -> None:
            if request.method == b"GET":
                reply(200, b'{"ready":true}', JSON, b"")
            else:
                status, payload = predict_v2(model, name, request.body)
                reply(status, payload, JSON, b"")

    async def main() -> int:
        server = HttpServer(RawApp())
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()  # until SIGTERM
        return 0

    process.install_uvloop()
    return asyncio.run(main())


def serve_uvicorn(path: str, name: str, port: int, batching: bool = False) -> int:
    import uvicorn

    model = load(path)
    app = batching_asgi_app(model, name) if batching else asgi_app(model, name)
    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools",
                loop="uvloop", workers=1, lifespan="off", access_log=False,
                log_level="warning")
    return 0


def start_server(kind: str, work: Path, cpu: str | None) -> bs.Server:
    port = bs.free_port()
    scratch = work / "scratch" / kind
    scratch.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch),
           "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
    model = work / "model.skops"
    if kind in ("uvicorn", "uvicorn-batch", "http.py"):
        flag = {"uvicorn": "--serve-uvicorn", "uvicorn-batch": "--serve-uvicorn-batch",
                "http.py": "--serve-httpserver"}[kind]
        argv = [sys.executable, str(Path(__file__).resolve()), flag, str(model), MODEL,
                str(port)]
    else:
        digest = json.loads((work / "expected.json").read_text())["digest"]
        argv = [str(Path(sys.executable).parent / "kustos"), "serve", "--model", str(model),
                "--name", MODEL, "--format", "sklearn", "--digest", digest,
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--log-level", "warning"]
        if kind == "kustos-nobatch":
            argv.append("--no-batching")
    return bs.Server(kind, bs.pinned(cpu, argv), env, port, "/v2/health/ready",
                     work / f"{kind}.log", scratch)


# --- slowloris phase ------------------------------------------------------------------------


def _read_response(sock: socket.socket) -> int:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise bs.BenchError("connection closed before the answer")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(v) for k, v in (ln.split(":", 1) for ln in lines[1:])
                   if k.strip().lower() == "content-length"), None)
    if length is None:
        raise bs.BenchError(f"answer without content-length: {head!r}")
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise bs.BenchError("connection closed inside the answer")
        rest += chunk
    return int(lines[0].split()[1])


def slowloris(server: bs.Server, row: list[float], count: int, probes: int,
              hold: float) -> dict[str, Any]:
    """Open ``count`` slowloris connections, trickle, time ``probes`` fresh-connection
    predictions, keep trickling until ``hold`` s after the first byte; what was cut."""
    body = json.dumps(bs.v2_request(row)).encode()
    request = (b"POST /v2/models/%s/infer HTTP/1.1\r\nhost: bench\r\ncontent-type: "
               b"application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
               % (MODEL.encode(), len(body), body))
    loris: list[socket.socket] = []
    stop = threading.Event()
    rounds = [0]

    def trickle() -> None:
        while not stop.is_set():
            for s in loris:
                with contextlib.suppress(OSError):
                    s.send(b"a")
            rounds[0] += 1
            stop.wait(0.25)

    started = time.monotonic()
    trickler = threading.Thread(target=trickle, daemon=True)
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.send(b"POST /v2/models/%s/infer HTTP/1.1\r\nhost: bench\r\nx-slow: "
                   % MODEL.encode())
            loris.append(s)
        opened = time.monotonic() - started
        trickler.start()
        while rounds[0] < 2:
            time.sleep(0.05)
        latencies: list[float] = []
        for _ in range(probes):
            t0 = time.monotonic()
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
                s.sendall(request)
                status = _read_response(s)
            latencies.append(time.monotonic() - t0)
            if status != 200:
                raise bs.BenchError(f"{server.name}: a normal request got {status} under "
                                    f"slowloris")
        measured_at = time.monotonic() - started
        while time.monotonic() - started < hold:
            time.sleep(0.1)
        stop.set()
        trickler.join(5)
        # readable = answered (408) or closed by the server; poll: descriptors pass 1024
        poller = select.poll()
        for s in loris:
            poller.register(s.fileno(), select.POLLIN)
        cut = len(poller.poll(0))
    finally:
        stop.set()
        for s in loris:
            s.close()
    latencies.sort()
    return {"server": server.name, "connections": count, "opened_s": opened,
            "measured_at_s": measured_at, "p50_ms": statistics.median(latencies) * 1e3,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
            "max_ms": latencies[-1] * 1e3, "probes": probes, "hold_s": hold, "cut": cut}


# --- limits phase ---------------------------------------------------------------------------

# (probe, header bytes, URL bytes): what each server does with an oversized request
LIMIT_PROBES = [("1 MiB header", 1 << 20, 0), ("8 MiB header", 8 << 20, 0),
                ("64 KiB URL", 0, 64 << 10)]


def _status_or_close(sock: socket.socket, wait: float) -> str:
    """The status code the server answered, or how the connection ended."""
    sock.settimeout(wait)
    try:
        head = sock.recv(256)
    except TimeoutError:
        return f"no answer in {wait:g} s"
    except OSError as exc:
        return f"closed ({type(exc).__name__})"
    if not head:
        return "closed"
    return head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)[1]


def oversized(port: int, header: int, url: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        request = (b"GET /v2/health/ready?pad=" + b"u" * url + b" HTTP/1.1\r\nhost: bench\r\n"
                   + (b"x-big: " + b"h" * header + b"\r\n" if header else b"") + b"\r\n")
        # a server that refuses early may reset while the rest is still being sent
        with contextlib.suppress(OSError):
            s.sendall(request)
        return _status_or_close(s, 30)


def header_deadline(port: int, wait: float) -> str:
    """Send half a header and nothing more: when does the server give up on it?"""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost: bench\r\n")
        t0 = time.monotonic()
        end = _status_or_close(s, wait)
        if end.startswith("no answer"):
            return f"still open after {wait:g} s"
        return f"{end} after {time.monotonic() - t0:.1f} s"


def limits(server: bs.Server, wait: float) -> dict[str, str]:
    out = {name: oversized(server.port, header, url) for name, header, url in LIMIT_PROBES}
    out["half a header, then silence"] = header_deadline(server.port, wait)
    return {"server": server.name, **out}


def limits_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    cols = [k for k in rows[0] if k != "server"]
    lines = ["| server | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([r["server"], *(r[c] for c in cols)]) + " |" for r in rows]
    return "\n".join(lines)


# --- report -----------------------------------------------------------------------------------


def tables(results: list[bs.Result], lor: list[dict[str, Any]],
           concurrencies: list[int]) -> tuple[str, str, str, list[str]]:
    by = {(r.server, r.concurrency): r for r in results}
    figures = ["| c | server | req/s | p50 ms | p99 ms | requests |",
               "|---:|---|---:|---:|---:|---:|"]
    for r in results:
        figures.append(f"| {r.concurrency} | {r.server} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
                       f"{r.p99_ms:.2f} | {r.requests:,} |")
    others = [s for s in SERVERS[1:] if any(r.server == s for r in results)]
    ratios = ["| c | " + " | ".join(f"{s} / uvicorn req/s | p50 | p99" for s in others) + " |",
              "|---:|" + "---:|---:|---:|" * len(others)]
    same_app: list[float] = []
    batched: list[float] = []  # kustos (batching) / uvicorn-batch
    for c in concurrencies:
        ub, kb = by.get(("uvicorn-batch", c)), by.get(("kustos", c))
        if ub and kb:
            batched.append(kb.rps / ub.rps)
        u = by.get(("uvicorn", c))
        cells = []
        for name in others:
            o = by.get((name, c))
            if u and o:
                cells += [f"{o.rps / u.rps:.2f}", f"{o.p50_ms / u.p50_ms:.2f}",
                          f"{o.p99_ms / u.p99_ms:.2f}"]
                if name == "http.py":
                    same_app.append(o.rps / u.rps)
            else:
                cells += ["—"] * 3
        ratios.append(f"| {c} | " + " | ".join(cells) + " |")
    slow = ["| server | slowloris connections | normal request p50 ms | p99 ms | max ms | "
            "cut by the server after the hold |",
            "|---|---:|---:|---:|---:|---:|"]
    for s in lor:
        slow.append(f"| {s['server']} | {s['connections']:,} | {s['p50_ms']:.1f} | "
                    f"{s['p99_ms']:.1f} | {s['max_ms']:.1f} | {s['cut']:,} of "
                    f"{s['connections']:,} ({s['hold_s']:g} s) |")
    verdicts = []
    if same_app:
        clear = min(same_app) >= CLEAR_WIN
        verdicts.append(
            f"{'CLEAR WIN' if clear else 'NO CLEAR WIN'} for the hand-written server: the "
            f"same app on http.py serves {min(same_app):.2f}x to {max(same_app):.2f}x "
            f"uvicorn's req/s (a clear win is >= {CLEAR_WIN:g}x at every concurrency)")
    if batched:
        verdicts.append(
            f"with batching on both: kustos serve (validation, metrics, its own server) "
            f"serves {min(batched):.2f}x to {max(batched):.2f}x the req/s of the raw app "
            f"with the same batching on uvicorn")
    for s in lor:
        ok = s["max_ms"] <= 1000
        verdicts.append(f"{'PASS' if ok else 'MISS'}: {s['server']} with {s['connections']} "
                        f"slowloris connections open: slowest normal request "
                        f"{s['max_ms']:.1f} ms (target <= 1000 ms)")
    return "\n".join(figures), "\n".join(ratios), "\n".join(slow), verdicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve-uvicorn", nargs=3, metavar=("MODEL", "NAME", "PORT"),
                   help=argparse.SUPPRESS)  # the uvicorn server process itself
    p.add_argument("--serve-uvicorn-batch", nargs=3, metavar=("MODEL", "NAME", "PORT"),
                   help=argparse.SUPPRESS)  # uvicorn with the batching app
    p.add_argument("--serve-httpserver", nargs=3, metavar=("MODEL", "NAME", "PORT"),
                   help=argparse.SUPPRESS)  # the same app on kustos' HttpServer
    p.add_argument("--quick", action="store_true", help="2 s per point, fewer probes")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (1)")
    p.add_argument("--concurrency", default="1,8,64", help="connections, comma-separated")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"subset of {SERVERS}")
    p.add_argument("--slowloris", type=int, default=SLOWLORIS,
                   help=f"slowloris connections (default {SLOWLORIS}; 0 skips the phase)")
    p.add_argument("--slowloris-hold", type=float, default=12.0,
                   help="seconds the slowloris connections keep trickling (12; kustos "
                        "serve's header deadline is 10)")
    p.add_argument("--limits-wait", type=float, default=20.0,
                   help="seconds to wait on a half-sent header (20; kustos serve's header "
                        "deadline is 10 s)")
    p.add_argument("--probes", type=int, default=50, help="timed requests under slowloris")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and wrk")
    p.add_argument("--output", type=Path, help="also write the figures as markdown here")
    args = p.parse_args(argv)
    if args.serve_uvicorn:
        path, name, port = args.serve_uvicorn
        return serve_uvicorn(path, name, int(port))
    if args.serve_uvicorn_batch:
        path, name, port = args.serve_uvicorn_batch
        return serve_uvicorn(path, name, int(port), batching=True)
    if args.serve_httpserver:
        path, name, port = args.serve_httpserver
        return serve_httpserver(path, name, int(port))
    if args.quick:
        args.duration, args.warmup, args.probes = 2.0, 1.0, 20
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    servers = [s for s in args.servers.split(",") if s]
    if unknown := set(servers) - set(SERVERS):
        p.error(f"unknown servers: {sorted(unknown)}")
    if shutil.which("wrk") is None:
        # The project's own installer (apt-get, only what is missing).
        subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / "hack" /
                                    "host-packages.sh"), "wrk:wrk"], check=False)
    for tool in ("wrk", *(() if args.no_pin else ("taskset",))):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (apt-get install wrk)", file=sys.stderr)
            return 2
    server_cpu, client_cpu = (None, None) if args.no_pin else ("0", "1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.slowloris + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))

    import importlib.metadata as md

    from train_model import save, train

    work = Path(tempfile.mkdtemp(prefix="kustos-bench-http-"))
    model, X = train(MODEL)
    save(model, str(work / "model.skops"))
    row = X[len(X) // 2].tolist()
    expected = model.predict([row]).tolist()[0]
    digest = "sha256:" + hashlib.sha256((work / "model.skops").read_bytes()).hexdigest()
    (work / "expected.json").write_text(json.dumps({"digest": digest}))
    script = work / "infer.lua"
    script.write_text(bs.LUA.format(body=json.dumps(json.dumps(bs.v2_request(row)))))
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in
                            [".venv/bin/python", "tests/bench/bench_http_stack.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "machine": bs.machine(), "load_start": bs.loadavg(),
        "versions": {pkg: md.version(pkg) for pkg in
                     ("kustos", "uvicorn", "httptools", "uvloop", "scikit-learn", "orjson")},
    }
    head = subprocess.run(["git", "-C", str(bs.REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    if head:
        dirty = subprocess.run(["git", "-C", str(bs.REPO), "status", "--porcelain",
                                "operator/kustos/runtime"], capture_output=True,
                               text=True).stdout.strip()
        info["versions"]["kustos commit"] = head + (" (with uncommitted changes)" if dirty
                                                    else "")
    results: list[bs.Result] = []
    lor: list[dict[str, Any]] = []
    lim: list[dict[str, str]] = []
    try:
        for kind in servers:
            server = start_server(kind, work, server_cpu)
            with bs.running(server):
                server.wait_ready()
                bs.check_answer(server, MODEL, row, expected)
                url = f"http://127.0.0.1:{server.port}/v2/models/{MODEL}/infer"
                for c in concurrencies:
                    try:
                        if args.warmup > 0:
                            bs.parse_wrk(bs.run_wrk(url, script, c, args.warmup, client_cpu))
                        rps, p50, p99, n = bs.parse_wrk(
                            bs.run_wrk(url, script, c, args.duration, client_cpu))
                    except bs.BenchError as exc:
                        raise bs.BenchError(f"{kind} c={c}: {exc}\n{server.tail()}") from exc
                    results.append(bs.Result(kind, MODEL, c, rps, p50, p99, n))
                    print(f"c={c:<3d} {kind:14s} {rps:10,.0f} req/s  p50 {p50:7.2f} ms  "
                          f"p99 {p99:7.2f} ms", flush=True)
                if args.slowloris and kind in ("uvicorn", "kustos-nobatch"):
                    lor.append(slowloris(server, row, args.slowloris, args.probes,
                                         args.slowloris_hold))
                    s = lor[-1]
                    print(f"slowloris {kind}: {s['connections']} open, normal request p50 "
                          f"{s['p50_ms']:.1f} ms max {s['max_ms']:.1f} ms; {s['cut']} cut "
                          f"after {s['hold_s']:g} s", flush=True)
                if kind in ("uvicorn", "kustos-nobatch"):
                    lim.append(limits(server, args.limits_wait))
                    print(f"limits {kind}: {lim[-1]}", flush=True)
                if server.proc.poll() is not None:
                    raise bs.BenchError(f"{kind} died during the run:\n{server.tail()}")
    except bs.BenchError as exc:
        print(f"\nBENCHMARK FAILED: {exc}\n(logs in {work})", file=sys.stderr)
        return 1
    info["load_end"] = bs.loadavg()
    figures, ratios, slow, verdicts = tables(results, lor, concurrencies)
    limit_rows = limits_table(lim)
    print(f"\n{figures}\n\n{ratios}\n\n{slow}\n\n{limit_rows}\n")
    print("\n".join(verdicts))
    if args.output:
        args.output.write_text(markdown(args, info, figures, ratios, slow, limit_rows,
                                            verdicts))
        print(f"\nwrote {args.output}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def markdown(args: argparse.Namespace, info: dict[str, Any], figures: str, ratios: str,
             slow: str, limit_rows: str, verdicts: list[str]) -> str:
    mach = info["machine"]
    pin = "no CPU pinning" if args.no_pin else "server pinned to CPU 0, wrk (1 thread) to CPU 1"
    return f"""## HTTP stack: kustos serve vs uvicorn

Measured by `tests/bench/bench_http_stack.py` on {info['date']}:

```
{info['command']}
```

Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['memory']}, Python {mach['python']};
load average at start / end {info['load_start']} / {info['load_end']}; {pin}.
Versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}.

LogisticRegression on iris, trained at run time; the same single-row V2 request from wrk
over keep-alive connections, {args.warmup:g} s warm-up then {args.duration:g} s per point.

{figures}

{ratios}

Under slowloris ({args.probes} fresh-connection predictions, one after another, while the
slowloris connections trickle one header byte every 0.25 s; kept trickling
{args.slowloris_hold:g} s):

{slow}

Oversized and unfinished requests (the answer's status, or how the connection ended):

{limit_rows}

{chr(10).join(f'- {v}' for v in verdicts)}
"""


if __name__ == "__main__":
    sys.exit(main())
