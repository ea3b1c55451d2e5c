"""DriftMonitor status from the ground-truth monitor's /v1/truth/status: the pure part."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kustos.status import driftmonitor as sdm
from kustos.status.conditions import get_condition
from kustos.status.driftmonitor import RetrainJob
from kustos.status.sidecars import PodReport, Wiring, changed

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
WIRED = Wiring("iris", "ml", exists=True, runtime="kustos", active="x")
TEMPLATE = {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
    {"name": "train", "image": "busybox"}]}}}}


def dm(status: dict[str, Any] | None = None, *, reference: bool = False,
       retrain: bool = False, fairness: bool = False, **gt: Any) -> dict[str, Any]:
    ground_truth: dict[str, Any] = {"minSamples": 50, "thresholds": {"minAccuracy": 0.9}, **gt}
    if fairness:
        ground_truth["fairness"] = {"sensitiveFeatures": [{"name": "sex"}],
                                    "maxAccuracyGap": 0.1}
    spec: dict[str, Any] = {"targetRef": {"name": "iris"}, "groundTruth": ground_truth}
    if reference:
        spec["reference"] = {"uri": "file:///r.csv"}
    if retrain:
        spec["onDrift"] = {"retrainJob": {"cooldown": "1h", "template": TEMPLATE}}
        ground_truth["onDegraded"] = {"retrainJob": True}
    return {"kind": "DriftMonitor", "metadata": {"name": "x", "namespace": "ml", "uid": "u",
                                                 "generation": 3},
            "spec": spec, "status": status or {}}


def report(accuracy: float, count: int = 200, violations: list[dict[str, Any]] | None = None,
           **kw: Any) -> PodReport:
    rep = {"ready": True, "error": None, "task": "classification",
           "predictions": 250, "labels": count, "joined": count,
           "versions": {"v1": {"window": "1h", "count": count, "coverage": 0.8,
                               "labelDelaySeconds": {"p50": 12.3456, "p95": 60.0},
                               "metrics": {"accuracy": accuracy, "f1": accuracy - 0.01,
                                           "rocAuc": float("nan")},
                               "fairness": None}},
           "violations": violations or [], "lastEvaluation": "2026-12-06T11:59:30Z", **kw}
    return PodReport("x-truth-abc", report=rep)


def low(value: float, metric: str = "accuracy", threshold: float = 0.9,
        kind: str = "performance") -> dict[str, Any]:
    return {"version": "v1", "metric": metric, "value": value, "threshold": threshold,
            "kind": kind}


def cond(status: dict[str, Any], t: str) -> dict[str, Any]:
    c = get_condition({"status": status}, t)
    assert c is not None, t
    return c


def test_summary_is_copied_rounded_and_bounded() -> None:
    r = sdm.compute(dm(), WIRED, [], NOW, truth_report=report(0.9612345))
    gt = r.status["groundTruth"]
    assert (gt["predictions"], gt["labels"], gt["joined"]) == (250, 200, 200)
    (v1,) = gt["versions"]
    assert v1["version"] == "v1" and v1["count"] == 200 and v1["coverage"] == 0.8
    assert v1["metrics"] == {"accuracy": 0.9612, "f1": 0.9512}  # NaN left out
    assert v1["labelDelaySeconds"] == {"p50": 12.346, "p95": 60.0}
    assert gt["lastEvaluation"] == "2026-12-06T11:59:30Z" and gt["violations"] == []
    assert cond(r.status, "Ready")["status"] == "True"
    pd = cond(r.status, "PerformanceDegraded")
    assert (pd["status"], pd["reason"]) == ("False", "WithinThresholds")
    # Ground truth only: no drift condition, no FairnessViolated without fairness.
    assert get_condition({"status": r.status}, "DriftDetected") is None
    assert get_condition({"status": r.status}, "FairnessViolated") is None
    assert r.notices == []


def test_too_few_labels_is_unknown() -> None:
    r = sdm.compute(dm(), WIRED, [], NOW, truth_report=report(0.5, count=10))
    pd = cond(r.status, "PerformanceDegraded")
    assert (pd["status"], pd["reason"]) == ("Unknown", "NotEnoughLabels")
    assert "50" in pd["message"]


def test_degradation_episode_events_and_recovery() -> None:
    bad = sdm.compute(dm(), WIRED, [], NOW, truth_report=report(0.6, violations=[low(0.6)]))
    pd = cond(bad.status, "PerformanceDegraded")
    assert (pd["status"], pd["reason"]) == ("True", "ThresholdViolated")
    assert pd["message"] == "accuracy 0.6 < 0.9 (version v1)"
    (event,) = bad.notices
    assert event.warning and event.reason == "PerformanceDegraded"
    assert "accuracy" in event.message and "v1" in event.message
    assert "0.6" in event.message and "0.9" in event.message
    last = bad.status["groundTruth"]["lastDegraded"]
    assert last == {"at": "2026-12-06T12:00:00Z", "violations": ["v1/accuracy"], "job": None}
    assert bad.create_truth_job is None  # onDegraded.retrainJob not set
    # Still degraded, same violation (another value): no second Event.
    again = sdm.compute(dm(bad.status), WIRED, [], NOW + timedelta(minutes=1),
                        truth_report=report(0.61, violations=[low(0.61)]))
    assert again.notices == []
    assert cond(again.status, "PerformanceDegraded")["lastTransitionTime"] == \
        pd["lastTransitionTime"]
    # A new metric crosses: one more Warning.
    more = sdm.compute(dm(again.status), WIRED, [], NOW + timedelta(minutes=2),
                       truth_report=report(0.6, violations=[low(0.6),
                                                            low(0.2, "coverage", 0.5)]))
    assert [n.reason for n in more.notices] == ["PerformanceDegraded"]
    assert "coverage 0.2 < 0.5" in more.notices[0].message
    fine = sdm.compute(dm(more.status), WIRED, [], NOW + timedelta(minutes=3),
                       truth_report=report(0.95))
    assert cond(fine.status, "PerformanceDegraded")["status"] == "False"
    assert [(n.reason, n.warning) for n in fine.notices] == [("PerformanceRecovered", False)]


def test_upper_bounded_metrics_read_greater_than() -> None:
    r = sdm.compute(dm(task="classification", thresholds={"maxLogLoss": 0.5}), WIRED, [],
                    NOW, truth_report=report(0.9, violations=[low(0.8, "logLoss", 0.5)]))
    assert cond(r.status, "PerformanceDegraded")["message"] == \
        "logLoss 0.8 > 0.5 (version v1)"


def test_same_report_changes_nothing() -> None:
    first = sdm.compute(dm(), WIRED, [], NOW, truth_report=report(0.6, violations=[low(0.6)]))
    second = sdm.compute(dm(first.status), WIRED, [], NOW + timedelta(seconds=30),
                         truth_report=report(0.6, violations=[low(0.6)]))
    assert not changed(first.status, second.status) and second.notices == []


def test_retraining_job_on_episode_start_with_cooldown() -> None:
    r = sdm.compute(dm(retrain=True), WIRED, [], NOW, None,
                    truth_report=report(0.5, violations=[low(0.5)]))
    assert r.create_truth_job and r.create_truth_job.startswith("x-retrain-")
    assert r.status["groundTruth"]["lastDegraded"]["job"] == r.create_truth_job
    # The job exists but the status write that named it was lost: the next attempt
    # (from the status before the episode) records it and creates no second one.
    before = sdm.compute(dm(retrain=True), WIRED, [], NOW - timedelta(hours=3),
                         truth_report=report(0.95))
    job = RetrainJob(r.create_truth_job, NOW)
    lost = sdm.compute(dm(before.status, retrain=True), WIRED, [], NOW + timedelta(seconds=5),
                       job, truth_report=report(0.5, violations=[low(0.5)]))
    assert lost.create_truth_job is None
    assert lost.status["groundTruth"]["lastDegraded"]["job"] == job.name
    # A recovered then new episode within the cooldown: no Job, and an Event says why.
    ok = sdm.compute(dm(r.status, retrain=True), WIRED, [], NOW + timedelta(minutes=5), job,
                     truth_report=report(0.95))
    again = sdm.compute(dm(ok.status, retrain=True), WIRED, [], NOW + timedelta(minutes=10),
                        job, truth_report=report(0.5, violations=[low(0.5)]))
    assert again.create_truth_job is None
    assert any(n.reason == "RetrainJobSkipped" and "cooldown" in n.message
               for n in again.notices)
    # After the cooldown, a new Job with another name.
    late = sdm.compute(dm(ok.status, retrain=True), WIRED, [], NOW + timedelta(hours=2),
                       job, truth_report=report(0.5, violations=[low(0.5)]))
    assert late.create_truth_job and late.create_truth_job != r.create_truth_job


def test_fairness_violation_is_its_own_condition() -> None:
    gap = {**low(0.25, "accuracyGap", 0.1, kind="fairness"), "feature": "sex"}
    fair = {"features": {"sex": {"slices": {"f": {"count": 80}, "m": {"count": 90},
                                            "x": {"count": 3}, "y": {"count": 40,
                                                                     "inGaps": False}},
                                 "demographicParityDifference": 0.05,
                                 "equalizedOddsDifference": None, "accuracyGap": 0.25}},
            "violations": [], "minSliceSize": 30}
    rep = report(0.95, violations=[gap])
    assert rep.report is not None
    rep.report["versions"]["v1"]["fairness"] = fair
    r = sdm.compute(dm(fairness=True), WIRED, [], NOW, truth_report=rep)
    fv = cond(r.status, "FairnessViolated")
    assert (fv["status"], fv["reason"]) == ("True", "FairnessThresholdViolated")
    assert "sex/accuracyGap 0.25 > 0.1 (version v1)" in fv["message"]
    assert cond(r.status, "PerformanceDegraded")["status"] == "False"
    assert r.status["groundTruth"]["versions"][0]["fairness"] == [
        {"feature": "sex", "slices": 2, "demographicParityDifference": 0.05,
         "accuracyGap": 0.25}]
    assert [n.reason for n in r.notices] == ["FairnessViolated"]
    assert r.status["groundTruth"]["violations"] == [
        {"version": "v1", "metric": "sex/accuracyGap", "value": 0.25, "threshold": 0.1,
         "kind": "fairness"}]
    assert r.status["groundTruth"]["lastDegraded"]["violations"] == ["v1/sex/accuracyGap"]
    # Fairness removed from the spec: its condition goes.
    gone = sdm.compute(dm(r.status), WIRED, [], NOW, truth_report=report(0.95))
    assert get_condition({"status": gone.status}, "FairnessViolated") is None


def test_monitor_unreachable_or_failing() -> None:
    r = sdm.compute(dm(), WIRED, [], NOW, truth_report=PodReport("p", error="timed out"))
    ready = cond(r.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TruthUnreachable")
    assert cond(r.status, "PerformanceDegraded")["status"] == "Unknown"
    none = sdm.compute(dm(), WIRED, [], NOW, truth_report=None)
    assert cond(none.status, "Ready")["reason"] == "TruthNotReady"
    err = report(0.9, error={"reason": "BulkSourceFailed", "message": "s3://b/l.csv: 403"})
    failing = sdm.compute(dm(), WIRED, [], NOW, truth_report=err)
    deg = cond(failing.status, "Degraded")
    assert (deg["status"], deg["reason"]) == ("True", "BulkSourceFailed")
    assert "403" in deg["message"]
    odd = report(0.9, error={"reason": "not camel case", "message": "m"})
    assert cond(sdm.compute(dm(), WIRED, [], NOW, truth_report=odd).status,
                "Degraded")["reason"] == "TruthError"


def test_runtime_unsupported_names_ground_truth() -> None:
    seldon = Wiring("iris", "ml", True, "seldon", active="x")
    r = sdm.compute(dm(), seldon, [], NOW, truth_report=report(0.9))
    deg = cond(r.status, "Degraded")
    assert (deg["status"], deg["reason"]) == ("True", "RuntimeUnsupported")
    assert "ground-truth monitor" in deg["message"] and "kind: kustos" in deg["message"]
    assert cond(r.status, "PerformanceDegraded")["status"] == "Unknown"


def test_drift_and_truth_together() -> None:
    drift = PodReport("iris-1", report={
        "ready": True, "error": None, "windowsEvaluated": 2, "lastCheck": "2026-12-06T11:59:00Z",
        "drift": False, "driftingFeatures": [], "featurePValues": {"a": 0.4}})
    r = sdm.compute(dm(reference=True), WIRED, [drift], NOW, truth_report=report(0.95))
    assert cond(r.status, "DriftDetected")["status"] == "False"
    assert cond(r.status, "PerformanceDegraded")["status"] == "False"
    ready = cond(r.status, "Ready")
    assert ready["status"] == "True" and "ground-truth" in ready["message"]
    # The monitor down: Ready goes False, drift still judged.
    down = sdm.compute(dm(r.status, reference=True), WIRED, [drift], NOW, truth_report=None)
    assert cond(down.status, "Ready")["status"] == "False"
    assert cond(down.status, "DriftDetected")["status"] == "False"


def test_ground_truth_removed_clears_its_status() -> None:
    r = sdm.compute(dm(), WIRED, [], NOW, truth_report=report(0.6, violations=[low(0.6)]))
    body = dm(r.status, reference=True)
    del body["spec"]["groundTruth"]
    drift = PodReport("iris-1", report={"ready": True, "windowsEvaluated": 0})
    after = sdm.compute(body, WIRED, [drift], NOW)
    assert after.status["groundTruth"] is None
    assert get_condition({"status": after.status}, "PerformanceDegraded") is None


def test_neither_reference_nor_ground_truth_is_not_ready() -> None:
    body = dm()
    del body["spec"]["groundTruth"]
    r = sdm.compute(body, WIRED, [], NOW)
    assert cond(r.status, "Ready")["reason"] == "NothingToMonitor"


def test_status_holds_at_most_32_versions_and_64_violations() -> None:
    """docs/ground-truth.md, Limits: at most 32 versions and 64 violations in the status."""
    from kustos.status import truth as st

    rep = {"versions": {f"v{i:03d}": {"count": 1} for i in range(40)},
           "violations": [{**low(0.5), "version": f"v{i:03d}"} for i in range(70)]}
    gt = st.summary(rep)
    assert len(gt["versions"]) == st.MAX_VERSIONS == 32
    assert len(gt["violations"]) == st.MAX_VIOLATIONS == 64
