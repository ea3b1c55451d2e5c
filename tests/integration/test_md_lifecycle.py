"""ModelDeployment end to end on the real control plane, with the real operator process."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import MODEL_DIGEST as DIGEST
from conftest import Kube, Operator, model_deployment, wait_for, wait_ready

pytestmark = pytest.mark.integration

CHILD_KINDS = "serviceaccounts,deployments,services,horizontalpodautoscalers,poddisruptionbudgets"


def children(kube: Kube, name: str, ns: str,
             managed_fields: bool = False) -> dict[str, dict[str, Any]]:
    items = kube.list(CHILD_KINDS, ns, f"app.kubernetes.io/instance={name}",
                      managed_fields=managed_fields)
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in items}


def test_create_reaches_ready_with_owned_children(kube: Kube, operator: Operator,
                                                 namespace: str) -> None:
    kube.apply(model_deployment("iris", namespace))
    md = wait_ready(kube, "iris", namespace)
    st = md["status"]
    assert st["replicas"] == 2 and st["readyReplicas"] == 2
    assert st["url"] == f"http://iris.{namespace}.svc.cluster.local"
    assert (st["model"]["version"], st["model"]["digest"]) == ("1", DIGEST)
    assert st["model"]["deployedAt"]
    assert "app.kubernetes.io/instance=iris" in st["selector"]
    kids = children(kube, "iris", namespace, managed_fields=True)
    # no ServiceAccount: a model without Vault runs as the namespace's default account,
    # with no token mounted
    assert set(kids) == {"Deployment/iris", "Service/iris", "PodDisruptionBudget/iris"}
    pod_spec = kids["Deployment/iris"]["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod_spec
    assert pod_spec["automountServiceAccountToken"] is False
    for obj in kids.values():
        refs = obj["metadata"]["ownerReferences"]
        assert refs[0]["uid"] == md["metadata"]["uid"] and refs[0]["controller"] is True
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustos"
        managers = {m["manager"] for m in obj["metadata"]["managedFields"]
                    if m["operation"] == "Apply"}
        assert managers == {"kustos"}, "children are server-side applied by `kustos`"
    # Kopf's bookkeeping lives in annotations, never in status.
    assert set(st) <= {"observedGeneration", "conditions", "replicas", "readyReplicas",
                       "selector", "url", "model", "history"}


def test_scale_and_version_change_roll_in_place(kube: Kube, operator: Operator,
                                                namespace: str) -> None:
    kube.apply(model_deployment("wine", namespace))
    wait_ready(kube, "wine", namespace)
    uid_before = kube.get("deployment", "wine", namespace)["metadata"]["uid"]  # type: ignore[index]
    kube.run("scale", "md/wine", "-n", namespace, "--replicas=3")
    md = wait_ready(kube, "wine", namespace, generation=2)
    assert md["status"]["replicas"] == 3
    assert kube.get("deployment", "wine", namespace)["spec"]["replicas"] == 3  # type: ignore[index]
    kube.run("patch", "md/wine", "-n", namespace, "--type=merge", "-p",
             '{"spec":{"model":{"version":"2","uri":"s3://models/wine/2/model.skops"}}}')
    md = wait_ready(kube, "wine", namespace, generation=3)
    dep = kube.get("deployment", "wine", namespace)
    assert dep is not None and dep["metadata"]["uid"] == uid_before, "updated in place"
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-version") + 1] == "2"
    assert md["status"]["model"]["version"] == "2"
    assert md["status"]["history"][0]["version"] == "1"
    # A rolling update: a second ReplicaSet took over from the first.
    rs = kube.list("replicasets", namespace, "app.kubernetes.io/instance=wine")
    assert len(rs) == 2
    assert sorted(r["spec"]["replicas"] for r in rs) == [0, 3]
    reasons = [e["reason"] for e in kube.events(namespace, "wine")]
    assert "ModelVersionChanged" in reasons


def test_autoscaling_added_and_removed(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(model_deployment("auto", namespace, replicas=1))
    wait_ready(kube, "auto", namespace)
    assert "PodDisruptionBudget/auto" not in children(kube, "auto", namespace)
    kube.run("patch", "md/auto", "-n", namespace, "--type=merge", "-p",
             '{"spec":{"autoscaling":{"minReplicas":2,"maxReplicas":4}}}')
    wait_ready(kube, "auto", namespace, generation=2)
    kids = wait_for("HPA and PDB", lambda: (
        k := children(kube, "auto", namespace)) and "HorizontalPodAutoscaler/auto" in k and k)
    hpa = kids["HorizontalPodAutoscaler/auto"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 4)
    assert hpa["scaleTargetRef"]["name"] == "auto"
    assert "PodDisruptionBudget/auto" in kids
    # The HPA (the real controller-manager) owns the replica count now: it raises the
    # Deployment to its minimum, and the operator's apply no longer claims the field.
    wait_for("HPA scaling to its minimum", lambda: (
        d := kube.get("deployment", "auto", namespace)) and d["spec"]["replicas"] == 2)
    dep = kube.list("deployments", namespace, "app.kubernetes.io/instance=auto",
                    managed_fields=True)[0]
    ours = next(m for m in dep["metadata"]["managedFields"] if m["manager"] == "kustos")
    assert "f:replicas" not in ours["fieldsV1"]["f:spec"]
    kube.run("patch", "md/auto", "-n", namespace, "--type=json", "-p",
             '[{"op":"remove","path":"/spec/autoscaling"}]')
    wait_ready(kube, "auto", namespace, generation=3)
    kids = wait_for("HPA and PDB gone", lambda: (
        k := children(kube, "auto", namespace)) and "HorizontalPodAutoscaler/auto" not in k and k)
    assert "PodDisruptionBudget/auto" not in kids
    assert kids["Deployment/auto"]["spec"]["replicas"] == 1


def test_delete_garbage_collects_children(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(model_deployment("gone", namespace))
    wait_ready(kube, "gone", namespace)
    kube.run("delete", "md/gone", "-n", namespace)
    wait_for("children collected", lambda: not children(kube, "gone", namespace), timeout=60)


def test_noop_resync_writes_nothing(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(model_deployment("calm", namespace))
    wait_ready(kube, "calm", namespace)

    def versions() -> dict[str, str]:
        objs = children(kube, "calm", namespace)
        md = kube.get("md", "calm", namespace)
        assert md is not None
        objs["ModelDeployment/calm"] = md
        return {k: o["metadata"]["resourceVersion"] for k, o in objs.items()}

    # Let late Deployment status updates settle before recording.
    wait_for("stable resourceVersions", lambda: versions() == versions(), timeout=30)
    before = versions()
    # A restarted operator resumes every object it watches: a full resync. Watching only
    # this namespace keeps other tests' objects out of the write count.
    operator.restart(namespaces=[namespace])
    try:
        wait_for("resync", lambda: operator.metric("kustos_operator_reconciles_total") >= 1)
        assert versions() == before
        assert operator.metric("kustos_operator_api_writes_total") == 0
        # An edit that changes nothing the operator renders (a label) writes nothing either.
        kube.run("label", "md/calm", "-n", namespace, "team=fraud")
        wait_for("second reconcile",
                 lambda: operator.metric("kustos_operator_reconciles_total") >= 2)
        after = versions()
        del after["ModelDeployment/calm"], before["ModelDeployment/calm"]
        assert after == before
        assert operator.metric("kustos_operator_api_writes_total") == 0
    finally:
        operator.restart()


def test_restart_midway_converges_without_duplicates(kube: Kube, operator: Operator,
                                                     namespace: str) -> None:
    operator.stop()
    try:
        for i in range(3):
            kube.apply(model_deployment(f"m{i}", namespace, replicas=1))
        kube.run("patch", "md/m0", "-n", namespace, "--type=merge", "-p",
                 '{"spec":{"replicas":2}}')
    finally:
        operator.start()
    for i in range(3):
        wait_ready(kube, f"m{i}", namespace)
    deployments = kube.list("deployments", namespace)
    assert sorted(d["metadata"]["name"] for d in deployments) == ["m0", "m1", "m2"]
    assert kube.get("deployment", "m0", namespace)["spec"]["replicas"] == 2  # type: ignore[index]
    for i in range(3):
        assert len(kube.list("replicasets", namespace, f"app.kubernetes.io/instance=m{i}")) == 1


def test_restricted_namespace_admits_the_pods(kube: Kube, operator: Operator,
                                              namespace: str) -> None:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
             "pod-security.kubernetes.io/enforce-version=latest")
    kube.apply(model_deployment("strict", namespace))
    md = wait_ready(kube, "strict", namespace)
    assert md["status"]["readyReplicas"] == 2
    pods = kube.list("pods", namespace, "app.kubernetes.io/instance=strict")
    assert len(pods) == 2


def test_never_touches_what_it_does_not_own(kube: Kube, operator: Operator,
                                            namespace: str) -> None:
    # A stranger's object carrying our labels: never adopted, never deleted.
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "stranger", "namespace": namespace,
        "labels": {"app.kubernetes.io/instance": "owned",
                   "app.kubernetes.io/managed-by": "kustos"}}})
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "stranger-svc", "namespace": namespace,
        "labels": {"app.kubernetes.io/instance": "owned",
                   "app.kubernetes.io/managed-by": "kustos"}},
        "spec": {"ports": [{"port": 80}]}})
    # A Service already named like the child the MD needs.
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "taken", "namespace": namespace}, "spec": {"ports": [{"port": 81}]}})
    kube.apply(model_deployment("owned", namespace, replicas=1))
    wait_ready(kube, "owned", namespace)
    kube.apply(model_deployment("taken", namespace, replicas=1))
    degraded = wait_for("NameConflict", lambda: (
        c := kube.condition("md", "taken", namespace, "Degraded")) and
        c["status"] == "True" and c)
    assert degraded["reason"] == "NameConflict"
    assert "Service taken" in degraded["message"]
    svc = kube.get("service", "taken", namespace)
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 81
    assert "ownerReferences" not in svc["metadata"]
    kube.run("delete", "md/owned", "-n", namespace)
    wait_for("owned children gone", lambda: kube.get("deployment", "owned", namespace) is None)
    assert kube.get("configmap", "stranger", namespace) is not None
    assert kube.get("service", "stranger-svc", namespace) is not None
    assert any(e["reason"] == "NameConflict" and e["type"] == "Warning"
               for e in kube.events(namespace, "taken"))


def test_runtime_problem_is_degraded_without_a_hot_loop(kube: Kube, operator: Operator,
                                                        namespace: str) -> None:
    # A missing credentials Secret passes every schema check; only the reconcile sees it.
    kube.apply(model_deployment("creds", namespace, model={
        "version": "1", "uri": "s3://models/iris/model.skops", "digest": DIGEST,
        "credentialsSecretRef": {"name": "s3-creds"}}))
    cond = wait_for("Degraded", lambda: (
        c := kube.condition("md", "creds", namespace, "Degraded")) and
        c["status"] == "True" and c)
    assert cond["reason"] == "CredentialsNotFound"
    assert "s3-creds" in cond["message"] and "credentialsSecretRef" in cond["message"]
    assert kube.get("deployment", "creds", namespace) is None
    metric = ('kustos_operator_reconcile_errors_total{kind="ModelDeployment",'
              'reason="CredentialsNotFound"}')
    first = operator.metric(metric)
    time.sleep(10)
    # Exponential backoff (2 s, 4 s, 8 s, ...): a handful of retries, not a hot loop.
    assert operator.metric(metric) - first <= 3
    warnings = [e for e in kube.events(namespace, "creds") if e["reason"] == "CredentialsNotFound"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    # The Secret appears: the deployment continues by itself, no spec change needed.
    kube.run("create", "secret", "generic", "s3-creds", "-n", namespace,
             "--from-literal=AWS_ACCESS_KEY_ID=x", "--from-literal=AWS_SECRET_ACCESS_KEY=y")
    md = wait_ready(kube, "creds", namespace)
    assert md["metadata"]["generation"] == 1
    assert kube.condition("md", "creds", namespace, "Degraded")["status"] == "False"  # type: ignore[index]
    pod = kube.get("deployment", "creds", namespace)["spec"]["template"]["spec"]  # type: ignore[index]
    assert pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    # Secret values are never copied into what Kustos writes.
    assert "AWS_SECRET_ACCESS_KEY" not in str(kube.get("md", "creds", namespace))
