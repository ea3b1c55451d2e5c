"""ExplainerSpec and DriftMonitor status from sidecar reports: the pure part."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kustos.config import OperatorConfig
from kustos.status import driftmonitor as sdm
from kustos.status import explainerspec as ses
from kustos.status.conditions import get_condition
from kustos.status.driftmonitor import RetrainJob
from kustos.status.sidecars import PodReport, Wiring, changed

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WIRED = Wiring("iris", "ml", exists=True, runtime="kustos", active="x")
TARGET = {"metadata": {"name": "iris", "namespace": "ml"},
          "spec": {"model": {"version": "1", "uri": "s3://b/model.skops", "name": "clf"}}}


def es(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "ExplainerSpec", "metadata": {"name": "x", "namespace": "ml", "uid": "u",
                                                  "generation": 2},
            "spec": {"targetRef": {"name": "iris"}, "background": {"uri": "file:///bg.csv"}},
            "status": status or {}}


def dm(status: dict[str, Any] | None = None, **on_drift: Any) -> dict[str, Any]:
    return {"kind": "DriftMonitor", "metadata": {"name": "x", "namespace": "ml", "uid": "u",
                                                 "generation": 1},
            "spec": {"targetRef": {"name": "iris"}, "reference": {"uri": "file:///r.csv"},
                     "pValue": 0.05, "onDrift": on_drift},
            "status": status or {}}


def cond(status: dict[str, Any], t: str) -> dict[str, Any]:
    c = get_condition({"status": status}, t)
    assert c is not None
    return c


def explain_report(computed: str | None, top: list[tuple[str, float]], **kw: Any) -> dict[str, Any]:
    return {"ready": True, "method": "shap-tree", "model": "clf", "error": None,
            "globalImportance": [{"feature": f, "value": v} for f, v in top],
            "lastComputed": computed,
            "report": {"meanAbsAttribution": dict(top)} if computed else None, **kw}


def drift_report(drift: bool, p: dict[str, float], windows: int = 1,
                 features: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {"ready": True, "detector": "ks", "error": None, "windowsEvaluated": windows,
            "lastCheck": "2026-11-23T11:59:00Z", "drift": drift,
            "driftingFeatures": features or [], "featurePValues": p, **kw}


# --- ExplainerSpec --------------------------------------------------------------------------


def test_target_not_found_is_not_ready_and_not_degraded() -> None:
    r = ses.compute(es(), Wiring("iris", "ml", exists=False), None, [], OperatorConfig(), NOW)
    ready = cond(r.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetNotFound")
    assert "iris" in ready["message"] and ready["observedGeneration"] == 2
    assert cond(r.status, "Degraded")["status"] == "False"
    assert r.notices == []


def test_conflict_and_runtime_unsupported_are_degraded_once() -> None:
    r = ses.compute(es(), Wiring("iris", "ml", True, "kustos", active="older"), TARGET, [],
                    OperatorConfig(), NOW)
    deg = cond(r.status, "Degraded")
    assert (deg["status"], deg["reason"]) == ("True", "Conflict")
    assert "older" in deg["message"]
    assert [n.reason for n in r.notices] == ["Conflict"] and r.notices[0].warning
    # Same problem again: no second Event.
    again = ses.compute(es(r.status), Wiring("iris", "ml", True, "kustos", active="older"),
                        TARGET, [], OperatorConfig(), NOW)
    assert again.notices == [] and not changed(r.status, again.status)
    seldon = ses.compute(es(r.status), Wiring("iris", "ml", True, "seldon", active="x"), TARGET,
                         [], OperatorConfig(), NOW)
    deg = cond(seldon.status, "Degraded")
    assert deg["reason"] == "RuntimeUnsupported" and "runtime.kind: kustos" in deg["message"]
    assert [n.reason for n in seldon.notices] == ["RuntimeUnsupported"]


def test_latest_report_wins_and_endpoint() -> None:
    reports = [PodReport("p1", explain_report("2026-11-23T11:00:00Z", [("a", 0.5)])),
               PodReport("p2", explain_report("2026-11-23T11:30:00Z", [("b", 0.7), ("a", 0.2)])),
               PodReport("p3", error="timed out")]
    r = ses.compute(es(), WIRED, TARGET, reports, OperatorConfig(), NOW)
    assert r.status["endpoint"] == "http://iris.ml.svc.cluster.local/v1/models/clf:explain"
    assert r.status["globalImportance"] == [{"feature": "b", "value": 0.7},
                                            {"feature": "a", "value": 0.2}]
    assert r.status["lastComputed"] == "2026-11-23T11:30:00Z"
    assert r.report == {"meanAbsAttribution": {"b": 0.7, "a": 0.2}}
    assert r.status["reportConfigMap"] == "x-explanations"
    ready = cond(r.status, "Ready")
    assert ready["status"] == "True" and "2/3" in ready["message"]
    assert "p3 (timed out)" in ready["message"]


def test_sidecar_error_is_degraded_with_its_reason_then_recovers() -> None:
    bad = {**explain_report(None, []), "ready": False,
           "error": {"reason": "DigestMismatch", "message": "background digest differs"}}
    r = ses.compute(es(), WIRED, TARGET, [PodReport("p1", bad)], OperatorConfig(), NOW)
    deg = cond(r.status, "Degraded")
    assert (deg["status"], deg["reason"]) == ("True", "DigestMismatch")
    assert "background digest differs" in deg["message"] and "p1" in deg["message"]
    assert cond(r.status, "Ready")["reason"] == "SidecarNotReady"
    assert [(n.reason, n.warning) for n in r.notices] == [("DigestMismatch", True)]
    assert "globalImportance" not in r.status and r.report is None
    ok = ses.compute(es(r.status), WIRED, TARGET,
                     [PodReport("p1", explain_report(None, []))], OperatorConfig(), NOW)
    assert cond(ok.status, "Degraded")["status"] == "False"
    assert [(n.reason, n.warning) for n in ok.notices] == [("Recovered", False)]


def test_unreachable_pods_are_noted_not_raised() -> None:
    r = ses.compute(es(), WIRED, TARGET, [PodReport("p1", error="connection refused")],
                    OperatorConfig(), NOW)
    ready = cond(r.status, "Ready")
    assert ready["reason"] == "SidecarUnreachable" and "connection refused" in ready["message"]
    none = ses.compute(es(), WIRED, TARGET, [], OperatorConfig(), NOW)
    assert cond(none.status, "Ready")["reason"] == "NoPods"


# --- DriftMonitor ---------------------------------------------------------------------------


def test_aggregate_over_pods() -> None:
    agg = sdm.aggregate([
        PodReport("p1", drift_report(False, {"a": 0.4, "b": 0.2}, windows=3)),
        PodReport("p2", drift_report(True, {"a": 0.001, "b": 0.3}, windows=2, features=["a"])),
        PodReport("p3", error="timed out"),
        PodReport("p4", {**drift_report(False, {}, windows=0), "lastCheck": None}),
    ])
    assert agg.drift is True and agg.features == ["a"] and agg.windows == 5
    assert agg.p_values == {"a": 0.001, "b": 0.2} and agg.answered == 3


def test_drift_episode_events_job_and_cooldown() -> None:
    retrain = {"cooldown": "1h", "template": {"spec": {"template": {"spec": {}}}}}
    body = dm(event=True, retrainJob=retrain)
    quiet = sdm.compute(body, WIRED, [PodReport("p", drift_report(False, {"a": 0.4}))], NOW)
    assert cond(quiet.status, "DriftDetected")["status"] == "False" and quiet.notices == []
    body["status"] = quiet.status
    t1 = NOW + timedelta(minutes=1)
    start = sdm.compute(body, WIRED, [PodReport("p", drift_report(True, {"a": 0.001},
                                                                  features=["a"]))], t1)
    dd = cond(start.status, "DriftDetected")
    assert dd["status"] == "True" and "a" in dd["message"]
    assert [(n.reason, n.warning) for n in start.notices] == [("DriftDetected", True)]
    assert start.create_job and start.status["lastDrift"]["job"] == start.create_job
    assert start.status["lastDrift"]["features"] == ["a"]
    assert start.status["featurePValues"] == [{"feature": "a", "pValue": 0.001}]
    body["status"] = start.status
    # Still drifting: no new Event, no new Job, nothing to write.
    same = sdm.compute(body, WIRED, [PodReport("p", drift_report(True, {"a": 0.001},
                                                                 features=["a"]))], t1)
    assert same.notices == [] and same.create_job is None and not changed(body["status"],
                                                                          same.status)
    t2 = NOW + timedelta(minutes=2)
    end = sdm.compute(body, WIRED, [PodReport("p", drift_report(False, {"a": 0.5}, 2))], t2)
    assert cond(end.status, "DriftDetected")["status"] == "False"
    assert [(n.reason, n.warning) for n in end.notices] == [("DriftResolved", False)]
    body["status"] = end.status
    # A second episode within the cooldown of the first Job: no Job, said in the message.
    job = RetrainJob(str(start.create_job), t1)
    t3 = NOW + timedelta(minutes=3)
    second = sdm.compute(body, WIRED, [PodReport("p", drift_report(True, {"a": 0.01},
                                                                   features=["a"]))], t3, job)
    assert second.create_job is None and second.status["lastDrift"]["job"] is None
    assert "cooldown" in cond(second.status, "DriftDetected")["message"]
    # After the cooldown a new episode gets a new Job.
    t4 = t1 + timedelta(hours=1, minutes=1)
    late = sdm.compute(body, WIRED, [PodReport("p", drift_report(True, {"a": 0.01},
                                                                 features=["a"]))], t4, job)
    assert late.create_job and late.create_job != start.create_job


def test_job_created_but_status_lost_is_not_created_twice() -> None:
    retrain = {"cooldown": "1h", "template": {"spec": {}}}
    body = dm(retrainJob=retrain)
    body["status"] = sdm.compute(body, WIRED, [PodReport("p", drift_report(False, {}))],
                                 NOW).status
    t1 = NOW + timedelta(minutes=1)
    job = RetrainJob("x-retrain-abc", t1)  # created by the attempt whose status write failed
    r = sdm.compute(body, WIRED, [PodReport("p", drift_report(True, {}, features=["a"]))],
                    t1 + timedelta(seconds=5), job)
    assert r.create_job is None and r.status["lastDrift"]["job"] == "x-retrain-abc"


def test_no_events_when_event_false_and_no_windows_keeps_state() -> None:
    body = dm(event=False)
    r = sdm.compute(body, WIRED, [PodReport("p", drift_report(True, {"a": 0.0}, features=["a"]))],
                    NOW)
    assert cond(r.status, "DriftDetected")["status"] == "True" and r.notices == []
    body["status"] = r.status
    gone = sdm.compute(body, WIRED, [PodReport("p", error="connection refused")], NOW)
    assert cond(gone.status, "DriftDetected")["status"] == "True"
    assert "windowsEvaluated" not in gone.status
    assert cond(gone.status, "Ready")["reason"] == "SidecarUnreachable"


def test_reference_error_is_degraded() -> None:
    bad = {**drift_report(False, {}, windows=0), "lastCheck": None, "ready": False,
           "error": {"reason": "ReferenceInvalid", "message": "reference has 3 columns, "
                                                              "featureNames has 4"}}
    r = sdm.compute(dm(), WIRED, [PodReport("p", bad)], NOW)
    deg = cond(r.status, "Degraded")
    assert (deg["status"], deg["reason"]) == ("True", "ReferenceInvalid")
    assert "3 columns" in deg["message"]
    assert cond(r.status, "DriftDetected")["status"] == "Unknown"
    missing = sdm.compute(dm(), Wiring("iris", "ml", exists=False), [], NOW)
    assert cond(missing.status, "Ready")["reason"] == "TargetNotFound"


# --- Polling the sidecars (real local HTTP servers) -----------------------------------------


def test_collect_notes_every_kind_of_failure_and_never_raises() -> None:
    import http.server
    import socket
    import threading

    from kustos.controllers.sidecars import collect

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, code = {
                "/ok": (b'{"ready": true, "drift": false}', 200),
                "/broken": (b"not json", 200),
                "/list": (b"[1, 2]", 200),
            }.get(self.path, (b'{"error": "boom"}', 500))
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        for path, check in (("/ok", lambda r: r.report == {"ready": True, "drift": False}),
                            ("/broken", lambda r: r.report is None and r.error),
                            ("/list", lambda r: r.error == "status is not a JSON object"),
                            ("/fail", lambda r: r.error == "HTTP 500")):
            [report] = collect([("pod-a", "127.0.0.1")], port, path)
            assert report.pod == "pod-a" and check(report), (path, report)
        [refused] = collect([("pod-b", "127.0.0.1")], closed, "/ok")
        assert refused.report is None and "refused" in str(refused.error).lower()
        assert collect([], port, "/ok") == []
    finally:
        server.shutdown()
        server.server_close()
