"""The PolicyCompliant condition (pure), and that the ModelDeployment's own status
computation keeps it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kustos.config import OperatorConfig
from kustos.governance.compliance import condition, notice, verdict
from kustos.governance.policy import Policy
from kustos.status import modeldeployment as status_md

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
POLICY = Policy("needs-monitoring", {"explainerRequiredFor": ["high"],
                                     "driftMonitorRequiredFor": ["high"]})
SPEC: dict[str, Any] = {"model": {"version": "1", "uri": "s3://m/model.skops",
                                  "digest": "sha256:" + "0" * 64},
                        "governance": {"riskTier": "high", "owner": "risk"}}


def test_missing_explainer_then_drift_monitor_then_compliant() -> None:
    v = verdict(SPEC, [POLICY], has_explainer=False, has_drift_monitor=False)
    assert v is not None and not v.compliant and v.reason == "MissingExplainer"
    assert "rule driftMonitorRequiredFor" in v.message
    cond = condition({}, v, 1, NOW)
    assert cond is not None
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "PolicyCompliant", "False", "MissingExplainer")
    assert notice(None, v) == ("PolicyViolation", v.message, True)

    v2 = verdict(SPEC, [POLICY], has_explainer=True, has_drift_monitor=False)
    assert v2 is not None and v2.reason == "MissingDriftMonitor"
    cond2 = condition({"conditions": [cond]}, v2, 1, LATER)
    assert cond2 is not None
    # Still False: the transition time stays.
    assert cond2["lastTransitionTime"] == cond["lastTransitionTime"]
    assert notice(cond, v2) is not None  # a new reason is a new Event

    v3 = verdict(SPEC, [POLICY], has_explainer=True, has_drift_monitor=True)
    assert v3 is not None and v3.compliant and v3.reason == "Compliant"
    cond3 = condition({"conditions": [cond2]}, v3, 1, LATER)
    assert cond3 is not None and cond3["status"] == "True"
    assert cond3["lastTransitionTime"] == "2026-11-23T13:00:00Z"
    assert notice(cond2, v3) == ("PolicyCompliant", v3.message, False)
    # Nothing changes: the same condition (the writer then writes nothing), no Event.
    assert condition({"conditions": [cond3]}, v3, 1, LATER) == cond3
    assert notice(cond3, v3) is None
    # A new generation is recorded even when the verdict is the same.
    assert condition({"conditions": [cond3]}, v3, 2, LATER) != cond3


def test_no_policy_writes_nothing_until_a_condition_exists() -> None:
    assert verdict(SPEC, [], has_explainer=False, has_drift_monitor=False) is None
    assert condition({}, None, 1, NOW) is None
    stale = [{"type": "PolicyCompliant", "status": "False", "reason": "MissingExplainer",
              "message": "x", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    cond = condition({"conditions": stale}, None, 1, NOW)
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "NoPolicyApplies")


def test_rollout_status_leaves_policy_compliant_to_its_owner() -> None:
    """status/modeldeployment.compute says only the rollout's part (PolicyCompliant is
    governance's, applied under its own field manager), and history records the uri that
    `kustos rollback` restores."""
    policy_cond = {"type": "PolicyCompliant", "status": "False", "reason": "MissingExplainer",
                   "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z",
                   "observedGeneration": 1}
    served = {"version": "0", "digest": "sha256:" + "1" * 64, "uri": "s3://m/0.skops",
              "deployedAt": "2026-01-01T00:00:00Z"}
    body = {"metadata": {"name": "m", "namespace": "ns", "generation": 2},
            "spec": {**SPEC, "replicas": 1},
            "status": {"conditions": [policy_cond], "model": served}}
    template = {"metadata": {"annotations": {"kustos.dev/model-version": SPEC["model"]["version"],
                                             "kustos.dev/model-digest": SPEC["model"]["digest"]}}}
    deployment = {"metadata": {"name": "m", "generation": 1},
                  "spec": {"replicas": 1, "template": template},
                  "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                             "updatedReplicas": 1, "availableReplicas": 1,
                             "conditions": [{"type": "Available", "status": "True"}]}}
    new, notices = status_md.compute(body, {"m": deployment}, OperatorConfig(), NOW)
    assert {c["type"] for c in new["conditions"]} == {"Progressing", "Ready", "Degraded"}
    status_md.ROLLOUT.normalise(new)  # nothing it does not own
    assert new["history"][0] == served
    assert new["model"]["uri"] == "s3://m/model.skops"
    assert new["model"]["version"] == "1" and new["model"]["deployedAt"]
    assert any(n.reason == "ModelVersionChanged" for n in notices)
