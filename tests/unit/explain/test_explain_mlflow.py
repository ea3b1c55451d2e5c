"""`kustos explain --format mlflow`, as the operator renders it for an ExplainerSpec whose
target serves an MLflow archive: a real `kustos explain` process, started with the
arguments render/explainer.explain_args gives (paths and ports made local), explaining an
MLflow model saved here by mlflow.sklearn and tarred, checked against the estimator."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from unit_support import free_port

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.explainerspec import ExplainerSpecSpec
from kustos.render.explainer import DIGEST_ENV, explain_args
from kustos.render.runtimes import MODEL_DIR

from .conftest import (
    request,
    sha256,
    sidecar_args,
    spawn,
    stop,
    wait_status,
    with_constant,
    write_csv,
)

mlflow = pytest.importorskip("mlflow")

NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width", "constant"]


def _rendered(archive: Path, background: Path, method: str) -> list[str]:
    """The sidecar's arguments for an ExplainerSpec on a format mlflow ModelDeployment,
    with the pod's paths, digest variable, host and port replaced by local ones."""
    md = ModelDeploymentSpec.model_validate({"model": {
        "version": "1", "uri": f"s3://models/{archive.name}", "format": "mlflow",
        "digest": sha256(archive)}})
    es = ExplainerSpecSpec.model_validate({
        "targetRef": {"name": "iris"}, "method": method, "featureNames": NAMES,
        "background": {"uri": f"s3://data/{background.name}"},
        "global": {"interval": "1h", "topK": 3}})
    args = explain_args(es, "iris", md, f"s3://data/{background.name}")
    assert args[:5] == ["explain", "--model", f"{MODEL_DIR}/{archive.name}", "--format",
                        "mlflow"]
    local = {f"{MODEL_DIR}/{archive.name}": str(archive), f"$({DIGEST_ENV})": sha256(archive),
             f"s3://data/{background.name}": background.as_uri()}
    args = [local.get(a, a) for a in args]
    for flag in ("--host", "--port"):  # dropped: sidecar_args gives loopback and a port
        i = args.index(flag)
        del args[i:i + 2]
    return args[1:]


@pytest.fixture(scope="module")
def iris_mlflow(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    d = tmp_path_factory.mktemp("mlflow-explain")
    x, y = load_iris(return_X_y=True)
    x = with_constant(x)
    est = RandomForestClassifier(n_estimators=25, max_depth=4, random_state=0).fit(x, y)
    # skops (MLflow 3's default); MLflow wants the tree type named to save it.
    mlflow.sklearn.save_model(est, d / "model", skops_trusted_types=["sklearn.tree._tree.Tree"])
    archive = d / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(d / "model", arcname="model")
    background = write_csv(d / "bg.csv", NAMES, x[::3])
    return archive, background, est


@pytest.mark.parametrize("method", ["shap-tree", "lime"])
def test_explain_serves_an_mlflow_archive_as_rendered(
        iris_mlflow: tuple[Path, Path, object], tmp_path: Path, method: str) -> None:
    archive, background, est = iris_mlflow
    port = free_port()
    proc = spawn("explain", *sidecar_args(archive, "iris", background.as_uri(),
                                          *_rendered(archive, background, method),
                                          port=port, work_dir=tmp_path / "work"))
    try:
        s = wait_status(port, lambda s: s["ready"] and s["report"] is not None, proc,
                        timeout=120)
        assert s["error"] is None and s["method"] == method and s["model"] == "iris"
        report = s["report"]
        assert report["attribution"] == ("shap-value" if method == "shap-tree"
                                         else "lime-weight")
        assert set(report["meanAbsAttribution"]) == set(NAMES)
        assert report["meanAbsAttribution"]["constant"] == 0.0
        assert len(s["globalImportance"]) == 3
        assert s["globalImportance"][0]["feature"].startswith("petal")

        rows = with_constant(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
        code, body = request(port, "POST", "/v1/models/iris:explain",
                             {"instances": rows.tolist()})
        assert code == 200, body
        proba = est.predict_proba(rows)  # type: ignore[attr-defined]
        for r, row in enumerate(body["explanations"]):
            for k, out in enumerate(row["outputs"]):
                assert list(out["attributions"]) == NAMES
                assert out["output_value"] == pytest.approx(proba[r, k], abs=1e-12)
                if method == "shap-tree":  # SHAP adds up; LIME's surrogate need not
                    total = out["base_value"] + sum(out["attributions"].values())
                    assert total == pytest.approx(out["output_value"], abs=1e-6)
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_a_wrong_archive_digest_is_reported_not_loaded(
        iris_mlflow: tuple[Path, Path, object], tmp_path: Path) -> None:
    archive, background, _ = iris_mlflow
    args = _rendered(archive, background, "shap-tree")
    args[args.index("--digest") + 1] = "sha256:" + "0" * 64
    port = free_port()
    proc = spawn("explain", *sidecar_args(archive, "iris", background.as_uri(), *args,
                                          port=port, work_dir=tmp_path / "work"))
    try:
        s = wait_status(port, lambda s: s["error"] is not None, proc, timeout=60)
        assert s["ready"] is False
        assert s["error"]["reason"] == "ModelLoadFailed"
        assert "digest mismatch" in s["error"]["message"]
        code, _ = request(port, "POST", "/v1/models/iris:explain", {"instances": [[1] * 5]})
        assert code == 503
    finally:
        stop(proc)
