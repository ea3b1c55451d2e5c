"""fairness.py against a real model: a classifier trained at test time on scikit-learn's
breast-cancer data with a synthetic group attribute, taught to under-select one group (its
positives were relabelled negative in training). Every figure is checked against the same
quantity computed by hand with numpy."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from fairlearn.metrics import equalized_odds_difference
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from kustos.runtime.truth.fairness import (
    DEFAULT_MIN_SLICE_SIZE,
    FairnessConfig,
    FairnessConfigError,
    SensitiveFeature,
    fairness_report,
)

SPEC: dict[str, Any] = {"sensitiveFeatures": [{"name": "group", "source": "input"}],
                        "minSliceSize": 20}
TINY = 8  # rows of the small slice "c", under minSliceSize


def by_hand(yt: np.ndarray, yp: np.ndarray, mask: np.ndarray, positive: Any = 1
            ) -> dict[str, Any]:
    """Slice figures from their definitions."""
    t, p = yt[mask], yp[mask]
    pos, neg = t == positive, t != positive
    return {"count": int(mask.sum()), "accuracy": float(np.mean(t == p)),
            "selectionRate": float(np.mean(p == positive)),
            "truePositiveRate": float(np.mean(p[pos] == positive)) if pos.any() else None,
            "falsePositiveRate": float(np.mean(p[neg] == positive)) if neg.any() else None}


@pytest.fixture(scope="module")
def served() -> dict[str, np.ndarray]:
    """Test-set labels, predictions and groups of a model biased against group b; the
    slice c is TINY test rows the model gets wrong."""
    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(7)
    group = rng.choice(np.array(["a", "b"]), size=len(y))
    # The group is an input of the model; in training, 70 % of group b's positives are
    # labelled negative, so the model learns to select b less often.
    features = np.column_stack([x, group == "b"])
    x_tr, x_te, y_tr, y_te, g_tr, g_te = train_test_split(
        features, y, group, test_size=0.5, random_state=0, stratify=y)
    biased = y_tr.copy()
    flip = (g_tr == "b") & (y_tr == 1) & (rng.random(len(y_tr)) < 0.7)
    biased[flip] = 0
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(x_tr, biased)
    pred = model.predict(x_te)
    groups = g_te.astype(object)
    wrong = np.flatnonzero(pred != y_te)
    assert len(wrong) >= TINY, "the biased model should get enough rows wrong"
    groups[wrong[:TINY]] = "c"
    return {"y": y_te, "pred": pred, "group": groups}


def test_slices_and_gaps_equal_a_computation_by_hand(served: dict[str, np.ndarray]) -> None:
    yt, yp, g = served["y"], served["pred"], served["group"]
    cfg = FairnessConfig.from_spec(SPEC)
    report = fairness_report(yt.tolist(), yp.tolist(), {"group": g.tolist()}, cfg)
    feature = report["features"]["group"]
    assert set(feature["slices"]) == {"a", "b", "c"}
    for name, got in feature["slices"].items():
        want = by_hand(yt, yp, g == name)
        for key, value in want.items():
            if value is None:
                assert got[key] is None, (name, key)
            else:
                assert got[key] == pytest.approx(value, abs=1e-12), (name, key)
        assert got["inGaps"] is (want["count"] >= 20)
    assert feature["slices"]["c"]["inGaps"] is False
    assert feature["slices"]["c"]["count"] == TINY
    assert feature["slices"]["c"]["accuracy"] == 0.0

    a, b = (by_hand(yt, yp, g == name) for name in ("a", "b"))
    # the model under-selects b: a clearly lower true positive rate and selection rate
    assert b["truePositiveRate"] < a["truePositiveRate"] - 0.3
    dpd = abs(a["selectionRate"] - b["selectionRate"])
    eod = max(abs(a["truePositiveRate"] - b["truePositiveRate"]),
              abs(a["falsePositiveRate"] - b["falsePositiveRate"]))
    gap = abs(a["accuracy"] - b["accuracy"])
    assert feature["demographicParityDifference"] == pytest.approx(dpd, abs=1e-12)
    assert feature["equalizedOddsDifference"] == pytest.approx(eod, abs=1e-12)
    assert feature["accuracyGap"] == pytest.approx(gap, abs=1e-12)
    # with every slice having both classes, the same as fairlearn's own function
    ab = g != "c"
    assert feature["equalizedOddsDifference"] == pytest.approx(
        equalized_odds_difference(yt[ab], yp[ab], sensitive_features=g[ab]), abs=1e-12)
    # The small slice (accuracy 0) is left out: with it, the gap would be a's accuracy.
    assert feature["accuracyGap"] < max(a["accuracy"], b["accuracy"]) - 0.05
    assert feature["missing"] == 0
    assert report["positiveLabel"] == 1 and report["ratesUnavailable"] is None
    assert report["violations"] == []  # no thresholds configured


def test_thresholds_produce_violations(served: dict[str, np.ndarray]) -> None:
    yt, yp, g = served["y"].tolist(), served["pred"].tolist(), served["group"].tolist()
    loose = FairnessConfig.from_spec({**SPEC, "maxDemographicParityDifference": 1,
                                      "maxEqualizedOddsDifference": 1, "maxAccuracyGap": 1})
    assert fairness_report(yt, yp, {"group": g}, loose)["violations"] == []
    strict = FairnessConfig.from_spec({**SPEC, "maxDemographicParityDifference": 0.05,
                                       "maxEqualizedOddsDifference": 0.1})
    report = fairness_report(yt, yp, {"group": g}, strict)
    feature = report["features"]["group"]
    assert report["violations"] == [
        {"feature": "group", "metric": "demographicParityDifference",
         "value": feature["demographicParityDifference"], "threshold": 0.05},
        {"feature": "group", "metric": "equalizedOddsDifference",
         "value": feature["equalizedOddsDifference"], "threshold": 0.1}]
    # The small slice counts once minSliceSize admits it: now the accuracy gap is large.
    admitting = FairnessConfig.from_spec({**SPEC, "minSliceSize": 1, "maxAccuracyGap": 0.5})
    report = fairness_report(yt, yp, {"group": g}, admitting)
    assert [v["metric"] for v in report["violations"]] == ["accuracyGap"]
    assert report["features"]["group"]["slices"]["c"]["inGaps"] is True


def test_report_is_plain_json(served: dict[str, np.ndarray]) -> None:
    """numpy arrays in, builtins out (no numpy scalars, no NaN)."""
    cfg = FairnessConfig.from_spec({**SPEC, "maxAccuracyGap": 0.01})
    report = fairness_report(served["y"], served["pred"], {"group": served["group"]}, cfg)
    assert json.loads(json.dumps(report, allow_nan=False)) == report

    def plain(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                assert type(k) is str
                plain(v)
        elif isinstance(value, list):
            for v in value:
                plain(v)
        else:
            assert value is None or type(value) in (str, int, float, bool), type(value)
            assert not (isinstance(value, float) and math.isnan(value))
    plain(report)
    assert report["violations"]


def test_missing_values_and_a_slice_without_positives() -> None:
    """A row without the feature is counted as missing; a slice without actual positives
    has no TPR and takes no part in the TPR half of equalized odds (fairlearn would count
    its TPR as 0)."""
    yt = [1, 0, 1, 0, 0, 0, 0, 0, 1]
    yp = [1, 0, 0, 1, 1, 0, 0, 1, 1]
    group = ["a", "a", "a", "a", "b", "b", "b", "b", None]
    cfg = FairnessConfig.from_spec({"sensitiveFeatures": [{"name": "g"}], "minSliceSize": 1})
    feature = fairness_report(yt, yp, {"g": group}, cfg)["features"]["g"]
    assert feature["missing"] == 1
    b = feature["slices"]["b"]
    assert b["truePositiveRate"] is None and b["falsePositiveRate"] == 0.5
    a = feature["slices"]["a"]
    assert (a["truePositiveRate"], a["falsePositiveRate"]) == (0.5, 0.5)
    # TPR gap: only a has positives; FPR gap: |0.5 - 0.5| = 0
    assert feature["equalizedOddsDifference"] == 0.0
    assert feature["demographicParityDifference"] == pytest.approx(0.0)
    assert feature["accuracyGap"] == pytest.approx(0.0)


def test_multiclass_one_vs_rest_or_no_rates() -> None:
    x, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(3)
    x = x + rng.normal(0, 0.6, x.shape)  # so that the model makes mistakes
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.5, random_state=1,
                                              stratify=y)
    pred = RandomForestClassifier(n_estimators=30, random_state=0).fit(x_tr, y_tr).predict(x_te)
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)
    yt, yp = names[y_te], names[pred]
    group = np.where(rng.random(len(y_te)) < 0.5, "p", "q").astype(object)
    cfg = FairnessConfig.from_spec({"sensitiveFeatures": [{"name": "site"}],
                                    "minSliceSize": 5})

    report = fairness_report(yt.tolist(), yp.tolist(), {"site": group.tolist()}, cfg,
                             positive_label="versicolor")
    feature = report["features"]["site"]
    assert report["positiveLabel"] == "versicolor"
    p, q = (by_hand(yt, yp, group == s, positive="versicolor") for s in ("p", "q"))
    for name, want in (("p", p), ("q", q)):
        for key, value in want.items():
            assert feature["slices"][name][key] == pytest.approx(value, abs=1e-12)
    assert feature["demographicParityDifference"] == pytest.approx(
        abs(p["selectionRate"] - q["selectionRate"]), abs=1e-12)
    assert feature["equalizedOddsDifference"] == pytest.approx(max(
        abs(p["truePositiveRate"] - q["truePositiveRate"]),
        abs(p["falsePositiveRate"] - q["falsePositiveRate"])), abs=1e-12)
    # accuracy is that of the three classes, not of the one-vs-rest split
    assert feature["accuracyGap"] == pytest.approx(abs(p["accuracy"] - q["accuracy"]),
                                                   abs=1e-12)

    # the config's positive label is used when the call gives none
    with_label = FairnessConfig.from_spec({"sensitiveFeatures": [{"name": "site"}],
                                           "minSliceSize": 5, "positiveLabel": "versicolor"})
    assert fairness_report(yt.tolist(), yp.tolist(), {"site": group.tolist()},
                           with_label) == report

    bare = fairness_report(yt.tolist(), yp.tolist(), {"site": group.tolist()}, cfg)
    assert bare["positiveLabel"] is None
    assert "3 classes and no positive label" in bare["ratesUnavailable"]
    feature = bare["features"]["site"]
    assert feature["demographicParityDifference"] is None
    assert feature["equalizedOddsDifference"] is None
    assert feature["slices"]["p"]["selectionRate"] is None
    assert feature["accuracyGap"] == pytest.approx(abs(p["accuracy"] - q["accuracy"]),
                                                   abs=1e-12)


def test_labels_of_mixed_types_are_one_class() -> None:
    """A label "1" (from a CSV) and a prediction 1.0 are the same class; two string
    classes take the larger as positive unless one is named."""
    cfg = FairnessConfig.from_spec({"sensitiveFeatures": [{"name": "g"}], "minSliceSize": 1})
    report = fairness_report(["1", "0", 1, 0], [1.0, 0.0, True, False], {"g": list("aabb")},
                             cfg)
    assert report["features"]["g"]["slices"]["a"]["accuracy"] == 1.0
    assert report["positiveLabel"] == "1"
    yes_no = fairness_report(["yes", "no"], ["yes", "yes"], {"g": ["a", "b"]}, cfg)
    assert yes_no["positiveLabel"] == "yes"
    assert yes_no["features"]["g"]["slices"]["b"]["falsePositiveRate"] == 1.0
    ints = fairness_report([0, 1], [1, 1], {"g": ["a", "b"]}, cfg, positive_label="0")
    assert ints["positiveLabel"] == 0


def test_one_large_slice_has_no_gaps() -> None:
    cfg = FairnessConfig.from_spec({"sensitiveFeatures": [{"name": "g"}], "minSliceSize": 3,
                                    "maxAccuracyGap": 0})
    report = fairness_report([1, 0, 1, 0], [1, 1, 0, 0], {"g": ["a", "a", "a", "b"]}, cfg)
    feature = report["features"]["g"]
    assert [feature[k] for k in ("demographicParityDifference", "equalizedOddsDifference",
                                 "accuracyGap")] == [None, None, None]
    assert report["violations"] == []


def test_config_from_spec() -> None:
    cfg = FairnessConfig.from_spec({
        "sensitiveFeatures": [{"name": "sex"}, {"name": "region", "source": "label"}],
        "maxDemographicParityDifference": 0.1, "maxEqualizedOddsDifference": 0.2,
        "maxAccuracyGap": 0.05})
    assert cfg.sensitive_features == (SensitiveFeature("sex", "input"),
                                      SensitiveFeature("region", "label"))
    assert (cfg.max_demographic_parity_difference, cfg.max_equalized_odds_difference,
            cfg.max_accuracy_gap) == (0.1, 0.2, 0.05)
    assert cfg.min_slice_size == DEFAULT_MIN_SLICE_SIZE and cfg.positive_label is None


@pytest.mark.parametrize(("spec", "message"), [
    (None, "spec.groundTruth.fairness: must be an object, got null"),
    ({}, "spec.groundTruth.fairness.sensitiveFeatures: must be a non-empty list"),
    ({"sensitiveFeatures": []}, "sensitiveFeatures: must be a non-empty list"),
    ({"sensitiveFeatures": ["sex"]}, "sensitiveFeatures[0]: must be an object"),
    ({"sensitiveFeatures": [{"name": " "}]}, "sensitiveFeatures[0].name: must be a non-empty"),
    ({"sensitiveFeatures": [{"name": "a"}, {"name": "b", "source": "output"}]},
     "sensitiveFeatures[1].source: must be input or label, got 'output'"),
    ({"sensitiveFeatures": [{"name": "a"}, {"name": "a", "source": "label"}]},
     "sensitiveFeatures[1].name: 'a' is listed twice"),
    ({"sensitiveFeatures": [{"name": "a"}], "maxAccuracyGap": 1.5},
     "spec.groundTruth.fairness.maxAccuracyGap: must be a number from 0 to 1, got 1.5"),
    ({"sensitiveFeatures": [{"name": "a"}], "maxDemographicParityDifference": "0.1"},
     "maxDemographicParityDifference: must be a number from 0 to 1"),
    ({"sensitiveFeatures": [{"name": "a"}], "minSliceSize": 0},
     "minSliceSize: must be an integer >= 1, got 0"),
    ({"sensitiveFeatures": [{"name": "a"}], "minSliceSize": 2.5},
     "minSliceSize: must be an integer >= 1"),
    ({"sensitiveFeatures": [{"name": "a"}], "positiveLabel": [1]},
     "positiveLabel: must be a string or an integer, got list"),
    ({"sensitiveFeatures": [{"name": "a"}], "maxGap": 0.1}, "unknown field(s) maxGap"),
])
def test_bad_config_is_refused_naming_the_field(spec: Any, message: str) -> None:
    with pytest.raises(FairnessConfigError) as err:
        FairnessConfig.from_spec(spec)
    assert message in str(err.value)


def test_bad_inputs_are_refused() -> None:
    cfg = FairnessConfig.from_spec({"sensitiveFeatures": [{"name": "g"}]})
    with pytest.raises(ValueError, match="y_true has 2 rows, y_pred 1"):
        fairness_report([1, 0], [1], {"g": ["a", "b"]}, cfg)
    with pytest.raises(ValueError, match="no values given for sensitive feature 'g'"):
        fairness_report([1, 0], [1, 0], {"h": ["a", "b"]}, cfg)
    with pytest.raises(ValueError, match="'g' has 1 values for 2 rows"):
        fairness_report([1, 0], [1, 0], {"g": ["a"]}, cfg)
    with pytest.raises(ValueError, match="positive label 'yes' is not an integer"):
        fairness_report([1, 0], [1, 0], {"g": ["a", "b"]}, cfg, positive_label="yes")
