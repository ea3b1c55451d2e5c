"""ModelDeployment status from Deployment states: the pure part of the reconcile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kustos.config import OperatorConfig
from kustos.status.conditions import get_condition
from kustos.status.modeldeployment import ROLLOUT, Failure, compute, stale_templates

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def md(version: str = "1", replicas: int = 2, status: dict[str, Any] | None = None,
       generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u", "generation": generation},
            "spec": {"model": {"version": version, "uri": "s3://b/model.skops"},
                     "replicas": replicas},
            "status": status or {}}


def deployment(replicas: int, ready: int, updated: int | None = None, available: bool = True,
               generation: int = 1, observed: int = 1, version: str = "1") -> dict[str, Any]:
    """A Deployment whose pod template serves ``version`` (the operator's annotation)."""
    updated = ready if updated is None else updated
    template = {"metadata": {"annotations": {"kustos.dev/model-version": version}}}
    return {"metadata": {"name": "iris", "generation": generation},
            "spec": {"replicas": replicas, "template": template},
            "status": {"observedGeneration": observed, "replicas": replicas,
                       "readyReplicas": ready, "updatedReplicas": updated,
                       "availableReplicas": ready,
                       "conditions": [{"type": "Available",
                                       "status": "True" if available else "False"}]}}


def cond(status: dict[str, Any], t: str) -> dict[str, Any]:
    c = get_condition({"status": status}, t)
    assert c is not None
    return c


def test_no_deployment_yet() -> None:
    status, notices = compute(md(), {}, OperatorConfig(), NOW)
    assert cond(status, "Ready")["status"] == "False"
    assert cond(status, "Progressing")["reason"] == "Creating"
    assert status["url"] == "http://iris.ml.svc.cluster.local"
    assert notices == []


def test_available_deployment_is_ready_and_records_version() -> None:
    status, notices = compute(md(), {"iris": deployment(2, 2)}, OperatorConfig(), NOW)
    assert cond(status, "Ready")["status"] == "True"
    assert cond(status, "Progressing")["status"] == "False"
    assert status["model"]["version"] == "1"
    assert status["readyReplicas"] == 2
    assert status["model"]["deployedAt"]
    assert notices == []  # the first version is told by the status alone (one write less)


def test_version_change_progresses_then_moves_to_history() -> None:
    first, _ = compute(md(), {"iris": deployment(2, 2)}, OperatorConfig(), NOW)
    body = md(version="2", status=first, generation=2)
    rolling, notices = compute(body, {"iris": deployment(2, 2, updated=1, generation=2,
                                                         observed=2, version="2")},
                               OperatorConfig(), NOW)
    assert cond(rolling, "Progressing")["status"] == "True"
    assert cond(rolling, "Ready")["status"] == "True"  # still serving the old pods
    assert rolling["model"]["version"] == "1" and notices == []
    later = NOW + timedelta(minutes=1)
    done, notices = compute(md(version="2", status=rolling, generation=2),
                            {"iris": deployment(2, 2, generation=2, observed=2, version="2")},
                            OperatorConfig(), later)
    assert done["model"]["version"] == "2"
    assert done["history"][0]["version"] == "1"
    assert [n.reason for n in notices] == ["ModelVersionChanged"]
    # lastTransitionTime of Ready did not move: its status never changed.
    assert cond(done, "Ready")["lastTransitionTime"] == cond(first, "Ready")["lastTransitionTime"]
    assert cond(done, "Progressing")["observedGeneration"] == 2


def test_a_finished_rollout_of_the_old_template_is_not_the_new_version() -> None:
    """The spec says 2, the Deployment still carries 1 and is done rolling it (the reconcile
    has not applied the new template yet, or the operator died in between): still
    Progressing, and status.model keeps saying 1. Found on real pods: an operator
    SIGKILLed mid-rollout once left status claiming a version no pod served."""
    first, _ = compute(md(), {"iris": deployment(2, 2)}, OperatorConfig(), NOW)
    stale, notices = compute(md(version="2", status=first, generation=2),
                             {"iris": deployment(2, 2)}, OperatorConfig(), NOW)
    assert cond(stale, "Progressing")["status"] == "True"
    assert cond(stale, "Ready")["status"] == "True"  # the old pods still serve
    assert stale["model"]["version"] == "1" and notices == []


def test_stale_templates_name_the_deployments_behind_the_spec() -> None:
    body = md(version="2")
    assert stale_templates(body, {}) == []  # nothing created yet: not stale, just missing
    assert stale_templates(body, {"iris": deployment(2, 2, version="1")}) == ["iris"]
    assert stale_templates(body, {"iris": deployment(2, 2, version="2")}) == []


def test_recompute_is_unchanged() -> None:
    status, _ = compute(md(), {"iris": deployment(2, 2)}, OperatorConfig(), NOW)
    again, notices = compute(md(status=status), {"iris": deployment(2, 2)}, OperatorConfig(),
                             NOW + timedelta(hours=1))
    # The writer compares the rollout's part as stored with the new one: no write.
    assert ROLLOUT.part(status) == ROLLOUT.normalise(again)
    assert notices == []


def test_failure_is_degraded_once_with_event() -> None:
    status, notices = compute(md(), {}, OperatorConfig(), NOW, Failure("InvalidChild", "bad"))
    assert cond(status, "Degraded")["reason"] == "InvalidChild"
    assert [n.warning for n in notices] == [True]
    _, notices = compute(md(status=status), {}, OperatorConfig(), NOW,
                         Failure("InvalidChild", "bad"))
    assert notices == []
    healed, notices = compute(md(status=status), {"iris": deployment(2, 2)}, OperatorConfig(),
                              NOW)
    assert cond(healed, "Degraded")["status"] == "False"
    assert [n.reason for n in notices] == ["Recovered"]


def test_progress_deadline_is_degraded() -> None:
    dep = deployment(2, 0, available=False)
    dep["status"]["conditions"].append({"type": "Progressing", "status": "False",
                                        "reason": "ProgressDeadlineExceeded",
                                        "message": "ReplicaSet has timed out progressing."})
    status, notices = compute(md(), {"iris": dep}, OperatorConfig(), NOW)
    assert cond(status, "Degraded")["reason"] == "ProgressDeadlineExceeded"
    assert cond(status, "Ready")["status"] == "False"
    assert notices[0].warning


def test_the_kept_deployment_judges_as_the_whole_one() -> None:
    """The Deployment index keeps only what rollout() reads of each Deployment."""
    from kustos.controllers.indexes import deployment_kept as _kept
    from kustos.status.modeldeployment import rollout

    for dep in (deployment(2, 2), deployment(3, 1, updated=2, available=False, generation=4,
                                             observed=3, version="2")):
        full = {**dep, "spec": {**dep["spec"], "strategy": {"type": "RollingUpdate"},
                                "template": {**dep["spec"]["template"],
                                             "spec": {"containers": [{"name": "x"}]}}}}
        assert rollout(_kept(full), None) == rollout(full, None)
        assert "containers" not in str(_kept(full))
