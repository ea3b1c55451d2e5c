"""Security properties on the real control plane: Pod Security Admission `restricted` admits
every pod Kustos renders, each ModelDeployment gets its NetworkPolicy (validated by the API
server, owned, collected with the model), and model integrity rules are enforced at
admission."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from conftest import MODEL_DIGEST as DIGEST
from conftest import Kube, Operator, model_deployment, wait_for, wait_ready

from kustos.config import NetworkPolicySettings, OperatorConfig
from kustos.render.attachments import Attachments
from kustos.render.modeldeployment import render

pytestmark = pytest.mark.integration

INSTANCE = "app.kubernetes.io/instance"


def restrict(kube: Kube, namespace: str) -> None:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
             "pod-security.kubernetes.io/enforce-version=latest")
    # The label is enforced: a pod that is not restricted is refused.
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": namespace},
           "spec": {"containers": [{"name": "c", "image": "busybox",
                                    "securityContext": {"runAsUser": 0}}]}}
    refused = kube.apply(bad, check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


def test_restricted_namespace_admits_canary_autoscaling_and_pvc_pods(
        kube: Kube, operator: Operator, namespace: str) -> None:
    restrict(kube, namespace)
    # A PersistentVolume bound to the claim the stable track reads its model from.
    pv = f"{namespace}-models"
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                         "hostPath": {"path": f"/tmp/{pv}"}}})
    try:
        kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "models", "namespace": namespace},
                    "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                             "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}})
        wait_for("PVC bound", lambda: (pvc := kube.get("pvc", "models", namespace))
                 and pvc.get("status", {}).get("phase") == "Bound")
        kube.apply(model_deployment(
            "strict", namespace,
            model={"version": "1", "uri": "pvc://models/iris/model.skops", "digest": DIGEST},
            autoscaling={"minReplicas": 3, "maxReplicas": 4},
            canary={"model": {"version": "2", "uri": "s3://models/iris/2/model.skops",
                              "digest": DIGEST}, "trafficPercent": 34}))
        md = wait_ready(kube, "strict", namespace, timeout=120)
        pods = kube.list("pods", namespace, f"{INSTANCE}=strict")
        tracks = sorted(p["metadata"]["labels"]["kustos.dev/track"] for p in pods)
        assert tracks == ["canary", "stable", "stable"], tracks
        assert md["status"]["readyReplicas"] == 3
        for p in pods:
            assert p["status"]["phase"] == "Running"
            claims = [v["persistentVolumeClaim"]["claimName"] for v in p["spec"]["volumes"]
                      if "persistentVolumeClaim" in v]
            track = p["metadata"]["labels"]["kustos.dev/track"]
            assert claims == (["models"] if track == "stable" else []), (track, claims)
        assert kube.get("hpa", "strict", namespace) is not None
        # No ReplicaSet was refused a pod by admission.
        for rs in kube.list("replicasets", namespace, f"{INSTANCE}=strict"):
            failures = [c for c in rs["status"].get("conditions") or []
                        if c["type"] == "ReplicaFailure"]
            assert not failures, failures
    finally:
        kube.run("delete", "md", "strict", "-n", namespace, "--wait=false", check=False)
        kube.run("delete", "pvc", "models", "-n", namespace, "--wait=false", check=False)
        kube.run("delete", "pv", pv, "--wait=false", check=False)


def test_network_policy_is_a_child_and_goes_with_the_model(
        kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(model_deployment("fenced", namespace))
    md = wait_ready(kube, "fenced", namespace, timeout=120)
    policy = wait_for("NetworkPolicy", lambda: kube.get("networkpolicy", "fenced", namespace))
    ref = policy["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("ModelDeployment",
                                                            md["metadata"]["uid"], True)
    managed = json.loads(kube.run("get", "networkpolicy", "fenced", "-n", namespace, "-o",
                                  "json", "--show-managed-fields").stdout)
    assert {m["manager"] for m in managed["metadata"]["managedFields"]
            if m["operation"] == "Apply"} == {"kustos"}
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    # HTTP and kustos serve's gRPC port, to the same clients
    assert spec["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080},
                                           {"protocol": "TCP", "port": 8081}]
    # The policy selects exactly the model's pods.
    selector = ",".join(f"{k}={v}" for k, v in spec["podSelector"]["matchLabels"].items())
    selected = {p["metadata"]["name"] for p in kube.list("pods", namespace, selector)}
    mine = {p["metadata"]["name"] for p in kube.list("pods", namespace, f"{INSTANCE}=fenced")}
    assert selected == mine and len(mine) == 2
    kube.run("delete", "md", "fenced", "-n", namespace)
    wait_for("NetworkPolicy collected",
             lambda: kube.get("networkpolicy", "fenced", namespace) is None, timeout=60)


def _policy(config: OperatorConfig, namespace: str, attachments: Attachments,
            **spec: Any) -> dict[str, Any]:
    body = model_deployment("np", namespace, **spec)
    body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    (np,) = [o for o in render(body, config, attachments) if o["kind"] == "NetworkPolicy"]
    return np


def test_rendered_policies_pass_api_server_validation(kube: Kube, namespace: str) -> None:
    sidecars = tuple({"name": n, "image": "x", "ports": [{"name": n, "containerPort": p,
                                                           "protocol": "TCP"}]}
                     for n, p in (("explainer", 8090), ("drift", 8091)))
    configs = [
        NetworkPolicySettings(),
        NetworkPolicySettings(
            serving_namespace_selector={"matchExpressions": [
                {"key": "kustos.dev/clients", "operator": "In", "values": ["a", "b"]}]},
            monitoring_namespace_selector=None, operator_namespace="kustos"),
    ]
    policies = []
    for settings in configs:
        cfg = OperatorConfig(network_policy=settings)
        policies.append(_policy(cfg, namespace, Attachments(sidecars=sidecars)))
        policies.append(_policy(cfg, namespace, Attachments(),
                                runtime={"kind": "custom", "image": "x", "port": 9000}))
    for np in policies:
        out = kube.run("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(np))
        assert "created (server dry run)" in out.stdout, out.stdout
    # The dry run does validate: a bad port is refused.
    broken = json.loads(json.dumps(policies[0]))
    broken["spec"]["ingress"][0]["ports"][0]["port"] = 70000
    out = kube.run("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(broken),
                   check=False)
    assert out.returncode != 0 and "port" in out.stderr, out.stderr


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({"governance": {"riskTier": "high"}, "replicas": 2,
      "canary": {"model": {"version": "2", "uri": "s3://m/2/model.skops"}, "trafficPercent": 10}},
     "spec.canary.model.digest", "riskTier high needs a pinned canary model digest"),
    ({"replicas": 2, "canary": {"model": {"version": "2", "uri": "s3://m/2/model.joblib"},
                                "trafficPercent": 10}},
     "spec.canary.model.digest", "unpickling runs code"),
    ({"governance": {"riskTier": "high"},
      "model": {"version": "1", "uri": "s3://m/1/model.skops"}},
     "spec.model.digest", "riskTier high needs a pinned model digest"),
])
def test_integrity_rules_refuse_unpinned_models(kube: Kube, namespace: str,
                                               spec: dict[str, Any], field: str,
                                               message: str) -> None:
    out = kube.apply(model_deployment("unpinned", namespace, **spec), check=False)
    assert out.returncode != 0, out.stdout
    assert field in out.stderr and message in out.stderr, out.stderr
    # With the digest pinned, the same object is accepted.
    pinned = json.loads(json.dumps(spec))
    (pinned.get("canary") or pinned)["model"]["digest"] = DIGEST
    kube.run("apply", "--dry-run=server", "-f", "-",
             input=yaml.safe_dump(model_deployment("unpinned", namespace, **pinned)))
