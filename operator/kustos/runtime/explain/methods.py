"""The four SHAP methods and LIME behind one small interface: rows in, attributions out.

What is explained (the "target"):
- classifiers with ``predict_proba``: the predicted probability of each class
  (shap-tree, shap-kernel, shap-permutation), one attribution vector per class;
- shap-linear on a classifier: its linear output, ``decision_function`` (log-odds for
  LogisticRegression): the quantity a linear model is additive in;
- regressors: the prediction.
- lime: what kernel and permutation explain (probabilities, or the prediction); its
  attributions are the weights of a local linear surrogate (see lime_method.py).
- XGBoost and LightGBM boosters (shap-tree): their margin, the raw sum of tree outputs
  (log-odds for binary classifiers, one score per class for multi-class softmax, the
  prediction for a regressor with an identity link), which the tree algorithm attributes
  exactly; kernel and permutation explain their probabilities, as for sklearn.
Every answer carries the base value (the expected output over the background) and the
model output being explained, so ``base + sum(attributions) == output`` can be checked
by the client. (For lime the base value is the surrogate's intercept and the sum is the
surrogate's prediction, which only approximates the output.)

A shap explainer object is not safe to share between threads (KernelExplainer keeps
per-call state on itself): :meth:`Explainer.fresh` builds another one for the thread
that computes the global report.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kustos.runtime.explain.lime_method import DEFAULT_SAMPLES as LIME_SAMPLES
from kustos.runtime.explain.problems import METHOD_UNSUPPORTED, SetupProblem
from kustos.runtime.server.boosters import BoosterModel
from kustos.runtime.server.models import Model, SklearnModel
from kustos.runtime.server.tensors import Array

log = logging.getLogger("kustos.explain")

SHAP_METHODS = ("shap-tree", "shap-linear", "shap-kernel", "shap-permutation")
METHODS = (*SHAP_METHODS, "lime")
# How close base + sum(attributions) must be to the model output for shap-tree's fast
# path-dependent algorithm to count as explaining probabilities (it is exact when so).
EXACT = 1e-6


@dataclass(frozen=True)
class Target:
    """The model output being explained: rows -> [rows, outputs], with output names."""

    fn: Callable[[Array], Array]
    names: list[str]
    kind: str  # probability | prediction | log-odds | decision | margin


@dataclass(frozen=True)
class Attributions:
    values: Array  # [rows, features, outputs]
    base_values: Array  # [rows, outputs]
    outputs: Array  # [rows, outputs]: the model output the attributions add up to


class Explainer:
    """One method bound to one model and background."""

    def __init__(self, method: str, target: Target, feature_names: list[str],
                 make: Callable[[], Any], run: Callable[[Any, Array], tuple[Any, Any]],
                 algorithm: str) -> None:
        self.method = method
        self.target = target
        self.feature_names = feature_names
        self.algorithm = algorithm  # e.g. "tree_path_dependent"; reported in responses
        self._make = make
        self._run = run
        self._impl = make()

    def fresh(self) -> Explainer:
        return Explainer(self.method, self.target, self.feature_names, self._make, self._run,
                         self.algorithm)

    def explain(self, x: Array) -> Attributions:
        rows = x.shape[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw_values, raw_base = self._run(self._impl, x)
            outputs = self.target.fn(x)
        n_out = outputs.shape[1]
        values = np.asarray(raw_values, dtype=np.float64)
        if values.ndim == 2:
            values = values[:, :, None]
        values = values.reshape(rows, x.shape[1], n_out)
        base = np.asarray(raw_base, dtype=np.float64).reshape(-1)
        if base.size == n_out:
            base = np.broadcast_to(base, (rows, n_out))
        base = np.ascontiguousarray(base.reshape(rows, n_out))
        return Attributions(values, base, np.ascontiguousarray(outputs, dtype=np.float64))


# --------------------------------------------------------------------------- targets


def _as_2d(fn: Callable[[Array], Any]) -> Callable[[Array], Array]:
    def call(x: Array) -> Array:
        out = np.asarray(fn(x), dtype=np.float64)
        return out.reshape(x.shape[0], -1)

    return call


def _class_names(est: Any) -> list[str]:
    return [str(c) for c in np.asarray(est.classes_).tolist()]


def _is_classifier(est: Any) -> bool:
    from sklearn.base import is_classifier

    return bool(is_classifier(est)) and hasattr(est, "classes_")


def _regression_target(est: Any, x: Array) -> Target:
    fn = _as_2d(est.predict)
    width = fn(x[:1]).shape[1]
    names = ["prediction"] if width == 1 else [f"prediction_{i}" for i in range(width)]
    return Target(fn, names, "prediction")


def _decision_target(est: Any) -> Target:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    classes = _class_names(est)
    kind = "log-odds" if isinstance(est, LogisticRegression | LogisticRegressionCV) else "decision"
    return Target(_as_2d(est.decision_function), classes[1:] if len(classes) == 2 else classes,
                  kind)


def model_target(model: Model, x: Array) -> Target:
    """What model-agnostic methods (kernel, permutation) explain."""
    if isinstance(model, SklearnModel):
        est = model.estimator
        if _is_classifier(est):
            if hasattr(est, "predict_proba"):
                return Target(_as_2d(est.predict_proba), _class_names(est), "probability")
            if hasattr(est, "decision_function"):
                return _decision_target(est)
        return _regression_target(est, x)
    if isinstance(model, BoosterModel):
        if model.n_classes:
            return Target(_as_2d(model.predict_proba), [str(c) for c in model.classes or []],
                          "probability")
        return Target(_booster_predict(model), ["prediction"], "prediction")
    return _onnx_target(model, x)


def _booster_predict(model: BoosterModel) -> Callable[[Array], Array]:
    name = model.inputs[0].name
    return _as_2d(lambda x: model.predict({name: x}, ["predict"])["predict"])


def _onnx_target(model: Model, x: Array) -> Target:
    if len(model.inputs) != 1:
        raise SetupProblem(METHOD_UNSUPPORTED,
                           f"model {model.name!r} takes {len(model.inputs)} input tensors; the "
                           "explainer needs a model with one input [rows, features]")
    numeric = [o for o in model.outputs if o.datatype.startswith(("FP", "INT", "UINT"))]
    probs = [o for o in numeric if "prob" in o.name.lower()]
    if not numeric:
        raise SetupProblem(METHOD_UNSUPPORTED,
                           f"model {model.name!r} has no numeric output to explain")
    name, in_name = (probs or numeric)[0].name, model.inputs[0].name

    def fn(rows: Array) -> Array:
        out = model.predict(model.prepare({in_name: rows}), [name])[name]
        return np.asarray(out, dtype=np.float64).reshape(rows.shape[0], -1)

    width = fn(x[:1]).shape[1]
    names = [name] if width == 1 else [f"{name}[{i}]" for i in range(width)]
    return Target(fn, names, "probability" if probs else "prediction")


# --------------------------------------------------------------------------- methods


def _sklearn_estimator(model: Model, method: str) -> Any:
    if not isinstance(model, SklearnModel):
        raise SetupProblem(
            METHOD_UNSUPPORTED,
            f"{method} needs a scikit-learn model; model {model.name!r} is {model.platform}: "
            "use shap-kernel or shap-permutation")
    return model.estimator


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _tree(model: Model, bg: Array) -> tuple[Target, Callable[[], Any], str]:
    import shap

    if isinstance(model, BoosterModel):
        return _booster_tree(model, bg)
    est = _sklearn_estimator(model, "shap-tree")
    kind = type(est).__name__
    advice = (f"shap-tree needs a tree model (RandomForest, ExtraTrees, DecisionTree, "
              f"GradientBoosting, HistGradientBoosting) as the model itself, not inside a "
              f"Pipeline; {kind} is not one: use shap-linear for a linear model, or "
              "shap-kernel / shap-permutation for any model")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = shap.TreeExplainer(est)
    except Exception as exc:
        if type(est).__module__.startswith(("sklearn.ensemble", "sklearn.tree")):
            advice = (f"shap-tree cannot explain this {kind}: use shap-kernel or "
                      "shap-permutation")
        raise SetupProblem(METHOD_UNSUPPORTED, f"{advice} ({_first_line(exc)})") from None
    if not (_is_classifier(est) and hasattr(est, "predict_proba")):
        target = _regression_target(est, bg)
        return target, lambda: shap.TreeExplainer(est), "tree_path_dependent"
    proba = Target(_as_2d(est.predict_proba), _class_names(est), "probability")
    # Forests average class frequencies in their leaves: the raw tree output already is
    # the probability and the fast path-dependent algorithm explains it exactly.
    sample = bg[: min(5, len(bg))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = fast(sample)
    total = np.asarray(exp.values).sum(axis=1) + np.asarray(exp.base_values)
    want = proba.fn(sample)
    if total.reshape(want.shape[0], -1).shape == want.shape and np.allclose(
            total.reshape(want.shape), want, atol=EXACT):
        return proba, lambda: shap.TreeExplainer(est), "tree_path_dependent"
    # Boosted trees output log-odds; shap transforms them to probabilities against the
    # background ("interventional"), which it supports for binary classifiers.

    def interventional() -> Any:
        return shap.TreeExplainer(est, data=bg, feature_perturbation="interventional",
                                  model_output="probability")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interventional()(sample)
    except Exception as exc:
        raise SetupProblem(
            METHOD_UNSUPPORTED,
            f"shap-tree cannot explain the probabilities of this {kind} "
            f"({_first_line(exc)}); use shap-kernel or shap-permutation") from None
    classes = _class_names(est)
    positive = Target(lambda x: proba.fn(x)[:, 1:], classes[1:], "probability")
    return positive, interventional, "tree_interventional"


def _booster_tree(model: BoosterModel, bg: Array) -> tuple[Target, Callable[[], Any], str]:
    """shap's TreeExplainer on the booster itself, path-dependent (no background needed):
    it attributes the margin exactly, so that is what is explained."""
    import shap

    booster = model.booster
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shap.TreeExplainer(booster)
    except Exception as exc:
        raise SetupProblem(
            METHOD_UNSUPPORTED,
            f"shap-tree cannot explain this {model.library} model ({_first_line(exc)}); "
            "use shap-kernel or shap-permutation") from None
    if model.n_classes == 2:
        names, kind = [str(model.classes[1] if model.classes else 1)], "log-odds"
    elif model.n_classes:
        names, kind = [str(c) for c in model.classes or []], "margin"
    else:
        sample = bg[: min(5, len(bg))]
        same = np.allclose(model.margin(sample), _booster_predict(model)(sample), atol=EXACT)
        # An identity link (squared error...): the margin is the prediction itself.
        width = model.margin(sample).shape[1]
        names = ["prediction"] if width == 1 else [f"prediction_{i}" for i in range(width)]
        kind = "prediction" if same else "margin"
    return Target(model.margin, names, kind), lambda: shap.TreeExplainer(booster), \
        "tree_path_dependent"


def _linear(model: Model, bg: Array) -> tuple[Target, Callable[[], Any], str]:
    import shap

    est = _sklearn_estimator(model, "shap-linear")
    kind = type(est).__name__

    def make() -> Any:
        return shap.LinearExplainer(est, shap.maskers.Independent(bg, max_samples=len(bg)))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make()
    except Exception as exc:
        raise SetupProblem(
            METHOD_UNSUPPORTED,
            f"shap-linear needs a linear model (LinearRegression, Ridge, Lasso, ElasticNet, "
            f"LogisticRegression, SGD...) as the model itself, not inside a Pipeline; {kind} "
            "is not one: use shap-tree for tree ensembles, or shap-kernel / shap-permutation "
            f"for any model ({_first_line(exc)})") from None
    if _is_classifier(est):
        if not hasattr(est, "decision_function"):
            raise SetupProblem(METHOD_UNSUPPORTED,
                               f"shap-linear: {kind} has no decision_function; use shap-kernel")
        return _decision_target(est), make, "linear_interventional"
    return _regression_target(est, bg), make, "linear_interventional"


def build(method: str, model: Model, background: Array, feature_names: list[str], *,
          kernel_clusters: int = 10, lime_samples: int = LIME_SAMPLES, seed: int = 0) -> Explainer:
    """An explainer for ``method``; SetupProblem(MethodUnsupported) when it cannot work."""
    if method not in METHODS:
        raise SetupProblem(METHOD_UNSUPPORTED,
                           f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    bg = np.ascontiguousarray(background, dtype=np.float64)
    target: Target
    run: Callable[[Any, Array], tuple[Any, Any]]
    make: Callable[[], Any]
    if method == "lime":
        # LIME needs no shap: imported lazily, and shap-only processes never import lime.
        from kustos.runtime.explain.lime_method import lime_parts

        target = model_target(model, bg)
        make, run, algorithm = lime_parts(target.fn, len(target.names), bg, feature_names,
                                          lime_samples, seed)
    else:
        target, make, run, algorithm = _shap_parts(method, model, bg, kernel_clusters, seed)
    try:
        explainer = Explainer(method, target, feature_names, make, run, algorithm)
    except SetupProblem:
        raise
    except Exception as exc:
        raise SetupProblem(METHOD_UNSUPPORTED,
                           f"{method} cannot explain this model: {_first_line(exc)}") from None
    _self_check(explainer, bg)
    return explainer


def _shap_parts(method: str, model: Model, bg: Array, kernel_clusters: int, seed: int
                ) -> tuple[Target, Callable[[], Any], Callable[[Any, Array], tuple[Any, Any]],
                           str]:
    import shap

    target: Target
    run: Callable[[Any, Array], tuple[Any, Any]]
    if method == "shap-tree":
        target, make, algorithm = _tree(model, bg)

        def run(impl: Any, x: Array) -> tuple[Any, Any]:
            exp = impl(x, check_additivity=False)
            return exp.values, exp.base_values

    elif method == "shap-linear":
        target, make, algorithm = _linear(model, bg)

        def run(impl: Any, x: Array) -> tuple[Any, Any]:
            exp = impl(x)
            return exp.values, exp.base_values

    elif method == "shap-kernel":
        target = model_target(model, bg)
        # KernelExplainer evaluates the model on every (coalition x background row): a
        # k-means summary of the background keeps that affordable.
        summary = shap.kmeans(bg, kernel_clusters) if len(bg) > kernel_clusters else bg
        fn = target.fn
        algorithm = f"kernel (background: {min(len(bg), kernel_clusters)} k-means centres)"

        def make() -> Any:
            return shap.KernelExplainer(fn, summary)

        def run(impl: Any, x: Array) -> tuple[Any, Any]:
            # l1_reg=False: the full Shapley estimate, no feature selection.
            values = impl.shap_values(x, l1_reg=False, silent=True)
            return values, impl.expected_value

    else:
        target = model_target(model, bg)
        fn = target.fn
        max_evals = max(500, 2 * bg.shape[1] + 1)
        algorithm = f"permutation (max_evals {max_evals})"

        def make() -> Any:
            masker = shap.maskers.Independent(bg, max_samples=len(bg))
            return shap.PermutationExplainer(fn, masker, seed=seed)

        def run(impl: Any, x: Array) -> tuple[Any, Any]:
            exp = impl(x, max_evals=max_evals, silent=True)
            return exp.values, exp.base_values

    return target, make, run, algorithm


def _self_check(explainer: Explainer, bg: Array) -> None:
    """One real explanation at start: compiles shap's numba code (seconds, once) so the
    first request does not pay for it, and checks the attributions add up (SHAP only:
    LIME's surrogate approximates the output, its gap is no fault)."""
    try:
        result = explainer.explain(bg[:1])
    except Exception as exc:
        raise SetupProblem(
            METHOD_UNSUPPORTED,
            f"{explainer.method} failed on a background row: {_first_line(exc)}") from None
    gap = float(np.abs(result.values.sum(axis=1) + result.base_values - result.outputs).max())
    if explainer.method in SHAP_METHODS and gap > 1e-2:
        log.warning("%s: attributions miss the model output by %.3g on a background row",
                    explainer.method, gap)
