"""MLflow models (format mlflow): real MLmodel directories written by mlflow-skinny for
models trained here, served by a real `kustos serve` subprocess (a directory, and a
tar.gz/zip archive of one) and checked against the libraries' own predictions; the
signature in V2 metadata; pickle only under a digest; clear load errors otherwise."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from kustos.runtime.server.models import ModelLoadError, load_model

from .conftest import Client, free_port, spawn_cli, stop_process, wait_http_ready

mlflow = pytest.importorskip("mlflow")
xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")


@dataclass
class Saved:
    path: Path
    predict: Any  # rows -> the library's own predictions
    proba: Any | None  # rows -> the library's own class probabilities, if a classifier
    x: np.ndarray
    output: str = "predict"


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _tar(src: Path, dest: Path, top: str | None = "model") -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=f"{top}/{f.name}" if top else f.name)
    return dest


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Saved]:
    import mlflow.lightgbm
    import mlflow.onnx
    import mlflow.sklearn
    import mlflow.xgboost
    import onnxruntime as ort
    import pandas as pd
    from mlflow.models import infer_signature
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
    from sklearn.linear_model import LogisticRegression

    d = tmp_path_factory.mktemp("mlflow")
    iris = load_iris()
    cols = [n.replace(" (cm)", "").replace(" ", "_") for n in iris.feature_names]
    frame = pd.DataFrame(iris.data, columns=cols)
    out: dict[str, Saved] = {}

    lr = LogisticRegression(max_iter=1000).fit(frame, iris.target)
    mlflow.sklearn.save_model(lr, d / "sk", signature=infer_signature(frame, lr.predict(frame)))
    out["sklearn-skops"] = Saved(d / "sk", lambda x: lr.predict(pd.DataFrame(x, columns=cols)),
                                 lambda x: lr.predict_proba(pd.DataFrame(x, columns=cols)),
                                 iris.data)
    lr2 = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    mlflow.sklearn.save_model(lr2, d / "skpickle", serialization_format="cloudpickle")
    out["sklearn-cloudpickle"] = Saved(d / "skpickle", lr2.predict, lr2.predict_proba,
                                       iris.data)

    cancer = load_breast_cancer()
    xc = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(cancer.data, cancer.target)
    mlflow.xgboost.save_model(xc, d / "xgb", signature=infer_signature(
        cancer.data.astype(np.float32), xc.predict(cancer.data)))
    out["xgboost-ubj"] = Saved(d / "xgb", xc.predict, xc.predict_proba, cancer.data)
    diabetes = load_diabetes()
    xr = xgb.XGBRegressor(n_estimators=10, max_depth=3).fit(diabetes.data, diabetes.target)
    mlflow.xgboost.save_model(xr, d / "xgbjson", model_format="json")
    out["xgboost-json"] = Saved(d / "xgbjson", xr.predict, None, diabetes.data)

    booster = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1},
                        lgb.Dataset(iris.data, iris.target), num_boost_round=8)
    mlflow.lightgbm.save_model(booster, d / "lgbnative")
    out["lightgbm-booster"] = Saved(d / "lgbnative",
                                    lambda x: np.argmax(booster.predict(x), axis=1),
                                    booster.predict, iris.data)
    lc = lgb.LGBMClassifier(n_estimators=8, verbose=-1).fit(cancer.data, cancer.target)
    mlflow.lightgbm.save_model(lc, d / "lgbsk")
    out["lightgbm-sklearn"] = Saved(d / "lgbsk", lc.predict, lc.predict_proba, cancer.data)

    onx = to_onnx(lr2, iris.data[:1].astype(np.float32), options={"zipmap": False})
    mlflow.onnx.save_model(onx, d / "onnx")
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    out["onnx"] = Saved(d / "onnx",
                        lambda x: session.run(["label"], {"X": x.astype(np.float32)})[0],
                        None, iris.data, output="label")
    return out


# ------------------------------------------------------------------ served for real


def _serve(model: Path, *extra: str) -> Iterator[Client]:
    port = free_port()
    proc = spawn_cli("serve", "--model", str(model), "--name", "m", "--port", str(port),
                     "--host", "127.0.0.1", "--log-level", "warning", *extra)
    try:
        wait_http_ready(port, proc)
        client = Client(port)
        yield client
        client.close()
    finally:
        stop_process(proc)


def _v2(x: np.ndarray, outputs: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP64",
                        "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": o} for o in outputs]}


def _tensor(body: dict[str, Any], name: str) -> np.ndarray:
    out = {o["name"]: o for o in body["outputs"]}[name]
    return np.asarray(out["data"]).reshape(out["shape"])


SERVED = ["sklearn-skops", "xgboost-ubj", "xgboost-json", "lightgbm-booster",
          "lightgbm-sklearn", "onnx"]


@pytest.mark.parametrize("key", SERVED)
def test_served_directory_matches_the_library(saved: dict[str, Saved], key: str) -> None:
    m = saved[key]
    rows = m.x[::13]
    for client in _serve(m.path):  # no --format: an MLmodel directory is recognised
        status, meta = client.get("/v2/models/m")
        assert status == 200, meta
        assert meta["platform"].startswith("mlflow/")
        outputs = [m.output] + (["predict_proba"] if m.proba is not None else [])
        status, body = client.post("/v2/models/m/infer", _v2(rows, outputs))
        assert status == 200, body
        np.testing.assert_allclose(_tensor(body, m.output), m.predict(rows), rtol=1e-5)
        if m.proba is not None:
            np.testing.assert_allclose(_tensor(body, "predict_proba"), m.proba(rows),
                                       atol=1e-6)


def test_signature_feeds_metadata_and_column_inputs(saved: dict[str, Saved],
                                                    tmp_path: Path) -> None:
    m = saved["sklearn-skops"]
    archive = _tar(m.path, tmp_path / "model.tar.gz")
    rows = m.x[::11]
    for client in _serve(archive, "--digest", _sha(archive)):
        status, meta = client.get("/v2/models/m")
        assert status == 200, meta
        (spec,) = meta["inputs"]
        assert spec["datatype"] == "FP64" and spec["shape"] == [-1, 4]
        columns = spec["parameters"]["columns"]
        assert [c["name"] for c in columns] == ["sepal_length", "sepal_width",
                                                 "petal_length", "petal_width"]
        assert {c["type"] for c in columns} == {"double"}
        signature = meta["parameters"]["signature"]
        assert [c["name"] for c in signature["inputs"]] == [c["name"] for c in columns]
        assert signature["outputs"][0]["tensor-spec"]["dtype"] == "int64"
        assert meta["parameters"]["classes"] == [0, 1, 2]
        # One input per column, as MLServer's MLflow runtime takes them.
        body = {"inputs": [{"name": c["name"], "shape": [len(rows)], "datatype": "FP64",
                            "data": rows[:, i].tolist()} for i, c in enumerate(columns)]}
        status, answer = client.post("/v2/models/m/infer", body)
        assert status == 200, answer
        assert np.array_equal(_tensor(answer, "predict"), m.predict(rows))
        body["inputs"] = body["inputs"][:3]
        status, answer = client.post("/v2/models/m/infer", body)
        assert status == 422 and "error" in answer


def test_pickle_needs_a_digest(saved: dict[str, Saved], tmp_path: Path) -> None:
    m = saved["sklearn-cloudpickle"]
    with pytest.raises(ModelLoadError, match=r"refusing to unpickle model\.pkl .*without --digest"):
        load_model(m.path, "m", fmt="mlflow")
    # A directory: the digest pins the pickled data file.
    model = load_model(m.path, "m", fmt="mlflow", digest=_sha(m.path / "model.pkl"))
    rows = m.x[::9]
    out = model.predict(model.prepare({"input-0": rows}), ["predict", "predict_proba"])
    assert np.array_equal(out["predict"], m.predict(rows))
    with pytest.raises(ModelLoadError, match="digest mismatch"):
        load_model(m.path, "m", fmt="mlflow", digest="sha256:" + "0" * 64)
    # An archive: the digest pins the archive, and so every file in it.
    archive = _tar(m.path, tmp_path / "pickled.tgz", top=None)
    with pytest.raises(ModelLoadError, match="without --digest"):
        load_model(archive, "m")
    with pytest.raises(ModelLoadError, match="digest mismatch"):
        load_model(archive, "m", digest=_sha(m.path / "model.pkl"))
    for client in _serve(archive, "--digest", _sha(archive)):
        status, body = client.post("/v2/models/m/infer", _v2(rows, ["predict"]))
        assert status == 200, body
        assert np.array_equal(_tensor(body, "predict"), m.predict(rows))


def test_zip_archive(saved: dict[str, Saved], tmp_path: Path) -> None:
    m = saved["xgboost-ubj"]
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(m.path.iterdir()):
            zf.write(f, f"m/{f.name}")
    model = load_model(archive, "m", fmt="mlflow")
    rows = m.x[:20]
    assert m.proba is not None
    out = model.predict(model.prepare({"input-0": rows}), ["predict_proba"])
    np.testing.assert_allclose(out["predict_proba"], m.proba(rows), atol=1e-6)


# ------------------------------------------------------------------ refusals


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _rewrite_mlmodel(path: Path, old: str, new: str) -> None:
    text = (path / "MLmodel").read_text()
    assert old in text
    (path / "MLmodel").write_text(text.replace(old, new))


def test_refusals_are_clear_load_errors(saved: dict[str, Saved], tmp_path: Path) -> None:
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: my.module\n  pytorch:\n"
        "    model_data: data\n")
    with pytest.raises(ModelLoadError, match=r"flavours \['python_function', 'pytorch'\]"):
        load_model(unknown, "m")

    missing = _copy(saved["xgboost-ubj"].path, tmp_path / "missing")
    (missing / "model.ubj").unlink()
    with pytest.raises(ModelLoadError, match=r"data file 'model\.ubj' is missing"):
        load_model(missing, "m", fmt="mlflow")

    outside = _copy(saved["onnx"].path, tmp_path / "outside")
    _rewrite_mlmodel(outside, "data: model.onnx", "data: ../../etc/passwd")
    with pytest.raises(ModelLoadError, match="outside the model directory"):
        load_model(outside, "m", fmt="mlflow")

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "MLmodel").write_text("just: [a, list\n")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(tmp_path / "broken", "m", fmt="mlflow")

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere.tar.gz", "m", fmt="mlflow")
    with pytest.raises(ModelLoadError, match="MLmodel directory or a"):
        load_model(saved["onnx"].path / "model.onnx", "m", fmt="mlflow")

    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ModelLoadError, match="holds no MLmodel"):
        load_model(empty, "m")

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for f in sorted(saved["onnx"].path.iterdir()):
            tar.add(f, arcname=f.name)
        link = tarfile.TarInfo("model.onnx.lnk")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load_model(evil, "m")

    climb = tmp_path / "climb.zip"
    with zipfile.ZipFile(climb, "w") as zf:
        zf.writestr("../MLmodel", "flavors: {}\n")
    with pytest.raises(ModelLoadError, match="refusing member"):
        load_model(climb, "m")


def test_refused_model_makes_serve_exit_with_the_reason(saved: dict[str, Saved]) -> None:
    port = free_port()
    proc = spawn_cli("serve", "--model", str(saved["sklearn-cloudpickle"].path), "--name", "m",
                     "--port", str(port), "--host", "127.0.0.1", "--log-level", "warning")
    try:
        proc.wait(60)
    finally:
        _, err = stop_process(proc)
    assert proc.returncode != 0
    assert b"refusing to unpickle model.pkl" in err, err[-2000:]


def test_tensor_signature_in_metadata(saved: dict[str, Saved]) -> None:
    model = load_model(saved["xgboost-ubj"].path, "m")
    meta = orjson.loads(orjson.dumps(model.metadata()))
    (spec,) = meta["inputs"]
    assert spec == {"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}
    (tensor,) = meta["parameters"]["signature"]["inputs"]
    assert tensor["type"] == "tensor"
    assert tensor["tensor-spec"] == {"dtype": "float32", "shape": [-1, 30]}
    assert meta["parameters"]["classes"] == [0, 1]


def test_xgb_model_format_and_a_fetch_directory(saved: dict[str, Saved],
                                                tmp_path: Path) -> None:
    import warnings

    import mlflow.xgboost
    from sklearn.datasets import load_wine

    wine = load_wine()
    est = xgb.XGBClassifier(n_estimators=6, max_depth=2).fit(wine.data, wine.target)
    with warnings.catch_warnings():  # XGBoost warns that it writes "xgb" as UBJSON
        warnings.simplefilter("ignore")
        mlflow.xgboost.save_model(est, tmp_path / "xgbold", model_format="xgb")
    assert (tmp_path / "xgbold" / "model.xgb").is_file()
    model = load_model(tmp_path / "xgbold", "m")
    out = model.predict(model.prepare({"input-0": wine.data}), ["predict", "predict_proba"])
    assert np.array_equal(out["predict"], est.predict(wine.data))
    np.testing.assert_allclose(out["predict_proba"], est.predict_proba(wine.data), atol=1e-6)
    # What `kustos fetch` leaves: a directory holding the one archive.
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    archive = _tar(saved["lightgbm-booster"].path, fetched / "model.tgz")
    model = load_model(fetched, "m", fmt="mlflow", digest=_sha(archive))
    rows = saved["lightgbm-booster"].x[::7]
    out = model.predict(model.prepare({"input-0": rows}), ["predict"])
    assert np.array_equal(out["predict"], saved["lightgbm-booster"].predict(rows))
    (fetched / "other.zip").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not exactly one archive"):
        load_model(fetched, "m", fmt="mlflow")


# ------------------------------------------------------------------ the pod's /tmp


def _rendered_tmp_bytes() -> int:
    """The size of the memory-backed emptyDir the operator mounts at /tmp in the model
    server of a format mlflow ModelDeployment (where the archive is unpacked)."""
    from kustos.config import OperatorConfig
    from kustos.render.modeldeployment import render

    body = {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u", "generation": 1},
            "spec": {"model": {"version": "1", "uri": "s3://m/model.tar.gz",
                               "format": "mlflow", "digest": "sha256:" + "ab" * 32}}}
    (deploy,) = [o for o in render(body, OperatorConfig()) if o["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    (mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    empty_dir = volume["emptyDir"]
    assert empty_dir["medium"] == "Memory"
    number, unit = empty_dir["sizeLimit"][:-2], empty_dir["sizeLimit"][-2:]
    return int(number) << {"Ki": 10, "Mi": 20, "Gi": 30}[unit]


def _padded_archive(model_dir: Path, dest: Path, padding: int) -> Path:
    """``model_dir`` as a tar.gz with an extra artifact of ``padding`` zero bytes: small
    on disk (zeros compress), ``padding`` bytes more once unpacked."""

    class Zeros(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            view = memoryview(buffer).cast("B")
            view[:] = bytes(len(view))
            return len(view)

    with tarfile.open(dest, "w:gz") as tar:
        for f in sorted(model_dir.iterdir()):
            tar.add(f, arcname=f"model/{f.name}")
        info = tarfile.TarInfo("model/artifacts/padding.bin")
        info.size = padding
        tar.addfile(info, io.BufferedReader(Zeros()))
    return dest


def _serve_with_tmpfs(model: Path, tmp_dir: Path, size: int, port: int) -> Any:
    """`kustos serve` whose TMPDIR is a tmpfs of ``size`` bytes, as the pod's /tmp is: a
    mount namespace of its own (needs root, as tests/runtimes' network namespaces)."""
    import os
    import subprocess
    import sys

    script = ('mount -t tmpfs -o "size=$1" kustos-tmp "$2" || exit 90; shift 2; '
              '"$@"; rc=$?; echo "left in tmp: $(ls -A "$TMPDIR")" >&2; exit $rc')
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
         str(size), str(tmp_dir), sys.executable, "-m", "kustos.cli", "serve", "--model",
         str(model), "--format", "mlflow", "--name", "m", "--port", str(port), "--host",
         "127.0.0.1", "--log-level", "warning"],
        env={**os.environ, "TMPDIR": str(tmp_dir)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True)


def test_an_archive_that_unpacks_past_the_pods_tmp_does_not_load(
        saved: dict[str, Saved], tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    limit = _rendered_tmp_bytes()
    assert limit == 64 << 20  # the figure docs/serving.md gives
    m = saved["sklearn-skops"]
    archive = _padded_archive(m.path, tmp_path / "model.tar.gz", limit + (8 << 20))
    assert archive.stat().st_size < 1 << 20  # nothing big is written to disk
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    # In the pod's 64 MiB: one clear load error, exit 1, and nothing left behind.
    proc = _serve_with_tmpfs(archive, scratch, limit, free_port())
    try:
        proc.wait(120)
    finally:
        _, err = stop_process(proc)
    assert proc.returncode == 1, err[-2000:]
    assert b"cannot load model: cannot unpack model.tar.gz" in err, err[-2000:]
    assert b"No space left on device" in err, err[-2000:]
    assert err.rstrip().endswith(b"left in tmp:"), err[-2000:]

    # The same archive with twice the room loads and answers as the library does.
    port = free_port()
    proc = _serve_with_tmpfs(archive, scratch, 2 * limit, port)
    try:
        wait_http_ready(port, proc, timeout=120)
        client = Client(port)
        rows = m.x[::13]
        status, body = client.post("/v2/models/m/infer", _v2(rows, ["predict"]))
        client.close()
        assert status == 200, body
        np.testing.assert_allclose(_tensor(body, "predict"), m.predict(rows))
    finally:
        stop_process(proc)
