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
            has_drift_monitor: bool) -> Verdict | None:
    """The condition for a ModelDeployment under the policies that apply to its namespace;
    None when no policy applies (the condition is then not written at all)."""
    policies = list(policies)
    if not policies:
        return None
    violations = evaluate(spec, policies, has_explainer=has_explainer,
                          has_drift_monitor=has_drift_monitor)
    names = ", ".join(p.name for p in policies)
    if not violations:
        return Verdict(True, "Compliant", f"meets GovernancePolicy {names}")
    return Verdict(False, violations[0].reason, summary(violations), tuple(violations))


def conditions_with(status: Mapping[str, Any] | None, v: Verdict | None,
                    generation: int | None, now: datetime) -> list[dict[str, Any]] | None:
    """The status's conditions with PolicyCompliant set to ``v``; None when nothing would
    change (so nothing is written). When no policy applies any more, a condition that was
    there says so instead of lingering as False."""
    old = list((status or {}).get("conditions") or [])
    current = get_condition({"status": status or {}}, CONDITION)
    if v is None:
        if current is None:
            return None
        v = Verdict(True, "NoPolicyApplies", "no GovernancePolicy selects this namespace")
    if current is not None and (current.get("status"), current.get("reason"),
                                current.get("message"), current.get("observedGeneration")) == \
            ("True" if v.compliant else "False", v.reason, v.message, generation):
        return None
    return set_condition(old, CONDITION, v.compliant, v.reason, v.message, generation, now)


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
