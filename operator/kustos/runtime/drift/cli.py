"""`kustos drift`: the drift sidecar. Listens first, then loads the reference in the
background; reference problems are reported in /v1/drift/status, never by exiting."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kustos.runtime import process

if TYPE_CHECKING:
    from kustos.runtime.drift.monitor import Monitor

log = logging.getLogger("kustos.drift")


def _indices(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("indices must be >= 0")
    return values


def _sizes(text: str) -> tuple[int, ...]:
    values = _indices(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("window sizes must be >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kustos drift",
        description="Drift detection (alibi-detect) on the inputs kustos serve receives.")
    p.add_argument("--detector", required=True,
                   help="ks | chisquare | tabular | mmd | cvm-online (another name is "
                        "reported as DetectorUnsupported in the status, the sidecar stays up)")
    p.add_argument("--reference-uri", required=True,
                   help="reference data: .csv (header row = feature names) or .npy")
    p.add_argument("--reference-digest", help="sha256:<hex>; the reference is refused otherwise")
    p.add_argument("--max-samples", type=int, help="subsample the reference to N rows")
    p.add_argument("--feature-names", help="comma-separated feature names, in model order")
    p.add_argument("--categorical", type=_indices, default=(),
                   help="comma-separated indices of categorical features (tabular)")
    p.add_argument("--p-value", type=float, default=0.05,
                   help="significance level (after multiple-testing correction) (0.05)")
    p.add_argument("--correction", default="bonferroni",
                   help="ks/chisquare/tabular: bonferroni | fdr (bonferroni)")
    p.add_argument("--window-size", type=int, default=500, help="rows per window (500)")
    p.add_argument("--window-max-age", type=float, default=600.0,
                   help="close a window this many seconds after its first row, if it has "
                        "--window-min-rows (600; 0 = only by size)")
    p.add_argument("--window-min-rows", type=int,
                   help="fewest rows an age-closed window may have (min(50, window size))")
    p.add_argument("--max-pending-windows", type=int, default=2,
                   help="closed windows waiting for evaluation before inputs are dropped (2)")
    p.add_argument("--permutations", type=int, default=100,
                   help="mmd: permutations for the p-value (100)")
    p.add_argument("--ert", type=float, default=1000.0,
                   help="cvm-online: expected rows between false alarms without drift (1000)")
    p.add_argument("--online-window-sizes", type=_sizes, default=(50,),
                   help="cvm-online: comma-separated test window sizes in rows (50)")
    p.add_argument("--n-bootstraps", type=int,
                   help="cvm-online: simulations to set thresholds (default: the fewest that "
                        "work for --ert and the feature count, at least 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--name", default="model", help="model name, the metrics' model label")
    p.add_argument("--work-dir", default=os.environ.get("KUSTOS_DRIFT_DIR", "/tmp/drift"),
                   help="where the reference is downloaded (/tmp/drift)")
    process.add_listen_args(p, "0.0.0.0", 8091)
    # Not process.add_log_level: no choices and no KUSTOS_LOG_LEVEL here, as before.
    p.add_argument("--log-level", default="info")
    return p


def validate(args: argparse.Namespace) -> str | None:
    if args.window_size < 1:
        return "--window-size must be >= 1"
    if args.window_min_rows is None:
        args.window_min_rows = min(50, args.window_size)
    if not 1 <= args.window_min_rows <= args.window_size:
        return "--window-min-rows must be between 1 and --window-size"
    if args.window_max_age < 0:
        return "--window-max-age must be >= 0"
    if not 0 < args.p_value < 1:
        return "--p-value must be between 0 and 1"
    if args.max_samples is not None and args.max_samples < 1:
        return "--max-samples must be >= 1"
    if args.max_pending_windows < 1 or args.permutations < 1 or args.ert <= 1:
        return "--max-pending-windows and --permutations must be >= 1, --ert > 1"
    if args.n_bootstraps is not None and args.n_bootstraps < 1:
        return "--n-bootstraps must be >= 1"
    return None


def load_detector(args: argparse.Namespace, monitor: Monitor) -> None:
    """Fetch the reference and build the detector, reporting problems in the status.
    Fetch failures (unreachable URI) are retried with backoff; the rest need a fix."""
    from kustos.runtime.drift import detectors, reference

    settings = detectors.Settings(
        detector=args.detector, p_value=args.p_value, correction=args.correction,
        categorical=tuple(args.categorical), permutations=args.permutations, ert=args.ert,
        online_window_sizes=tuple(args.online_window_sizes), n_bootstraps=args.n_bootstraps,
        seed=args.seed)
    names = [n.strip() for n in args.feature_names.split(",")] if args.feature_names else None
    delay = 5.0
    while True:
        try:
            detectors.check(settings)  # before a download that would be in vain
            path, digest = reference.download(args.reference_uri, args.reference_digest,
                                              Path(args.work_dir))
            ref = reference.load(path, digest, names, list(args.categorical),
                                 args.max_samples, args.seed)
            started = time.monotonic()
            detector = detectors.build(settings, ref)
        except reference.ReferenceProblem as exc:
            monitor.set_error(exc.reason, exc.message)
            log.error("%s: %s", exc.reason, exc.message)
            if not exc.retry:
                return
            log.info("retrying the reference in %.0fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 300.0)
            continue
        except Exception as exc:  # an alibi-detect failure we did not foresee
            log.exception("building the %s detector failed", settings.detector)
            monitor.set_error("DetectorUnsupported",
                              f"{settings.detector} could not be built: {exc}")
            return
        monitor.set_ready(detector, ref.data.shape[1])
        log.info("%s detector ready: reference %s, %d rows x %d features (%s), built in "
                 "%.2fs", settings.detector, ref.digest, ref.data.shape[0],
                 ref.data.shape[1], ", ".join(ref.names[:10]), time.monotonic() - started)
        return


async def run(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    import threading

    from kustos.runtime.drift.app import DriftApp
    from kustos.runtime.drift.metrics import DriftMetrics
    from kustos.runtime.drift.monitor import Monitor
    from kustos.runtime.drift.window import Window
    from kustos.runtime.server.http import HttpServer

    metrics = DriftMetrics(args.name)
    # cvm-online's threshold is a statistic, known once the detector has run
    threshold = float("nan") if args.detector == "cvm-online" else args.p_value
    monitor = Monitor(args.detector, args.name,
                      Window(args.window_size, args.window_max_age, args.window_min_rows),
                      metrics, threshold, args.max_pending_windows)
    server = HttpServer(DriftApp(monitor), max_body=args.max_body_bytes)
    stop = process.stop_event(stop)
    if await process.listen(server, log, args.host, args.port,
                            detail=f", detector {args.detector}") is None:
        return 1
    threading.Thread(target=load_detector, args=(args, monitor), name="kustos-drift-load",
                     daemon=True).start()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.5)
            monitor.tick()

    tick = asyncio.get_running_loop().create_task(ticker())
    await stop.wait()
    log.info("shutting down")
    tick.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tick
    await server.shutdown(5.0)
    monitor.close()
    return 0


def main(argv: list[str]) -> int:
    args = process.parse(build_parser(), validate, argv)
    if args is None:
        return 2
    return process.run(args.log_level, lambda: run(args))
