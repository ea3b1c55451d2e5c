"""Prometheus metrics of the ground-truth monitor, in a registry of its own."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from kustos.runtime import metrics

# Label delays: minutes for feedback, days for bulk files.
DELAY_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400,
                 7 * 86400, 30 * 86400)


class TruthMetrics:
    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = r = metrics.own_registry()
        self.metric = Gauge("kustos_truth_metric",
                            "Label-joined metric of a model version over the window "
                            "(absent while inconclusive)", ["model", "version", "metric"],
                            registry=r)
        self.coverage = Gauge("kustos_truth_label_coverage",
                              "Share of the window's predictions that have a label",
                              ["model", "version"], registry=r)
        self.delay = Histogram("kustos_truth_label_delay_seconds",
                               "Label arrival minus prediction time, per joined label",
                               ["model"], buckets=DELAY_BUCKETS, registry=r).labels(model)
        self.events = Counter("kustos_truth_events", "Inference events received",
                              ["type", "outcome"], registry=r)
        self.labels = Counter("kustos_truth_labels", "Labels received",
                              ["source", "outcome"], registry=r)
        self.fairness_gap = Gauge("kustos_fairness_gap",
                                  "Fairness gap of a sensitive feature over the window",
                                  ["model", "version", "feature", "metric"], registry=r)
        self.fairness_slice = Gauge("kustos_fairness_slice_metric",
                                    "Metric of one slice of a sensitive feature",
                                    ["model", "version", "feature", "slice", "metric"],
                                    registry=r)
        self.violations = Gauge("kustos_truth_violations",
                                "Thresholds broken at the last evaluation",
                                ["model", "kind"], registry=r)
        self.store_rows = Gauge("kustos_truth_store_rows", "Rows in the store",
                                ["model", "table"], registry=r)
        self.bulk_bad_rows = Counter("kustos_truth_bulk_bad_rows",
                                     "Rows of bulk label files that could not be used",
                                     ["model"], registry=r).labels(model)
        self.evaluation = Histogram("kustos_truth_evaluation_seconds",
                                    "Time to evaluate the window (all versions)", ["model"],
                                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                                             60), registry=r).labels(model)
        self._shown: dict[Any, set[tuple[str, ...]]] = {}

    def replace(self, gauge: Gauge, values: dict[tuple[str, ...], float]) -> None:
        """Set ``gauge`` to exactly ``values``: series not in it any more are removed."""
        shown = self._shown.setdefault(gauge, set())
        for labels in shown - set(values):
            gauge.remove(*labels)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        self._shown[gauge] = set(values)

    def render(self) -> tuple[bytes, bytes]:
        body, ctype = metrics.render(self.registry)
        return body, ctype.encode()
