"""The PolicyCompliant condition (pure), and that the ModelDeployment's own status
computation keeps it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kustos.config import OperatorConfig
from kustos.governance.compliance import conditions_with, notice, verdict
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
    conds = conditions_with({}, v, 1, NOW)
    assert conds is not None
    (cond,) = conds
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "PolicyCompliant", "False", "MissingExplainer")
    assert notice(None, v) == ("PolicyViolation", v.message, True)

    v2 = verdict(SPEC, [POLICY], has_explainer=True, has_drift_monitor=False)
    assert v2 is not None and v2.reason == "MissingDriftMonitor"
    conds2 = conditions_with({"conditions": conds}, v2, 1, LATER)
    assert conds2 is not None
    # Still False: the transition time stays.
    assert conds2[0]["lastTransitionTime"] == cond["lastTransitionTime"]
    assert notice(conds[0], v2) is not None  # a new reason is a new Event

    v3 = verdict(SPEC, [POLICY], has_explainer=True, has_drift_monitor=True)
    assert v3 is not None and v3.compliant and v3.reason == "Compliant"
    conds3 = conditions_with({"conditions": conds2}, v3, 1, LATER)
    assert conds3 is not None and conds3[0]["status"] == "True"
    assert conds3[0]["lastTransitionTime"] == "2026-11-23T13:00:00Z"
    assert notice(conds2[0], v3) == ("PolicyCompliant", v3.message, False)
    # Nothing changes: nothing to write, no Event.
    assert conditions_with({"conditions": conds3}, v3, 1, LATER) is None
    assert notice(conds3[0], v3) is None
    # A new generation is recorded even when the verdict is the same.
    assert conditions_with({"conditions": conds3}, v3, 2, LATER) is not None


def test_no_policy_writes_nothing_until_a_condition_exists() -> None:
    assert verdict(SPEC, [], has_explainer=False, has_drift_monitor=False) is None
    assert conditions_with({}, None, 1, NOW) is None
    stale = [{"type": "PolicyCompliant", "status": "False", "reason": "MissingExplainer",
              "message": "x", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    conds = conditions_with({"conditions": stale}, None, 1, NOW)
    assert conds is not None and (conds[0]["status"], conds[0]["reason"]) == (
        "True", "NoPolicyApplies")


def test_model_deployment_status_write_keeps_policy_compliant() -> None:
    """status/modeldeployment.compute must carry PolicyCompliant over, and history
    records the uri that `kustos rollback` restores."""
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
    kept = [c for c in new["conditions"] if c["type"] == "PolicyCompliant"]
    assert kept == [policy_cond]
    assert new["history"][0] == served
    assert new["model"]["uri"] == "s3://m/model.skops"
    assert new["model"]["version"] == "1" and new["model"]["deployedAt"]
    assert any(n.reason == "ModelVersionChanged" for n in notices)
