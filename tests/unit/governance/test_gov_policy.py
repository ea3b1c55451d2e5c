"""Pure policy evaluation: every rule, and messages that name the policy, rule and field."""

from __future__ import annotations

from typing import Any

import pytest

from kustos.governance.policy import (
    Policy,
    applicable,
    evaluate,
    image_reference,
    policies_from,
    registry_allowed,
    selector_matches,
    summary,
)

DIGEST = "sha256:" + "ab" * 32


def spec(tier: str = "high", **governance: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": {"version": "1", "uri": "s3://m/model.skops",
                                     "digest": DIGEST},
                           "governance": {"riskTier": tier, **governance}}
    return out


STRICT = Policy("strict-high", {
    "requireOwner": True,
    "approvalRequiredFor": ["high"],
    "digestRequiredFor": ["medium", "high"],
    "explainerRequiredFor": ["high"],
    "driftMonitorRequiredFor": ["medium", "high"],
    "allowedRegistries": ["ghcr.io/acme", "registry.internal:5000"],
})


def test_compliant_spec_has_no_violations() -> None:
    s = spec(owner="risk", approval={"approvedBy": "jane", "ticket": "RISK-1"})
    assert evaluate(s, [STRICT], has_explainer=True, has_drift_monitor=True) == []


def test_approval_rule_names_policy_rule_and_each_field() -> None:
    found = evaluate(spec(owner="risk"), [STRICT])
    assert [str(v) for v in found] == [
        "GovernancePolicy strict-high, rule approvalRequiredFor: "
        "spec.governance.approval.approvedBy is required for riskTier high",
        "GovernancePolicy strict-high, rule approvalRequiredFor: "
        "spec.governance.approval.ticket is required for riskTier high",
    ]
    assert {v.reason for v in found} == {"MissingApproval"}
    # A tier the policy does not list needs no approval.
    assert evaluate(spec("low", owner="risk"), [STRICT]) == []


def test_owner_rule() -> None:
    found = evaluate(spec("low"), [STRICT])
    assert [(v.rule, v.field, v.reason) for v in found] == [
        ("requireOwner", "spec.governance.owner", "MissingOwner")]
    assert evaluate(spec("low", owner="  "), [STRICT])[0].field == "spec.governance.owner"
    # Without governance at all: tier low, owner missing.
    assert [v.rule for v in evaluate({"model": {"version": "1"}}, [STRICT])] == ["requireOwner"]


def test_digest_rule_covers_model_and_canary() -> None:
    s = spec("medium", owner="risk")
    del s["model"]["digest"]
    s["canary"] = {"model": {"version": "2", "uri": "s3://m/2.skops"}, "trafficPercent": 10}
    found = evaluate(s, [STRICT])
    assert [(v.rule, v.field) for v in found] == [
        ("digestRequiredFor", "spec.model.digest"),
        ("digestRequiredFor", "spec.canary.model.digest")]
    assert "riskTier medium" in found[0].message
    assert found[0].reason == "DigestNotPinned"


def test_registry_rule_checks_user_set_images_only() -> None:
    s = spec("low", owner="risk")
    assert evaluate(s, [STRICT]) == []  # the operator's default image is not judged
    s["runtime"] = {"image": "docker.io/evil/server:1"}
    (v,) = evaluate(s, [STRICT])
    assert (v.rule, v.field, v.reason) == ("allowedRegistries", "spec.runtime.image",
                                           "RegistryNotAllowed")
    assert "'docker.io/evil/server:1' is not from an allowed registry" in v.message
    for ok in ("ghcr.io/acme/server:1", "ghcr.io/acme/team/server@sha256:" + "0" * 64,
               "registry.internal:5000/x:2"):
        s["runtime"] = {"image": ok}
        assert evaluate(s, [STRICT]) == [], ok
    s["runtime"] = {"image": "ghcr.io/acme-evil/server:1"}  # a prefix is a path, not a string
    assert evaluate(s, [STRICT])[0].rule == "allowedRegistries"


def test_image_reference_normalises_docker_hub() -> None:
    assert image_reference("nginx") == "docker.io/library/nginx"
    assert image_reference("nginx:1.27") == "docker.io/library/nginx"
    assert image_reference("seldonio/mlserver:1.7") == "docker.io/seldonio/mlserver"
    assert image_reference("localhost:5000/m:1") == "localhost:5000/m"
    assert registry_allowed("nginx", ["docker.io"])
    assert not registry_allowed("nginx", ["docker.io/seldonio"])
    assert not registry_allowed("ghcr.io/x/y", [])


def test_existence_rules_only_when_known() -> None:
    s = spec(owner="risk", approval={"approvedBy": "jane", "ticket": "RISK-1"})
    # The webhook's case: existence unknown, not judged.
    assert evaluate(s, [STRICT]) == []
    found = evaluate(s, [STRICT], has_explainer=False, has_drift_monitor=False)
    assert [(v.rule, v.reason) for v in found] == [
        ("explainerRequiredFor", "MissingExplainer"),
        ("driftMonitorRequiredFor", "MissingDriftMonitor")]
    assert str(found[0]) == ("GovernancePolicy strict-high, rule explainerRequiredFor: "
                             "ExplainerSpec targeting this model is required for riskTier high")
    low = spec("medium", owner="risk")
    assert [v.rule for v in evaluate(low, [STRICT], has_explainer=False,
                                     has_drift_monitor=True)] == []


def test_several_policies_each_name_themselves() -> None:
    other = Policy("owners", {"requireOwner": True})
    found = evaluate(spec("low"), [STRICT, other])
    assert [v.policy for v in found] == ["strict-high", "owners"]
    text = summary(found)
    assert "GovernancePolicy strict-high" in text and "GovernancePolicy owners" in text
    many = [found[0]] * 12
    assert summary(many).endswith("; and 2 more")


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    (None, {}, True),
    ({}, {"a": "b"}, True),
    ({"matchLabels": {"team": "risk"}}, {"team": "risk"}, True),
    ({"matchLabels": {"team": "risk"}}, {"team": "ops"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
     {"env": "prod"}, True),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}, {}, False),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}, {}, True),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]},
     {"env": "dev"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {"env": ""}, True),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {"env": "x"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "Bogus"}]}, {"env": "x"}, False),
])
def test_selector_matches(selector: Any, labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(selector, labels) is expected


def test_applicable_and_policies_from() -> None:
    objs = [
        {"metadata": {"name": "b"}, "spec": {"namespaceSelector": {"matchLabels": {"t": "1"}}}},
        {"metadata": {"name": "a"}, "spec": {}},
        {"metadata": {"name": "gone", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {}},
    ]
    policies = policies_from(objs)
    assert [p.name for p in policies] == ["a", "b"]
    assert [p.name for p in applicable(policies, {"t": "1"})] == ["a", "b"]
    assert [p.name for p in applicable(policies, {})] == ["a"]
    assert policies[0].enforcement == "Deny"
