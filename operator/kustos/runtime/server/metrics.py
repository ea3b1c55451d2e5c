"""Prometheus metrics of the model server, all prefixed ``kustos_``.

With ``--workers N`` > 1 the processes share one port, so a scrape lands on any of them;
the CLI then points ``PROMETHEUS_MULTIPROC_DIR`` at a private directory before this
module is imported and ``/metrics`` aggregates every worker.
"""

from __future__ import annotations

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
PAYLOAD_LOG_RETRIES = Counter(
    "kustos_payload_log_retries", "Payload log POSTs tried again after a failure", ["model"])
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


def render() -> tuple[bytes, str]:
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return metrics.render(registry)
    return metrics.render()
