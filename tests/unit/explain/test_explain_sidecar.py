"""`kustos explain` over real HTTP: explanations, status, global report, metrics, and
every setup problem reported in the status while the sidecar keeps running."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest

from kustos.runtime.explain.problems import (
    BACKGROUND_FETCH_FAILED,
    BACKGROUND_INVALID,
    DIGEST_MISMATCH,
    METHOD_UNSUPPORTED,
    MODEL_LOAD_FAILED,
)

from .conftest import Sidecar, Zoo, request, status, wait_status, write_csv


def v2_body(rows: np.ndarray, rid: str = "r1") -> dict[str, object]:
    return {"id": rid, "inputs": [{"name": "input-0", "shape": list(rows.shape),
                                   "datatype": "FP64", "data": rows.reshape(-1).tolist()}]}


def test_v2_explain_returns_attributions_that_add_up(zoo: Zoo, tree_sidecar: int) -> None:
    t = zoo.cancer_rf
    rows = t.x[[3, 50, 200]]
    code, body = request(tree_sidecar, "POST", "/v2/models/cancer/explain", v2_body(rows))
    assert code == 200, body
    assert body["model_name"] == "cancer" and body["id"] == "r1"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["attributions"]["shape"] == [3, len(t.names), 2]
    values = np.array(out["attributions"]["data"]).reshape(3, len(t.names), 2)
    base = np.array(out["base_values"]["data"]).reshape(3, 2)
    explained = np.array(out["output_values"]["data"]).reshape(3, 2)
    np.testing.assert_allclose(explained, t.est.predict_proba(rows), atol=1e-12)
    np.testing.assert_allclose(base + values.sum(axis=1), explained, atol=1e-6)
    assert np.abs(values[:, t.constant, :]).max() == 0.0
    params = body["parameters"]
    assert params["feature_names"] == t.names and params["output_names"] == ["0", "1"]
    assert params["method"] == "shap-tree" and params["output_kind"] == "probability"


def test_versioned_v2_path_and_per_feature_inputs(zoo: Zoo, tree_sidecar: int) -> None:
    t = zoo.cancer_rf
    rows = t.x[[7, 8]]
    _, matrix = request(tree_sidecar, "POST", "/v2/models/cancer/explain", v2_body(rows))
    named = {"inputs": [{"name": n, "shape": [2], "datatype": "FP64",
                         "data": rows[:, j].tolist()} for j, n in enumerate(t.names)][::-1]}
    code, body = request(tree_sidecar, "POST", "/v2/models/cancer/versions/4/explain", named)
    assert code == 200, body
    assert body["outputs"][0]["data"] == matrix["outputs"][0]["data"]


def test_v1_explain_names_features_and_classes(zoo: Zoo, tree_sidecar: int) -> None:
    t = zoo.cancer_rf
    rows = t.x[[10, 400]]
    code, body = request(tree_sidecar, "POST", "/v1/models/cancer:explain",
                         {"instances": rows.tolist()})
    assert code == 200, body
    assert len(body["explanations"]) == 2
    proba = t.est.predict_proba(rows)
    for r, row in enumerate(body["explanations"]):
        assert [o["name"] for o in row["outputs"]] == ["0", "1"]
        for k, o in enumerate(row["outputs"]):
            assert list(o["attributions"]) == t.names
            assert o["output_value"] == pytest.approx(proba[r, k], abs=1e-12)
            total = o["base_value"] + sum(o["attributions"].values())
            assert total == pytest.approx(o["output_value"], abs=1e-6)
    # Instances as objects keyed by feature name: same answer.
    keyed = [{n: float(v) for n, v in zip(t.names, row, strict=True)} for row in rows]
    code, again = request(tree_sidecar, "POST", "/v1/models/cancer:explain",
                          {"instances": keyed})
    assert code == 200 and again["explanations"] == body["explanations"]


@pytest.mark.parametrize(("path", "raw", "code", "words"), [
    ("/v1/models/cancer:explain", b"{not json", 400, "malformed JSON"),
    ("/v1/models/cancer:explain", b"[1, 2]", 400, "JSON object"),
    ("/v1/models/cancer:explain", b'{"instances": [[1, 2, 3]]}', 422, "[-1, 31]"),
    ("/v1/models/cancer:explain", b'{"instances": [["a"]]}', 422, "numbers"),
    ("/v1/models/cancer:explain", b'{"instances": [{"mean_radius": 1}]}', 422, "missing"),
    ("/v1/models/cancer:explain", b'{"instances": []}', 400, "non-empty"),
    ("/v2/models/cancer/explain", b'{"inputs": [{"name": "x", "shape": [1, 2], '
     b'"datatype": "FP64", "data": [1]}]}', 400, "needs 2 elements"),
    ("/v2/models/cancer/explain", b'{"inputs": [{"name": "x", "shape": [0, 31], '
     b'"datatype": "FP64", "data": []}]}', 422, "no rows"),
    ("/v2/models/other/explain", b"{}", 404, "'other' not found"),
    ("/v1/models/other:explain", b"{}", 404, "'other' not found"),
    ("/v1/explain", b"{}", 404, "no such endpoint"),
])
def test_malformed_requests_get_4xx_with_an_error(tree_sidecar: int, path: str, raw: bytes,
                                                  code: int, words: str) -> None:
    got, body = request(tree_sidecar, "POST", path, raw=raw)
    assert got == code and words in body["error"], body


def test_too_many_rows_and_wrong_method(zoo: Zoo, tree_sidecar: int) -> None:
    rows = np.repeat(zoo.cancer_rf.x[:1], 1001, axis=0)
    code, body = request(tree_sidecar, "POST", "/v1/models/cancer:explain",
                         {"instances": rows.tolist()})
    assert code == 422 and "at most 1000" in body["error"]
    code, body = request(tree_sidecar, "GET", "/v1/models/cancer:explain")
    assert code == 405 and "error" in body


def test_status_carries_the_global_report(zoo: Zoo, tree_sidecar: int) -> None:
    s = status(tree_sidecar)
    assert s["ready"] is True and s["error"] is None
    assert s["method"] == "shap-tree" and s["model"] == "cancer"
    top = s["globalImportance"]
    assert len(top) == 5 and [e["value"] for e in top] == sorted(
        (e["value"] for e in top), reverse=True)
    assert all(e["feature"] in zoo.cancer_rf.names and e["value"] > 0 for e in top)
    assert s["lastComputed"] and s["lastComputed"].endswith("Z")
    report = s["report"]
    assert list(report["meanAbsAttribution"])[-1] == "constant"
    assert report["meanAbsAttribution"]["constant"] == 0.0
    assert [p["feature"] for p in report["partialDependence"]] == [
        e["feature"] for e in top[:3]]
    assert report["permutationImportance"]["features"]["constant"]["mean"] == 0.0
    code, _ = request(tree_sidecar, "GET", "/v2/health/ready")
    assert code == 200


def test_metrics(zoo: Zoo, tree_sidecar: int) -> None:
    request(tree_sidecar, "POST", "/v1/models/cancer:explain",
            {"instances": zoo.cancer_rf.x[:3].tolist()})
    request(tree_sidecar, "POST", "/v1/models/cancer:explain", raw=b"{")
    code, text = request(tree_sidecar, "GET", "/metrics")
    assert code == 200
    lines = text.decode().splitlines()

    def value(prefix: str) -> float:
        found = [float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(prefix)]
        assert found, f"no series {prefix}"
        return found[0]

    assert value('kustos_explain_requests_total{code="200",method="shap-tree",'
                 'model="cancer"}') >= 1
    assert value('kustos_explain_requests_total{code="400",method="shap-tree",'
                  'model="cancer"}') >= 1
    assert value('kustos_explain_rows_total{model="cancer"}') >= 3
    assert value('kustos_explain_duration_seconds_count{method="shap-tree",'
                 'model="cancer"}') >= 2
    assert value('kustos_explain_global_duration_seconds{model="cancer"}') > 0
    assert value('kustos_explain_ready{model="cancer"}') == 1


# ----------------------------------------------------------------- setup problems


def assert_reported(car: Sidecar, reason: str, *words: str) -> None:
    s = wait_status(car.port, lambda s: s["error"] is not None, timeout=30)
    assert s["ready"] is False and s["error"]["reason"] == reason, s["error"]
    for word in words:
        assert word in s["error"]["message"], s["error"]
    code, body = request(car.port, "POST", "/v1/models/m:explain", {"instances": [[1.0]]})
    assert code == 503 and body["reason"] == reason and words[0] in body["error"]
    assert request(car.port, "GET", "/v2/health/live")[0] == 200
    assert request(car.port, "GET", "/v2/health/ready")[0] == 503
    _, text = request(car.port, "GET", "/metrics")
    assert f'kustos_explain_errors_total{{model="m",reason="{reason}"}}' in text.decode()


Start = Callable[..., Sidecar]


def test_background_with_the_wrong_columns(zoo: Zoo, in_thread: Start, tmp_path: Path) -> None:
    t = zoo.iris_lr
    bad = write_csv(tmp_path / "bg.csv", ["a", "b", "c"], t.x[:10, :3])
    car = in_thread(t.skops, "m", bad.as_uri(), "--method", "shap-kernel")
    assert_reported(car, BACKGROUND_INVALID, "3 feature columns", "takes 5")


def test_background_with_text(zoo: Zoo, in_thread: Start, tmp_path: Path) -> None:
    t = zoo.iris_lr
    path = tmp_path / "bg.csv"
    path.write_text(",".join(t.names) + "\n1,2,3,4,3\n1,2,three,4,3\n")
    car = in_thread(t.skops, "m", path.as_uri(), "--method", "shap-kernel")
    assert_reported(car, BACKGROUND_INVALID, "line 3", "'three' is not a finite number")


def test_unreadable_background(zoo: Zoo, in_thread: Start, tmp_path: Path) -> None:
    t = zoo.iris_lr
    car = in_thread(t.skops, "m", (tmp_path / "nothere.csv").as_uri(), "--method", "shap-kernel")
    assert_reported(car, BACKGROUND_FETCH_FAILED, "not found", "background.uri")
    # Retried with backoff: once the file appears the explainer becomes ready by itself.
    write_csv(tmp_path / "nothere.csv", t.names, t.x[:20])
    s = wait_status(car.port, lambda s: s["ready"], timeout=30)
    assert s["error"] is None
    code, body = request(car.port, "POST", "/v1/models/m:explain",
                         {"instances": t.x[:1].tolist()})
    assert code == 200 and body["method"] == "shap-kernel"


def test_digest_mismatch(zoo: Zoo, in_thread: Start) -> None:
    t = zoo.iris_lr
    car = in_thread(t.skops, "m", t.background.as_uri(), "--method", "shap-kernel",
                    "--background-digest", "sha256:" + "1" * 64)
    assert_reported(car, DIGEST_MISMATCH, "digest mismatch", "background.digest")


@pytest.mark.parametrize(("method", "which", "words"), [
    ("shap-magic", "iris_lr", ("unknown method 'shap-magic'", "shap-permutation")),
    ("shap-tree", "iris_lr", ("LogisticRegression is not one", "shap-linear")),
    ("shap-linear", "wine_rf", ("RandomForestClassifier is not one", "shap-tree")),
])
def test_method_that_does_not_fit(zoo: Zoo, in_thread: Start, method: str, which: str,
                                  words: tuple[str, ...]) -> None:
    t = getattr(zoo, which)
    car = in_thread(t.skops, "m", t.background.as_uri(), "--method", method)
    assert_reported(car, METHOD_UNSUPPORTED, *words)
    assert status(car.port)["method"] == method


def test_model_that_cannot_load(zoo: Zoo, in_thread: Start, tmp_path: Path) -> None:
    t = zoo.iris_lr
    pickled = tmp_path / "model.joblib"
    joblib.dump(t.est, pickled)
    car = in_thread(pickled, "m", t.background.as_uri(), "--method", "shap-kernel")
    assert_reported(car, MODEL_LOAD_FAILED, "refusing to unpickle")


def test_label_column_feeds_permutation_importance(zoo: Zoo, in_thread: Start,
                                                  tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    t = zoo.diabetes_lin
    y = load_diabetes().target
    table = np.hstack([t.x[:80], y[:80, None]])
    bg = write_csv(tmp_path / "labelled.csv", [*t.names, "target"], table)
    car = in_thread(t.skops, "m", bg.as_uri(), "--method", "shap-linear",
                    "--label-column", "target", "--top-k", "3")
    s = wait_status(car.port, lambda s: s["report"] is not None, timeout=60)
    perm = s["report"]["permutationImportance"]
    assert perm["target"] == "labels" and perm["scoring"] == "r2"
    assert perm["baseline"] == pytest.approx(t.est.score(t.x[:80], y[:80]), abs=1e-5)
    assert len(s["globalImportance"]) == 3
    assert s["report"]["meanAbsAttribution"]["constant"] == 0.0


def test_npy_background_and_feature_names_flag(zoo: Zoo, in_thread: Start,
                                               tmp_path: Path) -> None:
    t = zoo.iris_lr
    np.save(tmp_path / "bg.npy", t.x[::3])
    names = ["sl", "sw", "pl", "pw", "const"]
    car = in_thread(t.skops, "m", (tmp_path / "bg.npy").as_uri(), "--method",
                    "shap-permutation", "--feature-names", ",".join(names),
                    "--global-interval", "0")
    wait_status(car.port, lambda s: s["ready"], timeout=60)
    code, body = request(car.port, "POST", "/v1/models/m:explain",
                         {"instances": [dict(zip(names, map(float, t.x[70]), strict=True))]})
    assert code == 200, body
    assert body["feature_names"] == names and body["output_kind"] == "probability"
    row = body["explanations"][0]["outputs"]
    proba = t.est.predict_proba(t.x[70:71])[0]
    for k, o in enumerate(row):
        assert o["output_value"] == pytest.approx(proba[k], abs=1e-12)
        assert o["base_value"] + sum(o["attributions"].values()) == pytest.approx(
            o["output_value"], abs=1e-9)
        assert o["attributions"]["const"] == pytest.approx(0.0, abs=1e-12)
    assert status(car.port)["report"] is None  # --global-interval 0: no global report
