"""What TLS costs `kustos serve`: the same model over plain HTTP and over HTTPS, one run.

Not a test: its figures depend on the machine. Run it under nice, bounded:

    nice .venv/bin/python tests/bench/bench_tls.py [--seconds 5] [--rounds 2]

Two `kustos serve --workers 1` processes on loopback serve one LogisticRegression (iris,
trained here) from the same .skops file, one plain, one with --tls-cert/--tls-key (an
ECDSA P-256 certificate from a CA made here, as the operator's own certificates are).
Each is pinned to CPU 0 and wrk to CPU 1. wrk sends the same single-row KServe V2
request, in two shapes:

  keep-alive   connections opened once and reused (how a client pool or a mesh talks)
  new conn     `Connection: close`: a TCP connect, and for HTTPS a TLS handshake, for
               every request (clients without pooling); wrk resumes the TLS session
               from the server's ticket, so these are resumed TLS 1.3 handshakes

at concurrency 1 and 16, and a third shape, from a Python client at concurrency 1:

  full hs      a new connection per request with a full handshake every time (no
               session resumption: Python's ssl resumes only when told to), timed from
               connect to the end of the answer, client costs included on both sides

alternating plain and HTTPS for ``--rounds`` rounds; the table
shows each point's best round (the least disturbed by the other processes on the machine)
and the HTTPS/plain ratios. Any non-2xx answer or socket error fails the run. Before the
load, an HTTPS request that verifies the certificate against the CA checks the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "runtimes"))
sys.path.insert(0, str(REPO / "tests"))

from bench_serving import (  # noqa: E402
    BenchError,
    Server,
    loadavg,
    machine,
    parse_wrk,
    pinned,
    run_wrk,
    v2_request,
)
from train_model import save, train  # noqa: E402

from kustos.governance.tls import issue  # noqa: E402
from ports import free_port  # noqa: E402

SHAPES = ("keep-alive", "new conn")
FULL = "full hs"
CONCURRENCY = (1, 16)
SERVER_CPU, CLIENT_CPU = "0", "1"


@dataclass
class Point:
    scheme: str
    shape: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float


def lua(body: str, close: bool) -> str:
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
             f"wrk.body = {json.dumps(body)}"]
    if close:
        lines.append('wrk.headers["Connection"] = "close"')
    return "\n".join(lines) + "\n"


def start(work: Path, name: str, model: Path, tls: tuple[Path, Path] | None) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "kustos.cli", "serve", "--model", str(model), "--name",
            "iris", "--port", str(port), "--workers", "1", "--log-level", "warning"]
    if tls:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    server = Server(name, pinned(SERVER_CPU, argv), dict(os.environ), port,
                    "/v2/health/ready", work / f"{name}.log", work)
    if tls:
        server.ready_url = server.ready_url.replace("http://", "https://")
    return server


def wait_ready(server: Server, ctx: ssl.SSLContext | None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited at start-up:\n{server.tail()}")
        try:
            with urllib.request.urlopen(server.ready_url, timeout=2, context=ctx) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"{server.name} not ready within {timeout:g}s")


def check(url: str, body: bytes, ctx: ssl.SSLContext | None, expected: int) -> None:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        got = json.loads(resp.read())["outputs"][0]["data"]
    if got != [expected]:
        raise BenchError(f"{url}: predicted {got}, the model says {[expected]}")


def full_handshakes(port: int, ctx: ssl.SSLContext | None, body: bytes,
                    seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of one client opening a connection per request; for
    HTTPS each is a full handshake (a fresh SSLSocket is given no session to resume)."""
    import socket

    request = (b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: 127.0.0.1\r\n"
               b"content-type: application/json\r\nconnection: close\r\n"
               b"content-length: %d\r\n\r\n" % len(body)) + body
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = ctx.wrap_socket(sock, server_hostname="127.0.0.1") if ctx else sock
        with conn:
            if isinstance(conn, ssl.SSLSocket) and conn.session_reused:
                raise BenchError("the client resumed a TLS session")
            conn.sendall(request)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"answer: {answer[:200]!r}")
        times.append(time.perf_counter() - t0)
    times.sort()
    return (len(times) / sum(times), times[len(times) // 2] * 1e3,
            times[int(len(times) * 0.99)] * 1e3)


def table(points: list[Point]) -> str:
    rows = ["| requests | concurrency | plain req/s | HTTPS req/s | HTTPS/plain | "
            "plain p50 / p99 ms | HTTPS p50 / p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for shape in (*SHAPES, FULL):
        for c in (CONCURRENCY if shape != FULL else (1,)):
            best = {}
            for scheme in ("http", "https"):
                runs = [p for p in points
                        if (p.scheme, p.shape, p.concurrency) == (scheme, shape, c)]
                best[scheme] = max(runs, key=lambda p: p.rps)
            h, s = best["http"], best["https"]
            rows.append(f"| {shape} | {c} | {h.rps:,.0f} | {s.rps:,.0f} | "
                        f"{s.rps / h.rps:.2f} | {h.p50_ms:.2f} / {h.p99_ms:.2f} | "
                        f"{s.p50_ms:.2f} / {s.p99_ms:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per point (5)")
    p.add_argument("--rounds", type=int, default=2, help="plain/HTTPS alternations (2)")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kustos-bench-tls-"))
    servers: list[Server] = []
    try:
        model, X = train("logreg")
        save(model, str(work / "model.skops"))
        row = X[len(X) // 2].tolist()
        expected = int(model.predict([row]).tolist()[0])
        body = json.dumps(v2_request(row))
        bundle = issue(["127.0.0.1", "localhost"])
        (work / "tls.crt").write_bytes(bundle.cert)
        (work / "tls.key").write_bytes(bundle.key)
        ctx = ssl.create_default_context(cadata=bundle.ca_cert.decode())
        plain = start(work, "plain", work / "model.skops", None)
        tls = start(work, "https", work / "model.skops", (work / "tls.crt", work / "tls.key"))
        servers = [plain, tls]
        wait_ready(plain, None)
        wait_ready(tls, ctx)
        for server, verify in ((plain, None), (tls, ctx)):
            scheme = "https" if verify else "http"
            check(f"{scheme}://127.0.0.1:{server.port}/v2/models/iris/infer", body.encode(),
                  verify, expected)
        scripts = {}
        for shape in SHAPES:
            scripts[shape] = work / f"{shape.replace(' ', '-')}.lua"
            scripts[shape].write_text(lua(body, close=shape == "new conn"))
        points: list[Point] = []
        started = time.monotonic()
        for _ in range(args.rounds):
            for shape in SHAPES:
                for c in CONCURRENCY:
                    for server, scheme in ((plain, "http"), (tls, "https")):
                        url = f"{scheme}://127.0.0.1:{server.port}/v2/models/iris/infer"
                        run_wrk(url, scripts[shape], c, 1, CLIENT_CPU)  # warm-up
                        out = run_wrk(url, scripts[shape], c, args.seconds, CLIENT_CPU)
                        try:
                            rps, p50, p99, _ = parse_wrk(out)
                        except BenchError as exc:
                            raise BenchError(f"{scheme} {shape} c={c}: {exc}") from None
                        points.append(Point(scheme, shape, c, rps, p50, p99))
                        print(f"{scheme:5} {shape:10} c={c:<3} {rps:10,.0f} req/s  "
                              f"p50 {p50:.2f} ms  p99 {p99:.2f} ms", flush=True)
            os.sched_setaffinity(0, {int(CLIENT_CPU)})  # the client's core, as wrk's
            try:
                for server, verify, scheme in ((plain, None, "http"), (tls, ctx, "https")):
                    full_handshakes(server.port, verify, body.encode(), 1)  # warm-up
                    rps, p50, p99 = full_handshakes(server.port, verify, body.encode(),
                                                    args.seconds)
                    points.append(Point(scheme, FULL, 1, rps, p50, p99))
                    print(f"{scheme:5} {FULL:10} c=1   {rps:10,.0f} req/s  "
                          f"p50 {p50:.2f} ms  p99 {p99:.2f} ms", flush=True)
            finally:
                os.sched_setaffinity(0, range(os.cpu_count() or 1))
        info = machine()
        print(f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
              f"OpenSSL {ssl.OPENSSL_VERSION.split()[1]}; {args.rounds} round(s) of "
              f"{args.seconds:g}s per point in {time.monotonic() - started:.0f}s; "
              f"load average after: {loadavg()}\n")
        print(table(points))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
