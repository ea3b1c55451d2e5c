"""Prometheus metrics of the explainer sidecar, on a registry of its own.

The model server's metrics live on prometheus_client's default registry; its forwarding
time is ``kustos_explain_forward_duration_seconds{model}``, a name of its own so that
``kustos_explain_duration_seconds`` comes from this sidecar only. A registry of our own
keeps the sidecar's /metrics to exactly its own series when both modules are imported in
one process (tests, tools).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kustos.runtime import metrics

REGISTRY = metrics.own_registry()

REQUESTS = Counter(
    "kustos_explain_requests", "Explain requests answered, by model, method and status code",
    ["model", "method", "code"], registry=REGISTRY)
DURATION = Histogram(
    "kustos_explain_duration_seconds", "Time to answer an explain request",
    ["model", "method"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ROWS = Counter("kustos_explain_rows", "Rows explained", ["model"], registry=REGISTRY)
GLOBAL_DURATION = Gauge(
    "kustos_explain_global_duration_seconds",
    "Seconds the last global report (mean |attribution|, permutation importance, partial "
    "dependence) took", ["model"], registry=REGISTRY)
ERRORS = Counter(
    "kustos_explain_errors",
    "Failures: setup problems (by their status reason), ExplainFailed, GlobalFailed",
    ["model", "reason"], registry=REGISTRY)
READY = Gauge("kustos_explain_ready", "1 when the explainer answers explain requests",
              ["model"], registry=REGISTRY)


def render() -> tuple[bytes, str]:
    return metrics.render(REGISTRY)
