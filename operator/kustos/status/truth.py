"""The ground-truth part of a DriftMonitor's status, from the monitor's /v1/truth/status.
Pure: the controller fetches, this judges.

PerformanceDegraded and FairnessViolated follow the monitor's violations (it applies the
thresholds with minSamples). A degradation episode starts when either turns True while
neither was; its Warning Events name metric, version, value and threshold; the retraining
Job (spec.groundTruth.onDegraded.retrainJob) follows episode starts only, with the
cooldown of spec.onDrift.retrainJob.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kustos.api.v1alpha1.driftmonitor import DriftMonitorSpec
from kustos.render.drift import job_name
from kustos.render.sidecars import duration_seconds

from .conditions import Failure, Notice, timestamp
from .sidecars import Conditions, PodReport

METRICS = ("accuracy", "precision", "recall", "f1", "rocAuc", "logLoss", "mae", "rmse",
           "estimatedAccuracy")
GAPS = ("demographicParityDifference", "equalizedOddsDifference", "accuracyGap")
MAX_VERSIONS = 32
MAX_VIOLATIONS = 64
CONDITIONS = ("PerformanceDegraded", "FairnessViolated")


@dataclass(frozen=True)
class Previous:
    """The newest retraining Job of this DriftMonitor (drift or truth): name, creation."""

    name: str
    created: datetime


@dataclass
class TruthResult:
    summary: dict[str, Any] | None  # status.groundTruth (None: nothing reported yet)
    ready: tuple[bool, str, str]
    failure: Failure | None
    notices: list[Notice] = field(default_factory=list)
    create_job: str | None = None


def _num(value: Any, digits: int = 4) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return round(float(value), digits)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def _fairness(report: Any) -> list[dict[str, Any]] | None:
    if not isinstance(report, Mapping) or not isinstance(report.get("features"), Mapping):
        return None
    least = _count(report.get("minSliceSize")) or 1
    out = []
    for feature, entry in sorted(report["features"].items())[:16]:
        if not isinstance(entry, Mapping):
            continue
        raw = entry.get("slices")
        slices: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        # inGaps: the monitor's own word on whether a slice took part in the gaps.
        counted = [s for s in slices.values() if isinstance(s, Mapping) and (
            s["inGaps"] is True if "inGaps" in s else (_count(s.get("count")) or 0) >= least)]
        gap: dict[str, Any] = {"feature": str(feature), "slices": len(counted)}
        for key in GAPS:
            value = _num(entry.get(key))
            if value is not None:
                gap[key] = value
        out.append(gap)
    return out


def _version(version: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"version": version}
    count = _count(entry.get("count"))
    if count is not None:
        out["count"] = count
    coverage = _num(entry.get("coverage"))
    if coverage is not None:
        out["coverage"] = coverage
    delay = entry.get("labelDelaySeconds")
    if isinstance(delay, Mapping):
        d = {k: v for k in ("p50", "p95") if (v := _num(delay.get(k), 3)) is not None}
        if d:
            out["labelDelaySeconds"] = d
    metrics = entry.get("metrics")
    if isinstance(metrics, Mapping):
        m = {k: v for k in METRICS if (v := _num(metrics.get(k))) is not None}
        if m:
            out["metrics"] = m
    fairness = _fairness(entry.get("fairness"))
    if fairness is not None:
        out["fairness"] = fairness
    return out


def violations(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The monitor's violations that the status schema can hold."""
    out = []
    for v in report.get("violations") or []:
        if not isinstance(v, Mapping) or v.get("kind") not in ("performance", "fairness"):
            continue
        value, threshold = _num(v.get("value")), _num(v.get("threshold"))
        if value is None or threshold is None or not v.get("metric"):
            continue
        metric = str(v["metric"])
        if v.get("feature"):  # a fairness gap: of which sensitive feature
            metric = f"{v['feature']}/{metric}"
        out.append({"version": str(v.get("version") or ""), "metric": metric[:253],
                    "value": value, "threshold": threshold, "kind": v["kind"]})
    return out[:MAX_VIOLATIONS]


def summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """status.groundTruth from the monitor's report (bounded, rounded: a poll that finds
    the same figures writes nothing)."""
    out: dict[str, Any] = {}
    for key in ("predictions", "labels", "joined"):
        n = _count(report.get(key))
        if n is not None:
            out[key] = n
    versions = report.get("versions")
    if isinstance(versions, Mapping):
        out["versions"] = [_version(str(v), e) for v, e in sorted(versions.items())
                           if isinstance(e, Mapping)][:MAX_VERSIONS]
    out["violations"] = violations(report)
    if report.get("lastEvaluation"):
        out["lastEvaluation"] = str(report["lastEvaluation"])
    return out


UPPER_BOUNDED = ("logLoss", "mae", "rmse")  # performance metrics with a max threshold


def describe(v: Mapping[str, Any]) -> str:
    """accuracy 0.61 < 0.8 (version v2); sex/accuracyGap 0.2 > 0.1 (version v2)"""
    upper = v["kind"] == "fairness" or v["metric"] in UPPER_BOUNDED
    bound = ">" if upper else "<"
    return f"{v['metric']} {v['value']:g} {bound} {v['threshold']:g} (version {v['version']})"


def _parse(ts: Any) -> datetime | None:
    if not ts:
        return None
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00"))


def _evaluated(spec: DriftMonitorSpec, summary_: Mapping[str, Any]) -> bool:
    assert spec.ground_truth is not None
    least = spec.ground_truth.min_samples
    return any((v.get("count") or 0) >= least and v.get("metrics")
               for v in summary_.get("versions") or [])


def compute(body: Mapping[str, Any], spec: DriftMonitorSpec, c: Conditions,
            report: PodReport | None, now: datetime,
            last_job: Previous | None = None) -> TruthResult:
    """Set PerformanceDegraded / FairnessViolated on ``c``; the summary and what to do."""
    gt = spec.ground_truth
    assert gt is not None
    meta = body["metadata"]
    old_gt: Mapping[str, Any] = (body.get("status") or {}).get("groundTruth") or {}
    if report is None or report.report is None:
        why = ("no Ready pod of the monitor yet" if report is None
               else f"the monitor did not answer ({report.error})")
        for type_ in CONDITIONS if gt.fairness else CONDITIONS[:1]:
            if not c.old_condition(type_):
                c.set(type_, "Unknown", "NoEvaluation", why)
        reason = "TruthNotReady" if report is None else "TruthUnreachable"
        return TruthResult(None, (False, reason, why), None)
    rep = report.report
    failure = None
    err = rep.get("error")
    if isinstance(err, Mapping) and err.get("reason"):
        reason = str(err["reason"])
        if not reason.isalnum() or not reason[:1].isupper():
            reason = "TruthError"
        failure = Failure(reason, f"ground-truth monitor: {err.get('message') or reason}")
    ready = ((True, "Monitoring", "ground-truth monitor ready") if rep.get("ready")
             else (False, "TruthNotReady", "the ground-truth monitor is not ready"))
    gsum = summary(rep)
    found = gsum["violations"]
    evaluated = _evaluated(spec, gsum)
    perf = [v for v in found if v["kind"] == "performance"]
    fair = [v for v in found if v["kind"] == "fairness"]
    was = {t: c.old_condition(t).get("status") == "True" for t in CONDITIONS}
    notices: list[Notice] = []
    events = gt.on_degraded.event

    def judge(type_: str, hits: list[dict[str, Any]], ok_reason: str, ok_text: str,
              bad_reason: str, recovered: str) -> None:
        if hits:
            text = "; ".join(describe(v) for v in hits[:8])
            c.set(type_, True, bad_reason, text)
            old_keys = set(str(k) for k in (old_gt.get("lastDegraded") or {})
                           .get("violations") or [])
            new = [v for v in hits if f"{v['version']}/{v['metric']}" not in old_keys]
            if events and (not was[type_] or new):
                notices.append(Notice(type_, text, warning=True))
        elif evaluated or (not gt.thresholds and type_ == "PerformanceDegraded"):
            c.set(type_, False, ok_reason, ok_text)
            if was[type_] and events:
                notices.append(Notice(recovered, f"{type_} cleared: {ok_text}"))
        elif not c.old_condition(type_) or was[type_]:
            c.set(type_, "Unknown", "NotEnoughLabels",
                  f"no version has {gt.min_samples} labelled predictions in the last "
                  f"{gt.window} yet")

    judge("PerformanceDegraded", perf, "WithinThresholds" if gt.thresholds else "NoThresholds",
          "every version within spec.groundTruth.thresholds" if gt.thresholds
          else "no spec.groundTruth.thresholds set", "ThresholdViolated",
          "PerformanceRecovered")
    if gt.fairness is not None:
        judge("FairnessViolated", fair, "WithinThresholds",
              "every version within the fairness thresholds", "FairnessThresholdViolated",
              "FairnessRecovered")
    now_bad = bool(perf or (fair if gt.fairness else []))
    was_bad = any(was.values())
    create_job = None
    last = dict(old_gt.get("lastDegraded") or {})
    if now_bad:
        keys = [f"{v['version']}/{v['metric']}" for v in (perf + fair)][:MAX_VIOLATIONS]
        if not was_bad:
            at = timestamp(now)
            last = {"at": at, "violations": keys, "job": None}
            retrain = spec.on_drift.retrain_job
            if gt.on_degraded.retrain_job and retrain is not None:
                since = max((t for t in (_parse(c.old_condition(x).get("lastTransitionTime"))
                                         for x in CONDITIONS) if t is not None), default=None)
                cooldown = timedelta(seconds=duration_seconds(retrain.cooldown))
                if last_job is not None and since is not None and last_job.created >= since:
                    last["job"] = last_job.name  # created by an attempt whose write was lost
                elif last_job is not None and now - last_job.created < cooldown:
                    notices.append(Notice(
                        "RetrainJobSkipped",
                        f"no retraining Job: the last one ({last_job.name}) is within the "
                        f"cooldown until {timestamp(last_job.created + cooldown)}"))
                else:
                    create_job = job_name(meta["name"], meta.get("uid", ""), f"truth/{at}")
                    last["job"] = create_job
        else:
            seen = set(last.get("violations") or []) | set(keys)
            last["violations"] = sorted(seen)[:MAX_VIOLATIONS]
    if last:
        gsum["lastDegraded"] = last
    return TruthResult(gsum, ready, failure, notices, create_job)
