"""The ModelDeployment render: pure function, checked on its output."""

from __future__ import annotations

from typing import Any

from kustos.config import OperatorConfig
from kustos.render.meta import SPEC_HASH
from kustos.render.modeldeployment import render

DIGEST = "sha256:" + "ab" * 32


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"version": "3", "uri": "s3://m/iris/model.skops",
                                      "digest": DIGEST}}
    base.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": base}


def by_kind(objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_children_and_ownership() -> None:
    objs = render(body(replicas=1), OperatorConfig())
    kinds = by_kind(objs)
    assert set(kinds) == {"Deployment", "Service", "NetworkPolicy"}
    for o in objs:
        meta = o["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"]["app.kubernetes.io/instance"] == "iris"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kustos"
        ref = meta["ownerReferences"][0]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("ModelDeployment", "uid-1", True)
        assert len(meta["annotations"][SPEC_HASH]) == 32


def test_a_service_account_only_for_a_model_that_logs_in_to_vault() -> None:
    """Without Vault the pods run as the namespace's default account with no token (no
    API identity): a ServiceAccount of its own would be one write per model for nothing.
    With Vault, the model's own account is what Vault authenticates."""
    plain = by_kind(render(body(replicas=1), OperatorConfig()))
    assert "ServiceAccount" not in plain
    assert "serviceAccountName" not in plain["Deployment"][0]["spec"]["template"]["spec"]
    vaulted = body(replicas=1)
    vaulted["spec"]["secrets"] = {"vault": {
        "address": "https://vault.example:8200", "role": "iris",
        "items": [{"path": "secret/data/iris", "key": "token", "file": "token"}]}}
    kinds = by_kind(render(vaulted, OperatorConfig()))
    assert [sa["metadata"]["name"] for sa in kinds["ServiceAccount"]] == ["iris"]
    pod = kinds["Deployment"][0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "iris" and pod["automountServiceAccountToken"] is False


def test_deployment_pod_is_restricted_and_fetches_with_digest() -> None:
    dep = by_kind(render(body(replicas=2), OperatorConfig()))["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
    fetch = pod["initContainers"][0]
    assert fetch["args"] == ["fetch", "s3://m/iris/model.skops", "/mnt/models/model.skops",
                             "--digest", DIGEST]
    server = pod["containers"][0]
    args = server["args"]
    assert args[args.index("--model") + 1] == "/mnt/models/model.skops"
    assert args[args.index("--digest") + 1] == DIGEST
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_hpa_owns_replicas_and_pdb_follows_count() -> None:
    kinds = by_kind(render(body(autoscaling={"minReplicas": 2, "maxReplicas": 5,
                                             "targetCPUUtilization": 60}), OperatorConfig()))
    assert "replicas" not in kinds["Deployment"][0]["spec"]
    hpa = kinds["HorizontalPodAutoscaler"][0]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "iris"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert kinds["PodDisruptionBudget"][0]["spec"]["maxUnavailable"] == 1
    single = by_kind(render(body(replicas=1), OperatorConfig()))
    assert "PodDisruptionBudget" not in single and "HorizontalPodAutoscaler" not in single


def test_canary_splits_replicas_and_shares_the_service() -> None:
    objs = render(body(replicas=4, canary={
        "model": {"version": "4", "uri": "s3://m/iris/v4/model.skops"}, "trafficPercent": 25}),
        OperatorConfig())
    deps = {d["metadata"]["name"]: d for d in by_kind(objs)["Deployment"]}
    assert deps["iris"]["spec"]["replicas"] == 3
    assert deps["iris-canary"]["spec"]["replicas"] == 1
    canary_args = deps["iris-canary"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert canary_args[canary_args.index("--model-version") + 1] == "4"
    svc = by_kind(objs)["Service"][0]
    assert "kustos.dev/track" not in svc["spec"]["selector"]
    for d in deps.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())


def test_render_is_deterministic_and_hash_tracks_changes() -> None:
    a = render(body(replicas=2), OperatorConfig())
    b = render(body(replicas=2), OperatorConfig())
    assert a == b
    c = render(body(replicas=3), OperatorConfig())
    ha = {o["kind"]: o["metadata"]["annotations"][SPEC_HASH] for o in a}
    hc = {o["kind"]: o["metadata"]["annotations"][SPEC_HASH] for o in c}
    assert ha["Deployment"] != hc["Deployment"]
    assert ha["Service"] == hc["Service"]


def test_pvc_source_is_mounted_read_only() -> None:
    dep = by_kind(render(body(model={"version": "1", "uri": "pvc://models/iris/model.onnx",
                                     "format": "onnx"}), OperatorConfig()))["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "source", "persistentVolumeClaim": {"claimName": "models",
                                                        "readOnly": True}} in pod["volumes"]
    assert pod["initContainers"][0]["args"][1] == "/mnt/pvc/models/iris/model.onnx"


def test_the_scale_down_window_reaches_the_hpa_and_keda_only_when_set() -> None:
    auto = {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 50}
    plain = by_kind(render(body(autoscaling=auto), OperatorConfig()))
    assert "behavior" not in plain["HorizontalPodAutoscaler"][0]["spec"]
    timed = by_kind(render(body(autoscaling={**auto, "scaleDownStabilizationSeconds": 20}),
                           OperatorConfig()))
    assert timed["HorizontalPodAutoscaler"][0]["spec"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 20}}
    keda = OperatorConfig.model_validate({"autoscaling": {
        "requests_backend": "keda", "prometheus_address": "http://prometheus:9090"}})
    (so,) = by_kind(render(body(autoscaling={
        "minReplicas": 1, "maxReplicas": 3, "targetRequestsPerSecond": 10,
        "scaleDownStabilizationSeconds": 0}), keda))["ScaledObject"]
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 0}}
