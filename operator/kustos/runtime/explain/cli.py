"""`kustos explain`: the explainer sidecar.

Listens at once (liveness and status answer while the model and background load), then
on a setup thread: loads the model (the same file and digest check as `kustos serve`),
fetches the background data with kustos fetch, checks it against the model and builds
the explainer (SHAP or LIME). A problem never exits the process: it is published in
/v1/explainer/status with a reason and a message that says what to fix, explain requests
get 503, and background problems are retried with backoff (the file may be fixed at its
source). A global report is computed on its own thread shortly after start and then
every --global-interval seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kustos.runtime import process
from kustos.runtime.explain.lime_method import DEFAULT_SAMPLES as LIME_DEFAULT_SAMPLES
from kustos.runtime.explain.lime_method import MAX_SAMPLES as LIME_MAX_SAMPLES
from kustos.runtime.explain.lime_method import MIN_SAMPLES as LIME_MIN_SAMPLES
from kustos.runtime.server.formats import FORMATS

log = logging.getLogger("kustos.explain")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kustos explain",
        description="Serve SHAP or LIME explanations of one model (the explainer sidecar).")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="model file, the one `kustos serve` loads (or its directory)")
    p.add_argument("--name", required=True, help="model name in URLs")
    p.add_argument("--format", choices=FORMATS,
                   help="model format (default: from the file extension)")
    p.add_argument("--digest", help="sha256:<hex> the model file must match")
    # No argparse choices: an unknown method is reported in the status, not a crash loop.
    p.add_argument("--method", default="shap-tree",
                   help="shap-tree | shap-linear | shap-kernel | shap-permutation | lime")
    p.add_argument("--background-uri", required=True, metavar="URI",
                   help="background data (.csv with a header row, or .npy): file://, a "
                        "local path, https:// or s3://")
    p.add_argument("--background-digest", help="sha256:<hex> the background file must match")
    p.add_argument("--max-samples", type=int, default=100,
                   help="background rows used, sampled when the file has more (100)")
    p.add_argument("--feature-names", help="comma-separated feature names, in model order")
    p.add_argument("--label-column",
                   help="background column holding true labels for permutation importance "
                        "(a header name, or an index); default: the model's own predictions")
    p.add_argument("--global-interval", type=float, default=3600.0,
                   help="seconds between global reports (3600; 0 = off)")
    p.add_argument("--global-delay", type=float, default=1.0,
                   help="seconds after the explainer is ready before the first report (1)")
    p.add_argument("--global-rows", type=int, default=100,
                   help="background rows the global report explains (100)")
    p.add_argument("--top-k", type=int, default=10,
                   help="features in globalImportance (10)")
    p.add_argument("--pd-features", type=int, default=3,
                   help="top features that get a partial dependence curve (3)")
    p.add_argument("--kernel-clusters", type=int, default=10,
                   help="k-means centres summarising the background for shap-kernel (10)")
    p.add_argument("--lime-samples", type=int, default=LIME_DEFAULT_SAMPLES,
                   help="perturbed rows LIME has the model predict per explained row "
                        f"({LIME_DEFAULT_SAMPLES}; {LIME_MIN_SAMPLES}..{LIME_MAX_SAMPLES})")
    p.add_argument("--max-rows", type=int, default=1000,
                   help="most rows one explain request may hold (1000)")
    p.add_argument("--work-dir", default="/tmp/explain",
                   help="where the background file is downloaded (/tmp/explain)")
    p.add_argument("--credentials-dir",
                   help="directory with AWS_* files for s3:// (default: the environment)")
    p.add_argument("--retry-max", type=float, default=300.0,
                   help="longest wait between background retries, seconds (300)")
    p.add_argument("--trust-type", action="append", default=[], metavar="TYPE",
                   help="extra type a .skops model may contain (repeatable)")
    process.add_listen_args(p, "0.0.0.0", 8090)
    process.add_log_level(p)
    return p


def _check(args: argparse.Namespace) -> str | None:
    if not 0 <= args.port <= 65535:
        return "--port must be 0..65535"
    for flag in ("max_samples", "top_k", "kernel_clusters", "max_rows", "global_rows"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be >= 1"
    if not LIME_MIN_SAMPLES <= args.lime_samples <= LIME_MAX_SAMPLES:
        return f"--lime-samples must be {LIME_MIN_SAMPLES}..{LIME_MAX_SAMPLES}"
    if args.pd_features < 0 or args.global_interval < 0 or args.global_delay < 0:
        return "--pd-features, --global-interval and --global-delay must be >= 0"
    if args.retry_max <= 0 or args.max_body_bytes < 1024:
        return "--retry-max must be > 0 and --max-body-bytes >= 1024"
    return None


class Runtime:
    """The setup and global-report threads around one State."""

    def __init__(self, args: argparse.Namespace) -> None:
        from kustos.runtime.explain.app import State

        self.args = args
        self.state = State(method=args.method, model_name=args.name)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self._ready_gauge_set(0)

    def _ready_gauge_set(self, value: int) -> None:
        from kustos.runtime.explain import metrics as m

        m.READY.labels(self.args.name).set(value)

    def start(self) -> None:
        for target, name in ((self._setup, "kustos-explain-setup"),
                             (self._global_loop, "kustos-explain-global")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()

    # -- setup
    def _problem(self, problem: Any) -> None:
        from kustos.runtime.explain import metrics as m

        if self.state.error is None or self.state.error.message != problem.message:
            log.error("explainer not ready: %s: %s", problem.reason, problem.message)
        self.state.error = problem
        m.ERRORS.labels(self.args.name, problem.reason).inc()

    def _setup(self) -> None:
        from kustos.runtime.explain.methods import METHODS
        from kustos.runtime.explain.problems import (
            METHOD_UNSUPPORTED,
            MODEL_LOAD_FAILED,
            PERMANENT,
            SetupProblem,
        )
        from kustos.runtime.server.models import ModelLoadError, load_model

        args = self.args
        if args.method not in METHODS:
            self._problem(SetupProblem(
                METHOD_UNSUPPORTED,
                f"unknown method {args.method!r}; use one of {', '.join(METHODS)}"))
            return
        try:
            model = load_model(args.model, args.name, "1", args.format, args.digest,
                               args.trust_type)
        except ModelLoadError as exc:
            self._problem(SetupProblem(MODEL_LOAD_FAILED, str(exc)))
            return
        except Exception as exc:  # a model that loads but cannot predict, etc.
            self._problem(SetupProblem(MODEL_LOAD_FAILED, f"{type(exc).__name__}: {exc}"))
            return
        self.state.model = model
        delay = 2.0
        while not self.stop.is_set():
            try:
                self._prepare(model)
                return
            except SetupProblem as problem:
                self._problem(problem)
                if problem.reason in PERMANENT:
                    return
            log.info("retrying the background data in %.0fs", delay)
            if self.stop.wait(delay):
                return
            delay = min(delay * 2, args.retry_max)

    def _prepare(self, model: Any) -> None:
        from kustos.runtime.explain.background import align, fetch_background, read_background
        from kustos.runtime.explain.methods import build
        from kustos.runtime.explain.problems import FEATURE_NAMES_INVALID, SetupProblem
        from kustos.runtime.server.boosters import BoosterModel
        from kustos.runtime.server.models import SklearnModel

        args = self.args
        names = None
        if args.feature_names is not None:
            names = [n.strip() for n in args.feature_names.split(",")]
            if not all(names):
                raise SetupProblem(FEATURE_NAMES_INVALID,
                                   "featureNames holds an empty name; give one per feature")
        path = fetch_background(args.background_uri, args.background_digest,
                                Path(args.work_dir), args.credentials_dir)
        bg = read_background(path, args.max_samples, args.label_column)
        n_features = (model.n_features if isinstance(model, SklearnModel | BoosterModel)
                      else _onnx_width(model))
        model_names = None
        if isinstance(model, SklearnModel) and hasattr(model.estimator, "feature_names_in_"):
            model_names = [str(n) for n in model.estimator.feature_names_in_]
        elif isinstance(model, BoosterModel):
            model_names = model.feature_names
        data, feature_names = align(bg, n_features, names, model_names)
        started = time.perf_counter()
        explainer = build(args.method, model, data, feature_names,
                          kernel_clusters=args.kernel_clusters,
                          lime_samples=args.lime_samples)
        self.state.background = data
        self.state.labels = bg.labels
        self.state.error = None
        self.state.explainer = explainer  # from here on explain requests are answered
        self.state.ready_event.set()
        self._ready_gauge_set(1)
        log.info("explainer ready: %s (%s) on %d background rows of %d features, outputs %s "
                 "(%s); built in %.2fs", args.method, explainer.algorithm, len(data),
                 data.shape[1], explainer.target.names[:10], explainer.target.kind,
                 time.perf_counter() - started)

    # -- global report
    def _global_loop(self) -> None:
        args = self.args
        if args.global_interval <= 0:
            return
        while not self.state.ready_event.wait(0.5):
            if self.stop.is_set():
                return
        if self.stop.wait(args.global_delay):
            return
        while True:
            self.compute_global()
            if self.stop.wait(args.global_interval):
                return

    def compute_global(self) -> None:
        from kustos.runtime.explain import metrics as m
        from kustos.runtime.explain.global_report import compute

        state, args = self.state, self.args
        if state.explainer is None or state.model is None or state.background is None:
            return
        started = time.perf_counter()
        try:
            x = state.background[: args.global_rows]
            labels = state.labels[: args.global_rows] if state.labels is not None else None
            top, report = compute(state.explainer.fresh(), state.model, x, labels,
                                  top_k=args.top_k, pd_features=args.pd_features)
        except Exception as exc:
            log.exception("global report failed: %s", exc)
            m.ERRORS.labels(args.name, "GlobalFailed").inc()
            return
        seconds = time.perf_counter() - started
        state.publish_global(top, report)
        m.GLOBAL_DURATION.labels(args.name).set(seconds)
        log.info("global report computed in %.2fs; top features %s", seconds,
                 [t["feature"] for t in top[:5]])


def _onnx_width(model: Any) -> int | None:
    shape: tuple[int, ...] = model.inputs[0].shape if len(model.inputs) == 1 else ()
    return shape[1] if len(shape) == 2 and shape[1] > 0 else None


async def serve(args: argparse.Namespace, on_listening: Any = None,
                stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); returns the exit code."""
    from kustos.runtime.explain.app import ExplainApp
    from kustos.runtime.server.http import HttpServer

    runtime = Runtime(args)
    app = ExplainApp(runtime.state, max_rows=args.max_rows)
    server = HttpServer(app, max_body=args.max_body_bytes)
    stop = process.stop_event(stop)
    port = await process.listen(server, log, args.host, args.port)
    if port is None:
        app.close()
        return 1
    runtime.start()
    if on_listening is not None:
        on_listening(port, app, runtime)
    await stop.wait()
    log.info("shutting down")
    app.stopping = True
    runtime.close()
    await server.shutdown(10.0)
    app.close()
    return 0


def main(argv: list[str]) -> int:
    args = process.parse(build_parser(), _check, argv)
    if args is None:
        return 2
    return process.run(args.log_level, lambda: serve(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
