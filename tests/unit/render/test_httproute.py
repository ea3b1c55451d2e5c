"""spec.gateway: the HTTPRoute, the track Services, the canary's HPA, the status's split,
and the schema's rules (render/httproute.py, api/v1alpha1/modeldeployment.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from kustos import rbac
from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.config import OperatorConfig
from kustos.controllers.indexes import CHILD_RESOURCES
from kustos.k8s.resources import resource
from kustos.render.httproute import traffic_split
from kustos.render.keda import model_child_kinds
from kustos.render.meta import TRACK
from kustos.render.modeldeployment import render
from kustos.status.modeldeployment import compute

DIGEST = "sha256:" + "ab" * 32
GATEWAY = {"parentRefs": [{"name": "kustos", "namespace": "traefik"}],
           "hostnames": ["iris.example"]}
CANARY = {"model": {"version": "4", "uri": "s3://m/iris/v4/model.skops"}, "trafficPercent": 20}


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"version": "3", "uri": "s3://m/iris/model.skops",
                                      "digest": DIGEST}, "replicas": 2}
    base.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": base}


def kinds(objs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objs:
        out.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    return out


def test_canary_weights_are_the_route_backends() -> None:
    objs = kinds(render(body(canary=CANARY, gateway=GATEWAY), OperatorConfig(),
                        gateway_api=True))
    route = objs["HTTPRoute"]["iris"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io",
                                            "kind": "Gateway", "name": "kustos",
                                            "namespace": "traefik"}]
    assert route["spec"]["hostnames"] == ["iris.example"]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert [(b["name"], b["weight"], b["port"]) for b in rule["backendRefs"]] == [
        ("iris-stable", 80, 80), ("iris-canary", 20, 80)]
    # each backend selects one track's pods; the model's Service still selects both
    services = objs["Service"]
    assert services["iris-stable"]["spec"]["selector"][TRACK] == "stable"
    assert services["iris-canary"]["spec"]["selector"][TRACK] == "canary"
    assert TRACK not in services["iris"]["spec"]["selector"]
    deployments = objs["Deployment"]
    for track, dep in (("stable", deployments["iris"]), ("canary", deployments["iris-canary"])):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = services[f"iris-{track}"]["spec"]["selector"]
        assert all(labels[k] == v for k, v in selector.items())
    # the backends' port is the Service port that targets the pods' http port
    assert services["iris-canary"]["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def test_weight_change_changes_only_the_route() -> None:
    at20 = kinds(render(body(canary=CANARY, gateway=GATEWAY), OperatorConfig(),
                        gateway_api=True))
    at50 = kinds(render(body(canary={**CANARY, "trafficPercent": 50}, gateway=GATEWAY),
                        OperatorConfig(), gateway_api=True))
    assert [b["weight"] for b in at50["HTTPRoute"]["iris"]["spec"]["rules"][0]["backendRefs"]
            ] == [50, 50]
    changed = {(k, n) for k in at20 for n in at20[k] if at20[k][n] != at50[k].get(n)}
    # replicas 2: one pod per track at 20 % and at 50 %; only the route differs
    assert changed == {("HTTPRoute", "iris")}


def test_without_a_canary_the_route_goes_to_the_model_service() -> None:
    objs = kinds(render(body(gateway={**GATEWAY, "pathPrefix": "/v2/models/iris"}),
                        OperatorConfig(), gateway_api=True))
    (rule,) = objs["HTTPRoute"]["iris"]["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "", "kind": "Service", "name": "iris", "port": 80}]
    assert rule["matches"][0]["path"]["value"] == "/v2/models/iris"
    assert set(objs["Service"]) == {"iris"}


def test_without_the_gateway_api_nothing_is_routed() -> None:
    with_api = render(body(canary=CANARY, gateway=GATEWAY), OperatorConfig(),
                      gateway_api=True)
    without = kinds(render(body(canary=CANARY, gateway=GATEWAY), OperatorConfig()))
    assert "HTTPRoute" not in without and set(without["Service"]) == {"iris"}
    # and without spec.gateway the API's presence changes nothing
    assert render(body(canary=CANARY), OperatorConfig(), gateway_api=True) == \
        render(body(canary=CANARY), OperatorConfig())
    assert "HTTPRoute" in kinds(with_api)


def test_traffic_split_says_which() -> None:
    spec = ModelDeploymentSpec.model_validate(body(canary=CANARY, gateway=GATEWAY)["spec"])
    assert traffic_split(spec, True) == "gateway"
    assert traffic_split(spec, False) == "replicas"
    plain = ModelDeploymentSpec.model_validate(body(canary=CANARY)["spec"])
    assert traffic_split(plain, True) == "replicas"
    assert traffic_split(ModelDeploymentSpec.model_validate(body()["spec"]), True) is None


AUTO = {"minReplicas": 2, "maxReplicas": 10}


def test_with_autoscaling_both_tracks_scale_behind_a_route() -> None:
    objs = kinds(render(body(canary=CANARY, gateway=GATEWAY, autoscaling=AUTO),
                        OperatorConfig(), gateway_api=True))
    hpas = objs["HorizontalPodAutoscaler"]
    assert hpas["iris"]["spec"]["scaleTargetRef"]["name"] == "iris"
    canary = hpas["iris-canary"]["spec"]
    assert canary["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "iris-canary"}
    # from its one starting pod to 20 % of maxReplicas; the stable HPA keeps the rest
    assert (canary["minReplicas"], canary["maxReplicas"]) == (1, 2)
    assert (hpas["iris"]["spec"]["minReplicas"], hpas["iris"]["spec"]["maxReplicas"]) == (1, 9)
    assert canary["metrics"] == hpas["iris"]["spec"]["metrics"]
    # the HPAs own both Deployments' replica counts
    assert all("replicas" not in d["spec"] for d in objs["Deployment"].values())


def test_without_a_route_the_canary_keeps_its_pods() -> None:
    objs = kinds(render(body(canary=CANARY, gateway=GATEWAY, autoscaling=AUTO),
                        OperatorConfig()))
    assert set(objs["HorizontalPodAutoscaler"]) == {"iris"}
    assert objs["Deployment"]["iris-canary"]["spec"]["replicas"] == 1
    assert "replicas" not in objs["Deployment"]["iris"]["spec"]


def test_httproute_is_a_child_kind_only_with_the_gateway_api() -> None:
    assert "HTTPRoute" not in model_child_kinds(OperatorConfig())
    assert model_child_kinds(OperatorConfig(), gateway_api=True)[-1] == "HTTPRoute"
    assert CHILD_RESOURCES["HTTPRoute"] == ("gateway.networking.k8s.io", "v1", "httproutes")
    assert resource("HTTPRoute").api_version == "gateway.networking.k8s.io/v1"
    for mode, key in (("clusterWide", "clusterRole"), ("namespaced", "role")):
        rules = rbac.rule_sets()[mode][key]
        for verb in rbac.CHILD_VERBS:
            assert any("gateway.networking.k8s.io" in r.api_groups
                       and "httproutes" in r.resources and verb in r.verbs
                       for r in rules), (mode, verb)


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": 1},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": replicas,
                       "updatedReplicas": replicas, "availableReplicas": replicas,
                       "observedGeneration": 1}}


def test_status_names_the_split_in_effect() -> None:
    md = body(replicas=4, canary={**CANARY, "trafficPercent": 30}, gateway=GATEWAY)
    live = {"iris": deployment("iris", 3), "iris-canary": deployment("iris-canary", 1)}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    routed, _ = compute(md, live, OperatorConfig(), now, gateway_api=True)
    assert routed["canary"] == {"trafficSplit": "gateway", "trafficPercent": 30}
    by_pods, _ = compute(md, live, OperatorConfig(), now, gateway_api=False)
    assert by_pods["canary"] == {"trafficSplit": "replicas", "trafficPercent": 25}
    plain, _ = compute(body(replicas=4), {"iris": deployment("iris", 4)}, OperatorConfig(),
                       now, gateway_api=True)
    assert "canary" not in plain


# ------------------------------------------------------------------------ schema


def rules_of(model: type[pydantic.BaseModel]) -> dict[str, dict[str, str]]:
    return {r["message"]: r for r in model.model_json_schema()["x-kubernetes-validations"]}


def test_cel_rules_name_their_fields() -> None:
    from kustos.api.v1alpha1.modeldeployment import GatewayRouteSpec

    spec_rules = rules_of(ModelDeploymentSpec)
    tls = spec_rules["spec.gateway routes plain HTTP: it cannot be combined with "
                     "spec.runtime.tls"]
    assert tls["fieldPath"] == ".gateway" and "self.runtime.tls" in tls["rule"]
    route_rules = rules_of(GatewayRouteSpec)
    assert route_rules["spec.gateway.parentRefs must not name the same Gateway listener "
                       "twice"]["fieldPath"] == ".parentRefs"
    assert route_rules["spec.gateway.hostnames must be distinct"]["fieldPath"] == ".hostnames"


@pytest.mark.parametrize(("gateway", "field"), [
    ({"parentRefs": []}, "parentRefs"),
    ({}, "parentRefs"),
    ({"parentRefs": [{"name": "Bad_Name"}]}, "name"),
    ({"parentRefs": [{"name": "gw"}], "hostnames": ["no spaces.example "]}, "hostnames"),
    ({"parentRefs": [{"name": "gw"}], "pathPrefix": "v2/models"}, "pathPrefix"),
    ({"parentRefs": [{"name": "gw"}], "weights": 3}, "weights"),
])
def test_schema_refuses_bad_gateways(gateway: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        ModelDeploymentSpec.model_validate(body(gateway=gateway)["spec"])


def test_schema_accepts_a_wildcard_host_and_a_listener() -> None:
    spec = ModelDeploymentSpec.model_validate(body(gateway={
        "parentRefs": [{"name": "gw", "sectionName": "web"}],
        "hostnames": ["*.models.example"]})["spec"])
    assert spec.gateway is not None and spec.gateway.path_prefix == "/"
    route = kinds(render(body(gateway={"parentRefs": [{"name": "gw", "sectionName": "web"}]}),
                         OperatorConfig(), gateway_api=True))["HTTPRoute"]["iris"]
    assert route["spec"]["parentRefs"][0]["sectionName"] == "web"
    assert "hostnames" not in route["spec"]
