"""What a rollout reads of one pod's /metrics, and windows between two scrapes (pure).

A window is the difference of two scrapes of the same pods: counters only grow, except
when a pod's server restarts, when its counts start again from zero; that pod's window
is then its whole later scrape. A pod absent from the first scrape (a new pod) counts in
full; a pod gone by the second is lost to the window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

# The endpoints of a prediction (runtime/server/app.py; gRPC's name its infer methods).
PREDICT_ENDPOINTS = frozenset({"v2_infer", "v1_predict", "seldon_predictions"})


def predicts(endpoint: str) -> bool:
    return endpoint in PREDICT_ENDPOINTS or "infer" in endpoint or "predict" in endpoint


@dataclass(frozen=True)
class Sample:
    """One pod's (or a track's summed) prediction counters."""

    requests: Mapping[str, float] = field(default_factory=dict)  # status code -> count
    buckets: Mapping[float, float] = field(default_factory=dict)  # le -> cumulative count
    classes: Mapping[str, float] = field(default_factory=dict)  # predicted class -> rows
    shadow_rows: Mapping[str, float] = field(default_factory=dict)  # agree|disagree -> rows

    @property
    def total(self) -> float:
        return sum(self.requests.values())

    @property
    def errors(self) -> float:
        return sum(v for code, v in self.requests.items() if code.startswith("5"))

    def series(self) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for name, values in (("requests", self.requests), ("classes", self.classes),
                             ("shadow", self.shadow_rows)):
            out.update({(name, str(k)): v for k, v in values.items()})
        out.update({("buckets", repr(k)): v for k, v in self.buckets.items()})
        return out


K = TypeVar("K", str, float)


def _add(a: Mapping[K, float], b: Mapping[K, float], sign: float = 1) -> dict[K, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + sign * v
    return out


def combine(samples: Iterable[Sample]) -> Sample:
    """The sum of several pods' samples (a track)."""
    req: dict[str, float] = {}
    buckets: dict[float, float] = {}
    classes: dict[str, float] = {}
    shadow: dict[str, float] = {}
    for s in samples:
        req, buckets = _add(req, s.requests), _add(buckets, s.buckets)
        classes, shadow = _add(classes, s.classes), _add(shadow, s.shadow_rows)
    return Sample(req, buckets, classes, shadow)


def parse(text: str, model: str | None = None) -> Sample:
    """A pod's prediction counters from its Prometheus text exposition; ``model`` keeps
    only that model's series (None: all)."""
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    classes: dict[str, float] = {}
    shadow: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if model is not None and labels.get("model", model) != model:
                continue
            if s.name == "kustos_requests_total" and predicts(labels.get("endpoint", "")):
                code = labels.get("code", "")
                requests[code] = requests.get(code, 0.0) + s.value
            elif (s.name == "kustos_request_duration_seconds_bucket"
                  and predicts(labels.get("endpoint", ""))):
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "kustos_predictions_total":
                cls = labels.get("class", "")
                classes[cls] = classes.get(cls, 0.0) + s.value
            elif s.name == "kustos_shadow_rows_total":
                key = labels.get("agreement", "")
                shadow[key] = shadow.get(key, 0.0) + s.value
    return Sample(requests, buckets, classes, shadow)


def pod_delta(before: Sample | None, after: Sample) -> Sample:
    """One pod's counts between two scrapes; a restart in between (any series went down)
    makes the window the later scrape."""
    if before is None:
        return after
    old, new = before.series(), after.series()
    if any(new.get(k, 0.0) < v for k, v in old.items()):
        return after
    return Sample(_add(after.requests, before.requests, -1),
                  _add(after.buckets, before.buckets, -1),
                  _add(after.classes, before.classes, -1),
                  _add(after.shadow_rows, before.shadow_rows, -1))


def track_window(before: Mapping[str, Sample], after: Mapping[str, Sample]) -> Sample:
    """A track's counts between two scrapes of its pods (by pod name)."""
    return combine(pod_delta(before.get(pod), s) for pod, s in after.items())


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside the bucket
    as Prometheus' histogram_quantile does; None without observations. A quantile in the
    +Inf bucket is the highest finite bound."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if math.isinf(bounds[-1]) else max(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return prev_bound
            if count == prev_count:
                return le
            return prev_bound + (le - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = le, count
    return prev_bound
