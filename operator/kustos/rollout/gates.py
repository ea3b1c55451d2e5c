"""The analysis of one window: each configured gate compares the candidate with the
stable and says pass, fail or inconclusive (pure).

A gate with fewer than minSamples on either side is inconclusive, never passed: too few
requests prove nothing either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kustos.api.v1alpha1.rollout import AnalysisSpec

from .window import Sample, quantile

Verdict = Literal["pass", "fail", "inconclusive"]
# Additive (Jeffreys) smoothing of class counts for PSI: a class one side never predicted
# would otherwise make the index infinite.
PSI_SMOOTHING = 0.5


@dataclass(frozen=True)
class Gate:
    """One gate's result."""

    name: str
    verdict: Verdict
    stable: float | None = None
    candidate: float | None = None
    value: float | None = None
    threshold: float | None = None
    samples: int = 0
    reason: str | None = None

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict, "samples": self.samples}
        for key in ("stable", "candidate", "value", "threshold"):
            v = getattr(self, key)
            if v is not None:
                out[key] = round(float(v), 6)
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class External:
    """What other resources say about the two models (a DriftMonitor targeting the model):
    input drift of the candidate's traffic and ground-truth figures per version."""

    drift_score: float | None = None
    drifted: bool | None = None
    drift_samples: int = 0
    # version -> {"accuracy": x, "count": n, "fairnessGap": g}
    truth: Mapping[str, Mapping[str, float]] | None = None


def error_rate(s: Sample) -> float | None:
    return s.errors / s.total if s.total else None


def proportions(counts: Mapping[str, float], classes: list[str], alpha: float) -> list[float]:
    n = sum(counts.get(c, 0.0) for c in classes)
    return [(counts.get(c, 0.0) + alpha) / (n + alpha * len(classes)) for c in classes]


def psi(stable: Mapping[str, float], candidate: Mapping[str, float],
        alpha: float = PSI_SMOOTHING) -> float:
    """Population stability index of the candidate's class distribution against the
    stable's: sum((q - p) * ln(q / p)), counts smoothed by ``alpha`` per class."""
    classes = sorted(set(stable) | set(candidate))
    if not classes:
        return 0.0
    p = proportions(stable, classes, alpha)
    q = proportions(candidate, classes, alpha)
    return sum((b - a) * math.log(b / a) for a, b in zip(p, q, strict=True))


def js(stable: Mapping[str, float], candidate: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence (base 2, 0..1) of two class distributions."""
    classes = sorted(set(stable) | set(candidate))
    p = proportions(stable, classes, 0.0)
    q = proportions(candidate, classes, 0.0)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x: list[float]) -> float:
        return sum(a * math.log2(a / c) for a, c in zip(x, m, strict=True) if a > 0)

    return 0.5 * kl(p) + 0.5 * kl(q)


def _gate(name: str, value: float | None, threshold: float, passes: bool, samples: int,
          min_samples: int, stable: float | None = None, candidate: float | None = None,
          missing: str = "") -> Gate:
    if value is None:
        return Gate(name, "inconclusive", stable, candidate, None, threshold, samples,
                    missing or "no data")
    if samples < min_samples:
        return Gate(name, "inconclusive", stable, candidate, value, threshold, samples,
                    f"{samples} samples, {min_samples} needed")
    return Gate(name, "pass" if passes else "fail", stable, candidate, value, threshold,
                samples)


def evaluate(analysis: AnalysisSpec, stable: Sample, candidate: Sample, phase: str,
             versions: tuple[str | None, str | None] = (None, None),
             external: External | None = None) -> list[Gate]:
    """Every configured gate over one window. ``phase`` Shadow adds the agreement gate
    (mirrored requests exist only then); ``versions`` (stable, candidate) look up
    ground-truth figures."""
    t = analysis.thresholds
    n = analysis.min_samples
    ext = external or External()
    gates: list[Gate] = []
    reqs = int(min(stable.total, candidate.total))
    if t.max_error_rate_increase is not None:
        a, b = error_rate(stable), error_rate(candidate)
        diff = None if a is None or b is None else b - a
        gates.append(_gate("errorRate", diff, t.max_error_rate_increase,
                           diff is not None and diff <= t.max_error_rate_increase,
                           reqs, n, a, b, "no requests"))
    if t.max_latency_p99_ratio is not None:
        a, b = quantile(0.99, stable.buckets), quantile(0.99, candidate.buckets)
        ratio = None if a is None or b is None else (b / a if a > 0 else
                                                     (1.0 if b == 0 else math.inf))
        gates.append(_gate("latencyP99", ratio, t.max_latency_p99_ratio,
                           ratio is not None and ratio <= t.max_latency_p99_ratio,
                           reqs, n, a, b, "no requests"))
    if t.max_prediction_divergence is not None:
        rows = int(min(sum(stable.classes.values()), sum(candidate.classes.values())))
        value = None
        if rows:
            value = (psi(stable.classes, candidate.classes) if t.divergence_method == "psi"
                     else js(stable.classes, candidate.classes))
        gates.append(_gate("predictionDivergence", value,
                           t.max_prediction_divergence,
                           value is not None and value <= t.max_prediction_divergence,
                           rows, n, missing="no predictions"))
    if t.min_agreement is not None and phase == "Shadow":
        agree = stable.shadow_rows.get("agree", 0.0)
        rows = int(agree + stable.shadow_rows.get("disagree", 0.0))
        value = agree / rows if rows else None
        gates.append(_gate("agreement", value, t.min_agreement,
                           value is not None and value >= t.min_agreement, rows, n,
                           missing="no mirrored rows"))
    if t.max_drift_score is not None or t.require_no_drift:
        threshold = t.max_drift_score if t.max_drift_score is not None else 0.0
        if t.max_drift_score is not None:
            value = ext.drift_score
            ok = value is not None and value <= t.max_drift_score
        else:
            value = None if ext.drifted is None else float(ext.drifted)
            ok = ext.drifted is False
        # samples: the monitor's evaluated windows (each already sized by the monitor)
        gates.append(_gate("drift", value, threshold, ok, ext.drift_samples, 1,
                           missing="no DriftMonitor result for the model"))
    truth = ext.truth or {}
    old, new = (truth.get(v or "") if v else None for v in versions)
    if t.min_accuracy_ratio is not None or t.max_accuracy_drop is not None:
        a = None if old is None else old.get("accuracy")
        b = None if new is None else new.get("accuracy")
        count = int(min((old or {}).get("count", 0), (new or {}).get("count", 0)))
        if t.min_accuracy_ratio is not None:
            value = None if a is None or b is None or a <= 0 else b / a
            gates.append(_gate("accuracy", value, t.min_accuracy_ratio,
                               value is not None and value >= t.min_accuracy_ratio,
                               count, n, a, b, "no ground truth for both versions"))
        else:
            assert t.max_accuracy_drop is not None
            value = None if a is None or b is None else a - b
            gates.append(_gate("accuracy", value, t.max_accuracy_drop,
                               value is not None and value <= t.max_accuracy_drop,
                               count, n, a, b, "no ground truth for both versions"))
    if t.max_fairness_gap_increase is not None:
        a = None if old is None else old.get("fairnessGap")
        b = None if new is None else new.get("fairnessGap")
        count = int(min((old or {}).get("count", 0), (new or {}).get("count", 0)))
        value = None if a is None or b is None else b - a
        gates.append(_gate("fairness", value, t.max_fairness_gap_increase,
                           value is not None and value <= t.max_fairness_gap_increase,
                           count, n, a, b, "no fairness figures for both versions"))
    return gates


def overall(gates: list[Gate]) -> Verdict:
    """fail if any gate failed; pass if all passed (no gate: pass); else inconclusive."""
    if any(g.verdict == "fail" for g in gates):
        return "fail"
    if all(g.verdict == "pass" for g in gates):
        return "pass"
    return "inconclusive"


def result(gates: list[Gate], now: datetime) -> dict[str, Any]:
    """status.rollout.lastAnalysis."""
    return {"time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "verdict": overall(gates),
            "metrics": {g.name: g.wire() for g in gates}}


def failures(gates: list[Gate]) -> str:
    """The failed gates in words, for the Warning Event and the status message."""
    return "; ".join(
        f"{g.name} {g.value:.4g} beyond threshold {g.threshold:.4g} (stable "
        f"{_num(g.stable)}, candidate {_num(g.candidate)}, {g.samples} samples)"
        for g in gates if g.verdict == "fail" and g.value is not None
        and g.threshold is not None)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
