"""Prometheus metrics of the drift sidecar, in a registry of its own, all labelled model."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kustos.runtime import metrics

# One window's evaluation: KS on 500 rows is ~ms, MMD or cvm-online up to seconds.
EVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OVERALL = "*"  # feature label of the whole-window p-value (mmd)


class DriftMetrics:
    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = metrics.own_registry()
        r = self.registry
        self.detected = Gauge("kustos_drift_detected",
                              "1 while the latest evaluated window drifted, else 0",
                              ["model"], registry=r).labels(model)
        self.p_value = Gauge("kustos_drift_p_value",
                             "p-value of the latest window, per feature (feature=\"*\": the "
                             "whole-window test of mmd)", ["model", "feature"], registry=r)
        self.distance = Gauge("kustos_drift_distance",
                              "Distance of the latest window: mmd's MMD^2, else the largest "
                              "per-feature statistic", ["model"], registry=r).labels(model)
        self.feature_distance = Gauge("kustos_drift_feature_distance",
                                      "Per-feature test statistic of the latest window",
                                      ["model", "feature"], registry=r)
        self.windows = Counter("kustos_drift_windows", "Windows evaluated", ["model"],
                               registry=r).labels(model)
        self.dropped = Counter("kustos_drift_inputs_dropped",
                               "Input rows dropped because evaluation fell behind",
                               ["model"], registry=r).labels(model)
        self.posts = Counter("kustos_drift_posts", "POST /v1/inputs requests accepted",
                             ["model"], registry=r).labels(model)
        self.inputs = Counter("kustos_drift_inputs", "Input rows accepted", ["model"],
                              registry=r).labels(model)
        self.episodes = Counter("kustos_drift_episodes", "Drift episodes started",
                                ["model"], registry=r).labels(model)
        self.evaluation = Histogram("kustos_drift_evaluation_seconds",
                                    "Time to evaluate one window", ["model"],
                                    buckets=EVAL_BUCKETS, registry=r).labels(model)
        self.ready = Gauge("kustos_drift_ready",
                           "1 once the reference is loaded and the detector built",
                           ["model"], registry=r).labels(model)
        self.window_rows = Gauge("kustos_drift_window_rows", "Rows in the open window",
                                 ["model"], registry=r).labels(model)

    def set_features(self, p_values: dict[str, float], distances: dict[str, float]) -> None:
        for name, value in p_values.items():
            self.p_value.labels(self.model, name).set(value)
        for name, value in distances.items():
            self.feature_distance.labels(self.model, name).set(value)

    def render(self) -> tuple[bytes, bytes]:
        body, ctype = metrics.render(self.registry)
        return body, ctype.encode()
