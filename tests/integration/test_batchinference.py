"""BatchInference with the real operator and the real Job controller, pods on the kwok
node (kwok runs a Job's pods to completion without a container, so the shards report no
rows: the real-node run is tests/integration/test_batchinference_live.py). Checks the
gate, the Job, the status through Complete and Failed, and the Event."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import MODEL_DIGEST, Kube, Operator, model_deployment, wait_for

pytestmark = pytest.mark.integration
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"  # what a kopf timer adds


@pytest.fixture
def results(kube: Kube, namespace: str) -> Iterator[str]:
    """A bound claim `results` (a hostPath volume nothing mounts: the pods are kwok's)."""
    pv = f"{namespace}-results"
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                         "hostPath": {"path": f"/tmp/{pv}"}}})
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "results", "namespace": namespace},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                         "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for("PVC bound", lambda: ((kube.get("pvc", "results", namespace) or {}).get("status")
                                   or {}).get("phase") == "Bound")
    yield "results"
    kube.run("delete", "pvc", "results", "-n", namespace, "--wait=false", check=False)
    kube.run("delete", "pv", pv, "--wait=false", check=False)


def batch_inference(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"input": {"uri": "pvc://results/in.csv"},
                            "output": {"uri": f"pvc://results/{name}"}}
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "BatchInference",
            "metadata": {"name": name, "namespace": ns}, "spec": {**base, **spec}}


def status(kube: Kube, name: str, ns: str) -> dict[str, Any]:
    return ((kube.get("bi", name, ns) or {}).get("status")) or {}


def wait_reason(kube: Kube, name: str, ns: str, reason: str,
                timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = kube.condition("bi", name, ns, "Ready")
        return cond if cond and cond["reason"] == reason else None
    found: dict[str, Any] = wait_for(f"bi/{name} Ready reason {reason}", check,
                                     timeout=timeout, interval=1)
    return found


def wait_phase(kube: Kube, name: str, ns: str, phase: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(f"bi/{name} {phase}",
                                     lambda: (s := status(kube, name, ns)).get("phase") == phase
                                     and s, timeout=timeout, interval=1)
    return found


def kopf_finalizers(kube: Kube, name: str, ns: str) -> list[str]:
    """kopf's finalizers on the object: none, the refresh is no kopf timer (whose finalizer
    would block the object's and its namespace's deletion while the operator is down)."""
    bi = kube.get("bi", name, ns)
    assert bi is not None
    return [f for f in bi["metadata"].get("finalizers") or []
            if f.startswith("kopf.zalando.org/")]


def events(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    items = json.loads(kube.run("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"].get("kind") == "BatchInference"
            and e["involvedObject"]["name"] == name]


def test_waits_for_its_model_then_runs_the_indexed_job_to_complete(
        kube: Kube, operator: Operator, namespace: str, results: str) -> None:
    kube.apply(batch_inference("score", namespace, modelRef={"name": "iris"},
                               parallelism=2, shards=3))
    cond = wait_reason(kube, "score", namespace, "ModelNotFound")
    assert cond["status"] == "False" and "ModelDeployment iris does not exist" in cond["message"]
    assert status(kube, "score", namespace)["phase"] == "Pending"
    assert kube.get("job", "score", namespace) is None
    assert kopf_finalizers(kube, "score", namespace) == []
    kube.apply(model_deployment("iris", namespace, replicas=1))
    done = wait_phase(kube, "score", namespace, "Complete", timeout=180)
    assert done["model"] == {"modelDeployment": "iris", "digest": MODEL_DIGEST,
                             "uri": "s3://models/iris/model.skops", "version": "1"}
    assert (done["shards"], done["jobName"], done["outputUri"]) == (3, "score",
                                                                    "pvc://results/score")
    assert done["startTime"] and done["completionTime"]
    assert {c["type"]: c["status"] for c in done["conditions"]} == {
        "Ready": "True", "Complete": "True", "Failed": "False"}
    bi = kube.get("bi", "score", namespace)
    job = kube.get("job", "score", namespace)
    assert bi is not None and job is not None
    assert job["metadata"]["ownerReferences"][0]["uid"] == bi["metadata"]["uid"]
    assert (job["spec"]["completionMode"], job["spec"]["completions"],
            job["spec"]["parallelism"]) == ("Indexed", 3, 2)
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
    assert MODEL_DIGEST in pod["initContainers"][0]["args"]
    assert [e["reason"] for e in events(kube, namespace, "score")] == ["BatchComplete"]
    assert kopf_finalizers(kube, "score", namespace) == []


def test_an_old_kopf_finalizer_goes_and_a_run_is_deleted_without_the_operator(
        kube: Kube, operator: Operator, namespace: str) -> None:
    """An object from the version with the kopf timer carries kopf's finalizer: kopf drops
    it once no handler needs one. Then the operator is not needed to delete a run."""
    old = batch_inference("old", namespace, modelRef={"name": "missing"})
    old["metadata"]["finalizers"] = [KOPF_FINALIZER]
    kube.apply(old)
    wait_reason(kube, "old", namespace, "ModelNotFound")
    wait_for("kopf's finalizer removed", lambda: kopf_finalizers(kube, "old", namespace) == [],
             timeout=60, interval=1)
    operator.stop()
    try:
        kube.run("delete", "bi", "old", "-n", namespace, "--wait=false")
        wait_for("bi/old deleted without the operator",
                 lambda: kube.get("bi", "old", namespace) is None, timeout=60, interval=1)
    finally:
        operator.start()


def test_a_policy_holds_the_run_until_it_is_lifted(
        kube: Kube, operator: Operator, namespace: str, results: str) -> None:
    label = f"bi-gate-{uuid.uuid4().hex[:6]}"
    kube.run("label", "namespace", namespace, f"{label}=on")
    policy = f"{namespace}-gate"
    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "GovernancePolicy",
                "metadata": {"name": policy},
                "spec": {"namespaceSelector": {"matchLabels": {label: "on"}},
                         "approvalRequiredFor": ["high"]}})
    try:
        kube.apply(batch_inference(
            "gated", namespace,
            model={"version": "1", "uri": "s3://models/iris/model.skops",
                   "digest": MODEL_DIGEST},
            governance={"owner": "team", "riskTier": "high"}))
        cond = wait_reason(kube, "gated", namespace, "PolicyViolation")
        assert (f"GovernancePolicy {policy}, rule approvalRequiredFor: "
                "spec.governance.approval.ticket is required for riskTier high") in cond["message"]
        assert status(kube, "gated", namespace)["phase"] == "Pending"
        assert kube.get("job", "gated", namespace) is None
    finally:
        kube.run("delete", "governancepolicy", policy, "--wait=false", check=False)
    wait_phase(kube, "gated", namespace, "Complete", timeout=300)


def test_a_foreign_job_with_its_name_fails_the_run(
        kube: Kube, operator: Operator, namespace: str, results: str) -> None:
    kube.apply({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "taken", "namespace": namespace},
                "spec": {"suspend": True, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "kustos.local/busybox:1"}]}}}})
    kube.apply(batch_inference("taken", namespace, modelRef={"name": "iris"}))
    done = wait_phase(kube, "taken", namespace, "Failed", timeout=60)
    conds = {c["type"]: c for c in done["conditions"]}
    assert conds["Failed"]["status"] == "True" and conds["Failed"]["reason"] == "NameConflict"
    assert conds["Ready"]["status"] == "False"
    job = kube.get("job", "taken", namespace)
    assert job is not None and not job["metadata"].get("ownerReferences")
    assert [e["reason"] for e in events(kube, namespace, "taken")] == ["BatchFailed"]
