"""Prometheus metrics of the model server, all prefixed ``kustos_``.

With ``--workers N`` > 1 the processes share one port, so a scrape lands on any of them;
the CLI then points ``PROMETHEUS_MULTIPROC_DIR`` at a private directory before this
module is imported and ``/metrics`` aggregates every worker.
"""

from __future__ import annotations

import bisect
import os
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kustos.runtime import metrics

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# Label values of kustos_predictions_total are bounded: beyond this many classes the
# rest are counted as "other" so a label-per-row model cannot blow up the series count.
MAX_CLASS_LABELS = 100
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

REQUESTS = Counter(
    "kustos_requests", "HTTP requests answered, by endpoint, model and status code",
    ["endpoint", "model", "code"])
DURATION = Histogram(
    "kustos_request_duration_seconds", "Time from request parsed to response written",
    ["endpoint", "model"], buckets=LATENCY_BUCKETS)
INFLIGHT = Gauge(
    "kustos_inflight_requests", "Requests being processed", ["model"],
    multiprocess_mode="livesum")
LOAD_SECONDS = Gauge(
    "kustos_model_load_seconds", "Seconds to load, verify and warm up the model",
    ["model", "version"], multiprocess_mode="max")
MODEL_READY = Gauge(
    "kustos_model_ready", "1 when the model is loaded and warmed up",
    ["model", "version"], multiprocess_mode="min")
PREDICTIONS = Counter(
    "kustos_predictions", "Rows predicted, by predicted class (empty for regressors)",
    ["model", "class"])
BATCH_ROWS = Histogram(
    "kustos_batch_rows", "Rows per model call (micro-batching merges concurrent requests)",
    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
# drift_handoff_* and explain_forward_*: the sidecars export kustos_drift_inputs_dropped
# and kustos_explain_duration_seconds themselves; one name per process avoids series of
# one name with different label sets in one pod.
DRIFT_SENT = Counter(
    "kustos_drift_handoff_sent", "Requests whose inputs reached the drift sidecar", ["model"])
DRIFT_SAMPLED_OUT = Counter(
    "kustos_drift_handoff_sampled_out",
    "Requests left out of the drift sample (over --drift-max-rows-per-second; not an error)",
    ["model"])
DRIFT_DROPPED = Counter(
    "kustos_drift_handoff_dropped",
    "Requests whose inputs were not handed to the drift sidecar (queue full or send failed)",
    ["model", "reason"])
PAYLOAD_LOG_EVENTS = Counter(
    "kustos_payload_log_events",
    "Payload log CloudEvents by outcome, per sink: sent, dropped (queue full: the newest "
    "prediction's events) or failed (after every retry)",
    ["model", "outcome"])
PAYLOAD_LOG_RELAYED = Counter(
    "kustos_payload_log_relayed",
    "Predictions the model server handed to the pod's payload-log container "
    "(--payload-log-relay); that container counts their events' outcomes", ["model"])
PAYLOAD_LOG_RETRIES = Counter(
    "kustos_payload_log_retries", "Payload log POSTs tried again after a failure", ["model"])
# Prediction distribution, for comparing a candidate with the stable model: a
# regressor's values, or a binary classifier's positive-class score when the request
# asked for probabilities. Fixed buckets (the same on every track, so the rollout analysis
# can compare bucket shares): 0..1 in steps of 0.05 for scores, 1-2-5 decades for values.
VALUE_BUCKETS = (-1000.0, -500.0, -200.0, -100.0, -50.0, -20.0, -10.0, -5.0, -2.0, -1.0,
                 *(round(i * 0.05, 2) for i in range(0, 21)),
                 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                 10000.0)
PREDICTION_VALUE = Histogram(
    "kustos_prediction_value",
    "Predicted values per row: a regressor's value or a binary classifier's positive-class "
    "score (when probabilities were asked for)", ["model"], buckets=VALUE_BUCKETS)
SHADOW_REQUESTS = Counter(
    "kustos_shadow_requests",
    "Requests mirrored to the shadow candidate: sent (answered 2xx), dropped (queue full, "
    "the newest) or failed (no answer or not 2xx)", ["model", "outcome"])
SHADOW_ROWS = Counter(
    "kustos_shadow_rows",
    "Rows of mirrored requests whose candidate answer agrees or disagrees with the stable's",
    ["model", "agreement"])
SHADOW_DURATION = Histogram(
    "kustos_shadow_duration_seconds",
    "Time from a pipelined batch of mirrored requests written to the candidate's answer read",
    ["model"], buckets=LATENCY_BUCKETS)
FEEDBACK = Counter("kustos_feedback", "Seldon feedback messages received", ["model"])
FEEDBACK_REWARD = Counter("kustos_feedback_reward", "Sum of Seldon feedback rewards", ["model"])
EXPLAIN_FORWARD_DURATION = Histogram(
    "kustos_explain_forward_duration_seconds", "Time to forward an explain request",
    ["model"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


class RequestMetrics:
    """Caches label children: ``labels()`` costs a lock and a dict lookup per call."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._counters: dict[tuple[str, int], Any] = {}
        self._histograms: dict[str, Any] = {}
        self._classes: dict[str, Any] = {}
        self._value_hist: Any = None
        self.inflight = INFLIGHT.labels(model)

    def observe(self, endpoint: str, model: str, code: int, seconds: float) -> None:
        key = (endpoint, code)
        counter = self._counters.get(key) if model == self.model else None
        if counter is None:
            counter = REQUESTS.labels(endpoint, model, str(code))
            if model == self.model:
                self._counters[key] = counter
        counter.inc()
        hist = self._histograms.get(endpoint) if model == self.model else None
        if hist is None:
            hist = DURATION.labels(endpoint, model)
            if model == self.model:
                self._histograms[endpoint] = hist
        hist.observe(seconds)

    def observe_values(self, model: Any, result: dict[str, Any]) -> None:
        """Feed kustos_prediction_value from one model call's outputs: a regressor's 1-D
        float output, or column 1 of a two-column float output (a binary classifier's
        probabilities). One searchsorted for the whole batch, not one observe per row."""
        values = None
        for out in result.values():
            if getattr(out, "dtype", None) is None or out.dtype.kind != "f":
                continue
            if model.label_output is None and (out.ndim == 1 or (
                    out.ndim == 2 and out.shape[1] == 1)):
                values = out.reshape(-1)
                break
            if model.label_output is not None and out.ndim == 2 and out.shape[1] == 2:
                values = out[:, 1]
                break
        if values is None or values.size == 0:
            return
        hist = self._value_hist
        if hist is None:
            hist = self._value_hist = PREDICTION_VALUE.labels(self.model)
        observe_many(hist, values)

    def count_predictions(self, labels: Any, rows: int) -> None:
        if labels is None:
            child = self._classes.get("")
            if child is None:
                child = self._classes[""] = PREDICTIONS.labels(self.model, "")
            child.inc(rows)
            return
        flat = np.asarray(labels).reshape(-1)
        tally: dict[Any, int] = {}
        if flat.size <= 64:  # np.unique costs ~10 us even for one row; a dict is cheaper
            for value in flat.tolist():
                tally[value] = tally.get(value, 0) + 1
        else:
            values, counts = np.unique(flat, return_counts=True)
            tally = dict(zip(values.tolist(), counts.tolist(), strict=True))
        for value, count in tally.items():
            key = str(value)
            child = self._classes.get(key)
            if child is None:
                if len(self._classes) >= MAX_CLASS_LABELS:
                    key = "other"
                child = self._classes.get(key) or PREDICTIONS.labels(self.model, key)
                self._classes[key] = child
            child.inc(count)


_BOUNDS_LIST = [*VALUE_BUCKETS, float("inf")]
LATENCY_BOUNDS = [*LATENCY_BUCKETS, float("inf")]


def observe_many(hist: Any, values: Any, bounds: list[float] = _BOUNDS_LIST) -> None:
    """``hist.observe(v)`` for every value (a numpy array or a list), batched: each
    bucket's count is added once. ``bounds``: the histogram's buckets plus +Inf.
    prometheus_client's histogram child keeps one value per bucket (the cumulative sums
    are formed at scrape time); without them (another client version) observe one by one.
    NaN is left out."""
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if buckets is None or total is None or len(buckets) != len(bounds):
        for v in (values.tolist() if hasattr(values, "tolist") else values):
            if v == v:
                hist.observe(v)
        return
    if len(values) <= 8:  # a few values: bisect on a list beats numpy's call overhead
        for v in (values.tolist() if hasattr(values, "tolist") else values):
            if v == v:
                buckets[bisect.bisect_left(bounds, v)].inc(1)
                total.inc(v)
        return
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    counts = np.bincount(np.searchsorted(np.asarray(bounds), finite), minlength=len(bounds))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    total.inc(float(finite.sum()))


def render() -> tuple[bytes, str]:
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return metrics.render(registry)
    return metrics.render()
