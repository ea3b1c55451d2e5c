"""BatchInference on the local cluster: the API server's rules (no operator needed), and a
real run on the real node with the chart's operator (needs the kustos image rebuilt from
this tree: `kustos batch` and the BatchInference controller are in it)."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import Kube, wait_for
from realpods import IRIS_V1, ChartOperator, real_model, s3_client, store_module, stored_model

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

DIGEST = "sha256:" + "a" * 64
VALID: dict[str, Any] = {
    "apiVersion": "kustos.dev/v1alpha1", "kind": "BatchInference",
    "metadata": {"name": "bad"},
    "spec": {"modelRef": {"name": "iris"},
             "input": {"uri": "s3://data/in.csv"},
             "output": {"uri": "pvc://results/run"},
             "parallelism": 2, "shards": 4},
}
OWN_MODEL = {"version": "1", "uri": "s3://models/iris/1/model.skops", "digest": DIGEST}


def variant(**spec: Any) -> dict[str, Any]:
    """VALID with spec fields replaced (None deletes one)."""
    obj = copy.deepcopy(VALID)
    for key, value in spec.items():
        if value is None:
            obj["spec"].pop(key, None)
        else:
            obj["spec"][key] = value
    return obj


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("both model and modelRef", variant(model=OWN_MODEL),
     ["spec.modelRef", "exactly one of modelRef"]),
    ("neither model nor modelRef", variant(modelRef=None),
     ["spec.modelRef", "exactly one of modelRef"]),
    ("more pods than shards", variant(parallelism=5),
     ["spec.parallelism", "must not exceed shards"]),
    ("output neither a claim nor s3", variant(output={"uri": "https://results/run"}),
     ["spec.output.uri"]),
    ("output credentials for a claim",
     variant(output={"uri": "pvc://results/run", "credentialsSecretRef": {"name": "s"}}),
     ["spec.output.credentialsSecretRef", "is for an s3:// output"]),
    ("input file://", variant(input={"uri": "file:///data/in.csv"}),
     ["spec.input.uri", "cannot read file://"]),
    ("avro input", variant(input={"uri": "s3://d/in.avro", "format": "avro"}),
     ["spec.input.format", "Unsupported value"]),
    ("id among the features", variant(input={"uri": "s3://d/in.csv", "idColumn": "a",
                                             "featureColumns": ["a", "b"]}),
     ["spec.input.idColumn", "must not be one of featureColumns"]),
    ("governance with modelRef", variant(governance={"riskTier": "low"}),
     ["spec.governance", "governance is for an own model"]),
    ("own pickled model without digest",
     variant(modelRef=None, model={"version": "1", "uri": "s3://m/model.joblib"}),
     ["spec.model.digest", "unpickling runs code"]),
    ("high risk without digest",
     variant(modelRef=None, model={"version": "1", "uri": "s3://m/model.skops"},
             governance={"riskTier": "high"}),
     ["spec.model.digest", "riskTier high needs a pinned model digest"]),
    ("zero chunk size", variant(chunkSize=0), ["spec.chunkSize"]),
]


@pytest.mark.parametrize(("title", "obj", "expected"), CASES, ids=[c[0] for c in CASES])
def test_invalid_batch_inference_is_refused(kube: Kube, namespace: str, title: str,
                                            obj: dict[str, Any], expected: list[str]) -> None:
    obj = {**obj, "metadata": {"name": "bad", "namespace": namespace}}
    proc = kube.run("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj),
                    check=False)
    assert proc.returncode != 0, f"{title}: accepted"
    for text in expected:
        assert text in proc.stderr, f"{title}: {text!r} not in {proc.stderr}"


def test_the_valid_base_is_accepted_and_its_spec_is_immutable(kube: Kube,
                                                              namespace: str) -> None:
    obj = {**VALID, "metadata": {"name": "fixed", "namespace": namespace}}
    kube.apply(obj)
    stored = kube.get("bi", "fixed", namespace)
    assert stored is not None and stored["spec"]["chunkSize"] == 10000  # defaults filled
    changed = copy.deepcopy(obj)
    changed["spec"]["chunkSize"] = 5
    proc = kube.apply(changed, check=False)
    assert proc.returncode != 0 and "spec is immutable" in proc.stderr, proc.stderr


# --- a real run on the real node ------------------------------------------------------


@pytest.fixture(scope="module")
def results(kube: Kube, chart_operator: ChartOperator) -> Iterator[Path]:
    """A claim `results` in the models namespace, bound to a directory of this host (the
    real node), writable by the pods' user; one for the module (each run writes its own
    directory in it)."""
    ns = chart_operator.models_ns
    pv = f"{ns}-results"
    host = Path(f"/tmp/{pv}")
    host.mkdir(mode=0o777, exist_ok=True)
    host.chmod(0o777)  # the pods run as 65532; a hostPath volume ignores fsGroup
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                         "hostPath": {"path": str(host)}}})
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "results", "namespace": ns},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                         "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for("PVC bound", lambda: ((kube.get("pvc", "results", ns) or {}).get("status")
                                   or {}).get("phase") == "Bound")
    try:
        yield host
    finally:
        kube.run("delete", "pvc", "results", "-n", ns, "--wait=false", check=False)
        kube.run("delete", "pv", pv, "--wait=false", check=False)
        shutil.rmtree(host, ignore_errors=True)


def upload_input(rows: np.ndarray[Any, Any]) -> tuple[str, str]:
    """The rows as a CSV (header, an id column) in the local store: (uri, digest)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "sepal_length", "sepal_width", "petal_length", "petal_width"])
    writer.writerows([f"r{i}", *map(repr, row.tolist())] for i, row in enumerate(rows))
    blob = buf.getvalue().encode()
    key = f"batch/{uuid.uuid4().hex[:8]}/in.csv"
    s3_client().put_object(Bucket="models", Key=key, Body=blob)
    return f"s3://models/{key}", "sha256:" + hashlib.sha256(blob).hexdigest()


def batch_inference(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "BatchInference",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def wait_phase(kube: Kube, name: str, ns: str, phase: str, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        bi = kube.get("bi", name, ns)
        got = ((bi or {}).get("status") or {}).get("phase")
        if got == "Failed" and phase != "Failed":
            raise AssertionError(f"bi/{name} Failed: {bi['status']}")  # type: ignore[index]
        return bi if got == phase else None
    found: dict[str, Any] = wait_for(f"bi/{name} {phase}", check, timeout=timeout, interval=2)
    return found


def test_batch_inference_runs_to_complete_on_the_real_node(
        kube: Kube, chart_operator: ChartOperator, model_store: dict[str, str],
        results: Path) -> None:
    from sklearn.datasets import load_iris

    ns = chart_operator.models_ns
    x = load_iris().data
    rng = np.random.default_rng(7)
    rows = np.round(np.tile(x, (20, 1)) + rng.normal(0, 0.05, (len(x) * 20, 4)), 3)  # 3000
    uri, digest = upload_input(rows)
    kube.apply(real_model("iris", ns, IRIS_V1, model_store[IRIS_V1], replicas=1))
    kube.apply(batch_inference(
        "score", ns, modelRef={"name": "iris"},
        input={"uri": uri, "digest": digest, "credentialsSecretRef": {"name": "model-store"},
               "idColumn": "key"},
        output={"uri": "pvc://results/score", "predictions": ["predict", "predict_proba"]},
        parallelism=2, shards=4, chunkSize=250))
    bi = wait_phase(kube, "score", ns, "Complete", timeout=600)
    status = bi["status"]
    assert status["rowsDone"] == status["rowsTotal"] == len(rows)
    assert status["shardsDone"] == status["shards"] == 4
    assert status["model"]["modelDeployment"] == "iris"
    assert status["model"]["digest"] == model_store[IRIS_V1]
    assert status["rowsPerSecond"] > 0 and status["startTime"] and status["completionTime"]
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds == {"Ready": "True", "Complete": "True", "Failed": "False"}
    job = kube.get("job", "score", ns)
    assert job is not None and job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (4, 2)
    assert job["metadata"]["ownerReferences"][0]["uid"] == bi["metadata"]["uid"]
    # every row exactly once, as the model itself predicts it
    parts = sorted((results / "score").glob("part-*.csv"))
    assert [p.name for p in parts] == [f"part-{k:06d}.csv" for k in range(12)]
    out: list[dict[str, str]] = []
    for part in parts:
        with part.open(newline="") as f:
            out += list(csv.DictReader(f))
    assert [r["inference_id"] for r in out] == [f"r{i}" for i in range(len(rows))]
    model = stored_model(IRIS_V1)
    assert [int(r["predict"]) for r in out] == model.predict(rows).tolist()
    proba = np.array([[float(r[f"predict_proba_{c}"]) for c in range(3)] for r in out])
    np.testing.assert_allclose(proba, model.predict_proba(rows))
    for pod in kube.list("pods", ns, selector="batch.kubernetes.io/job-name=score"):
        assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.timeout(1200)  # the chart's operator may be installed first (minutes)
def test_a_model_a_policy_refuses_does_not_run_in_batch(
        kube: Kube, chart_operator: ChartOperator, model_store: dict[str, str],
        results: Path) -> None:
    ns = chart_operator.models_ns
    label = f"bi-gate-{uuid.uuid4().hex[:6]}"
    kube.run("label", "namespace", ns, f"{label}=on")
    policy = f"{ns}-batch-gate"
    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "GovernancePolicy",
                "metadata": {"name": policy},
                "spec": {"namespaceSelector": {"matchLabels": {label: "on"}},
                         "approvalRequiredFor": ["high"]}})
    try:
        uri, digest = upload_input(np.array([[5.1, 3.5, 1.4, 0.2]] * 10))
        kube.apply(batch_inference(
            "gated", ns,
            model={"version": "1", "uri": IRIS_V1, "digest": model_store[IRIS_V1],
                   "credentialsSecretRef": {"name": "model-store"}},
            governance={"owner": "e2e", "riskTier": "high"},
            input={"uri": uri, "digest": digest,
                   "credentialsSecretRef": {"name": "model-store"}, "idColumn": "key"},
            output={"uri": "pvc://results/gated"}))

        def blocked() -> dict[str, Any] | None:
            cond = kube.condition("bi", "gated", ns, "Ready")
            return cond if cond and cond["reason"] == "PolicyViolation" else None
        cond = wait_for("bi/gated blocked by the policy", blocked, timeout=120)
        assert f"GovernancePolicy {policy}, rule approvalRequiredFor" in cond["message"]
        assert "spec.governance.approval" in cond["message"]
        assert kube.get("job", "gated", ns) is None
        assert kube.get("bi", "gated", ns)["status"]["phase"] == "Pending"  # type: ignore[index]
    finally:
        kube.run("delete", "governancepolicy", policy, "--wait=false", check=False)
    # without the policy the retried gate lets it run
    wait_phase(kube, "gated", ns, "Complete", timeout=600)


def test_parquet_in_and_parquet_parts_out_to_s3_on_the_real_node(
        kube: Kube, chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    """Parquet runs in the kustos-explain image (fastparquet); the parts go to an S3
    prefix of the local store with the output's own credentials (needs the kustos and
    kustos-explain images rebuilt from this tree)."""
    import fastparquet
    import pandas as pd
    from sklearn.datasets import load_iris

    ns = chart_operator.models_ns
    x = load_iris().data
    rows = np.tile(x, (4, 1))  # 600
    columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    frame = pd.DataFrame({"key": [f"p{i}" for i in range(len(rows))],
                          **{c: rows[:, i] for i, c in enumerate(columns)}})
    run = uuid.uuid4().hex[:8]
    local = Path(f"/tmp/bi-live-{run}.parquet")
    try:
        fastparquet.write(str(local), frame, write_index=False,
                          row_group_offsets=[0, 200, 400])
        blob = local.read_bytes()
    finally:
        local.unlink(missing_ok=True)
    client = s3_client()
    client.put_object(Bucket="models", Key=f"batch/{run}/in.parquet", Body=blob)
    kube.apply(real_model("iris", ns, IRIS_V1, model_store[IRIS_V1], replicas=1))
    kube.apply(batch_inference(
        "score-pq", ns, modelRef={"name": "iris"},
        input={"uri": f"s3://models/batch/{run}/in.parquet", "format": "parquet",
               "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
               "credentialsSecretRef": {"name": "model-store"}, "idColumn": "key"},
        output={"uri": f"s3://models/batch/{run}/out", "format": "parquet",
                "credentialsSecretRef": {"name": "model-store"},
                "predictions": ["predict", "predict_proba"]},
        parallelism=2, shards=2, chunkSize=150))
    bi = wait_phase(kube, "score-pq", ns, "Complete", timeout=600)
    assert bi["status"]["rowsDone"] == bi["status"]["rowsTotal"] == len(rows)
    assert "kustos-explain" in bi["status"]["image"]
    listed = client.list_objects_v2(Bucket="models", Prefix=f"batch/{run}/out/")
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))
    assert keys == ["_chunking.json", *(f"part-{k:06d}.parquet" for k in range(4))]
    parts = [fastparquet.ParquetFile(io.BytesIO(client.get_object(
        Bucket="models", Key=f"batch/{run}/out/part-{k:06d}.parquet")["Body"].read())
    ).to_pandas() for k in range(4)]
    out = pd.concat(parts, ignore_index=True)
    assert out["inference_id"].tolist() == frame["key"].tolist()
    model = stored_model(IRIS_V1)
    assert out["predict"].tolist() == model.predict(rows).tolist()
    np.testing.assert_allclose(out[[f"predict_proba_{c}" for c in range(3)]].to_numpy(),
                               model.predict_proba(rows))


def test_an_s3_input_without_digest_is_read_in_place_by_the_shards_on_the_real_node(
        kube: Kube, chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    """No digest: no fetch-input container, each shard reads its part of the s3:// CSV with
    ranged GETs, the input's own Secret under KUSTOS_INPUT_ next to the output's AWS_*
    (both in the batch container); rows checked against the model (needs the kustos image
    rebuilt from this tree)."""
    from sklearn.datasets import load_iris

    ns = chart_operator.models_ns
    rows = np.tile(load_iris().data, (4, 1))  # 600
    uri, _ = upload_input(rows)
    # The input's Secret: the store's settings under another name, so the input and the
    # output each come with a Secret of their own.
    input_secret = yaml.safe_load(store_module().secret(ns))
    input_secret["metadata"]["name"] = "bi-input-store"
    kube.apply(input_secret)
    run = uuid.uuid4().hex[:8]
    kube.apply(real_model("iris", ns, IRIS_V1, model_store[IRIS_V1], replicas=1))
    kube.apply(batch_inference(
        "score-in-place", ns, modelRef={"name": "iris"},
        input={"uri": uri, "credentialsSecretRef": {"name": "bi-input-store"},
               "idColumn": "key"},
        output={"uri": f"s3://models/batch/{run}/out",
                "credentialsSecretRef": {"name": "model-store"},
                "predictions": ["predict", "predict_proba"]},
        parallelism=2, shards=3, chunkSize=100))
    job = wait_for("job/score-in-place", lambda: kube.get("job", "score-in-place", ns),
                   timeout=120)
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
    [batch] = pod["containers"]
    assert batch["args"][batch["args"].index("--input") + 1] == uri
    assert batch["args"][batch["args"].index("--input-env-prefix") + 1] == "KUSTOS_INPUT_"
    assert batch["envFrom"] == [
        {"secretRef": {"name": "model-store"}},
        {"prefix": "KUSTOS_INPUT_", "secretRef": {"name": "bi-input-store"}}]
    bi = wait_phase(kube, "score-in-place", ns, "Complete", timeout=600)
    assert bi["status"]["rowsDone"] == bi["status"]["rowsTotal"] == len(rows)
    assert bi["status"]["shardsDone"] == 3
    client = s3_client()
    listed = client.list_objects_v2(Bucket="models", Prefix=f"batch/{run}/out/")
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))
    assert keys == ["_chunking.json", *(f"part-{k:06d}.csv" for k in range(6))]
    out: list[dict[str, str]] = []
    for k in range(6):
        body = client.get_object(Bucket="models",
                                 Key=f"batch/{run}/out/part-{k:06d}.csv")["Body"].read()
        out += list(csv.DictReader(io.StringIO(body.decode())))
    assert [r["inference_id"] for r in out] == [f"r{i}" for i in range(len(rows))]
    model = stored_model(IRIS_V1)
    assert [int(r["predict"]) for r in out] == model.predict(rows).tolist()
    proba = np.array([[float(r[f"predict_proba_{c}"]) for c in range(3)] for r in out])
    np.testing.assert_allclose(proba, model.predict_proba(rows))
