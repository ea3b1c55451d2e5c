"""Loading models safely, their derived tensor specs, and ONNX served end to end."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from kustos.runtime.server.models import ModelLoadError, load_model
from kustos.runtime.server.tensors import ProtocolError

from .conftest import Models, start_server


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def shout(x: np.ndarray) -> np.ndarray:  # a user function: skops cannot know it is safe
    return x


def test_skops_refuses_types_outside_the_allow_list(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(FunctionTransformer(shout), LogisticRegression(max_iter=500)).fit(X, y)
    path = tmp_path / "custom.skops"
    sio.dump(pipe, path)
    with pytest.raises(ModelLoadError, match=r"outside the allow-list: .*shout"):
        load_model(path, "m")
    untrusted = [t for t in sio.get_untrusted_types(file=path) if "shout" in t]
    model = load_model(path, "m", trusted_types=untrusted)  # explicitly trusted: loads
    assert model.predict({"input-0": X[:2]}, ("predict",))["predict"].tolist() == [0, 0]


def test_pickle_needs_a_matching_digest(models: Models) -> None:
    with pytest.raises(ModelLoadError, match="refusing to unpickle"):
        load_model(models.wine_joblib, "wine")
    with pytest.raises(ModelLoadError, match="digest mismatch"):
        load_model(models.wine_joblib, "wine", digest="sha256:" + "1" * 64)
    model = load_model(models.wine_joblib, "wine", digest=sha(models.wine_joblib))
    assert model.inputs[0].shape == (-1, 13) and model.classes == [0, 1, 2]


def test_digest_is_checked_for_every_format(models: Models) -> None:
    with pytest.raises(ModelLoadError, match="digest mismatch"):
        load_model(models.iris_lr, "iris", digest="sha256:" + "2" * 64)
    assert load_model(models.iris_lr, "iris", digest=sha(models.iris_lr)).name == "iris"


def test_format_and_file_errors(models: Models, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot tell the format"):
        (tmp_path / "m.bin").write_bytes(b"x")
        load_model(tmp_path / "m.bin", "m")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "absent.skops", "m")
    with pytest.raises(ModelLoadError, match=r"not a valid \.skops"):
        (tmp_path / "junk.skops").write_bytes(b"not a zip")
        load_model(tmp_path / "junk.skops", "m")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX"):
        (tmp_path / "junk.onnx").write_bytes(b"not onnx")
        load_model(tmp_path / "junk.onnx", "m")
    # A directory with exactly one model file is accepted (the fetch emptyDir).
    d = tmp_path / "dir"
    d.mkdir()
    (d / "model.skops").write_bytes(models.iris_lr.read_bytes())
    assert load_model(d, "iris").inputs[0].shape == (-1, 4)


def test_regressor_specs(models: Models) -> None:
    model = load_model(models.diabetes, "diabetes")
    assert model.classes is None and model.label_output is None
    assert [o.as_dict() for o in model.outputs] == [
        {"name": "predict", "datatype": "FP64", "shape": [-1]}]
    assert model.inputs[0].shape == (-1, 10)


def test_nan_is_allowed_only_where_the_model_takes_it(models: Models) -> None:
    lr = load_model(models.iris_lr, "iris")
    x = np.array([[np.nan, 1, 2, 3]])
    with pytest.raises(ProtocolError, match="NaN") as err:
        lr.prepare({"x": x})
    assert err.value.status == 422
    hgb = load_model(models.hgb_nan, "hgb")
    prepared = hgb.prepare({"x": x})  # HistGradientBoosting handles missing values
    assert hgb.predict(prepared, ("predict",))["predict"].shape == (1,)
    with pytest.raises(ProtocolError, match="infinite"):
        hgb.prepare({"x": np.array([[np.inf, 1, 2, 3]])})


def test_onnx_specs_come_from_the_graph(models: Models) -> None:
    model = load_model(models.cancer_onnx, "cancer")
    assert model.platform.startswith("onnxruntime-")
    assert [t.as_dict() for t in model.inputs] == [
        {"name": "X", "datatype": "FP32", "shape": [-1, 30]}]
    outs = {o.name: o.as_dict() for o in model.outputs}
    assert outs["label"] == {"name": "label", "datatype": "INT64", "shape": [-1]}
    assert outs["probabilities"] == {"name": "probabilities", "datatype": "FP32",
                                     "shape": [-1, 2]}
    zipmap = load_model(models.cancer_onnx_zipmap, "cancer")
    got = zipmap.predict(zipmap.prepare({"X": models.cancer_X[:3]}),
                         ("output_probability",))["output_probability"]
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)


def test_onnx_served_over_v2_v1_and_seldon(models: Models) -> None:
    server = start_server(models.cancer_onnx, "cancer", "--format", "onnx")
    try:
        c = server.client()
        status, meta = c.get("/v2/models/cancer")
        assert status == 200 and meta["inputs"][0]["name"] == "X"
        rows = models.cancer_X[:5]
        status, body = c.post("/v2/models/cancer/infer", {"inputs": [
            {"name": "X", "shape": [5, 30], "datatype": "FP64", "data": rows.tolist()}],
            "outputs": [{"name": "probabilities"}]})
        assert status == 200, body
        (out,) = body["outputs"]
        assert out["name"] == "probabilities" and out["shape"] == [5, 2]
        assert out["datatype"] == "FP32"
        status, body = c.post("/v2/models/cancer/infer", {"inputs": [
            {"name": "X", "shape": [1, 30], "datatype": "FP32", "data": rows[0].tolist()}]})
        assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"]
        status, body = c.post("/v2/models/cancer/infer", {"inputs": [
            {"name": "X", "shape": [1, 29], "datatype": "FP32", "data": rows[0, :29].tolist()}]})
        assert status == 422 and "shape" in body["error"]
        status, body = c.post("/v1/models/cancer:predict", {"instances": rows[:2].tolist()})
        assert status == 200 and len(body["predictions"]) == 2
        assert set(body["predictions"][0]) == {"label", "probabilities"}
        status, body = c.post("/api/v1.0/predictions", {"data": {"ndarray": rows[:2].tolist()}})
        assert status == 200 and np.array(body["data"]["ndarray"]).shape == (2,)
        c.close()
    finally:
        server.shutdown()
