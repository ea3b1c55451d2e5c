"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# *_created series double the scrape size and nobody charts them (as in kustos serve).
disable_created_metrics()  # type: ignore[no-untyped-call]

RECONCILES = Counter("kustos_operator_reconciles_total", "Reconciles by kind and result",
                     ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "kustos_operator_reconcile_duration_seconds", "Reconcile duration by kind", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RECONCILE_ERRORS = Counter("kustos_operator_reconcile_errors_total",
                           "Failed reconciles by kind and reason", ["kind", "reason"])
API_WRITES = Counter("kustos_operator_api_writes_total",
                     "Write requests to the Kubernetes API by verb and resource (plural, "
                     "with /status or /token for a subresource)", ["verb", "resource"])
CHILDREN_APPLIED = Counter("kustos_operator_children_applied_total",
                           "Child objects applied because they differed, by kind", ["kind"])
SIDECAR_POLLS = Counter("kustos_operator_sidecar_polls_total",
                        "Status requests to explainer / drift sidecars by result", ["result"])
PEERING_ACTIVE = Gauge("kustos_operator_peering_active",
                       "1 while this replica's background loops act (always when standalone)")
# spec.rollout (controllers/rollout.py): where each rollout stands and what its gates said.
# model_namespace, not namespace: Prometheus sets namespace to the operator's own.
ROLLOUT_PHASE = Gauge("kustos_rollout_phase",
                      "1 for the phase a ModelDeployment's rollout is in, 0 for the others",
                      ["model_namespace", "model", "phase"])
ROLLOUT_STEP = Gauge("kustos_rollout_step", "The canary step being analysed (0: none)",
                     ["model_namespace", "model"])
ROLLOUT_WEIGHT = Gauge("kustos_rollout_weight", "The candidate's traffic share in percent",
                       ["model_namespace", "model"])
ROLLOUT_VERDICTS = Counter("kustos_rollout_analysis_verdicts_total",
                           "Gate verdicts of rollout analyses, by metric and verdict",
                           ["model_namespace", "model", "metric", "verdict"])
ROLLOUT_ROLLBACKS = Counter("kustos_rollout_rollbacks_total",
                            "Automatic rollbacks (a failed gate or an inconclusive limit)",
                            ["model_namespace", "model"])
