"""Evaluation of a window: multiclass with probabilities (iris), regression (diabetes),
minimum samples, thresholds, the confidence-based estimate; through Monitor and Store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kustos.runtime.truth import config, parse
from kustos.runtime.truth.metrics import TruthMetrics
from kustos.runtime.truth.monitor import Monitor
from kustos.runtime.truth.store import Prediction, Store

NOW = 1_800_000_000.0


def monitor(tmp_path: Path, **doc: object) -> Monitor:
    cfg = config.parse({"model": "m", "window": "1h", **doc})
    return Monitor(cfg, Store(tmp_path, cfg.max_rows, cfg.retention_seconds),
                   TruthMetrics("m"))


def labels(pairs: list[tuple[str, object]], task: str = "classification"
           ) -> list[parse.LabelIn]:
    return [parse.make_label(rid, 0, y, None, task, "t") for rid, y in pairs]


def test_multiclass_iris_with_probabilities(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x[::2], y[::2])
    test_x, test_y = x[1::2], y[1::2]
    proba, pred = clf.predict_proba(test_x), clf.predict(test_x)
    mon = monitor(tmp_path, minSamples=30, thresholds={"minAccuracy": 0.99, "minF1": 0.5})
    classes = ["0", "1", "2"]
    mon.store.add_predictions([
        Prediction(f"r{i}", 0, "2", NOW - 60, str(pred[i]), None, proba[i].tolist(), classes,
                   None) for i in range(len(test_x))])
    # 10 rows stay unlabelled: the estimate covers them.
    mon.labels(labels([(f"r{i}", int(test_y[i])) for i in range(10, len(test_x))]), "v2",
               now=NOW)
    st = mon.evaluate(now=NOW)
    v = st["versions"]["2"]
    sl = slice(10, None)
    assert v["metrics"]["accuracy"] == pytest.approx(accuracy_score(test_y[sl], pred[sl]))
    assert v["metrics"]["f1"] == pytest.approx(f1_score(test_y[sl], pred[sl],
                                                        average="macro"))
    assert v["metrics"]["rocAuc"] == pytest.approx(roc_auc_score(
        test_y[sl], proba[sl], multi_class="ovr", average="macro"))
    assert v["metrics"]["logLoss"] == pytest.approx(log_loss(test_y[sl], proba[sl]))
    assert v["metrics"]["estimatedAccuracy"] == pytest.approx(proba[:10].max(axis=1).mean())
    assert v["coverage"] == pytest.approx((len(test_x) - 10) / len(test_x))
    assert v["labelDelaySeconds"] == {"p50": 60.0, "p95": 60.0}
    assert v["metrics"]["accuracy"] < 0.99  # 0.954: below minAccuracy, above minF1
    assert [(x["metric"], x["kind"]) for x in st["violations"]] == \
        [("accuracy", "performance")]
    body, _ = mon.metrics.render()
    assert b'kustos_truth_metric{metric="rocAuc",model="m",version="2"}' in body


def test_below_min_samples_is_inconclusive_not_a_violation(tmp_path: Path) -> None:
    mon = monitor(tmp_path, minSamples=50, thresholds={"minAccuracy": 0.9,
                                                       "minCoverage": 0.9})
    mon.store.add_predictions([Prediction(f"r{i}", 0, "1", NOW - 5, "1", None,
                                          [0.3, 0.7], ["0", "1"], None) for i in range(20)])
    mon.labels(labels([(f"r{i}", 0) for i in range(20)]), "v2", now=NOW)  # all wrong
    st = mon.evaluate(now=NOW)
    v = st["versions"]["1"]
    assert v["inconclusive"] and v["metrics"]["accuracy"] is None
    assert v["metrics"]["estimatedAccuracy"] is None  # nothing unlabelled
    assert st["violations"] == []
    body, _ = mon.metrics.render()
    assert b'kustos_truth_metric{metric="accuracy"' not in body


def test_regression_mae_rmse_and_thresholds(tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    x, y = load_diabetes(return_X_y=True)
    pred = Ridge().fit(x[100:], y[100:]).predict(x[:100])
    mon = monitor(tmp_path, task="regression", minSamples=10,
                  thresholds={"maxMae": 10.0, "maxRmse": 1000.0, "minCoverage": 0.5})
    mon.store.add_predictions([Prediction(f"r{i}", 0, "5", NOW - 1, None, float(pred[i]),
                                          None, None, None) for i in range(100)])
    mon.labels(labels([(f"r{i}", float(y[i])) for i in range(100)], "regression"), "bulk",
               now=NOW)
    st = mon.evaluate(now=NOW)
    m = st["versions"]["5"]["metrics"]
    assert m["mae"] == pytest.approx(mean_absolute_error(y[:100], pred))
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y[:100], pred)))
    assert [(v["metric"], v["threshold"]) for v in st["violations"]] == [("mae", 10.0)]


def test_versions_are_evaluated_apart_and_old_rows_leave_the_window(tmp_path: Path) -> None:
    mon = monitor(tmp_path, minSamples=1)
    mon.store.add_predictions([
        Prediction("old", 0, "1", NOW - 7200, "1", None, None, None, None),
        Prediction("a", 0, "1", NOW - 10, "1", None, None, None, None),
        Prediction("b", 0, "2", NOW - 10, "0", None, None, None, None)])
    mon.labels(labels([("old", 0), ("a", 1), ("b", 1)]), "v2", now=NOW)
    st = mon.evaluate(now=NOW)
    assert {k: (v["count"], v["metrics"]["accuracy"]) for k, v in st["versions"].items()} \
        == {"1": (1, 1.0), "2": (1, 0.0)}


def test_fairness_by_an_input_column_and_by_label_metadata(tmp_path: Path) -> None:
    mon = monitor(tmp_path, minSamples=10, fairness={
        "sensitiveFeatures": [{"name": "sex", "source": "input"},
                              {"name": "region", "source": "label"}],
        "minSliceSize": 5, "maxAccuracyGap": 0.2})
    # sex=f: always right; sex=m: right half the time -> accuracy gap 0.5 > 0.2.
    preds, labs = [], []
    for i in range(40):
        sex = "f" if i % 2 else "m"
        right = sex == "f" or i % 4 == 0
        preds.append(Prediction(f"r{i}", 0, "1", NOW - 5, "1", None, None, None,
                                {"sex": sex, "age": 30 + i}))
        labs.append(parse.make_label(f"r{i}", 0, 1 if right else 0,
                                     {"region": "n" if i < 20 else "s"}, "classification",
                                     "t"))
    mon.store.add_predictions(preds)
    mon.labels(labs, "v2", now=NOW)
    st = mon.evaluate(now=NOW)
    fair = st["versions"]["1"]["fairness"]
    assert set(fair["features"]) == {"sex", "region"}
    assert set(fair["features"]["sex"]["slices"]) == {"f", "m"}
    assert fair["features"]["sex"]["accuracyGap"] == pytest.approx(0.5)
    assert {(v["kind"], v["metric"], v.get("feature")) for v in st["violations"]} >= \
        {("fairness", "sex/accuracyGap", "sex")}
    body, _ = mon.metrics.render()
    assert b'kustos_fairness_gap{feature="sex",metric="accuracyGap",model="m",version="1"}' \
        in body
