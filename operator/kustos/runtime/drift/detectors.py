"""The five detectors, each a thin layer over alibi-detect that returns one :class:`Result`.

alibi_detect (and TensorFlow, for ``mmd``) are imported in :func:`build`, never at module
import, so that the operator package can import this module without them installed.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kustos.runtime.drift.reference import Array, Reference, ReferenceProblem

DETECTORS = ("ks", "chisquare", "tabular", "mmd", "cvm-online")
CORRECTIONS = ("bonferroni", "fdr")


@dataclass(frozen=True)
class Settings:
    detector: str
    p_value: float = 0.05
    correction: str = "bonferroni"
    categorical: tuple[int, ...] = ()
    permutations: int = 100  # mmd
    ert: float = 1000.0  # cvm-online: expected rows between false alarms
    online_window_sizes: tuple[int, ...] = (50,)
    n_bootstraps: int | None = None  # cvm-online: None = the fewest that work for ert
    seed: int = 0


@dataclass
class Result:
    drift: bool
    threshold: float
    feature_p_values: dict[str, float] = field(default_factory=dict)
    feature_distances: dict[str, float] = field(default_factory=dict)
    drifting: list[str] = field(default_factory=list)
    p_value: float | None = None
    distance: float | None = None
    detected_at_row: int | None = None  # cvm-online: row of the window that fired


class Detector(Protocol):
    names: list[str]

    def evaluate(self, x: Array) -> Result: ...


def drifting_mask(p: Array, p_value: float, correction: str) -> Array:
    """Which features drift under the multiple-testing ``correction`` alibi-detect applies."""
    n = len(p)
    if correction == "bonferroni":
        return np.asarray(p < p_value / n)
    order = np.argsort(p)  # Benjamini-Hochberg, as alibi-detect's fdr()
    passed = np.nonzero(p[order] < p_value * np.arange(1, n + 1) / n)[0]
    if not passed.size:
        return np.zeros(n, dtype=bool)
    return np.asarray(p <= p[order][passed.max()])


class FeatureWise:
    """ks / chisquare / tabular: one test per feature, corrected for multiple testing."""

    def __init__(self, detector: Any, names: list[str], settings: Settings) -> None:
        self.detector = detector
        self.names = names
        self.settings = settings

    def evaluate(self, x: Array) -> Result:
        out = self.detector.predict(x, drift_type="batch", return_p_val=True,
                                    return_distance=True)["data"]
        p = np.asarray(out["p_val"], dtype=np.float64).reshape(-1)
        dist = np.asarray(out["distance"], dtype=np.float64).reshape(-1)
        mask = drifting_mask(p, self.settings.p_value, self.settings.correction)
        drift = bool(out["is_drift"])
        return Result(
            drift=drift,
            threshold=self.settings.p_value,
            feature_p_values={n: float(v) for n, v in zip(self.names, p, strict=True)},
            feature_distances={n: float(v) for n, v in zip(self.names, dist, strict=True)},
            drifting=[n for n, m in zip(self.names, mask, strict=True) if m],
            p_value=float(p.min()) if p.size else None,
            distance=float(dist.max()) if dist.size else None,
        )


class MMD:
    """Maximum mean discrepancy on all features at once (TensorFlow backend, CPU)."""

    def __init__(self, detector: Any, names: list[str], settings: Settings) -> None:
        self.detector = detector
        self.names = names
        self.settings = settings

    def evaluate(self, x: Array) -> Result:
        out = self.detector.predict(x.astype(np.float32), return_p_val=True,
                                    return_distance=True)["data"]
        p = float(out["p_val"])
        return Result(drift=bool(out["is_drift"]), threshold=self.settings.p_value,
                      p_value=p, distance=float(out["distance"]))


class CVMOnline:
    """Cramér-von Mises online detector: rows are fed one at a time, in arrival order; a
    window drifts if the detector fired on any of its rows. After firing, the detector's
    state is reset so that the next rows are tested afresh."""

    def __init__(self, detector: Any, names: list[str], settings: Settings) -> None:
        self.detector = detector
        self.names = names
        self.settings = settings
        self.threshold = math.nan

    def evaluate(self, x: Array) -> Result:
        fired_at: int | None = None
        fired_stats: Array | None = None
        stats: Array | None = None
        for i, row in enumerate(x):
            out = self.detector.predict(row)["data"]
            raw = out["test_stat"]
            if raw is None or np.isnan(np.asarray(raw, dtype=np.float64)).all():
                continue  # the detector's own windows are not full yet
            stats = np.nanmax(np.asarray(raw, dtype=np.float64), axis=0)
            threshold = np.asarray(out["threshold"], dtype=np.float64).reshape(-1)
            if threshold.size:
                self.threshold = float(threshold.max())
            if out["is_drift"] and fired_at is None:
                fired_at, fired_stats = i, stats
                self.detector.reset_state()
        shown = fired_stats if fired_stats is not None else stats
        distances = ({} if shown is None else
                     {n: float(v) for n, v in zip(self.names, shown, strict=True)})
        drifting = ([n for n, v in distances.items() if v > self.threshold]
                    if fired_at is not None else [])
        return Result(
            drift=fired_at is not None, threshold=self.threshold,
            feature_distances=distances, drifting=drifting,
            distance=max(distances.values()) if distances else None,
            detected_at_row=fired_at)


def _bootstraps(settings: Settings, n_features: int) -> int:
    if settings.n_bootstraps is not None:
        return settings.n_bootstraps
    # alibi-detect estimates the (1 - beta) quantile of simulated statistics and refuses
    # to when there are fewer than 1/beta samples; beta = 1 - (1 - 1/ert)^(1/features).
    beta: float = 1 - (1 - 1 / settings.ert) ** (1 / n_features)
    return max(10000, math.ceil(1.25 / beta))


def check(settings: Settings) -> None:
    if settings.detector not in DETECTORS:
        raise ReferenceProblem(
            "DetectorUnsupported",
            f"unknown detector {settings.detector!r}; use one of {', '.join(DETECTORS)}")
    if settings.correction not in CORRECTIONS:
        raise ReferenceProblem(
            "DetectorUnsupported",
            f"unknown correction {settings.correction!r}; use bonferroni or fdr")


def build(settings: Settings, ref: Reference) -> Detector:
    """Construct the detector (can take seconds: TensorFlow import, cvm-online thresholds)."""
    check(settings)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if settings.detector != "mmd":
        # alibi-detect imports TensorFlow whenever it is installed; only mmd uses it. Hiding
        # it saves seconds of start-up and ~400 MB of memory for the numpy/scipy detectors.
        for module in ("tensorflow", "tensorflow_probability"):
            sys.modules.setdefault(module, None)  # type: ignore[arg-type]
    try:
        import alibi_detect.cd as cd
    except ImportError as exc:
        raise ReferenceProblem(
            "DetectorUnsupported",
            f"alibi-detect is not installed in this environment ({exc}); use the drift "
            "image (images/drift.Dockerfile) or hack/drift-env.sh") from None
    np.random.seed(settings.seed)  # alibi-detect draws from the global RNG
    x, names, p = ref.data, ref.names, settings.p_value
    try:
        if settings.detector == "ks":
            return FeatureWise(cd.KSDrift(x, p_val=p, correction=settings.correction),
                               names, settings)
        if settings.detector == "chisquare":
            bad = [n for i, n in enumerate(names) if not np.array_equal(x[:, i],
                                                                         np.round(x[:, i]))]
            if bad:
                raise ReferenceProblem(
                    "ReferenceInvalid",
                    f"chisquare tests categorical features only, but {bad[:5]} have "
                    "non-integer values; encode categories as integers, or use tabular "
                    "with categoricalFeatures for mixed data")
            return FeatureWise(
                cd.ChiSquareDrift(x.astype(np.int64), p_val=p, correction=settings.correction),
                names, settings)
        if settings.detector == "tabular":
            cats: dict[int, int | None] = dict.fromkeys(settings.categorical)
            return FeatureWise(
                cd.TabularDrift(x, p_val=p, categories_per_feature=cats,
                                correction=settings.correction), names, settings)
        if settings.detector == "mmd":
            try:
                import tensorflow as tf
            except ImportError as exc:
                raise ReferenceProblem(
                    "DetectorUnsupported",
                    f"mmd needs TensorFlow, which is not importable here ({exc})") from None
            tf.random.set_seed(settings.seed)
            return MMD(cd.MMDDrift(x.astype(np.float32), backend="tensorflow", p_val=p,
                                   n_permutations=settings.permutations), names, settings)
        return CVMOnline(
            cd.CVMDriftOnline(x, ert=settings.ert,
                              window_sizes=list(settings.online_window_sizes),
                              n_bootstraps=_bootstraps(settings, x.shape[1]), verbose=False),
            names, settings)
    except ReferenceProblem:
        raise
    except (ValueError, TypeError) as exc:
        raise ReferenceProblem(
            "ReferenceInvalid", f"{settings.detector} refused the reference: {exc}") from None
