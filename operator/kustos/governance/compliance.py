"""The PolicyCompliant condition of a ModelDeployment (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kustos.status.conditions import get_condition, set_condition

from .policy import Policy, Violation, evaluate, summary

CONDITION = "PolicyCompliant"


@dataclass(frozen=True)
class Verdict:
    """What PolicyCompliant should say."""

    compliant: bool
    reason: str
    message: str
    violations: tuple[Violation, ...] = ()


def verdict(spec: Mapping[str, Any], policies: Iterable[Policy], *, has_explainer: bool,
            has_drift_monitor: bool, has_fairness_monitor: bool | None = None
            ) -> Verdict | None:
    """The condition for a ModelDeployment under the policies that apply to its namespace;
    None when no policy applies (the condition is then not written at all).
    ``has_fairness_monitor`` None leaves requireFairnessMonitoring unjudged."""
    policies = list(policies)
    if not policies:
        return None
    violations = evaluate(spec, policies, has_explainer=has_explainer,
                          has_drift_monitor=has_drift_monitor,
                          has_fairness_monitor=has_fairness_monitor)
    names = ", ".join(p.name for p in policies)
    if not violations:
        return Verdict(True, "Compliant", f"meets GovernancePolicy {names}")
    return Verdict(False, violations[0].reason, summary(violations), tuple(violations))


def condition(status: Mapping[str, Any] | None, v: Verdict | None,
              generation: int | None, now: datetime) -> dict[str, Any] | None:
    """The PolicyCompliant condition for verdict ``v`` (None: no policy applies). When no
    policy applies any more, a condition that was there says so instead of lingering as
    False; None when there never was one."""
    current = get_condition({"status": status or {}}, CONDITION)
    if v is None:
        if current is None:
            return None
        v = Verdict(True, "NoPolicyApplies", "no GovernancePolicy selects this namespace")
    return set_condition([current] if current else [], CONDITION, v.compliant, v.reason,
                         v.message, generation, now)[0]


def notice(previous: Mapping[str, Any] | None, v: Verdict | None) -> tuple[str, str, bool] | None:
    """The Event (reason, message, warning) for a change of compliance, or None."""
    was = (previous or {}).get("status")
    if v is None:
        return None
    if not v.compliant and (was != "False" or (previous or {}).get("reason") != v.reason):
        return ("PolicyViolation", v.message, True)
    if v.compliant and was == "False":
        return ("PolicyCompliant", v.message, False)
    return None
