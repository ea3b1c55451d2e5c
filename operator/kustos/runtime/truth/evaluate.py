"""Evaluation of one model version's window of joined predictions (pure, no I/O).

Classification: accuracy, macro precision/recall/F1 (scikit-learn, zero_division=0),
and, when the predictions carry probabilities, ROC AUC (binary: the score of the second
class column; multiclass: one-vs-rest, macro) and log loss. Regression: MAE and RMSE.
Always: label coverage (share of the window's predictions with a label) and the label
delay (label arrival minus prediction time, p50/p95; a label that came first counts 0).

Below ``minSamples`` labelled rows the label metrics are null and the version is
"inconclusive": no threshold is checked on them (coverage needs ``minSamples``
predictions). Before labels arrive, ``estimatedAccuracy`` is the mean of the largest
class probability over the window's unlabelled predictions: confidence-based, exact only
when the model's probabilities are calibrated (a probability of 0.8 is right 80 % of the
time); null without probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kustos.runtime.truth.config import THRESHOLDS, TruthConfig
from kustos.runtime.truth.store import Joined

METRICS_CLASSIFICATION = ("accuracy", "precision", "recall", "f1", "rocAuc", "logLoss",
                          "estimatedAccuracy")
METRICS_REGRESSION = ("mae", "rmse")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def classification(y_true: Sequence[str], y_pred: Sequence[str],
                   proba: np.ndarray[Any, Any] | None, classes: Sequence[str] | None
                   ) -> dict[str, float | None]:
    from sklearn.metrics import (
        accuracy_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    out: dict[str, float | None] = {"accuracy": float(accuracy_score(y_true, y_pred))}
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                 zero_division=0)
    out.update(precision=float(p), recall=float(r), f1=float(f), rocAuc=None, logLoss=None)
    if proba is not None and classes is not None:
        labels = list(classes)
        known = [t in labels for t in y_true]
        if all(known) and len(set(y_true)) > 1:
            try:
                if len(labels) == 2:
                    positive = np.asarray([t == labels[1] for t in y_true])
                    out["rocAuc"] = _finite(roc_auc_score(positive, proba[:, 1]))
                else:
                    out["rocAuc"] = _finite(roc_auc_score(
                        y_true, proba, multi_class="ovr", average="macro", labels=labels))
            except ValueError:
                out["rocAuc"] = None  # e.g. a class of the labels never occurs
        if all(known):
            try:
                out["logLoss"] = _finite(log_loss(y_true, proba, labels=labels))
            except ValueError:
                out["logLoss"] = None
    return out


def regression(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float | None]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    return {"mae": float(mean_absolute_error(y_true, y_pred)),
            "rmse": float(math.sqrt(mean_squared_error(y_true, y_pred)))}


def _proba_matrix(rows: Sequence[Joined]) -> tuple[np.ndarray[Any, Any] | None,
                                                    list[str] | None]:
    """The rows' probabilities as one matrix, when every row has them over one class list."""
    if not rows or any(r.proba is None or r.classes is None for r in rows):
        return None, None
    classes = rows[0].classes
    if any(r.classes != classes for r in rows):
        return None, None
    return np.asarray([r.proba for r in rows], dtype=np.float64), list(classes or [])


def version_report(rows: Sequence[Joined], cfg: TruthConfig, now: float
                   ) -> tuple[dict[str, Any], list[float], list[Joined]]:
    """The status entry of one version, its label delays, and its labelled rows."""
    labelled = [r for r in rows if r.label_ts is not None and r.true_label is not None]
    unlabelled = [r for r in rows if r.label_ts is None]
    delays = [max(0.0, (r.label_ts or 0.0) - r.ts) for r in labelled]
    enough = len(labelled) >= cfg.min_samples
    metrics: dict[str, float | None]
    if cfg.task == "classification":
        metrics = dict.fromkeys(METRICS_CLASSIFICATION)
        if enough:
            proba, classes = _proba_matrix(labelled)
            metrics.update(classification([r.true_label or "" for r in labelled],
                                          [r.label or "" for r in labelled], proba, classes))
        with_p = [max(r.proba) for r in unlabelled if r.proba]
        metrics["estimatedAccuracy"] = float(np.mean(with_p)) if with_p else None
    else:
        metrics = dict.fromkeys(METRICS_REGRESSION)
        pairs = [(r.true_value, r.value) for r in labelled
                 if r.true_value is not None and r.value is not None]
        if enough and pairs:
            metrics.update(regression([t for t, _ in pairs], [v for _, v in pairs]))
    coverage = len(labelled) / len(rows) if rows else None
    entry: dict[str, Any] = {
        # count: the labelled predictions the metrics are computed on (minSamples counts
        # these); predictions: all the window's predictions of the version.
        "window": cfg.window, "count": len(labelled), "predictions": len(rows),
        "coverage": coverage,
        "labelDelaySeconds": {"p50": float(np.percentile(delays, 50)) if delays else None,
                              "p95": float(np.percentile(delays, 95)) if delays else None},
        "metrics": metrics, "inconclusive": not enough, "fairness": None,
    }
    return entry, delays, labelled


def violations(version: str, entry: dict[str, Any], cfg: TruthConfig
               ) -> list[dict[str, Any]]:
    """Thresholds the entry breaks; none while the version is inconclusive."""
    out = []
    for key, limit in cfg.thresholds.items():
        metric, side = THRESHOLDS[key]
        if metric == "coverage":
            value = entry["coverage"] if entry["predictions"] >= cfg.min_samples else None
        else:
            value = None if entry["inconclusive"] else entry["metrics"].get(metric)
        if value is None:
            continue
        if (side == "min" and value < limit) or (side == "max" and value > limit):
            out.append({"version": version, "metric": metric, "value": value,
                        "threshold": limit, "kind": "performance"})
    return out
