"""XGBoost (.ubj/.json) and LightGBM (.txt) native models behind the real `kustos serve`:
trained here on sklearn's bundled data, checked against the libraries' own predictions in
every protocol, with the digest gate and 4xx answers for what the model cannot take."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import (
    Client,
    RunningServer,
    spawn_cli,
    start_server,
    stop_process,
    wait_http_ready,
)
from .conftest import free_port as _free_port

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")


@dataclass
class Booster:
    path: Path
    est: Any  # the sklearn wrapper it was trained as: the reference predictions
    x: np.ndarray
    classes: int  # 0 for a regressor

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Booster]:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

    d = tmp_path_factory.mktemp("boosters")
    iris, cancer, diabetes = load_iris(), load_breast_cancer(), load_diabetes()
    out: dict[str, Booster] = {}

    def xgb_save(key: str, est: Any, data: Any, file: str, classes: int) -> None:
        est.fit(data.data, data.target)
        est.save_model(d / file)  # the native format, chosen by the extension
        out[key] = Booster(d / file, est, data.data, classes)

    def lgb_save(key: str, est: Any, data: Any, file: str, classes: int) -> None:
        est.fit(data.data, data.target)
        est.booster_.save_model(d / file)
        out[key] = Booster(d / file, est, data.data, classes)

    xgb_save("xgb-iris", xgb.XGBClassifier(n_estimators=15, max_depth=3), iris,
             "iris.ubj", 3)
    xgb_save("xgb-cancer", xgb.XGBClassifier(n_estimators=15, max_depth=3), cancer,
             "cancer.json", 2)
    xgb_save("xgb-diabetes", xgb.XGBRegressor(n_estimators=15, max_depth=3), diabetes,
             "diabetes.json", 0)
    lgb_save("lgb-iris", lgb.LGBMClassifier(n_estimators=15, verbose=-1), iris,
             "iris.txt", 3)
    lgb_save("lgb-cancer", lgb.LGBMClassifier(n_estimators=15, verbose=-1), cancer,
             "cancer.txt", 2)
    lgb_save("lgb-diabetes", lgb.LGBMRegressor(n_estimators=15, verbose=-1), diabetes,
             "diabetes.txt", 0)
    return out


KEYS = ["xgb-iris", "xgb-cancer", "xgb-diabetes", "lgb-iris", "lgb-cancer", "lgb-diabetes"]


@pytest.fixture(scope="module", params=KEYS)
def served(request: pytest.FixtureRequest,
           trained: dict[str, Booster]) -> Iterator[tuple[Booster, RunningServer]]:
    m = trained[request.param]
    server = start_server(m.path, "m", "--digest", m.digest, "--model-version", "2")
    yield m, server
    server.shutdown()


@pytest.fixture
def client(served: tuple[Booster, RunningServer]) -> Iterator[Client]:
    c = served[1].client()
    yield c
    c.close()


def v2(rows: np.ndarray | list[Any], datatype: str = "FP64", **extra: object) -> dict[str, Any]:
    arr = np.asarray(rows)
    return {"inputs": [{"name": "input-0", "shape": list(arr.shape), "datatype": datatype,
                        "data": arr.reshape(-1).tolist()}], **extra}


def tensor(body: dict[str, Any], name: str) -> np.ndarray:
    out = {o["name"]: o for o in body["outputs"]}[name]
    return np.array(out["data"]).reshape(out["shape"])


def test_metadata(served: tuple[Booster, RunningServer], client: Client) -> None:
    m, _ = served
    status, meta = client.get("/v2/models/m")
    assert status == 200, meta
    lib = "xgboost" if m.path.suffix in (".ubj", ".json") else "lightgbm"
    assert meta["platform"].startswith(f"{lib}-") and meta["versions"] == ["2"]
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64",
                               "shape": [-1, m.x.shape[1]]}]
    outs = {o["name"]: o for o in meta["outputs"]}
    if m.classes:
        assert outs["predict"] == {"name": "predict", "datatype": "INT64", "shape": [-1]}
        assert outs["predict_proba"]["shape"] == [-1, m.classes]
        assert meta["parameters"]["classes"] == list(range(m.classes))
    else:
        assert set(outs) == {"predict"}


def test_v2_matches_the_library(served: tuple[Booster, RunningServer], client: Client) -> None:
    m, _ = served
    rows = m.x[::7]
    status, body = client.post("/v2/models/m/infer", v2(rows, id="r"))
    assert status == 200, body
    assert [o["name"] for o in body["outputs"]] == ["predict"]
    np.testing.assert_allclose(tensor(body, "predict"), m.est.predict(rows), rtol=1e-6)
    if not m.classes:
        return
    assert body["outputs"][0]["datatype"] == "INT64"
    status, body = client.post("/v2/models/m/infer", v2(
        rows, outputs=[{"name": "predict_proba"}, {"name": "predict"}]))
    assert status == 200, body
    assert [o["name"] for o in body["outputs"]] == ["predict_proba", "predict"]
    proba = tensor(body, "predict_proba")
    assert proba.shape == (len(rows), m.classes)
    # xgboost's wrapper computes in float32; the server answers float64.
    np.testing.assert_allclose(proba, m.est.predict_proba(rows), atol=1e-6)
    assert (tensor(body, "predict") == m.est.predict(rows)).all()


def test_v1_and_seldon(served: tuple[Booster, RunningServer], client: Client) -> None:
    m, _ = served
    rows = m.x[:3]
    status, body = client.post("/v1/models/m:predict", {"instances": rows.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], m.est.predict(rows), rtol=1e-6)
    status, body = client.post("/api/v1.0/predictions", {"data": {"ndarray": rows.tolist()}})
    assert status == 200, body
    if m.classes:
        assert body["data"]["names"] == [str(c) for c in range(m.classes)]
        np.testing.assert_allclose(body["data"]["ndarray"], m.est.predict_proba(rows),
                                   atol=1e-6)
    else:
        np.testing.assert_allclose(np.ravel(body["data"]["ndarray"]), m.est.predict(rows),
                                   rtol=1e-6)


def test_missing_values_are_what_trees_handle(trained: dict[str, Booster]) -> None:
    """JSON has no NaN (and binary tensor data is not supported): the loaded model itself."""
    from kustos.runtime.server.models import load_model
    from kustos.runtime.server.tensors import ProtocolError

    for key in KEYS:
        m = trained[key]
        model = load_model(m.path, "m")
        rows = m.x[:4].copy()
        rows[0, 0] = rows[2, 1] = np.nan
        out = model.predict(model.prepare({"input-0": rows}), ["predict"])["predict"]
        np.testing.assert_allclose(out, m.est.predict(rows), rtol=1e-6)
        rows[1, 0] = np.inf
        with pytest.raises(ProtocolError, match="infinite") as err:
            model.prepare({"input-0": rows})
        assert err.value.status == 422


def test_malformed_input_is_4xx(served: tuple[Booster, RunningServer], client: Client) -> None:
    m, _ = served
    width = m.x.shape[1]
    bad: list[tuple[dict[str, Any], int]] = [
        (v2(m.x[:2, :-1]), 422),  # a feature short
        (v2([["a"] * width], "BYTES"), 422),
        ({"inputs": [{"name": "input-0", "shape": [1, width], "datatype": "FP64",
                      "data": [1.0] * (width - 1)}]}, 400),
        (v2(m.x[:1].reshape(-1)), 422),  # one dimension
        ({"inputs": []}, 400),
    ]
    for body, want in bad:
        status, answer = client.post("/v2/models/m/infer", body)
        assert status == want, (body, answer)
        assert "error" in answer
    raw = b'{"inputs":[{"name":"input-0","shape":[1,%d],"datatype":"FP64","data":[%s]}]}' % (
        width, b",".join([b"1e999"] * width))
    status, answer = client.post("/v2/models/m/infer", raw=raw)
    assert 400 <= status < 500, answer
    status, answer = client.post("/v1/models/m:predict", {"instances": [[1.0] * (width + 1)]})
    assert status == 422 and "error" in answer
    if not m.classes:
        status, answer = client.post("/v2/models/m/infer", v2(
            m.x[:1], outputs=[{"name": "predict_proba"}]))
        assert 400 <= status < 500, answer


def test_the_real_process_checks_the_digest(trained: dict[str, Booster],
                                            tmp_path: Path) -> None:
    m = trained["lgb-iris"]
    port = _free_port()
    proc = spawn_cli("serve", "--model", str(m.path), "--name", "iris", "--format", "lightgbm",
                     "--digest", m.digest, "--port", str(port))
    try:
        wait_http_ready(port, proc)
        c = Client(port)
        status, body = c.post("/v2/models/iris/infer", v2(m.x[:5]))
        c.close()
        assert status == 200 and tensor(body, "predict").tolist() == m.est.predict(
            m.x[:5]).tolist()
    finally:
        stop_process(proc)
    wrong = "sha256:" + "0" * 64
    proc = spawn_cli("serve", "--model", str(m.path), "--name", "iris", "--digest", wrong,
                     "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and b"digest mismatch" in err and b"Traceback" not in err


@pytest.mark.parametrize("file,fmt,message", [
    ("garbage.ubj", "xgboost", b"not a loadable XGBoost model"),
    ("garbage.txt", "lightgbm", b"not a LightGBM text model"),
    ("model.pkl", "xgboost", b"must be native .ubj or .json"),
])
def test_unloadable_boosters_exit_1_with_a_clear_line(tmp_path: Path, file: str, fmt: str,
                                                      message: bytes) -> None:
    path = tmp_path / file
    path.write_bytes(b"\x00not a model\n")
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    proc = spawn_cli("serve", "--model", str(path), "--name", "g", "--format", fmt,
                     "--digest", digest, "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err.decode()[-1000:]
    assert message in err and b"Traceback" not in err, err.decode()[-1000:]
