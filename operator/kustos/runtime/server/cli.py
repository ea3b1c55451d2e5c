"""`kustos serve`: serve one model over KServe V2, KServe V1 and the Seldon protocol.

The flags are the ones ``kustos.render.runtimes.kustos_serve_args`` renders; keep them in
step. Heavy imports (numpy, sklearn, prometheus_client) happen inside the worker, after
the multiprocess metrics directory is chosen: prometheus_client reads it at import.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

from kustos.runtime import process
from kustos.runtime.server import payload_log_config, shadow_tls
from kustos.runtime.server import tls as server_tls
from kustos.runtime.server.formats import FORMATS

log = logging.getLogger("kustos.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kustos serve",
        description="Serve one model over the Open Inference Protocol (KServe V2), "
                    "KServe V1 and the Seldon protocol.")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="model file (.skops, .joblib/.pkl with --digest, .onnx, xgboost "
                        ".ubj/.json, lightgbm .txt) or a directory holding exactly one")
    p.add_argument("--name", required=True, help="model name in URLs and metadata")
    p.add_argument("--model-version", default="1", help="model version (default 1)")
    p.add_argument("--format", choices=FORMATS,
                   help="model format (default: from the file extension)")
    p.add_argument("--digest", help="sha256:<hex> the model file must match (required for "
                                     "pickled models)")
    process.add_listen_args(p, "127.0.0.1", 8080)
    p.add_argument("--grpc-port", type=int, default=None, metavar="PORT",
                   help="also serve the Open Inference Protocol over gRPC on this port, "
                        "with grpc.health.v1 (off by default; 0 picks a free one)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes sharing the port with SO_REUSEPORT (1)")
    p.add_argument("--drift-url", default=os.environ.get("KUSTOS_DRIFT_URL") or None,
                   help="drift sidecar URL to copy inputs to (env KUSTOS_DRIFT_URL)")
    p.add_argument("--drift-max-rows-per-second", type=float, default=2000.0,
                   help="above this input rate the drift sidecar gets every n-th request "
                        "(2000; 0: every request)")
    p.add_argument("--explainer-url", default=os.environ.get("KUSTOS_EXPLAINER_URL") or None,
                   help="explainer sidecar base URL for :explain (env KUSTOS_EXPLAINER_URL)")
    p.add_argument("--explainer-timeout", type=float, default=30.0,
                   help="seconds to wait for the explainer (30)")
    p.add_argument("--max-batch-rows", type=int, default=256,
                   help="largest micro-batch, in rows (256)")
    p.add_argument("--no-batching", action="store_true",
                   help="never merge concurrent requests into one model call")
    p.add_argument("--drain-timeout", type=float, default=20.0,
                   help="seconds to finish in-flight requests on SIGTERM (20)")
    # The HTTP limits: the same defaults as kustos.runtime.server.http (a test checks), not
    # imported from it so that parsing the flags needs no httptools.
    p.add_argument("--keepalive-timeout", type=float, default=75.0,
                   help="seconds an idle keep-alive connection is kept (75)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds from a request's first byte to the end of its headers; "
                        "also how long a new connection may stay silent (10)")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds from a request's first byte to the end of its body (60)")
    p.add_argument("--max-connections", type=int, default=4096,
                   help="open connections per worker; at the cap new ones wait in the "
                        "listen backlog (4096)")
    p.add_argument("--max-url-bytes", type=int, default=8 << 10,
                   help="longest request URL, else 414 (8192)")
    p.add_argument("--max-header-bytes", type=int, default=32 << 10,
                   help="largest request header section, else 431 (32768)")
    p.add_argument("--trust-type", action="append", default=[], metavar="TYPE",
                   help="extra type a .skops file may contain (repeatable; env "
                        "KUSTOS_TRUSTED_TYPES, comma-separated)")
    p.add_argument("--onnx-threads", type=int, default=1,
                   help="onnxruntime intra-op threads per worker (1); xgboost and "
                        "lightgbm predict with as many")
    p.add_argument("--shadow-url", default=None, metavar="URL",
                   help="candidate model server to mirror a sample of predictions to "
                        "(same path and body; its answers are compared, never returned)")
    p.add_argument("--shadow-percent", type=float, default=None, metavar="N",
                   help="percentage of prediction requests mirrored, 0..100 (100 when "
                        "--shadow-url is set)")
    shadow_tls.add_args(p)
    p.add_argument("--truth-url", default=os.environ.get("KUSTOS_TRUTH_URL") or None,
                   metavar="URL",
                   help="ground-truth monitor (kustos truth) base URL: every prediction is "
                        "logged to URL/v1/events (100%%, unredacted) and feedback is "
                        "forwarded to it (env KUSTOS_TRUTH_URL)")
    payload_log_config.add_args(p)
    payload_log_config.add_relay_arg(p)
    server_tls.add_tls_args(p)
    process.add_log_level(p)
    return p


def _check(args: argparse.Namespace) -> str | None:
    if not 0 <= args.port <= 65535:
        return "--port must be 0..65535"
    if args.workers < 1:
        return "--workers must be >= 1"
    if args.workers > 1 and args.port == 0:
        return "--workers > 1 needs an explicit --port (the workers share it)"
    if args.grpc_port is not None and not 0 <= args.grpc_port <= 65535:
        return "--grpc-port must be 0..65535"
    if args.workers > 1 and args.grpc_port == 0:
        return "--workers > 1 needs an explicit --grpc-port (the workers share it)"
    if args.grpc_port is not None and args.grpc_port == args.port != 0:
        return "--grpc-port must differ from --port"
    if args.max_body_bytes < 1024:
        return "--max-body-bytes must be at least 1024"
    if args.max_batch_rows < 1:
        return "--max-batch-rows must be >= 1"
    if args.drain_timeout < 0 or min(args.explainer_timeout, args.keepalive_timeout,
                                     args.header_timeout, args.body_timeout) <= 0:
        return "timeouts must be positive"
    if args.max_connections < 1:
        return "--max-connections must be >= 1"
    if args.max_url_bytes < 256 or args.max_header_bytes < 1024:
        return "--max-url-bytes must be at least 256 and --max-header-bytes at least 1024"
    if args.drift_max_rows_per_second < 0:
        return "--drift-max-rows-per-second must be >= 0"
    for url in (args.drift_url, args.explainer_url, args.truth_url):
        if url and not url.startswith(("http://", "https://")):
            return f"expected an http(s) URL, got {url!r}"
    if args.shadow_percent is not None and not args.shadow_url:
        return "--shadow-percent needs --shadow-url"
    if args.shadow_url:
        from kustos.runtime.server.sender import check_url  # stdlib only

        try:
            check_url(args.shadow_url)
        except ValueError as exc:
            return f"--shadow-url: {exc}"
    if args.shadow_percent is not None and not 0 <= args.shadow_percent <= 100:
        return "--shadow-percent must be within 0..100"
    if args.truth_url and args.payload_log_relay and args.payload_log_sample != 1.0:
        return ("--truth-url with --payload-log-relay: the relay sends the monitor every "
                "prediction, so the server hands over all (--payload-log-sample 1) and the "
                "relay samples for the payload log (its own --payload-log-sample)")
    return (payload_log_config.check_args(args) or server_tls.check_tls_args(args)
            or shadow_tls.check_args(args))


async def serve(args: argparse.Namespace, reuse_port: bool = False,
                on_listening: Any = None, stop: asyncio.Event | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT (or ``stop`` is set); returns the exit code."""
    import gc
    import warnings

    from kustos import __version__
    from kustos.runtime.server.app import AppOptions, ServingApp
    from kustos.runtime.server.http import HttpServer, OnlyPaths
    from kustos.runtime.server.models import ModelLoadError, load_model

    try:
        tls = server_tls.from_args(args)
    except server_tls.TlsConfigError as exc:
        log.error("%s", exc)
        return 1
    trusted = list(args.trust_type) + [
        t for t in os.environ.get("KUSTOS_TRUSTED_TYPES", "").split(",") if t.strip()]
    app = ServingApp(AppOptions(
        name=args.name, version=args.model_version, drift_url=args.drift_url,
        explainer_url=args.explainer_url, explainer_timeout=args.explainer_timeout,
        batching=not args.no_batching, max_batch_rows=args.max_batch_rows,
        drift_max_rows_per_second=args.drift_max_rows_per_second,
        payload_log=payload_log_config.from_args(args), shadow_url=args.shadow_url,
        shadow_percent=100.0 if args.shadow_percent is None else args.shadow_percent,
        shadow_tls=shadow_tls.from_args(args),
        truth_url=args.truth_url),
        __version__)
    server = HttpServer(app, max_body=args.max_body_bytes,
                        keepalive_timeout=args.keepalive_timeout,
                        header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                        max_connections=args.max_connections,
                        max_url_bytes=args.max_url_bytes,
                        max_header_bytes=args.max_header_bytes, tls=tls)
    health = (HttpServer(OnlyPaths(app, server_tls.HEALTH_PATHS), max_connections=256)
              if args.health_port else None)
    app.peers = lambda: len(server.connections)
    grpc_server = None
    if args.grpc_port is not None:
        from kustos.runtime.server.grpc_v2 import GrpcServer

        grpc_server = GrpcServer(app, __version__, max_message_bytes=args.max_body_bytes)
        # A gRPC connection multiplexes many calls: the ones in progress are the company
        # a micro-batch may wait for.
        service = grpc_server.service
        app.peers = lambda: len(server.connections) + service.active
    loop = asyncio.get_running_loop()
    stop = process.stop_event(stop)

    async def listen() -> bool:
        port = await process.listen(server, log, args.host, args.port, reuse_port=reuse_port,
                                    detail=" (TLS)" if tls else "")
        if port is None:
            return False
        if health is not None and await process.listen(
                health, log, args.host, args.health_port, reuse_port=reuse_port,
                detail=" (health and metrics only)") is None:
            return False
        if grpc_server is not None:
            try:
                bound = await grpc_server.start(
                    args.host, args.grpc_port, reuse_port=reuse_port,
                    credentials=server_tls.server_credentials(
                        args.tls_cert, args.tls_key, args.tls_client_ca) if tls else None)
            except OSError as exc:
                log.error("cannot serve gRPC on %s:%d: %s", args.host, args.grpc_port, exc)
                return False
            log.info("gRPC (Open Inference Protocol) on %s:%d (pid %d)", args.host, bound,
                     os.getpid())
        if on_listening is not None:
            on_listening(port, app)
        return True

    # One process: listen first so liveness answers while a large model loads. Workers
    # sharing a port listen only once loaded: the kernel would otherwise hand requests to
    # a worker that still loads, and they would get 503 from a pod that reports ready.
    if not reuse_port and not await listen():
        await server.shutdown(0)
        if grpc_server is not None:
            await grpc_server.stop(0)
        app.close()
        return 1
    loading = loop.run_in_executor(None, lambda: load_model(
        args.model, args.name, args.model_version, args.format, args.digest, trusted,
        args.onnx_threads))
    stopping: asyncio.Future[Any] = loop.create_task(stop.wait())
    await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not stop.is_set():
        try:
            model = loading.result()
        except ModelLoadError as exc:
            log.error("cannot load model: %s", exc)
            code = 1
        else:
            import sklearn

            # Inputs are checked for NaN/inf before every predict (per the model's tags),
            # so sklearn's own finiteness scan is skipped. Thread-local: set on this thread,
            # the one that predicts.
            sklearn.set_config(assume_finite=True)
            warnings.filterwarnings("ignore", category=UserWarning)
            app.set_model(model)
            if grpc_server is not None:
                await grpc_server.update_health()
            gc.collect()
            gc.freeze()  # the model's objects never die: keep them out of GC scans
            log.info("model %s version %s ready (%s, loaded and warmed up in %.3fs)",
                     model.name, model.version, model.platform, model.load_seconds)
            if reuse_port and not await listen():
                code = 1
            else:
                await stopping
    log.info("shutting down: draining in-flight requests")
    app.begin_shutdown()
    if grpc_server is None:
        await server.shutdown(args.drain_timeout)
    else:
        await grpc_server.update_health()
        await asyncio.gather(server.shutdown(args.drain_timeout),
                             grpc_server.stop(args.drain_timeout))
    if health is not None:
        await health.shutdown(0)
    app.close()
    stopping.cancel()
    return code


def _run_worker(args: argparse.Namespace, reuse_port: bool) -> int:
    return process.run(args.log_level, lambda: serve(args, reuse_port=reuse_port))


def _die_with_parent() -> None:
    """A worker must not outlive its supervisor (e.g. after SIGKILL of the parent)."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _worker_entry(args: argparse.Namespace, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM drains
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)
    sys.exit(_run_worker(args, reuse_port=True))


def _supervise(args: argparse.Namespace) -> int:
    """N forked workers on one port; SIGTERM is passed on and waited for."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    process.setup_logging(args.log_level, force=False)
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="kustos-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    ctx = mp.get_context("fork")  # nothing heavy is imported yet, and no threads run
    procs = [ctx.Process(target=_worker_entry, args=(args, os.getpid()),
                         name=f"kustos-worker-{i}")
             for i in range(args.workers)]
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for proc in procs:
        proc.start()
    log.info("started %d workers on port %d", len(procs), args.port)
    code = 0
    try:
        while not stopping:
            done = wait([p.sentinel for p in procs], timeout=0.2)
            if done:
                dead = [p for p in procs if not p.is_alive()]
                log.error("worker(s) %s exited (%s); stopping all",
                          [p.pid for p in dead], [p.exitcode for p in dead])
                code = 1
                break
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + args.drain_timeout + 5
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
                code = 1
            elif proc.exitcode not in (0, None) and not code:
                code = 1 if not stopping else proc.exitcode or 0
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    return code


def main(argv: list[str]) -> int:
    args = process.parse(build_parser(), _check, argv)
    if args is None:
        return 2
    if args.workers > 1:
        return _supervise(args)
    return _run_worker(args, reuse_port=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
