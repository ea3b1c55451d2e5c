"""`kustos explain` with shap-tree on XGBoost (.ubj/.json) and LightGBM (.txt) native models:
the tree algorithm on the booster attributes its margin exactly (log-odds for binary, one
score per class for multi-class), checked against the libraries' own margin output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kustos.runtime.explain.problems import METHOD_UNSUPPORTED

from .conftest import Sidecar, request, sha256, status, wait_status, with_constant, write_csv

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

Start = Callable[..., Sidecar]


@dataclass
class Tree:
    est: Any
    x: np.ndarray
    names: list[str]
    path: Path
    background: Path
    classes: int

    def margin(self, rows: np.ndarray) -> np.ndarray:
        if isinstance(self.est, xgb.XGBModel):
            out = self.est.predict(rows, output_margin=True)
        else:
            out = self.est.predict(rows, raw_score=True)
        return np.asarray(out, dtype=np.float64).reshape(len(rows), -1)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tree]:
    from sklearn.datasets import load_breast_cancer, load_iris

    d = tmp_path_factory.mktemp("explain-boosters")
    rng = np.random.default_rng(0)
    out: dict[str, Tree] = {}
    for key, data, est, file in [
        ("xgb-iris", load_iris(), xgb.XGBClassifier(n_estimators=20, max_depth=3), "iris.ubj"),
        ("xgb-cancer", load_breast_cancer(), xgb.XGBClassifier(n_estimators=20, max_depth=3),
         "cancer.json"),
        ("lgb-iris", load_iris(), lgb.LGBMClassifier(n_estimators=20, verbose=-1), "iris.txt"),
        ("lgb-cancer", load_breast_cancer(), lgb.LGBMClassifier(n_estimators=20, verbose=-1),
         "cancer.txt"),
    ]:
        x = with_constant(data.data)  # a column the trees can never split on
        names = [str(n).replace(" ", "_") for n in data.feature_names] + ["constant"]
        est.fit(x, data.target)
        if isinstance(est, xgb.XGBModel):
            est.save_model(d / file)
        else:
            est.booster_.save_model(d / file)
        rows = x[rng.choice(len(x), 60, replace=False)]
        bg = write_csv(d / f"{key}-bg.csv", names, rows)
        out[key] = Tree(est, x, names, d / file, bg, len(np.unique(data.target)))
    return out


def start_tree(in_thread: Start, t: Tree, *extra: str) -> Sidecar:
    car = in_thread(t.path, "m", t.background.as_uri(), "--method", "shap-tree",
                    "--digest", sha256(t.path), "--background-digest", sha256(t.background),
                    "--top-k", "3", *extra)
    wait_status(car.port, lambda s: s["ready"] or s["error"] is not None)
    return car


@pytest.mark.parametrize("key", ["xgb-iris", "xgb-cancer", "lgb-iris", "lgb-cancer"])
def test_shap_tree_attributes_the_margin(trees: dict[str, Tree], in_thread: Start,
                                         key: str) -> None:
    t = trees[key]
    car = start_tree(in_thread, t, "--global-interval", "600")
    s = wait_status(car.port, lambda s: s["report"] is not None or s["error"] is not None)
    assert s["ready"] and s["error"] is None, s
    rows = t.x[[3, 60, 120]]
    width = len(t.names)
    code, body = request(car.port, "POST", "/v2/models/m/explain", {"inputs": [
        {"name": "input-0", "shape": [3, width], "datatype": "FP64",
         "data": rows.reshape(-1).tolist()}]})
    assert code == 200, body
    n_out = 1 if t.classes == 2 else t.classes
    out = {o["name"]: o for o in body["outputs"]}
    assert out["attributions"]["shape"] == [3, width, n_out]
    values = np.array(out["attributions"]["data"]).reshape(3, width, n_out)
    base = np.array(out["base_values"]["data"]).reshape(3, n_out)
    explained = np.array(out["output_values"]["data"]).reshape(3, n_out)
    np.testing.assert_allclose(explained, t.margin(rows), atol=1e-5)
    np.testing.assert_allclose(base + values.sum(axis=1), explained, atol=1e-4)
    assert np.abs(values[:, -1, :]).max() == 0.0  # the constant column explains nothing
    params = body["parameters"]
    assert params["feature_names"] == t.names and params["method"] == "shap-tree"
    if t.classes == 2:
        assert params["output_names"] == ["1"] and params["output_kind"] == "log-odds"
    else:
        assert params["output_names"] == ["0", "1", "2"] and params["output_kind"] == "margin"
    # The global report ranks features by mean |SHAP|: a petal measure leads on iris.
    top = status(car.port)["globalImportance"]
    assert top and top[0]["feature"] != "constant" and top[0]["value"] > 0
    if "iris" in key:
        assert top[0]["feature"].startswith("petal_")
    code, body = request(car.port, "POST", "/v1/models/m:explain",
                         {"instances": [[1.0] * (width - 1)]})
    assert code == 422 and "error" in body


def test_model_agnostic_methods_explain_probabilities(trees: dict[str, Tree],
                                                      in_thread: Start) -> None:
    t = trees["lgb-iris"]
    car = in_thread(t.path, "m", t.background.as_uri(), "--method", "shap-permutation",
                    "--global-interval", "0")
    wait_status(car.port, lambda s: s["ready"] or s["error"] is not None)
    rows = t.x[[10, 140]]
    code, body = request(car.port, "POST", "/v1/models/m:explain",
                         {"instances": rows.tolist()})
    assert code == 200, body
    proba = t.est.predict_proba(rows)
    for r, row in enumerate(body["explanations"]):
        assert [o["name"] for o in row["outputs"]] == ["0", "1", "2"]
        for k, o in enumerate(row["outputs"]):
            assert o["output_value"] == pytest.approx(proba[r, k], abs=1e-9)


def test_shap_linear_on_a_booster_says_what_to_use(trees: dict[str, Tree],
                                                   in_thread: Start) -> None:
    t = trees["xgb-cancer"]
    car = in_thread(t.path, "m", t.background.as_uri(), "--method", "shap-linear",
                    "--global-interval", "0")
    s = wait_status(car.port, lambda s: s["error"] is not None)
    assert s["error"]["reason"] == METHOD_UNSUPPORTED, s
    assert "shap-kernel" in s["error"]["message"]
