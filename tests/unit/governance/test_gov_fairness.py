"""GovernancePolicy requireFairnessMonitoring: a ModelDeployment of a listed risk tier is
not PolicyCompliant until a DriftMonitor targeting it slices its ground truth by a
sensitive feature; the controller reads that from its DriftMonitor index and re-judges the
target when a DriftMonitor starts or stops monitoring fairness."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
import pytest

from kustos.api.v1alpha1.governancepolicy import GovernancePolicySpec
from kustos.controllers import governance
from kustos.governance.compliance import condition, verdict
from kustos.governance.policy import EXISTENCE_RULES, Policy, evaluate, monitors_fairness

DIGEST = "sha256:" + "ab" * 32
POLICY = Policy("fair-high", {"requireFairnessMonitoring": ["high"],
                              "driftMonitorRequiredFor": ["medium", "high"]})
FAIRNESS = {"sensitiveFeatures": [{"name": "sex", "source": "input"}],
            "maxDemographicParityDifference": 0.1}


def md_spec(tier: str) -> dict[str, Any]:
    return {"model": {"version": "1", "uri": "s3://m/model.skops", "digest": DIGEST},
            "governance": {"riskTier": tier, "owner": "risk"}}


def dm_spec(target: str = "credit", fairness: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"targetRef": {"name": target}}
    if fairness is not None:
        spec["groundTruth"] = {"task": "classification", "fairness": fairness}
    return spec


def test_the_policy_field_is_in_the_api() -> None:
    spec = GovernancePolicySpec.model_validate({"requireFairnessMonitoring": ["high"]})
    assert spec.require_fairness_monitoring == ["high"]
    dumped = spec.model_dump(by_alias=True, exclude_defaults=True)
    assert dumped == {"requireFairnessMonitoring": ["high"]}
    with pytest.raises(ValueError, match="requireFairnessMonitoring"):
        GovernancePolicySpec.model_validate({"requireFairnessMonitoring": ["extreme"]})
    assert "requireFairnessMonitoring" in EXISTENCE_RULES  # the webhook cannot judge it


@pytest.mark.parametrize(("spec", "expected"), [
    (dm_spec(), False),                                              # drift only
    ({"targetRef": {"name": "x"}, "groundTruth": {"task": "classification"}}, False),
    (dm_spec(fairness={"sensitiveFeatures": []}), False),
    (dm_spec(fairness=FAIRNESS), True),
])
def test_monitors_fairness(spec: dict[str, Any], expected: bool) -> None:
    assert monitors_fairness(spec) is expected


def test_the_rule_names_policy_tier_and_what_is_missing() -> None:
    found = evaluate(md_spec("high"), [POLICY], has_explainer=True, has_drift_monitor=True,
                     has_fairness_monitor=False)
    assert [(v.rule, v.reason) for v in found] == [
        ("requireFairnessMonitoring", "MissingFairnessMonitoring")]
    assert str(found[0]) == (
        "GovernancePolicy fair-high, rule requireFairnessMonitoring: DriftMonitor targeting "
        "this model with spec.groundTruth.fairness.sensitiveFeatures is required for "
        "riskTier high")
    assert evaluate(md_spec("high"), [POLICY], has_explainer=True, has_drift_monitor=True,
                    has_fairness_monitor=True) == []
    # a tier the policy does not list needs no fairness monitoring
    assert evaluate(md_spec("medium"), [POLICY], has_explainer=True, has_drift_monitor=True,
                    has_fairness_monitor=False) == []
    # the webhook's case: unknown, not judged
    assert evaluate(md_spec("high"), [POLICY]) == []
    # no DriftMonitor at all: both rules report it, the drift rule first
    both = evaluate(md_spec("high"), [POLICY], has_explainer=True, has_drift_monitor=False,
                    has_fairness_monitor=False)
    assert [v.reason for v in both] == ["MissingDriftMonitor", "MissingFairnessMonitoring"]


def test_policy_compliant_condition_says_it() -> None:
    v = verdict(md_spec("high"), [POLICY], has_explainer=True, has_drift_monitor=True,
                has_fairness_monitor=False)
    assert v is not None and not v.compliant
    cond = condition({}, v, 3, datetime(2026, 12, 6, tzinfo=UTC))
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "MissingFairnessMonitoring")
    assert "riskTier high" in cond["message"] and "sensitiveFeatures" in cond["message"]
    ok = verdict(md_spec("high"), [POLICY], has_explainer=True, has_drift_monitor=True,
                 has_fairness_monitor=True)
    assert ok is not None and ok.compliant


def indexes(*monitors: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """The governance indexes as kopf fills them (key -> list of values), built with the
    index functions themselves."""
    by_target: dict[Any, list[bool]] = {}
    for namespace, _name, spec in monitors:
        for key, value in (governance.kustos_gov_drift_monitors(
                namespace=namespace, spec=spec) or {}).items():
            by_target.setdefault(key, []).append(value)
    return {"kustos_gov_policies": {POLICY.name: [dict(POLICY.spec)]},
            "kustos_gov_namespaces": {"ns": [{}]},
            "kustos_gov_explainers": {}, "kustos_gov_drift_monitors": by_target}


def test_the_controller_reads_fairness_from_the_drift_monitor_index() -> None:
    spec = md_spec("high")
    # a DriftMonitor without fairness: drift is satisfied, fairness is not
    v = governance.verdict(spec, "ns", "credit", indexes(("ns", "drift", dm_spec())))
    assert v is not None and v.reason == "MissingFairnessMonitoring"
    # a second DriftMonitor on the same model that monitors fairness satisfies it
    v = governance.verdict(spec, "ns", "credit", indexes(
        ("ns", "drift", dm_spec()), ("ns", "fair", dm_spec(fairness=FAIRNESS))))
    assert v is not None and v.compliant, v
    # one targeting another model, or in another namespace, does not
    for other in (("ns", "fair", dm_spec("other", FAIRNESS)),
                  ("ns2", "fair", dm_spec(fairness=FAIRNESS))):
        v = governance.verdict(spec, "ns", "credit", indexes(("ns", "drift", dm_spec()),
                                                             other))
        assert v is not None and v.reason == "MissingFairnessMonitoring", other
    v = governance.verdict(spec, "ns", "credit", indexes())
    assert v is not None and v.reason == "MissingDriftMonitor"


def test_adding_fairness_to_a_drift_monitor_rejudges_its_target(
        monkeypatch: pytest.MonkeyPatch) -> None:
    judged: list[tuple[str | None, str | None]] = []
    monkeypatch.setattr(governance, "_rejudge_target",
                        lambda namespace, target, idx: judged.append((namespace, target)))
    memo = kopf.Memo(kustos_governance=governance.Governance())

    def event(spec: dict[str, Any], type_: str | None = "MODIFIED") -> None:
        governance.drift_monitor_changed(namespace="ns", name="dm", spec=spec, type=type_,
                                         memo=memo)

    event(dm_spec(), "ADDED")
    assert judged == [("ns", "credit")]
    event(dm_spec())                                  # a status write: nothing to judge
    assert judged == [("ns", "credit")]
    event(dm_spec(fairness=FAIRNESS))                 # same target, fairness added
    assert judged == [("ns", "credit")] * 2
    event(dm_spec(fairness={**FAIRNESS, "maxAccuracyGap": 0.2}))  # still monitors it
    assert len(judged) == 2
    event(dm_spec())                                  # fairness removed
    assert len(judged) == 3
    event(dm_spec(fairness=FAIRNESS))
    event(dm_spec(fairness=FAIRNESS), "DELETED")
    assert len(judged) == 5
    assert len(governance.governance(memo)) == 0      # nothing kept for a deleted one
    # an ExplainerSpec with such a field is not a fairness monitor
    governance.explainer_changed(namespace="ns", name="e", spec=dm_spec(fairness=FAIRNESS),
                                 type="ADDED", memo=memo)
    governance.explainer_changed(namespace="ns", name="e", spec=dm_spec(), type="MODIFIED",
                                 memo=memo)
    assert len(judged) == 6
