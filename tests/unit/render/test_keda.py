"""spec.autoscaling as a KEDA ScaledObject (operator config autoscaling.requests_backend)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from kustos.config import OperatorConfig
from kustos.k8s.resources import MODEL_CHILD_KINDS, resource
from kustos.render.keda import model_child_kinds, pods_regex
from kustos.render.modeldeployment import render


def body(**spec: Any) -> dict[str, Any]:
    full: dict[str, Any] = {"model": {"version": "3", "uri": "s3://m/iris/model.skops"}, **spec}
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": full}


def by_kind(objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out

PROM = "http://prometheus.monitoring.svc:9090"
KEDA = OperatorConfig.model_validate(
    {"autoscaling": {"requests_backend": "keda", "prometheus_address": PROM}})


def scaled(objs: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = by_kind(objs)
    assert "HorizontalPodAutoscaler" not in kinds, "KEDA creates the HPA, not Kustos"
    (so,) = kinds["ScaledObject"]
    return so


def test_requests_target_with_keda_renders_a_scaled_object_instead_of_the_hpa() -> None:
    objs = render(body(autoscaling={"minReplicas": 2, "maxReplicas": 6,
                                    "targetRequestsPerSecond": 40}), KEDA)
    so = scaled(objs)
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["metadata"]["name"] == "iris"
    assert so["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "iris"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)
    assert spec["pollingInterval"] == 15
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    # KEDA divides the query's value by the pod count: the query is the pods' total rate,
    # the threshold the per-pod target.
    assert trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == PROM
    assert meta["threshold"] == "40"
    assert meta["query"].startswith("sum(rate(kustos_requests_total{")
    assert 'namespace="ml"' in meta["query"]
    assert 'pod=~"iris-[a-z0-9]+-[a-z0-9]+"' in meta["query"]
    assert "v2_infer" in meta["query"] and "health" not in meta["query"]
    assert meta["query"].endswith("[1m]))")
    # KEDA's HPA owns the replica count: the operator leaves it out of the Deployment.
    (dep,) = by_kind(objs)["Deployment"]
    assert "replicas" not in dep["spec"]


def test_cpu_target_too_becomes_a_cpu_trigger() -> None:
    so = scaled(render(body(autoscaling={"maxReplicas": 3, "targetRequestsPerSecond": 5,
                                         "targetCPUUtilization": 70}), KEDA))
    cpu = so["spec"]["triggers"][1]
    assert cpu == {"type": "cpu", "name": "cpu", "metricType": "Utilization",
                   "metadata": {"value": "70"}}


def test_cpu_only_or_default_backend_keeps_the_hpa() -> None:
    cpu_only = by_kind(render(body(autoscaling={"maxReplicas": 3,
                                                "targetCPUUtilization": 70}), KEDA))
    assert "ScaledObject" not in cpu_only and "HorizontalPodAutoscaler" in cpu_only
    plain = by_kind(render(body(autoscaling={"maxReplicas": 3, "targetRequestsPerSecond": 5}),
                           OperatorConfig()))
    assert "ScaledObject" not in plain
    (hpa,) = plain["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "kustos_requests_per_second"


def test_canary_pods_are_neither_counted_nor_scaled() -> None:
    objs = render(body(autoscaling={"minReplicas": 4, "maxReplicas": 10,
                                    "targetRequestsPerSecond": 5},
                       canary={"model": {"version": "4", "uri": "s3://m/iris/4/model.skops"},
                               "trafficPercent": 25}), KEDA)
    spec = scaled(objs)["spec"]
    assert spec["scaleTargetRef"]["name"] == "iris"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (3, 9)
    canary = next(d for d in by_kind(objs)["Deployment"]
                  if d["metadata"]["name"] == "iris-canary")
    assert canary["spec"]["replicas"] == 1


def test_pods_regex_matches_only_the_deployments_own_pods() -> None:
    rx = re.compile(pods_regex("iris"))  # PromQL anchors regexes on both ends
    assert rx.fullmatch("iris-7d9f8b6c4-x2k9p")
    assert not rx.fullmatch("iris-canary-7d9f8b6c4-x2k9p")
    assert not rx.fullmatch("iris-v2-7d9f8b6c4-x2k9p")
    assert not rx.fullmatch("irisx-7d9f8b6c4-x2k9p")
    assert re.compile(pods_regex("a.b")).fullmatch("a.b-1-2")
    assert not re.compile(pods_regex("a.b")).fullmatch("axb-1-2")


def test_child_kinds_include_scaled_objects_only_with_keda() -> None:
    assert model_child_kinds(OperatorConfig()) == MODEL_CHILD_KINDS
    kinds = model_child_kinds(KEDA)
    assert kinds.index("ScaledObject") == kinds.index("HorizontalPodAutoscaler") + 1
    assert resource("ScaledObject").collection("ml") == \
        "/apis/keda.sh/v1alpha1/namespaces/ml/scaledobjects"


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="prometheus_address"):
        OperatorConfig.model_validate({"autoscaling": {"requests_backend": "keda"}})
    with pytest.raises(ValidationError, match="requests_query"):
        OperatorConfig.model_validate({"autoscaling": {"requests_query": "up{pod={podz}}"}})
    custom = OperatorConfig.model_validate({"autoscaling": {
        "requests_backend": "keda", "prometheus_address": PROM, "rate_window": "30s",
        "polling_interval": 5,
        "requests_query": 'sum(rate(my_requests{{ns="{namespace}",pod=~"{pods}"}}[{window}]))'}})
    so = scaled(render(body(autoscaling={"maxReplicas": 3, "targetRequestsPerSecond": 5}),
                       custom))
    assert so["spec"]["pollingInterval"] == 5
    assert so["spec"]["triggers"][0]["metadata"]["query"] == \
        'sum(rate(my_requests{ns="ml",pod=~"iris-[a-z0-9]+-[a-z0-9]+"}[30s]))'
