"""A rolled-back rollout candidate in status.history: the reconcile's status (the one
writer of history) records it once from status.rollout, and `kustos rollback` never takes
it for a version to return to."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kustos.api.v1alpha1.modeldeployment import ModelDeploymentStatus
from kustos.api.v1alpha1.rollout import RolloutSpec
from kustos.config import OperatorConfig
from kustos.governance.rollback import RollbackError, plan
from kustos.rollout import machine
from kustos.status.modeldeployment import compute

V0 = {"uri": "s3://m/iris/v0.skops", "version": "0"}
V1 = {"uri": "s3://m/iris/v1.skops", "version": "1"}
V2 = {"uri": "s3://m/iris/v2.skops", "version": "2"}
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = RolloutSpec.model_validate({"steps": [{"weight": 10}, {"weight": 50},
                                             {"weight": 100}]})
FAILED = ("errorRate 0.2 beyond threshold 0.01 (stable 0, candidate 0.2, 400 samples)")


def ready(name: str, version: str, replicas: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": 1},
            "spec": {"replicas": replicas, "template": {"metadata": {"annotations": {
                "kustos.dev/model-version": version}}}},
            "status": {"observedGeneration": 1, "replicas": replicas,
                       "readyReplicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": replicas,
                       "conditions": [{"type": "Available", "status": "True"}]}}


def md(rollout: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u", "generation": 3,
                         "resourceVersion": "9"},
            "spec": {"model": V2, "replicas": 4,
                     "rollout": SPEC.model_dump(by_alias=True, exclude_none=True)},
            "status": {"model": V1 | {"deployedAt": "2025-12-01T00:00:00Z"},
                       "history": history, "rollout": rollout}}


def rolled_back(verdict_failed: str = FAILED, action: str | None = None) -> dict[str, Any]:
    """status.rollout as the machine leaves it after rolling V2 back at step 1."""
    canary = machine.decide(SPEC, V2, {"phase": "Idle", "stable": V1}, None, NOW)
    assert canary.status["phase"] == "Canary"
    out = machine.decide(SPEC, V2, canary.status,
                         None if action else "fail", NOW + timedelta(seconds=30), action,
                         verdict_failed)
    assert out.status["phase"] == "RolledBack"
    return out.status


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    status, _ = compute(obj, {"iris": ready("iris", "1", 4)}, OperatorConfig(), NOW)
    ModelDeploymentStatus.model_validate(status)  # the CRD's schema keeps every field
    return status


def test_an_automatic_rollback_is_recorded_once_with_the_failed_gate() -> None:
    older = [V0 | {"deployedAt": "2025-11-01T00:00:00Z"}]
    obj = md(rolled_back(), older)
    history = status_of(obj)["history"]
    assert len(history) == 2 and history[1] == older[0]
    entry = history[0]
    assert entry["event"] == "RolledBack"
    assert (entry["version"], entry["uri"]) == ("2", V2["uri"])
    assert entry["rolledBackAt"] == "2026-01-01T00:00:30Z"
    assert "step 1/3 weight 10%" in entry["message"] and FAILED in entry["message"]
    # the next reconcile reads its own entry back: no second one
    again = status_of(obj | {"status": {**obj["status"], "history": history}})
    assert again["history"] == history


def test_an_abort_is_recorded_and_a_second_rollback_of_the_same_version_too() -> None:
    first = rolled_back(action="abort")
    obj = md(first, [])
    history = status_of(obj)["history"]
    assert [h.get("event") for h in history] == ["RolledBack"]
    assert "aborted by kustos.dev/rollout-action" in history[0]["message"]
    # version 2 rolled out again later and rolled back again: a second entry
    later = dict(first, stepStartedAt="2026-01-02T00:00:00Z")
    obj2 = md(later, history)
    assert [h["rolledBackAt"] for h in status_of(obj2)["history"]] == [
        "2026-01-02T00:00:00Z", history[0]["rolledBackAt"]]


def test_no_entry_without_a_rollback() -> None:
    for phase in ("Canary", "Shadow", "Promoted", "Idle"):
        obj = md({"phase": phase, "stable": V1, "candidate": V2, "step": 1, "weight": 10},
                 [V0])
        assert [h.get("event") for h in status_of(obj)["history"]] == [None], phase


HISTORY = [{"event": "RolledBack", "version": "3", "uri": "s3://m/iris/v3.skops",
            "message": "rolled back at step 1/3 weight 10%: " + FAILED,
            "rolledBackAt": "2026-01-02T00:00:00Z"},
           V1 | {"deployedAt": "2025-12-01T00:00:00Z"},
           V0 | {"deployedAt": "2025-11-01T00:00:00Z"}]


def plain(spec_model: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "iris", "namespace": "ml", "resourceVersion": "7"},
            "spec": {"model": spec_model}, "status": {"history": history}}


def test_kustos_rollback_skips_a_rolled_back_candidate() -> None:
    # spec still asks for the rolled-back 3 (GitOps): the previous served version is 1
    entry, patch = plan(plain({"version": "3", "uri": "s3://m/iris/v3.skops"}, HISTORY),
                        None)
    assert entry["version"] == "1"
    assert patch == {"spec": {"model": {"version": "1", "uri": V1["uri"], "digest": None}}}
    entry, _ = plan(plain(V2, HISTORY), "0")
    assert entry["version"] == "0"


@pytest.mark.parametrize(("history", "to", "message"), [
    (HISTORY[:1], None, "no deployed history"),
    (HISTORY, "3", "version 3 is not in iris's history (known: 1, 0)"),
])
def test_kustos_rollback_refuses_a_rolled_back_candidate(
        history: list[dict[str, Any]], to: str | None, message: str) -> None:
    with pytest.raises(RollbackError, match=re.escape(message)):
        plan(plain(V2, history), to)
