"""What a ModelDeployment with spec.rollout renders at each phase, and the conditions
its status gets: the stable track runs status.rollout.stable, the candidate spec.model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kustos.config import OperatorConfig
from kustos.render.meta import MODEL_VERSION, TRACK
from kustos.render.modeldeployment import render
from kustos.status.conditions import get_condition
from kustos.status.modeldeployment import compute

V1 = {"uri": "s3://m/iris/v1.skops", "version": "1"}
V2 = {"uri": "s3://m/iris/v2.skops", "version": "2"}
ROLLOUT = {"shadow": {"duration": "1m", "samplePercent": 50},
           "steps": [{"weight": 10}, {"weight": 30}, {"weight": 100}]}
GATEWAY = {"parentRefs": [{"name": "kustos"}]}


def body(status: dict[str, Any] | None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u1", "generation": 2},
            "spec": {"model": V2, "replicas": 10, "rollout": ROLLOUT, **spec},
            "status": {"rollout": status} if status else {}}


def kinds(objs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objs:
        out.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    return out


def version(dep: dict[str, Any]) -> str:
    return str(dep["spec"]["template"]["metadata"]["annotations"][MODEL_VERSION])


def args(dep: dict[str, Any]) -> list[str]:
    return list(dep["spec"]["template"]["spec"]["containers"][0].get("args", []))


def test_shadow_mirrors_to_a_candidate_outside_the_model_service() -> None:
    objs = kinds(render(body({"phase": "Shadow", "stable": V1, "candidate": V2}),
                        OperatorConfig()))
    deps = objs["Deployment"]
    assert version(deps["iris"]) == "1" and version(deps["iris-canary"]) == "2"
    assert deps["iris"]["spec"]["replicas"] == 9 and deps["iris-canary"]["spec"]["replicas"] == 1
    stable_args = args(deps["iris"])
    at = stable_args.index("--shadow-url")
    assert stable_args[at:at + 4] == ["--shadow-url", "http://iris-candidate.ml.svc.cluster.local",
                                      "--shadow-percent", "50"]
    assert "--shadow-url" not in args(deps["iris-canary"])
    services = objs["Service"]
    assert services["iris"]["spec"]["selector"][TRACK] == "stable"
    assert services["iris-candidate"]["spec"]["selector"][TRACK] == "canary"


def test_canary_step_is_the_replica_ratio_or_the_route_weight() -> None:
    st = {"phase": "Canary", "step": 2, "weight": 30, "stable": V1, "candidate": V2}
    objs = kinds(render(body(st), OperatorConfig()))
    deps = objs["Deployment"]
    assert (deps["iris"]["spec"]["replicas"], deps["iris-canary"]["spec"]["replicas"]) == (7, 3)
    assert "--shadow-url" not in args(deps["iris"])
    assert TRACK not in objs["Service"]["iris"]["spec"]["selector"]
    assert "iris-candidate" not in objs["Service"]
    routed = kinds(render(body(st, gateway=GATEWAY), OperatorConfig(), gateway_api=True))
    backends = routed["HTTPRoute"]["iris"]["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("iris-stable", 70),
                                                            ("iris-canary", 30)]


def test_both_tracks_scale_when_the_route_splits() -> None:
    st = {"phase": "Canary", "step": 1, "weight": 10, "stable": V1, "candidate": V2}
    objs = kinds(render(body(st, gateway=GATEWAY, autoscaling={"maxReplicas": 20}),
                        OperatorConfig(), gateway_api=True))
    hpas = objs["HorizontalPodAutoscaler"]
    assert set(hpas) == {"iris", "iris-canary"}
    assert hpas["iris-canary"]["spec"]["scaleTargetRef"]["name"] == "iris-canary"


def test_rolled_back_and_promoted_serve_one_model() -> None:
    back = kinds(render(body({"phase": "RolledBack", "stable": V1, "candidate": V2}),
                        OperatorConfig()))
    assert list(back["Deployment"]) == ["iris"] and version(back["Deployment"]["iris"]) == "1"
    # the candidate's pods stay Ready while they are deleted: the Service keeps them out
    assert back["Service"]["iris"]["spec"]["selector"][TRACK] == "stable"
    done = kinds(render(body({"phase": "Promoted", "stable": V2, "candidate": V2}),
                        OperatorConfig()))
    assert list(done["Deployment"]) == ["iris"] and version(done["Deployment"]["iris"]) == "2"
    # no rollout recorded yet (a new object): spec.model alone
    new = kinds(render(body(None), OperatorConfig()))
    assert version(new["Deployment"]["iris"]) == "2" and len(new["Deployment"]) == 1


def test_conditions_say_the_step_and_the_rollback() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    st = {"phase": "Canary", "step": 2, "steps": 3, "weight": 30, "stable": V1,
          "candidate": V2}
    status, _ = compute(body(st), {}, OperatorConfig(), now)
    cond = get_condition({"status": status}, "Progressing")
    assert cond is not None and cond["status"] == "True"
    assert cond["message"] == "rolling out version 2: step 2/3 weight 30%"
    back = {"phase": "RolledBack", "stable": V1, "candidate": V2,
            "message": "rolled back at step 1/3 weight 10%: errorRate 0.2 beyond 0.01"}
    status, notices = compute(body(back), {}, OperatorConfig(), now)
    cond = get_condition({"status": status}, "Degraded")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "RolledBack")
    assert "errorRate" in cond["message"]
    assert all(n.reason != "RolledBack" for n in notices)  # the rollout controller's Event


def test_a_paused_shadow_keeps_mirroring() -> None:
    # the stable pods keep their arguments: pausing does not roll them
    st = {"phase": "Paused", "pausedFrom": "Shadow", "stable": V1, "candidate": V2}
    deps = kinds(render(body(st), OperatorConfig()))["Deployment"]
    assert "--shadow-url" in args(deps["iris"])
    canary = {"phase": "Paused", "pausedFrom": "Canary", "weight": 30, "stable": V1,
              "candidate": V2}
    deps = kinds(render(body(canary), OperatorConfig()))["Deployment"]
    assert "--shadow-url" not in args(deps["iris"])
    assert deps["iris-canary"]["spec"]["replicas"] == 3


def test_with_tls_the_mirror_is_https_pinned_to_the_pods_certificate() -> None:
    tls = {"kind": "kustos", "tls": {"secretName": "iris-tls"}}
    shadow = {"phase": "Shadow", "stable": V1, "candidate": V2}
    stable_args = args(kinds(render(body(shadow, runtime=tls), OperatorConfig())
                             )["Deployment"]["iris"])
    at = stable_args.index("--shadow-url")
    assert stable_args[at:] == ["--shadow-url", "https://iris-candidate.ml.svc.cluster.local",
                                "--shadow-percent", "50",
                                "--shadow-tls-pin", "/etc/kustos/tls/tls.crt"]
    mtls = {"kind": "kustos", "tls": {"secretName": "iris-tls",
                                      "clientCA": {"configMapName": "clients"}}}
    objs = kinds(render(body(shadow, runtime=mtls), OperatorConfig()))
    stable_args = args(objs["Deployment"]["iris"])
    assert stable_args[stable_args.index("--shadow-tls-pin"):] == [
        "--shadow-tls-pin", "/etc/kustos/tls/tls.crt",
        "--shadow-tls-cert", "/etc/kustos/tls/tls.crt",
        "--shadow-tls-key", "/etc/kustos/tls/tls.key"]
    # the candidate's Service answers on 443, where https:// goes
    [port] = [p for p in objs["Service"]["iris-candidate"]["spec"]["ports"]
              if p["name"] == "https"]
    assert port["port"] == 443
