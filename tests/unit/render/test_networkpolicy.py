"""The NetworkPolicy of a ModelDeployment: which ports, from where."""

from __future__ import annotations

from typing import Any

from kustos.config import NetworkPolicySettings, OperatorConfig
from kustos.render.attachments import Attachments
from kustos.render.meta import SPEC_HASH
from kustos.render.modeldeployment import render
from kustos.render.networkpolicy import render_network_policy, sidecar_ports
from kustos.render.runtimes import RuntimePorts, ServingSpec, runtime_ports

DIGEST = "sha256:" + "ab" * 32
OPERATOR_NS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}
MONITORING = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"version": "1", "uri": "s3://m/iris/model.skops",
                                      "digest": DIGEST}}
    base.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": base}


def sidecar(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "image": "x",
            "ports": [{"name": name, "containerPort": port, "protocol": "TCP"}]}


def config(**settings: Any) -> OperatorConfig:
    return OperatorConfig(network_policy=NetworkPolicySettings(
        operator_namespace="ops", **settings))


def policy(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (np,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    return np


def ports(rule: dict[str, Any]) -> list[int]:
    return [p["port"] for p in rule["ports"]]


def test_default_policy_opens_only_the_serving_port() -> None:
    np = policy(render(body(replicas=2), config()))
    assert np["metadata"]["name"] == "iris"
    assert np["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert len(np["metadata"]["annotations"][SPEC_HASH]) == 32
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress"], "egress stays open for the model fetch"
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": "iris",
                                                   "app.kubernetes.io/component": "predictor"}}
    # kustos serve: /metrics is on the serving port, so one port for everyone (with the
    # gRPC one beside it), and the monitoring namespace gets that same HTTP port.
    (serving, scrape) = spec["ingress"]
    assert serving == {"ports": [{"protocol": "TCP", "port": 8080},
                                 {"protocol": "TCP", "port": 8081}]}
    assert scrape == {"from": [{"namespaceSelector": MONITORING}],
                      "ports": [{"protocol": "TCP", "port": 8080}]}


def test_selector_matches_both_tracks_pods() -> None:
    objs = render(body(replicas=4, canary={"model": {"version": "2",
                                                     "uri": "s3://m/iris/2/model.skops"},
                                           "trafficPercent": 25}), config())
    match = policy(objs)["spec"]["podSelector"]["matchLabels"]
    deployments = [o for o in objs if o["kind"] == "Deployment"]
    assert len(deployments) == 2
    for d in deployments:
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert match.items() <= labels.items(), d["metadata"]["name"]


def test_sidecar_ports_only_from_operator_and_monitoring() -> None:
    att = Attachments(sidecars=(sidecar("explainer", 8090), sidecar("drift", 8091)))
    np = policy(render(body(), config(), att))
    serving, scrape, operator = np["spec"]["ingress"]
    assert ports(serving) == [8080, 8081] and "from" not in serving
    assert ports(scrape) == [8080, 8090, 8091]
    assert scrape["from"] == [{"namespaceSelector": MONITORING}]
    assert operator == {"from": [OPERATOR_NS], "ports": [
        {"protocol": "TCP", "port": 8090}, {"protocol": "TCP", "port": 8091}]}


def test_serving_namespaces_restricted_by_selector() -> None:
    sel = {"matchLabels": {"kustos.dev/model-clients": "true"}}
    np = policy(render(body(), config(serving_namespace_selector=sel,
                                      monitoring_namespace_selector=None)))
    (serving,) = np["spec"]["ingress"]
    assert serving["from"] == [{"podSelector": {}}, {"namespaceSelector": sel}]
    assert ports(serving) == [8080, 8081]  # gRPC reaches the same clients as HTTP


def test_other_runtimes_grpc_and_management_ports_stay_closed() -> None:
    for kind, http, metrics, closed in (("mlserver", 8080, 8082, 8081),
                                        ("torchserve", 8080, 8082, 8081),
                                        ("seldon", 9000, 6000, 5000),
                                        ("tfserving", 8501, None, 8500)):
        spec = ServingSpec(kind=kind, image="x", model_name="m", model_version="1",
                           model_file="model.bin", model_format="sklearn")
        np = render_network_policy(body(), config(), runtime_ports(spec))
        assert np is not None
        opened = {p for rule in np["spec"]["ingress"] for p in ports(rule)}
        assert opened == {http} | ({metrics} if metrics else set()), kind
        assert closed not in opened, kind


def test_no_monitoring_rule_without_metrics_or_sidecars() -> None:
    np = render_network_policy(body(), config(), RuntimePorts(http=9000, metrics=None))
    assert np is not None
    assert np["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9000}]}]


def test_disabled_renders_nothing() -> None:
    objs = render(body(), config(enabled=False))
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]


def test_sidecar_ports_ignores_udp_and_portless_containers() -> None:
    containers = [sidecar("a", 8090), {"name": "b"},
                  {"name": "c", "ports": [{"containerPort": 53, "protocol": "UDP"}]}]
    assert sidecar_ports(containers) == [8090]
