"""Argo CD's health of a ModelDeployment during and after a gated rollout: the status the
operator computes (status/modeldeployment.compute, with status.rollout) run through the
shipped health.lua in Lua 5.1 (lupa), as Argo CD's gopher-lua runs it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lupa.lua51 as lua

from kustos.config import OperatorConfig
from kustos.status.modeldeployment import compute

SCRIPT = (Path(__file__).resolve().parents[2] / "manifests" / "argocd" /
          "resource_customizations" / "kustos.dev" / "ModelDeployment" / "health.lua")
V1 = {"uri": "s3://m/iris/v1.skops", "version": "1"}
V2 = {"uri": "s3://m/iris/v2.skops", "version": "2"}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    rt = lua.LuaRuntime(unpack_returned_tuples=True)
    env = rt.eval("function(obj) return {obj = obj, ipairs = ipairs, pairs = pairs} end")(
        rt.table_from(obj, recursive=True))
    run = rt.eval("function(src, env) local f = assert(loadstring(src)); "
                  "setfenv(f, env); return f() end")
    result = run(SCRIPT.read_text(), env)
    return str(result["status"]), str(result["message"])


def ready_deployment(name: str, version: str, replicas: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": 1},
            "spec": {"replicas": replicas, "template": {"metadata": {"annotations": {
                "kustos.dev/model-version": version}}}},
            "status": {"observedGeneration": 1, "replicas": replicas,
                       "readyReplicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": replicas,
                       "conditions": [{"type": "Available", "status": "True"}]}}


def md(rollout: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u", "generation": 3},
        "spec": {"model": V2, "replicas": 10,
                 "rollout": {"steps": [{"weight": 10}, {"weight": 50}, {"weight": 100}]}},
        "status": {"rollout": rollout}}
    return obj


def observed(obj: dict[str, Any], deployments: dict[str, Any]) -> dict[str, Any]:
    status, _ = compute(obj, deployments, OperatorConfig(), NOW)
    return {**obj, "status": {**obj["status"], **status}}


def test_progressing_with_the_step_during_analysis() -> None:
    obj = md({"phase": "Canary", "step": 2, "steps": 3, "weight": 50, "stable": V1,
              "candidate": V2})
    deps = {"iris": ready_deployment("iris", "1", 5),
            "iris-canary": ready_deployment("iris-canary", "2", 5)}
    assert health(observed(obj, deps)) == (
        "Progressing", "RolloutAnalysis: rolling out version 2: step 2/3 weight 50%")


def test_degraded_after_an_automatic_rollback_until_the_spec_changes() -> None:
    msg = "rolled back at step 1/3 weight 10%: errorRate 0.2 beyond threshold 0.01"
    obj = md({"phase": "RolledBack", "stable": V1, "candidate": V2, "message": msg})
    deps = {"iris": ready_deployment("iris", "1", 10)}
    assert health(observed(obj, deps)) == ("Degraded", f"RolledBack: {msg}")
    # spec.model back to the stable version: healthy again
    back = obj | {"spec": {**obj["spec"], "model": V1}}
    status, _ = health(observed(back, deps))
    assert status == "Healthy"


def test_healthy_once_promoted() -> None:
    obj = md({"phase": "Promoted", "stable": V2, "candidate": V2, "weight": 100})
    deps = {"iris": ready_deployment("iris", "2", 10)}
    assert health(observed(obj, deps))[0] == "Healthy"
