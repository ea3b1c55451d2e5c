"""Fairness of a classifier's joined predictions, per sensitive feature (pure, no I/O).

``fairness_report`` takes the labels, the predictions and, per configured sensitive
feature, the feature's value on each row (an input column or a label's metadata, picked
by the caller), and returns JSON-ready figures computed with fairlearn.metrics:

- per slice (one value of the feature): count, accuracy, selection rate, true and false
  positive rates;
- per feature: the demographic parity difference (largest gap of selection rates), the
  equalized odds difference (the larger of the largest TPR gap and the largest FPR gap)
  and the accuracy gap (best minus worst slice accuracy);
- the thresholds of the config that these gaps exceed.

Rates need a positive class. Binary labels: ``positive_label``, or 1 when the labels are
0/1 (True/False), else the larger of the two labels in sorted order. More than two classes:
one-vs-rest with ``positive_label``; without one the rates and the two rate gaps are null
(``ratesUnavailable`` says why) and only accuracy is compared. Slices smaller than
``minSliceSize`` are reported but left out of the gaps (a gap of a handful of rows is
noise). A slice without actual positives (negatives) has no TPR (FPR): null, and it
takes no part in that half of the equalized odds difference, where fairlearn would count
the undefined rate as 0 and report a spurious gap.

Besides the agreed keys (features.{slices, demographicParityDifference,
equalizedOddsDifference, accuracyGap}, violations) the report says per slice whether it
counted (``inGaps``), per feature how many rows lacked it (``missing``), and at the top the
``positiveLabel``, ``ratesUnavailable`` and ``minSliceSize``. Undefined figures are null.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from numpy.typing import NDArray
from sklearn.metrics import accuracy_score

Source = Literal["input", "label"]
SOURCES: tuple[Source, ...] = ("input", "label")
# The gaps of a feature and the config field that bounds each.
GAPS = {"demographicParityDifference": "maxDemographicParityDifference",
        "equalizedOddsDifference": "maxEqualizedOddsDifference",
        "accuracyGap": "maxAccuracyGap"}
DEFAULT_MIN_SLICE_SIZE = 30
SPEC_PATH = "spec.groundTruth.fairness"
# Labels, predictions or a feature's values: a list, or a numpy array.
Values = Sequence[Any] | NDArray[Any]


class FairnessConfigError(ValueError):
    """The fairness config is invalid; the message names the field."""


@dataclass(frozen=True)
class SensitiveFeature:
    """A column whose values split the rows into slices: an input column (``input``) or a
    key of the labels' metadata (``label``)."""

    name: str
    source: Source = "input"


@dataclass(frozen=True)
class FairnessConfig:
    """``spec.groundTruth.fairness`` of a DriftMonitor. Unset thresholds are not checked."""

    sensitive_features: tuple[SensitiveFeature, ...]
    max_demographic_parity_difference: float | None = None
    max_equalized_odds_difference: float | None = None
    max_accuracy_gap: float | None = None
    min_slice_size: int = DEFAULT_MIN_SLICE_SIZE
    # The class the rates count as positive (see fairness_report); None: inferred.
    positive_label: str | int | None = None

    def threshold(self, gap: str) -> float | None:
        """The threshold of a gap (a key of GAPS)."""
        return {"demographicParityDifference": self.max_demographic_parity_difference,
                "equalizedOddsDifference": self.max_equalized_odds_difference,
                "accuracyGap": self.max_accuracy_gap}[gap]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None, path: str = SPEC_PATH
                  ) -> FairnessConfig:
        """The config from the wire form (camelCase) of ``groundTruth.fairness``; a
        FairnessConfigError naming the field (under ``path``) when it is invalid."""
        if not isinstance(spec, Mapping):
            raise FairnessConfigError(f"{path}: must be an object, got {_kind(spec)}")
        known = {"sensitiveFeatures", "minSliceSize", "positiveLabel", *GAPS.values()}
        unknown = sorted(str(k) for k in spec if k not in known)
        if unknown:
            raise FairnessConfigError(f"{path}: unknown field(s) {', '.join(unknown)}")
        features = spec.get("sensitiveFeatures")
        if not isinstance(features, list) or not features:
            raise FairnessConfigError(f"{path}.sensitiveFeatures: must be a non-empty list "
                                      f"of {{name, source}}")
        parsed: list[SensitiveFeature] = []
        for i, item in enumerate(features):
            where = f"{path}.sensitiveFeatures[{i}]"
            if not isinstance(item, Mapping):
                raise FairnessConfigError(f"{where}: must be an object {{name, source}}, "
                                          f"got {_kind(item)}")
            name, source = item.get("name"), item.get("source", "input")
            if not isinstance(name, str) or not name.strip():
                raise FairnessConfigError(f"{where}.name: must be a non-empty string")
            if source not in SOURCES:
                raise FairnessConfigError(f"{where}.source: must be input or label, "
                                          f"got {source!r}")
            if any(f.name == name for f in parsed):
                raise FairnessConfigError(f"{where}.name: {name!r} is listed twice")
            parsed.append(SensitiveFeature(name, source))
        bounds = {field: _fraction(spec.get(field), f"{path}.{field}")
                  for field in GAPS.values()}
        size = spec.get("minSliceSize", DEFAULT_MIN_SLICE_SIZE)
        if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
            raise FairnessConfigError(f"{path}.minSliceSize: must be an integer >= 1, "
                                      f"got {size!r}")
        positive = spec.get("positiveLabel")
        if positive is not None and (isinstance(positive, bool)
                                     or not isinstance(positive, str | int)):
            raise FairnessConfigError(f"{path}.positiveLabel: must be a string or an "
                                      f"integer, got {_kind(positive)}")
        return cls(tuple(parsed),
                   max_demographic_parity_difference=bounds["maxDemographicParityDifference"],
                   max_equalized_odds_difference=bounds["maxEqualizedOddsDifference"],
                   max_accuracy_gap=bounds["maxAccuracyGap"],
                   min_slice_size=int(size), positive_label=positive)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fraction(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) \
            or not 0 <= float(value) <= 1:
        raise FairnessConfigError(f"{where}: must be a number from 0 to 1, got {value!r}")
    return float(value)


def fairness_report(y_true: Values, y_pred: Values, sensitive: Mapping[str, Values],
                    cfg: FairnessConfig,
                    positive_label: Any = None) -> dict[str, Any]:
    """Per-slice metrics, gaps and violations of ``cfg``'s thresholds (see the module
    docstring). ``sensitive`` maps each configured feature's name to its value on each
    row (None for a row that lacks it: counted as ``missing``, left out of that feature).
    ``positive_label`` overrides the config's. Raises ValueError for inputs of different
    lengths, a feature not given, or a non-integer positive label for integer labels."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows, y_pred {len(y_pred)}")
    truth, pred = _labels(y_true, y_pred)
    positive, why = _positive(truth, pred, positive_label if positive_label is not None
                              else cfg.positive_label)
    features: dict[str, Any] = {}
    violations: list[dict[str, Any]] = []
    for feature in cfg.sensitive_features:
        if feature.name not in sensitive:
            raise ValueError(f"no values given for sensitive feature {feature.name!r}")
        values = list(sensitive[feature.name])
        if len(values) != len(truth):
            raise ValueError(f"sensitive feature {feature.name!r} has {len(values)} values "
                             f"for {len(truth)} rows")
        report = _feature(truth, pred, positive, values, cfg.min_slice_size)
        features[feature.name] = report
        for gap in GAPS:
            limit, value = cfg.threshold(gap), report[gap]
            if limit is not None and value is not None and value > limit:
                violations.append({"feature": feature.name, "metric": gap, "value": value,
                                   "threshold": limit})
    return {"features": features, "violations": violations,
            "positiveLabel": _json_scalar(positive), "ratesUnavailable": why,
            "minSliceSize": cfg.min_slice_size}


def _labels(y_true: Values, y_pred: Values) -> tuple[np.ndarray, np.ndarray]:
    """Both label sequences in one comparable type: integers when every label is an
    integral number (1 == 1.0 == True), else strings (a label "1" and a prediction 1 are
    then the same class)."""
    both = list(y_true) + list(y_pred)
    if all(_integral(v) for v in both):
        arr = np.asarray([int(v) for v in both], dtype=np.int64)
    else:
        arr = np.asarray([_as_text(v) for v in both], dtype=object)
    n = len(y_true)
    return arr[:n], arr[n:]


def _integral(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is bool:  # the common cases first: this runs once per label
        return True
    if kind is str:
        return False
    if isinstance(value, Integral | np.bool_):
        return True
    return isinstance(value, Real) and math.isfinite(float(value)) and float(value).is_integer()


def _as_text(value: Any) -> str:
    if type(value) is str:
        return value
    return str(int(value)) if _integral(value) else str(value)


def _positive(truth: np.ndarray, pred: np.ndarray, positive_label: Any
              ) -> tuple[Any, str | None]:
    """The positive class and, when there is none, why the rates are unavailable."""
    classes = sorted(set(truth.tolist()) | set(pred.tolist()))
    if positive_label is not None:
        if truth.dtype == object:
            return _as_text(positive_label), None
        try:  # a configured "1" for integer labels
            return int(str(_as_text(positive_label)).strip()), None
        except ValueError:
            raise ValueError(f"positive label {positive_label!r} is not an integer, but "
                             f"the labels are integers") from None
    if not classes:
        return None, "no rows"
    if len(classes) > 2:
        return None, (f"{len(classes)} classes and no positive label: selection rate, "
                      f"TPR/FPR, demographic parity and equalized odds need one "
                      f"(one-vs-rest)")
    if set(classes) <= {0, 1} and truth.dtype != object:
        return 1, None
    return (classes[-1] if classes else None), None


def _feature(truth: np.ndarray, pred: np.ndarray, positive: Any, values: list[Any],
             min_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"slices": {}, "missing": 0, "demographicParityDifference": None,
                           "equalizedOddsDifference": None, "accuracyGap": None}
    # Every figure depends only on how many rows each (slice, label, prediction) has: the
    # metrics run on those combinations weighted by their counts. Exact, and without
    # MetricFrame's per-row cost: for 200 000 rows 0.3 s instead of 9.3 s
    # (tests/bench/bench_fairness.py).
    combos: Counter[tuple[str, Any, Any]] = Counter()
    for value, t, p in zip(values, truth.tolist(), pred.tolist(), strict=True):
        if _missing(value):
            out["missing"] += 1
        else:
            combos[(_as_text(value), t, p)] += 1
    if not combos:
        return out
    keys = list(combos)
    s = np.asarray([k[0] for k in keys], dtype=object)
    t = np.asarray([k[1] for k in keys], dtype=truth.dtype)
    p = np.asarray([k[2] for k in keys], dtype=pred.dtype)
    w = np.asarray([combos[k] for k in keys], dtype=np.int64)
    # Binarised (one-vs-rest for more than two classes); None: no rates.
    tp = None if positive is None else t == positive
    pp = None if positive is None else p == positive
    weighted = {"sample_weight": w}
    accuracy = MetricFrame(metrics=accuracy_score, y_true=t, y_pred=p, sensitive_features=s,
                           sample_params=weighted).by_group
    rates = None
    if tp is not None and pp is not None:
        rates = MetricFrame(metrics={"selectionRate": selection_rate,
                                     "truePositiveRate": true_positive_rate,
                                     "falsePositiveRate": false_positive_rate},
                            y_true=tp, y_pred=pp, sensitive_features=s,
                            sample_params={name: weighted for name in (
                                "selectionRate", "truePositiveRate", "falsePositiveRate")}
                            ).by_group
    for key in sorted(set(s.tolist())):
        members = s == key
        entry: dict[str, Any] = {"count": int(w[members].sum()),
                                 "accuracy": _json_float(accuracy[key]),
                                 "selectionRate": None, "truePositiveRate": None,
                                 "falsePositiveRate": None}
        if rates is not None and tp is not None:
            row = rates.loc[key]
            entry["selectionRate"] = _json_float(row["selectionRate"])
            # undefined without actual positives / negatives (fairlearn would say 0)
            if tp[members].any():
                entry["truePositiveRate"] = _json_float(row["truePositiveRate"])
            if (~tp[members]).any():
                entry["falsePositiveRate"] = _json_float(row["falsePositiveRate"])
        entry["inGaps"] = entry["count"] >= min_size
        out["slices"][key] = entry
    large = [k for k, e in out["slices"].items() if e["inGaps"]]
    if len(large) < 2:
        return out  # nothing to compare
    keep = np.isin(s, large)
    sk, wk = s[keep], w[keep]
    acc_frame = MetricFrame(metrics=accuracy_score, y_true=t[keep], y_pred=p[keep],
                            sensitive_features=sk, sample_params={"sample_weight": wk})
    out["accuracyGap"] = _json_float(acc_frame.difference(method="between_groups"))
    if tp is None or pp is None:
        return out
    out["demographicParityDifference"] = _json_float(demographic_parity_difference(
        tp[keep], pp[keep], sensitive_features=sk, sample_weight=wk))
    out["equalizedOddsDifference"] = _equalized_odds(tp[keep], pp[keep], sk, wk)
    return out


def _equalized_odds(tp: np.ndarray, pp: np.ndarray, s: np.ndarray, w: np.ndarray
                    ) -> float | None:
    """max(largest TPR gap, largest FPR gap), as fairlearn's equalized_odds_difference,
    each gap over the slices where its rate is defined (TPR: rows that are actual
    positives; FPR: actual negatives)."""
    gaps = []
    for rows, rate in ((tp, true_positive_rate), (~tp, false_positive_rate)):
        if len(set(s[rows].tolist())) >= 2:
            frame = MetricFrame(metrics=rate, y_true=tp[rows], y_pred=pp[rows],
                                sensitive_features=s[rows],
                                sample_params={"sample_weight": w[rows]})
            gaps.append(float(frame.difference(method="between_groups")))
    return _json_float(max(gaps)) if gaps else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _json_float(value: Any) -> float | None:
    """A plain float for JSON; None for NaN or a missing value."""
    if value is None:
        return None
    out = float(value)
    return None if math.isnan(out) or math.isinf(out) else out


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
