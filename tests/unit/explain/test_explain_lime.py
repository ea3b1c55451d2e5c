"""method lime against real `kustos explain` processes on loopback, next to SHAP.

The models are trained here on targets made mostly from one column of a bundled
scikit-learn dataset, so the feature that must come first is known: LIME and SHAP (both
served by real sidecars) must rank it first and agree on the top features, for a
classifier (per-class weights) and a regressor. Also: the response shape, reproducible
answers, 4xx for bad rows, per-method metrics, the global report, and that a SHAP
sidecar never imports lime.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from unit_support import free_port

from kustos.runtime.explain.lime_method import _quartiles
from kustos.runtime.explain.methods import build
from kustos.runtime.server.models import SklearnModel

from .conftest import (
    CONSTANT,
    request,
    sha256,
    sidecar_args,
    spawn,
    status,
    stop,
    wait_status,
    with_constant,
    write_csv,
)

ROWS = 24  # rows explained per comparison


@dataclass
class Task:
    """A model whose target comes mostly from ``names[dominant]`` (a little from
    ``names[second]``)."""

    est: Any
    x: np.ndarray
    names: list[str]
    dominant: int
    second: int
    rows: np.ndarray  # the rows the tests explain
    skops: Path
    background: Path


def _task(d: Path, name: str, data: Any, est: Any, dominant: str, second: str,
          classify: bool) -> Task:
    import skops.io as sio

    rng = np.random.default_rng(0)
    x = with_constant(data.data)
    names = [str(n).replace(" ", "_") for n in data.feature_names] + ["constant"]
    j0, j1 = names.index(dominant), names.index(second)
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-12)
    if classify:
        y = (z[:, j0] + 0.25 * z[:, j1] > 0).astype(int)
    else:
        y = 50 * z[:, j0] + 10 * z[:, j1] + rng.normal(0, 5, len(x))
    est.fit(x, y)
    sio.dump(est, d / f"{name}.skops")
    bg = write_csv(d / f"{name}-bg.csv", names, x[rng.choice(len(x), 100, replace=False)])
    rows = x[rng.choice(len(x), ROWS, replace=False)]
    return Task(est, x, names, j0, j1, rows, d / f"{name}.skops", bg)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Task]:
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    d = tmp_path_factory.mktemp("lime-models")
    return {
        # mean_texture is not what breast_cancer's own label depends on most: the model
        # can only rank it first because of the synthetic target.
        "cls": _task(d, "cls", load_breast_cancer(),
                     RandomForestClassifier(n_estimators=50, max_depth=5, random_state=0),
                     "mean_texture", "mean_radius", classify=True),
        "reg": _task(d, "reg", load_diabetes(),
                     RandomForestRegressor(n_estimators=50, max_depth=6, random_state=0),
                     "bmi", "s5", classify=False),
    }


@pytest.fixture(scope="module")
def sidecars(tasks: dict[str, Task], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[tuple[str, str], int]]:
    """Four real sidecars, started together: lime and shap-tree for each task. The lime
    ones compute a global report and take at most 30 rows per request."""
    work = tmp_path_factory.mktemp("lime-work")
    procs: dict[tuple[str, str], tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for key, t in tasks.items():
            for method in ("lime", "shap-tree"):
                port = free_port()
                extra = ["--global-interval", "600", "--max-rows", "30"] if method == "lime" \
                    else ["--global-interval", "0"]
                procs[key, method] = port, spawn("explain", *sidecar_args(
                    t.skops, key, t.background.as_uri(), "--method", method,
                    "--digest", sha256(t.skops), "--background-digest", sha256(t.background),
                    *extra, port=port, work_dir=work / f"{key}-{method}"))
        for port, proc in procs.values():
            wait_status(port, lambda s: s["ready"] or s["error"] is not None, proc,
                        timeout=120)
        yield {k: port for k, (port, _) in procs.items()}
    finally:
        for (key, method), (_, proc) in procs.items():
            _, err = stop(proc)
            assert proc.returncode == 0, f"{key} {method}: {err.decode()[-2000:]}"
            assert b"Traceback" not in err, err.decode()[-2000:]


def v2(rows: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.reshape(-1).tolist()}]}


def explain(port: int, name: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray, dict[str, Any]]:
    """(attributions [rows, features, outputs], base values, output values, parameters)."""
    code, body = request(port, "POST", f"/v2/models/{name}/explain", v2(rows), timeout=120)
    assert code == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    shape = out["attributions"]["shape"]
    values = np.array(out["attributions"]["data"]).reshape(shape)
    base = np.array(out["base_values"]["data"]).reshape(shape[0], shape[2])
    outputs = np.array(out["output_values"]["data"]).reshape(shape[0], shape[2])
    return values, base, outputs, body["parameters"]


def ranking(values: np.ndarray) -> list[int]:
    """Features by mean |attribution| over rows and outputs, most important first."""
    return [int(j) for j in np.argsort(-np.abs(values).mean(axis=(0, 2)), kind="stable")]


@pytest.mark.parametrize("key", ["cls", "reg"])
def test_lime_and_shap_rank_the_dominant_feature_first(
        tasks: dict[str, Task], sidecars: dict[tuple[str, str], int], key: str) -> None:
    t = tasks[key]
    lime, lime_base, lime_out, params = explain(sidecars[key, "lime"], key, t.rows)
    shap, _, shap_out, _ = explain(sidecars[key, "shap-tree"], key, t.rows)
    n_out = 2 if key == "cls" else 1
    assert lime.shape == shap.shape == (ROWS, len(t.names), n_out)
    # Both report the model's own output, computed by the sidecar.
    want = (t.est.predict_proba(t.rows) if key == "cls" else t.est.predict(t.rows)[:, None])
    np.testing.assert_allclose(lime_out, want, atol=1e-12)
    np.testing.assert_allclose(shap_out, want, atol=1e-12)
    assert params["method"] == "lime" and "quartile" in params["algorithm"]
    assert params["feature_names"] == t.names
    assert params["output_kind"] == ("probability" if key == "cls" else "prediction")
    assert params["output_names"] == (["0", "1"] if key == "cls" else ["prediction"])
    # The dominant feature first for both, and the same top two (the second one may be a
    # column correlated with the target's second column: the model may use either).
    lime_rank, shap_rank = ranking(lime), ranking(shap)
    assert lime_rank[0] == shap_rank[0] == t.dominant, (lime_rank[:5], shap_rank[:5])
    assert set(lime_rank[:2]) == set(shap_rank[:2]), (lime_rank[:5], shap_rank[:5])
    # Row by row, where the dominant feature is far from its middle (near the middle it
    # barely moves the output, for either method), both put it first.
    z = (t.rows[:, t.dominant] - t.x[:, t.dominant].mean()) / t.x[:, t.dominant].std()
    far = np.abs(z) > 1
    assert far.sum() >= 4
    for values in (lime, shap):
        assert (np.abs(values[far, :, -1]).argmax(axis=1) == t.dominant).all()
    # A column the model cannot use gets no weight (it is never outside the row's bin).
    assert np.abs(lime[:, -1, :]).max() == 0.0
    if key == "cls":
        # Per-class weights: with two classes the surrogates mirror each other.
        np.testing.assert_allclose(lime[:, :, 0], -lime[:, :, 1], atol=1e-9)
    # base + sum = the surrogate's prediction at the row: close to the model's output for
    # a model this dominated by one feature, not equal (LIME is a local fit).
    surrogate = lime_base + lime.sum(axis=1)
    scale = float(np.ptp(want)) or 1.0
    assert np.median(np.abs(surrogate - want)) < 0.5 * scale


def test_lime_answers_are_reproducible(tasks: dict[str, Task],
                                       sidecars: dict[tuple[str, str], int]) -> None:
    t = tasks["cls"]
    port = sidecars["cls", "lime"]
    first = explain(port, "cls", t.rows[:6])[0]
    again = explain(port, "cls", t.rows[:6])[0]
    np.testing.assert_array_equal(first, again)
    # A row alone gets the answer it got in a batch (reseeded per row).
    alone = explain(port, "cls", t.rows[3:4])[0]
    np.testing.assert_array_equal(alone[0], first[3])
    # V1 carries the same numbers, keyed by feature name.
    code, body = request(port, "POST", "/v1/models/cls:explain",
                         {"instances": t.rows[3:4].tolist()})
    assert code == 200 and body["method"] == "lime"
    out = body["explanations"][0]["outputs"]
    assert [o["name"] for o in out] == ["0", "1"]
    for k, o in enumerate(out):
        assert [o["attributions"][n] for n in t.names] == first[3, :, k].tolist()


@pytest.mark.parametrize(("path", "raw", "code", "words"), [
    ("/v1/models/cls:explain", b"{not json", 400, "malformed JSON"),
    ("/v1/models/cls:explain", b'{"instances": [[1, 2, 3]]}', 422, "[-1, 31]"),
    ("/v1/models/cls:explain", b'{"instances": [["a"]]}', 422, "numbers"),
    ("/v1/models/cls:explain", b'{"instances": [{"mean_radius": 1}]}', 422, "missing"),
    ("/v2/models/cls/explain", b'{"inputs": [{"name": "x", "shape": [1, 2], '
     b'"datatype": "FP64", "data": [1]}]}', 400, "needs 2 elements"),
    ("/v2/models/cls/explain", b'{"inputs": [{"name": "x", "shape": [0, 31], '
     b'"datatype": "FP64", "data": []}]}', 422, "no rows"),
    ("/v2/models/other/explain", b"{}", 404, "'other' not found"),
])
def test_bad_rows_get_4xx_with_an_error(sidecars: dict[tuple[str, str], int], path: str,
                                        raw: bytes, code: int, words: str) -> None:
    got, body = request(sidecars["cls", "lime"], "POST", path, raw=raw)
    assert got == code and words in body["error"], body


def test_rows_per_request_limit_and_metrics_by_method(
        tasks: dict[str, Task], sidecars: dict[tuple[str, str], int]) -> None:
    t = tasks["reg"]
    port = sidecars["reg", "lime"]
    code, body = request(port, "POST", "/v1/models/reg:explain",
                         {"instances": np.repeat(t.rows[:1], 31, axis=0).tolist()})
    assert code == 422 and "at most 30" in body["error"], body
    code, _ = request(port, "POST", "/v1/models/reg:explain", {"instances": t.rows[:2].tolist()})
    assert code == 200
    _, text = request(port, "GET", "/metrics")
    lines = text.decode().splitlines()

    def value(series: str) -> float:
        found = [float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(series + " ")]
        assert found, f"no series {series}"
        return found[0]

    assert value('kustos_explain_requests_total{code="422",method="lime",model="reg"}') >= 1
    assert value('kustos_explain_requests_total{code="200",method="lime",model="reg"}') >= 1
    assert value('kustos_explain_duration_seconds_count{method="lime",model="reg"}') >= 2
    assert value('kustos_explain_rows_total{model="reg"}') >= 2
    assert not any('method="shap' in ln for ln in lines)


@pytest.mark.parametrize("key", ["cls", "reg"])
def test_lime_global_report_puts_the_dominant_feature_first(
        tasks: dict[str, Task], sidecars: dict[tuple[str, str], int], key: str) -> None:
    t = tasks[key]
    port = sidecars[key, "lime"]
    s = wait_status(port, lambda s: s["report"] is not None, timeout=120)
    assert s["method"] == "lime" and s["error"] is None
    assert s["globalImportance"][0]["feature"] == t.names[t.dominant]
    # Mean |LIME weight|, named for what it is: no SHAP key in a LIME report.
    report = s["report"]
    assert report["method"] == "lime" and report["attribution"] == "lime-weight"
    assert report["meanAbsAttribution"]["constant"] == 0.0
    assert next(iter(report["meanAbsAttribution"])) == t.names[t.dominant]
    assert not any("Shap" in k for k in report)
    assert status(sidecars[key, "shap-tree"])["report"] is None  # --global-interval 0


def test_multiclass_gets_one_weight_vector_per_class() -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    x = with_constant(data.data)
    est = LogisticRegression(max_iter=2000).fit(x, data.target)
    names = [*data.feature_names, "constant"]
    explainer = build("lime", SklearnModel(est, "iris", "1"), x[::3], names,
                      lime_samples=500)
    result = explainer.explain(x[[0, 60, 120]])
    assert result.values.shape == (3, 5, 3) and result.base_values.shape == (3, 3)
    assert explainer.target.names == ["0", "1", "2"]
    np.testing.assert_allclose(result.outputs, est.predict_proba(x[[0, 60, 120]]), atol=1e-12)
    # Each row's own class is pushed up by a petal feature (iris' deciding ones).
    for row, cls in enumerate((0, 1, 2)):
        top = int(np.abs(result.values[row, :, cls]).argmax())
        assert names[top].startswith("petal"), (row, names[top])
    assert not np.allclose(result.values[:, :, 0], result.values[:, :, 2])


def test_degenerate_bins_are_sampled_as_their_value() -> None:
    # LIME 0.2 turns a bin whose min equals its max (a constant column) into its z-score,
    # 0, for every perturbed row; ours keeps the column's value.
    rng = np.random.default_rng(0)
    bg = with_constant(rng.normal(size=(40, 3)))
    disc = _quartiles(bg, ["a", "b", "c", "constant"], np.random.RandomState(0))
    perturbed = disc.undiscretize(disc.discretize(bg))
    assert (perturbed[:, 3] == CONSTANT).all()
    assert not np.allclose(perturbed[:, :3], bg[:, :3])  # the other columns are resampled
    assert (disc.discretize(perturbed) == disc.discretize(bg)).all()  # within their bins


def test_lime_is_imported_only_by_the_lime_method_and_needs_no_shap() -> None:
    # (shap itself imports lime.lime_tabular and matplotlib when they are installed, for
    # its own LIME wrapper: a shap-* sidecar loads them anyway; a lime one loads no shap.)
    code = """
import sys
import numpy as np
from sklearn.linear_model import LinearRegression
from kustos.runtime.explain import app, cli, global_report, lime_method, methods
from kustos.runtime.server.models import SklearnModel
assert not {"lime", "shap"} & set(sys.modules), "imported at module level"
x = np.arange(40.0).reshape(20, 2) % 7
model = SklearnModel(LinearRegression().fit(x, x[:, 0]), "m", "1")
methods.build("lime", model, x, ["a", "b"], lime_samples=100)
print("lime.lime_tabular" in sys.modules, "shap" in sys.modules,
      "matplotlib" in sys.modules, "skimage" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["True", "False", "False", "False"]


@pytest.mark.parametrize("kind", ["onnx", "xgboost"])
def test_lime_explains_onnx_and_booster_probabilities(kind: str, tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kustos.runtime.server.models import load_model

    data = load_iris()
    x, y = data.data, data.target
    if kind == "onnx":
        from skl2onnx import to_onnx

        est: Any = LogisticRegression(max_iter=2000).fit(x, y)
        onx = to_onnx(est, x[:1].astype(np.float32), options={"zipmap": False})
        (tmp_path / "iris.onnx").write_bytes(onx.SerializeToString())
        model = load_model(tmp_path / "iris.onnx", "iris")
    else:
        import xgboost

        est = xgboost.XGBClassifier(n_estimators=10, max_depth=2).fit(x, y)
        est.save_model(tmp_path / "iris.ubj")
        model = load_model(tmp_path / "iris.ubj", "iris", "1", "xgboost")
    explainer = build("lime", model, x[::3], list(data.feature_names), lime_samples=300)
    rows = x[[0, 60, 120]]
    result = explainer.explain(rows)
    assert result.values.shape == (3, 4, 3) and explainer.target.kind == "probability"
    np.testing.assert_allclose(result.outputs, est.predict_proba(rows), atol=1e-5)
    for row, cls in enumerate((0, 1, 2)):
        top = int(np.abs(result.values[row, :, cls]).argmax())
        assert data.feature_names[top].startswith("petal"), (kind, row, top)


def test_an_unused_varying_column_gets_only_small_weights() -> None:
    # Unlike a constant column (exactly 0), a column the model ignores but that varies
    # gets the ridge fit's sampling noise: small next to the features the model uses.
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    data = load_iris()
    x = np.hstack([data.data, np.random.default_rng(0).normal(size=(len(data.data), 1))])
    est = make_pipeline(ColumnTransformer([("used", "passthrough", [0, 1, 2, 3])]),
                        LogisticRegression(max_iter=2000)).fit(x, data.target)
    explainer = build("lime", SklearnModel(est, "iris", "1"), x[::2],
                      ["sl", "sw", "pl", "pw", "noise"])
    mean_abs = np.abs(explainer.explain(x[::10]).values).mean(axis=(0, 2))
    assert 0 < mean_abs[4] < 0.1 * mean_abs[:4].max(), mean_abs
    assert int(mean_abs.argmax()) == 2  # petal length, iris' deciding feature
