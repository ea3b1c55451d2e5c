"""ExplainerSpec status from its target and the explainer sidecars' reports. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.config import OperatorConfig
from kustos.render.explainer import endpoint, report_name

from .conditions import Failure, Notice
from .sidecars import Conditions, PodReport, Wiring, readiness, sidecar_failure

KIND = "ExplainerSpec"


@dataclass(frozen=True)
class Result:
    status: dict[str, Any]
    notices: list[Notice]
    # The full global report to keep in the ConfigMap (None: nothing new to write).
    report: Mapping[str, Any] | None


def latest_report(reports: list[PodReport]) -> Mapping[str, Any] | None:
    """The most recently computed global report among the pods (each pod computes its own
    from the same model and background)."""
    done = [r.report for r in reports
            if r.report and r.report.get("lastComputed") and r.report.get("globalImportance")]
    if not done:
        return None
    return max(done, key=lambda rep: str(rep.get("lastComputed")))


def compute(body: Mapping[str, Any], wiring: Wiring, target: Mapping[str, Any] | None,
            reports: list[PodReport], config: OperatorConfig, now: datetime,
            failure: Failure | None = None) -> Result:
    meta = body["metadata"]
    name = meta["name"]
    old: Mapping[str, Any] = body.get("status") or {}
    c = Conditions(old, meta.get("generation"), now)
    status: dict[str, Any] = {"observedGeneration": meta.get("generation")}
    problem = wiring.problem(KIND, name, "explainer")
    report: Mapping[str, Any] | None = None
    if problem is not None:
        reason, message, degraded = problem
        c.set("Ready", False, reason, message)
        c.degraded(failure or (Failure(reason, message) if degraded else None),
                   "the ExplainerSpec is no longer degraded")
        status["endpoint"] = None
    else:
        assert target is not None
        md = ModelDeploymentSpec.model_validate(target["spec"])
        ready, reason, message = readiness(reports, "explainer", "Serving",
                                           "explanations served")
        c.set("Ready", ready, reason, message)
        c.degraded(failure or sidecar_failure(reports), "the ExplainerSpec is no longer degraded")
        status["endpoint"] = endpoint(wiring.target, wiring.namespace, md, config)
        latest = latest_report(reports)
        if latest is not None:
            status["globalImportance"] = [
                {"feature": str(f["feature"]), "value": float(f["value"])}
                for f in latest.get("globalImportance") or []
                if isinstance(f.get("value"), (int, float)) and math.isfinite(f["value"])]
            status["lastComputed"] = latest.get("lastComputed")
            if latest.get("report") is not None:
                report = latest["report"]
                status["reportConfigMap"] = report_name(name)
    status["conditions"] = c.conds
    return Result(status, c.notices, report)
