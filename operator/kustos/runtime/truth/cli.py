"""`kustos truth`: the ground-truth monitor of one model (one Deployment per DriftMonitor
with ``spec.groundTruth``). Reads its JSON config, opens the store in --data-dir, listens,
then evaluates on an interval and polls the bulk label sources."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
from pathlib import Path

from kustos.runtime import process

log = logging.getLogger("kustos.truth")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kustos truth",
        description="Join logged predictions with labels by inference id and evaluate "
                    "each model version over a window.")
    p.add_argument("--config", required=True, metavar="PATH",
                   help="the monitor's JSON configuration (model, task, window, "
                        "thresholds, bulk sources, store bounds, fairness)")
    p.add_argument("--data-dir", default=os.environ.get("KUSTOS_TRUTH_DIR",
                                                        "/var/lib/kustos-truth"),
                   help="where the SQLite store lives (/var/lib/kustos-truth; env "
                        "KUSTOS_TRUTH_DIR)")
    process.add_listen_args(p, "0.0.0.0", 8080)
    process.add_log_level(p)
    return p


def _check(args: argparse.Namespace) -> str | None:
    from kustos.runtime.truth.config import ConfigError, load

    if not 0 <= args.port <= 65535:
        return "--port must be 0..65535"
    try:
        args.cfg = load(args.config)
    except ConfigError as exc:
        return f"--config {args.config}: {exc}"
    return None


async def run(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    import sqlite3

    from kustos.runtime.server.http import HttpServer
    from kustos.runtime.truth.app import TruthApp
    from kustos.runtime.truth.bulk import BulkLoader
    from kustos.runtime.truth.metrics import TruthMetrics
    from kustos.runtime.truth.monitor import Monitor
    from kustos.runtime.truth.store import Store

    cfg = args.cfg
    data_dir = Path(args.data_dir)
    try:
        store = Store(data_dir, cfg.max_rows, cfg.retention_seconds)
    except (OSError, sqlite3.Error) as exc:
        log.error("cannot open the store in %s: %s", data_dir, exc)
        return 1
    monitor = Monitor(cfg, store, TruthMetrics(cfg.model))
    server = HttpServer(TruthApp(monitor), max_body=args.max_body_bytes)
    # scikit-learn, scipy and pandas leave ~120000 objects the cyclic GC would walk again
    # and again while events allocate: they live as long as the process, so out of its
    # sight (a third of the CPU per event in tests/bench/bench_truth.py).
    gc.freeze()
    stop = process.stop_event(stop)
    if await process.listen(server, log, args.host, args.port,
                            detail=f", model {cfg.model}, store {store.path}") is None:
        store.close()
        return 1
    monitor.start()
    loader = BulkLoader(monitor, data_dir)
    loader.start()
    await stop.wait()
    log.info("shutting down")
    await server.shutdown(5.0)
    loader.close()
    monitor.close()
    store.close()
    return 0


def main(argv: list[str]) -> int:
    args = process.parse(build_parser(), _check, argv)
    if args is None:
        return 2
    return process.run(args.log_level, lambda: run(args))
