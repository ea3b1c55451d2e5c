"""The global report: mean |attribution|, permutation importance, partial dependence."""

from __future__ import annotations

import numpy as np
import orjson

from kustos.runtime.explain.global_report import MAX_FEATURES, compute
from kustos.runtime.explain.methods import build
from kustos.runtime.server.models import SklearnModel

from .conftest import Zoo


def test_forest_report_ranks_features_and_puts_the_unused_one_last(zoo: Zoo) -> None:
    t = zoo.cancer_rf
    model = SklearnModel(t.est, "cancer", "1")
    x = t.x[::6][:80]
    explainer = build("shap-tree", model, x, t.names)
    top, report = compute(explainer.fresh(), model, x, None, top_k=5)

    assert len(top) == 5
    values = [e["value"] for e in top]
    assert values == sorted(values, reverse=True) and values[-1] > 0
    # The forest's own impurity importances agree on the most important feature set.
    best_by_impurity = {t.names[i] for i in np.argsort(-t.est.feature_importances_)[:8]}
    assert top[0]["feature"] in best_by_impurity

    assert report["attribution"] == "shap-value"
    shap_means = report["meanAbsAttribution"]
    # SHAP reports keep the first name of the key for its readers, same numbers.
    assert report["meanAbsShap"] == shap_means
    assert report["meanAbsShapByOutput"] == report["meanAbsAttributionByOutput"]
    assert list(shap_means) == sorted(shap_means, key=lambda f: -shap_means[f])
    assert len(shap_means) == len(t.names)
    assert list(shap_means)[-1] == "constant" and shap_means["constant"] == 0.0
    # mean |SHAP| recomputed here from the per-row attributions
    direct = np.abs(explainer.explain(x).values).mean(axis=(0, 2))
    for i, name in enumerate(t.names):
        assert abs(shap_means[name] - direct[i]) <= 1e-5 * max(direct[i], 1e-3)
    assert set(report["meanAbsAttributionByOutput"]) == {"0", "1"}

    perm = report["permutationImportance"]
    assert perm["target"] == "model-predictions" and perm["scoring"] == "accuracy"
    assert perm["baseline"] == 1.0  # the model agrees with its own predictions
    assert perm["features"]["constant"] == {"mean": 0.0, "std": 0.0}
    assert max(f["mean"] for f in perm["features"].values()) > 0

    pdp = report["partialDependence"]
    assert [p["feature"] for p in pdp] == [e["feature"] for e in top[:3]]
    for p in pdp:
        assert len(p["grid"]) >= 2 and p["grid"] == sorted(p["grid"])
        curve = p["average"]["1"]
        assert len(curve) == len(p["grid"]) and all(0 <= v <= 1 for v in curve)
    assert report["outputKind"] == "probability" and report["rows"] == len(x)
    assert report["computedAt"].endswith("Z")
    body = orjson.dumps(report)  # JSON-serialisable as is (it goes into a ConfigMap)
    assert len(body) < 64 << 10


def test_labels_from_the_background_and_a_regressor(zoo: Zoo) -> None:
    t = zoo.diabetes_lin
    model = SklearnModel(t.est, "diabetes", "1")
    x = t.x[:60]
    from sklearn.datasets import load_diabetes

    y = load_diabetes().target[:60]
    explainer = build("shap-linear", model, x, t.names)
    top, report = compute(explainer, model, x, y, top_k=3)
    perm = report["permutationImportance"]
    assert perm["target"] == "labels" and perm["scoring"] == "r2"
    assert abs(perm["baseline"] - t.est.score(x, y)) < 1e-5
    # One output: nothing more to say.
    assert "meanAbsAttributionByOutput" not in report and "meanAbsShapByOutput" not in report
    assert set(report["partialDependence"][0]["average"]) == {"prediction"}
    # For a linear model the ranking follows |coef| * spread of the feature.
    spread = np.abs(t.est.coef_) * np.abs(x - x.mean(axis=0)).mean(axis=0)
    assert top[0]["feature"] == t.names[int(np.argmax(spread))]


def test_report_stays_small_with_many_features() -> None:
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    train = rng.normal(size=(2000, 450))
    est = Ridge().fit(train, train[:, :5].sum(axis=1))
    x = train[:40]
    model = SklearnModel(est, "wide", "1")
    names = [f"f{i}" for i in range(450)]
    explainer = build("shap-linear", model, x, names)
    top, report = compute(explainer, model, x, None, top_k=10)
    assert len(report["meanAbsAttribution"]) == MAX_FEATURES
    assert report["omittedFeatures"] == 450 - MAX_FEATURES
    assert {e["feature"] for e in top[:5]} == {"f0", "f1", "f2", "f3", "f4"}
    assert len(orjson.dumps(report)) < 1 << 20
