"""Global interpretability over the background: mean |attribution|, permutation importance,
partial dependence.

- ``meanAbsAttribution``: mean over the background rows (and over the explained outputs)
  of the absolute attribution of each feature; ``attribution`` says what was averaged:
  ``shap-value`` for the SHAP methods, ``lime-weight`` for method lime (a LIME weight is
  the coefficient of a local surrogate, not a SHAP value). Its top-k is the
  ExplainerSpec's ``status.globalImportance``. SHAP reports also carry the same map under
  its first name, ``meanAbsShap`` (and ``meanAbsShapByOutput``), for readers of that key;
  LIME reports do not.
- ``permutationImportance``: scikit-learn's ``permutation_importance``. It needs labels:
  with ``--label-column`` they come from the background file; otherwise the model's own
  predictions on the background are the target, which measures how much the model's
  output depends on each feature (not how accurate the model is).
- ``partialDependence``: scikit-learn's ``partial_dependence`` (brute force, average) for
  the top features by mean |attribution|.

The report goes into a ConfigMap, so it is kept small: numbers are rounded to 6
significant digits, per-feature maps hold at most MAX_FEATURES features (the most
important), per-output detail at most MAX_OUTPUTS outputs.
"""

from __future__ import annotations

import datetime
import logging
import time
import warnings
from typing import Any

import numpy as np
import orjson

from kustos.runtime.explain.methods import SHAP_METHODS, Explainer
from kustos.runtime.server.models import Model, SklearnModel
from kustos.runtime.server.tensors import Array

log = logging.getLogger("kustos.explain")

MAX_FEATURES = 200
MAX_OUTPUTS = 20
MAX_BYTES = 512 << 10
CHUNK_ROWS = 32
PD_GRID = 20
# meanAbsAttribution* under the names SHAP reports had before (SHAP methods only).
_SHAP_ALIASES = {"meanAbsAttribution": "meanAbsShap",
                 "meanAbsAttributionByOutput": "meanAbsShapByOutput"}


def rfc3339(ts: float | None = None) -> str:
    when = datetime.datetime.fromtimestamp(time.time() if ts is None else ts, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _r(value: float) -> float:
    return float(f"{value:.6g}")


def _rounded(values: Any) -> list[Any]:
    return [_r(v) if isinstance(v, float) else _rounded(v) for v in np.asarray(values).tolist()]


def mean_abs_attribution(explainer: Explainer, x: Array) -> tuple[Array, Array]:
    """Per feature: mean |attribution| (SHAP value or LIME weight) over rows and outputs;
    and per output [outputs, features]."""
    total: Array | None = None
    for start in range(0, len(x), CHUNK_ROWS):
        part = np.abs(explainer.explain(x[start:start + CHUNK_ROWS]).values).sum(axis=0)
        total = part if total is None else total + part
    assert total is not None
    by_output = (total / len(x)).T  # [outputs, features]
    return by_output.mean(axis=0), by_output


def permutation(model: Model, x: Array, labels: Array | None, seed: int,
                repeats: int = 5) -> dict[str, Any]:
    if not isinstance(model, SklearnModel):
        return {"skipped": "permutation importance needs a scikit-learn model"}
    from sklearn.base import is_classifier
    from sklearn.inspection import permutation_importance

    est = model.estimator
    target = "labels" if labels is not None else "model-predictions"
    y = labels if labels is not None else est.predict(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        baseline = float(est.score(x, y))
        result = permutation_importance(est, x, y, n_repeats=repeats, random_state=seed)
    return {
        "target": target,
        "scoring": "accuracy" if is_classifier(est) else "r2",
        "repeats": repeats,
        "baseline": _r(baseline),
        "mean": result.importances_mean,
        "std": result.importances_std,
    }


def partial_dependence(model: Model, x: Array, features: list[int],
                       names: list[str]) -> list[dict[str, Any]]:
    if not isinstance(model, SklearnModel):
        return [{"skipped": "partial dependence needs a scikit-learn model"}]
    from sklearn.base import is_classifier
    from sklearn.inspection import partial_dependence as pd_

    est = model.estimator
    classes = ([str(c) for c in np.asarray(est.classes_).tolist()]
               if is_classifier(est) and hasattr(est, "classes_") else None)
    out: list[dict[str, Any]] = []
    for j in features:
        entry: dict[str, Any] = {"feature": names[j]}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    res = pd_(est, x, [j], kind="average", method="brute", grid_resolution=PD_GRID)
                except ValueError:  # few distinct values: the 5-95% percentiles coincide
                    res = pd_(est, x, [j], kind="average", method="brute",
                              grid_resolution=PD_GRID, percentiles=(0.0, 1.0))
        except Exception as exc:
            entry["error"] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            out.append(entry)
            continue
        avg = np.asarray(res["average"])  # [outputs, grid]
        if classes is not None and avg.shape[0] == len(classes):
            outs = classes
        elif classes is not None and avg.shape[0] == 1:
            outs = classes[-1:]  # binary: the positive class
        else:
            outs = ["prediction"] if avg.shape[0] == 1 else [
                f"prediction_{i}" for i in range(avg.shape[0])]
        entry["grid"] = _rounded(res["grid_values"][0])
        entry["average"] = {o: _rounded(avg[i]) for i, o in enumerate(outs[:MAX_OUTPUTS])}
        out.append(entry)
    return out


def compute(explainer: Explainer, model: Model, x: Array, labels: Array | None, *,
            top_k: int, pd_features: int = 3, seed: int = 0) -> tuple[list[dict[str, Any]],
                                                                      dict[str, Any]]:
    """(globalImportance top-k, full report). ``explainer`` must be this thread's own."""
    started = time.perf_counter()
    names = explainer.feature_names
    shap = explainer.method in SHAP_METHODS
    mean, by_output = mean_abs_attribution(explainer, x)
    order = [int(i) for i in np.argsort(-mean, kind="stable")]
    kept = order[:MAX_FEATURES]
    report: dict[str, Any] = {
        "model": model.name,
        "method": explainer.method,
        "algorithm": explainer.algorithm,
        "rows": len(x),
        "outputs": explainer.target.names[:MAX_OUTPUTS],
        "outputKind": explainer.target.kind,
        "attribution": "shap-value" if shap else "lime-weight",
        "meanAbsAttribution": {names[i]: _r(float(mean[i])) for i in kept},
    }
    if 1 < by_output.shape[0] <= MAX_OUTPUTS:
        report["meanAbsAttributionByOutput"] = {
            o: {names[i]: _r(float(by_output[k, i])) for i in kept}
            for k, o in enumerate(explainer.target.names)}
    if shap:  # the key's first name, still read by SHAP readers (docs/explanations.md)
        report.update({_SHAP_ALIASES[k]: v for k, v in report.items() if k in _SHAP_ALIASES})
    try:
        perm = permutation(model, x, labels, seed)
        if "mean" in perm:
            mean_p, std_p = perm.pop("mean"), perm.pop("std")
            perm["features"] = {names[i]: {"mean": _r(float(mean_p[i])),
                                           "std": _r(float(std_p[i]))} for i in kept}
    except Exception as exc:  # reported in the report; the attributions still stand
        log.warning("permutation importance failed: %s", exc)
        perm = {"error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
    report["permutationImportance"] = perm
    report["partialDependence"] = partial_dependence(model, x, order[:pd_features], names)
    if len(order) > len(kept):
        report["omittedFeatures"] = len(order) - len(kept)
    if len(orjson.dumps(report)) > MAX_BYTES:  # many outputs x features: keep the essentials
        report.pop("meanAbsAttributionByOutput", None)
        report.pop("meanAbsShapByOutput", None)
        report["partialDependence"] = [{"feature": e["feature"]}
                                       for e in report["partialDependence"]]
        report["truncated"] = True
    report["durationSeconds"] = _r(time.perf_counter() - started)
    report["computedAt"] = rfc3339()
    top = [{"feature": names[i], "value": _r(float(mean[i]))} for i in order[:top_k]]
    return top, report
