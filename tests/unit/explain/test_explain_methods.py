"""The four SHAP methods with real shap on real models: additivity, the explained output,
a feature the model cannot use, and models a method does not suit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kustos.runtime.explain.methods import build
from kustos.runtime.explain.problems import METHOD_UNSUPPORTED, SetupProblem
from kustos.runtime.server.models import SklearnModel

from .conftest import Trained, Zoo

CASES = [
    # method, model, what the attributions must add up to (computed here, independently)
    ("shap-tree", "cancer_rf", "predict_proba"),
    ("shap-tree", "cancer_gb", "predict_proba[1]"),
    ("shap-tree", "wine_rf", "predict_proba"),
    ("shap-linear", "iris_lr", "decision_function"),
    ("shap-linear", "diabetes_lin", "predict"),
    ("shap-kernel", "iris_lr", "predict_proba"),
    ("shap-kernel", "diabetes_lin", "predict"),
    ("shap-permutation", "iris_lr", "predict_proba"),
    ("shap-permutation", "diabetes_lin", "predict"),
]


def expected_output(t: Trained, kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "predict_proba":
        out = t.est.predict_proba(x)
    elif kind == "predict_proba[1]":
        out = t.est.predict_proba(x)[:, 1:]
    elif kind == "decision_function":
        out = t.est.decision_function(x)
    else:
        out = t.est.predict(x)
    return np.asarray(out, dtype=np.float64).reshape(len(x), -1)


@pytest.mark.parametrize(("method", "which", "kind"), CASES)
def test_attributions_add_up_to_the_model_output(zoo: Zoo, method: str, which: str,
                                                 kind: str) -> None:
    t: Trained = getattr(zoo, which)
    rng = np.random.default_rng(1)
    background = t.x[rng.choice(len(t.x), 40, replace=False)]
    rows = t.x[rng.choice(len(t.x), 6, replace=False)]
    explainer = build(method, SklearnModel(t.est, which, "1"), background, t.names)
    result = explainer.explain(rows)
    want = expected_output(t, kind, rows)
    n_out = want.shape[1]
    assert result.values.shape == (6, len(t.names), n_out)
    assert result.base_values.shape == (6, n_out)
    np.testing.assert_allclose(result.outputs, want, rtol=1e-9, atol=1e-9)
    # Additivity: base value + sum of attributions = the explained model output.
    total = result.base_values + result.values.sum(axis=1)
    np.testing.assert_allclose(total, want, atol=1e-6 * max(1.0, float(np.abs(want).max())))
    # The constant column carries no information: ~0 attribution everywhere.
    assert np.abs(result.values[:, t.constant, :]).max() < 1e-8
    # And the attributions are not all zero: the model's real features carry them.
    assert np.abs(result.values).sum() > 1e-3
    if kind == "predict_proba":
        assert explainer.target.names == [str(c) for c in t.est.classes_]
        assert explainer.target.kind == "probability"


def test_linear_attributions_are_coefficient_times_distance_from_the_mean(zoo: Zoo) -> None:
    t = zoo.diabetes_lin
    background = t.x[:50]
    explainer = build("shap-linear", SklearnModel(t.est, "d", "1"), background, t.names)
    rows = t.x[100:103]
    result = explainer.explain(rows)
    # For a linear model with independent features, SHAP_j = coef_j * (x_j - E[x_j]).
    want = t.est.coef_ * (rows - background.mean(axis=0))
    np.testing.assert_allclose(result.values[:, :, 0], want, atol=1e-8)
    np.testing.assert_allclose(result.base_values[:, 0], t.est.predict(background).mean())


def test_tree_explains_forest_probabilities_with_the_exact_fast_algorithm(zoo: Zoo) -> None:
    t = zoo.cancer_rf
    explainer = build("shap-tree", SklearnModel(t.est, "c", "1"), t.x[:30], t.names)
    assert explainer.algorithm == "tree_path_dependent"
    # Boosted trees output log-odds: their probabilities are explained against the background.
    gb = zoo.cancer_gb
    explainer = build("shap-tree", SklearnModel(gb.est, "g", "1"), gb.x[:30], gb.names)
    assert explainer.algorithm == "tree_interventional"
    assert explainer.target.names == ["1"]


@pytest.mark.parametrize(("method", "which", "advice"), [
    ("shap-tree", "iris_lr", "shap-linear"),
    ("shap-linear", "cancer_rf", "shap-tree"),
    ("shap-linear", "wine_rf", "shap-kernel"),
    ("shap-kernel-fast", "iris_lr", "shap-tree, shap-linear, shap-kernel, shap-permutation"),
])
def test_a_method_that_does_not_suit_the_model_says_what_to_use(
        zoo: Zoo, method: str, which: str, advice: str) -> None:
    t: Trained = getattr(zoo, which)
    with pytest.raises(SetupProblem) as info:
        build(method, SklearnModel(t.est, which, "1"), t.x[:20], t.names)
    assert info.value.reason == METHOD_UNSUPPORTED
    assert advice in info.value.message
    assert type(t.est).__name__ in info.value.message or "unknown method" in info.value.message


def test_multiclass_gradient_boosting_is_refused_by_shap_tree(zoo: Zoo) -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    t = zoo.iris_lr  # iris data, three classes
    gb = GradientBoostingClassifier(n_estimators=5, max_depth=2).fit(t.x, t.est.predict(t.x))
    with pytest.raises(SetupProblem) as info:
        build("shap-tree", SklearnModel(gb, "g", "1"), t.x[:20], t.names)
    assert info.value.reason == METHOD_UNSUPPORTED
    assert "shap-kernel or shap-permutation" in info.value.message


def test_fresh_explainers_agree_and_are_independent(zoo: Zoo) -> None:
    t = zoo.iris_lr
    explainer = build("shap-kernel", SklearnModel(t.est, "i", "1"), t.x[::5], t.names)
    other = explainer.fresh()
    assert other._impl is not explainer._impl  # KernelExplainer keeps per-call state
    rows = t.x[:4]
    np.testing.assert_allclose(other.explain(rows).values, explainer.explain(rows).values,
                               atol=1e-9)


def test_onnx_models_get_the_model_agnostic_methods(zoo: Zoo, tmp_path: Path) -> None:
    from skl2onnx import to_onnx

    from kustos.runtime.server.models import load_model

    t = zoo.iris_lr
    onx = to_onnx(t.est, t.x[:1].astype(np.float32), options={"zipmap": False})
    (tmp_path / "iris.onnx").write_bytes(onx.SerializeToString())
    model = load_model(tmp_path / "iris.onnx", "iris-onnx")
    explainer = build("shap-kernel", model, t.x[::4], t.names)
    assert explainer.target.names == ["probabilities[0]", "probabilities[1]", "probabilities[2]"]
    rows = t.x[[0, 60, 120]]
    result = explainer.explain(rows)
    np.testing.assert_allclose(result.outputs, t.est.predict_proba(rows), atol=1e-5)
    # float32 model outputs: additive to float32 precision
    np.testing.assert_allclose(result.base_values + result.values.sum(axis=1), result.outputs,
                               atol=1e-6)
    assert np.abs(result.values[:, t.constant, :]).max() < 1e-6
    with pytest.raises(SetupProblem) as info:
        build("shap-tree", model, t.x[::4], t.names)
    assert info.value.reason == METHOD_UNSUPPORTED and "shap-kernel" in info.value.message
