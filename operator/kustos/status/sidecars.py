"""What ExplainerSpec and DriftMonitor status share: target checks, pod reports, the
Ready/Degraded conditions. Pure: the controller collects, this judges."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .conditions import Failure, Notice, get_condition, set_condition

_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")


@dataclass(frozen=True)
class PodReport:
    """What one Ready pod's sidecar answered (``report``), or why it did not (``error``)."""

    pod: str
    report: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Wiring:
    """Whether the resource is wired into its target, and if not why."""

    target: str
    namespace: str
    exists: bool
    runtime: str | None = None  # the target's runtime kind
    active: str | None = None  # name of the resource of this kind wired into the target

    def problem(self, kind: str, name: str, sidecar: str) -> tuple[str, str, bool] | None:
        """(reason, message, degraded) when ``name`` is not wired, else None."""
        if not self.exists:
            return ("TargetNotFound",
                    f"ModelDeployment {self.target} does not exist in namespace "
                    f"{self.namespace}; the {sidecar} is added to its pods when it is "
                    "created", False)
        if self.active != name:
            return ("Conflict",
                    f"ModelDeployment {self.target} already has {kind} {self.active}; a "
                    f"ModelDeployment takes one {kind}: delete this one or point "
                    "spec.targetRef at another ModelDeployment", True)
        if self.runtime != "kustos":
            return ("RuntimeUnsupported",
                    f"ModelDeployment {self.target} uses runtime {self.runtime!r}, which "
                    f"cannot feed a {sidecar} sidecar; set spec.runtime.kind: kustos on it "
                    f"(kustos serve is what forwards to the sidecar) or delete this {kind}",
                    True)
        return None


@dataclass
class Conditions:
    """Conditions being built for one status, and the Events their transitions call for."""

    old: Mapping[str, Any]
    generation: int | None
    now: datetime
    conds: list[dict[str, Any]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conds = [dict(c) for c in self.old.get("conditions") or []]

    def set(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.conds = set_condition(self.conds, type_, status, reason, message[:32768],
                                   self.generation, self.now)

    def old_condition(self, type_: str) -> dict[str, Any]:
        return get_condition({"status": self.old}, type_) or {}

    def degraded(self, failure: Failure | None, recovered: str) -> None:
        """Degraded with one Warning Event per transition (a new reason counts), and a
        Normal Recovered Event when it clears."""
        old = self.old_condition("Degraded")
        was = old.get("status") == "True"
        if failure is not None:
            self.set("Degraded", True, failure.reason, failure.message)
            if not was or old.get("reason") != failure.reason:
                self.notices.append(Notice(failure.reason, failure.message, warning=True))
        else:
            self.set("Degraded", False, "AsExpected", "")
            if was:
                self.notices.append(Notice("Recovered", recovered))


def sidecar_failure(reports: list[PodReport]) -> Failure | None:
    """The first error a sidecar reports (reference or background fetch, digest, ...)."""
    for r in reports:
        err = (r.report or {}).get("error")
        if isinstance(err, Mapping) and err.get("reason"):
            reason = str(err["reason"])
            if not _REASON.fullmatch(reason):  # a condition reason must be CamelCase
                reason = "SidecarError"
            return Failure(reason, f"{err.get('message') or reason} (reported by pod {r.pod})")
    return None


def readiness(reports: list[PodReport], sidecar: str, ready_reason: str,
              ready_text: str) -> tuple[bool, str, str]:
    """(ready, reason, message) from the pods' answers; unreachable pods are named."""
    answered = [r for r in reports if r.report is not None]
    ready = [r for r in answered if r.report and r.report.get("ready")
             and not r.report.get("error")]
    unreachable = [f"{r.pod} ({r.error})" for r in reports if r.report is None]
    more = f" and {len(unreachable) - 5} more" if len(unreachable) > 5 else ""
    note = f"; no answer from {', '.join(unreachable[:5])}{more}" if unreachable else ""
    if ready:
        return True, ready_reason, f"{ready_text} by {len(ready)}/{len(reports)} pods{note}"
    if not reports:
        return False, "NoPods", f"no Ready pod of the target runs the {sidecar} sidecar yet"
    if not answered:
        return False, "SidecarUnreachable", f"no {sidecar} sidecar answered{note}"
    return False, "SidecarNotReady", (f"the {sidecar} sidecar is not ready on any of "
                                      f"{len(answered)} pods{note}")


def changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change anything the status already says."""
    old = old or {}
    return any(old.get(k) != v for k, v in new.items())
