"""DriftMonitor status from its target and the drift sidecars' reports. Pure.

Drift is judged over all Ready pods of the target: drift when any pod reports it;
windows evaluated are summed; a feature's p-value is its minimum over the pods. A drift
episode starts when DriftDetected turns True and ends when it turns False; Events and the
retraining Job follow those transitions only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kustos.api.v1alpha1 import DriftMonitorSpec
from kustos.render.drift import job_name
from kustos.render.sidecars import duration_seconds

from . import truth as truth_dm
from .conditions import Failure, Notice, timestamp
from .sidecars import Conditions, PodReport, Wiring, readiness, sidecar_failure

KIND = "DriftMonitor"


@dataclass
class Aggregate:
    """The pods' reports combined."""

    answered: int = 0
    drift: bool | None = None  # None: no pod has tested a window yet
    features: list[str] = field(default_factory=list)
    windows: int = 0
    p_values: dict[str, float] = field(default_factory=dict)
    last_check: str | None = None


def aggregate(reports: list[PodReport]) -> Aggregate:
    agg = Aggregate()
    for r in reports:
        rep = r.report
        if rep is None:
            continue
        agg.answered += 1
        agg.windows += int(rep.get("windowsEvaluated") or 0)
        check = rep.get("lastCheck")
        if check and (agg.last_check is None or str(check) > agg.last_check):
            agg.last_check = str(check)
        if not rep.get("windowsEvaluated") and not check:
            continue  # nothing tested on this pod yet: it says nothing about drift
        agg.drift = bool(agg.drift) or bool(rep.get("drift"))
        if rep.get("drift"):
            agg.features += [str(f) for f in rep.get("driftingFeatures") or []
                             if str(f) not in agg.features]
        for feature, p in (rep.get("featurePValues") or {}).items():
            if isinstance(p, (int, float)) and math.isfinite(p):
                agg.p_values[str(feature)] = min(float(p), agg.p_values.get(str(feature), 1.0))
    return agg


@dataclass(frozen=True)
class RetrainJob:
    """The Job the previous episodes created last: name and creation time."""

    name: str
    created: datetime


@dataclass(frozen=True)
class Result:
    status: dict[str, Any]
    notices: list[Notice]
    # Create a retraining Job of this name (from spec.onDrift.retrainJob.template).
    create_job: str | None = None
    # The same, for a ground-truth degradation episode (spec.groundTruth.onDegraded).
    create_truth_job: str | None = None


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _unused(c: Conditions, spec: DriftMonitorSpec) -> None:
    """Drop the conditions of parts the spec no longer has."""
    gone = set()
    if spec.reference is None:
        gone.add("DriftDetected")
    if spec.ground_truth is None:
        gone |= {"PerformanceDegraded", "FairnessViolated"}
    elif spec.ground_truth.fairness is None:
        gone.add("FairnessViolated")
    c.conds = [x for x in c.conds if x.get("type") not in gone]


def compute(body: Mapping[str, Any], wiring: Wiring, reports: list[PodReport], now: datetime,
            last_job: RetrainJob | None = None, failure: Failure | None = None,
            truth_report: PodReport | None = None) -> Result:
    """The whole status. ``truth_report``: the ground-truth monitor's answer (None: no
    Ready monitor pod, or no spec.groundTruth)."""
    meta = body["metadata"]
    name = meta["name"]
    spec = DriftMonitorSpec.model_validate(body["spec"])
    old: Mapping[str, Any] = body.get("status") or {}
    c = Conditions(old, meta.get("generation"), now)
    _unused(c, spec)
    status: dict[str, Any] = {"observedGeneration": meta.get("generation")}
    if spec.ground_truth is None and old.get("groundTruth") is not None:
        status["groundTruth"] = None  # the merge patch removes it
    create_job: str | None = None
    part = ("drift sidecar and ground-truth monitor"
            if spec.reference is not None and spec.ground_truth is not None
            else "drift sidecar" if spec.reference is not None else "ground-truth monitor")
    problem = wiring.problem(KIND, name, part)
    if problem is not None:
        reason, message, degraded = problem
        c.set("Ready", False, reason, message)
        c.degraded(failure or (Failure(reason, message) if degraded else None),
                   "the DriftMonitor is no longer degraded")
        if spec.reference is not None and not c.old_condition("DriftDetected"):
            c.set("DriftDetected", "Unknown", reason, "no window tested yet")
        if spec.ground_truth is not None and not c.old_condition("PerformanceDegraded"):
            c.set("PerformanceDegraded", "Unknown", reason, "no evaluation yet")
        status["conditions"] = c.conds
        return Result(status, c.notices)

    truth = None
    if spec.ground_truth is not None:
        previous = (truth_dm.Previous(last_job.name, last_job.created)
                    if last_job is not None else None)
        truth = truth_dm.compute(body, spec, c, truth_report, now, previous)
        if truth.summary is not None:
            status["groundTruth"] = truth.summary
    parts = []
    if spec.reference is not None:
        parts.append(readiness(reports, "drift", "Monitoring", "inputs monitored"))
    if truth is not None:
        parts.append(truth.ready)
    if not parts:  # the CRD's rule refuses this; an object from before it has neither
        parts.append((False, "NothingToMonitor", "set spec.reference or spec.groundTruth"))
    bad = [p for p in parts if not p[0]]
    ready, reason, message = bad[0] if bad else parts[0]
    if len(parts) > 1:
        message = "; ".join(p[2] for p in parts)
    c.set("Ready", ready, reason, message)
    c.degraded(failure or sidecar_failure(reports) or (truth.failure if truth else None),
               "the DriftMonitor is no longer degraded")
    if truth is not None:
        c.notices += truth.notices
    if spec.reference is None:
        status["conditions"] = c.conds
        return Result(status, c.notices, None, truth.create_job if truth else None)
    agg = aggregate(reports)
    old_drift = c.old_condition("DriftDetected")
    was = old_drift.get("status") == "True"
    if agg.drift is None:
        if not old_drift:
            c.set("DriftDetected", "Unknown", "NoWindowYet", "no window tested yet")
    else:
        status["windowsEvaluated"] = agg.windows
        status["lastCheck"] = agg.last_check
        status["featurePValues"] = [{"feature": f, "pValue": p}
                                    for f, p in sorted(agg.p_values.items())]
    if agg.drift:
        text = (f"drift in {', '.join(agg.features) or 'the input distribution'} "
                f"(p < {spec.p_value:g})")
        if not was:
            at = timestamp(now)
            # job None: the merge patch of the status removes the previous episode's job.
            last: dict[str, Any] = {"at": at, "features": agg.features, "job": None}
            retrain = spec.on_drift.retrain_job
            if retrain is not None:
                since = _parse(old_drift.get("lastTransitionTime")) if old_drift else None
                cooldown = timedelta(seconds=duration_seconds(retrain.cooldown))
                if last_job is not None and since is not None and last_job.created >= since:
                    # Created for this episode by an attempt whose status write was lost.
                    last["job"] = last_job.name
                elif last_job is not None and now - last_job.created < cooldown:
                    until = timestamp(last_job.created + cooldown)
                    text += (f"; no retraining Job: the last one ({last_job.name}) is within "
                             f"the cooldown until {until}")
                else:
                    create_job = job_name(name, meta.get("uid", ""), at)
                    last["job"] = create_job
            status["lastDrift"] = last
            if spec.on_drift.event:
                c.notices.append(Notice("DriftDetected", text, warning=True))
        else:
            text = (old_drift.get("message") or text) if _same_features(old, agg) else text
        c.set("DriftDetected", True, "DriftDetected", text)
    elif agg.drift is False:
        c.set("DriftDetected", False, "NoDrift",
              f"no drift in the latest windows ({agg.windows} evaluated)")
        if was and spec.on_drift.event:
            c.notices.append(Notice("DriftResolved", "the inputs no longer drift"))
    status["conditions"] = c.conds
    return Result(status, c.notices, create_job, truth.create_job if truth else None)


def _same_features(old: Mapping[str, Any], agg: Aggregate) -> bool:
    """Whether the episode still drifts in the features it started with (then the
    condition's message, with its cooldown note, is kept)."""
    last = old.get("lastDrift") or {}
    return bool(last.get("features") == agg.features)
