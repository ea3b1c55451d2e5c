"""The pure rollout core: metric windows, gates and the state machine, with figures
worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from kustos.api.v1alpha1.rollout import AnalysisSpec, RolloutSpec
from kustos.rollout import gates, machine, window
from kustos.rollout.window import Sample

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def exposition(ok: int, errors: int, latencies: list[float], classes: dict[str, int],
               agree: int = 0, disagree: int = 0, model: str = "iris") -> str:
    """A model server's /metrics text, made by prometheus_client as the server makes it."""
    reg = CollectorRegistry()
    req = Counter("kustos_requests", "r", ["endpoint", "model", "code"], registry=reg)
    dur = Histogram("kustos_request_duration_seconds", "d", ["endpoint", "model"],
                    buckets=(0.01, 0.1, 1.0), registry=reg)
    pred = Counter("kustos_predictions", "p", ["model", "class"], registry=reg)
    rows = Counter("kustos_shadow_rows", "s", ["model", "agreement"], registry=reg)
    req.labels("v2_infer", model, "200").inc(ok)
    req.labels("v2_infer", model, "500").inc(errors)
    req.labels("health", model, "200").inc(1000)  # probes are no predictions
    req.labels("v2_infer", "other-model", "500").inc(7)
    for s in latencies:
        dur.labels("v2_infer", model).observe(s)
    dur.labels("health", model).observe(5.0)
    for cls, n in classes.items():
        pred.labels(model, cls).inc(n)
    rows.labels(model, "agree").inc(agree)
    rows.labels(model, "disagree").inc(disagree)
    return generate_latest(reg).decode()


def test_parse_reads_prediction_endpoints_of_the_model_only() -> None:
    text = exposition(90, 10, [0.005] * 50 + [0.5] * 50, {"0": 60, "1": 40}, 8, 2)
    s = window.parse(text, "iris")
    assert s.requests == {"200": 90.0, "500": 10.0}
    assert s.total == 100 and s.errors == 10
    assert s.buckets == {0.01: 50.0, 0.1: 50.0, 1.0: 100.0, math.inf: 100.0}
    assert s.classes == {"0": 60.0, "1": 40.0}
    assert s.shadow_rows == {"agree": 8.0, "disagree": 2.0}


def test_window_subtracts_and_survives_a_restart() -> None:
    before = {"a": Sample({"200": 100.0}), "b": Sample({"200": 50.0, "500": 5.0})}
    after = {"a": Sample({"200": 150.0}),  # +50
             "b": Sample({"200": 20.0}),  # restarted: its window is the 20 after
             "c": Sample({"200": 7.0, "500": 3.0})}  # new pod: all of it
    w = window.track_window(before, after)
    assert w.requests == {"200": 77.0, "500": 3.0}


def test_quantile_interpolates_inside_the_bucket() -> None:
    b = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    # rank 99 falls in (0.5, 1.0] holding 90..100: 0.5 + 0.5 * (99 - 90) / 10 = 0.95
    assert window.quantile(0.99, b) == pytest.approx(0.95)
    # rank 50 is the first bucket's upper edge
    assert window.quantile(0.5, b) == pytest.approx(0.1)
    # everything above the last finite bound: that bound
    assert window.quantile(0.99, {1.0: 0.0, math.inf: 10.0}) == 1.0
    assert window.quantile(0.99, {}) is None


def test_psi_and_js_by_hand() -> None:
    # smoothed by 0.5: p = (50.5/101, 50.5/101) = (.5, .5); q = (80.5/101, 20.5/101)
    # PSI = (q0 - .5) ln(q0 / .5) + (q1 - .5) ln(q1 / .5) = 0.29703 * 1.36783 = 0.40628
    assert gates.psi({"a": 50, "b": 50}, {"a": 80, "b": 20}) == pytest.approx(0.40628, abs=1e-4)
    assert gates.psi({"a": 50, "b": 50}, {"a": 500, "b": 500}) == pytest.approx(0.0)
    # p = (.5, .5), q = (1, 0), m = (.75, .25): KL(p||m) = .5 log2(2/3) + .5 = 0.20752,
    # KL(q||m) = log2(4/3) = 0.41504; JS = (0.20752 + 0.41504) / 2 = 0.31128
    assert gates.js({"a": 5, "b": 5}, {"a": 10}) == pytest.approx(0.31128, abs=1e-4)
    assert gates.js({"a": 1}, {"b": 1}) == pytest.approx(1.0)


def analysis(**thresholds: object) -> AnalysisSpec:
    return AnalysisSpec.model_validate({"minSamples": 100, "thresholds": thresholds})


def test_error_rate_gate_fails_passes_and_waits_for_samples() -> None:
    stable = Sample({"200": 995.0, "500": 5.0})  # 0.5 %
    bad = Sample({"200": 180.0, "500": 20.0})  # 10 %: +9.5 points
    good = Sample({"200": 199.0, "500": 1.0})  # 0.5 %
    spec = analysis(maxErrorRateIncrease=0.01)
    [g] = gates.evaluate(spec, stable, bad, "Canary")
    assert (g.name, g.verdict, g.samples) == ("errorRate", "fail", 200)
    assert g.value == pytest.approx(0.095) and g.stable == pytest.approx(0.005)
    assert "errorRate 0.095 beyond threshold 0.01" in gates.failures([g])
    assert gates.evaluate(spec, stable, good, "Canary")[0].verdict == "pass"
    few = Sample({"200": 40.0, "500": 20.0})
    [g] = gates.evaluate(spec, stable, few, "Canary")
    assert g.verdict == "inconclusive" and g.reason == "60 samples, 100 needed"


def test_latency_divergence_and_agreement_gates() -> None:
    fast = {0.01: 990.0, 0.1: 1000.0, math.inf: 1000.0}  # p99 = 0.01
    # rank 198 of 200: (0.01, 0.1] holds 100..200: 0.01 + 0.09 * 98/100 = 0.0982
    slow = {0.01: 100.0, 0.1: 200.0, math.inf: 200.0}
    stable = Sample({"200": 1000.0}, fast, {"0": 500.0, "1": 500.0}, {"agree": 70.0,
                                                                    "disagree": 30.0})
    cand = Sample({"200": 200.0}, slow, {"0": 160.0, "1": 40.0})
    spec = analysis(maxLatencyP99Ratio=2.0, maxPredictionDivergence=0.2,
                    divergenceMethod="js", minAgreement=0.9)
    by = {g.name: g for g in gates.evaluate(spec, stable, cand, "Shadow")}
    assert by["latencyP99"].value == pytest.approx(9.82) and by["latencyP99"].verdict == "fail"
    # p = (.5, .5), q = (.8, .2), m = (.65, .35):
    # JS = .5(.5 log2(.5/.65) + .5 log2(.5/.35)) + .5(.8 log2(.8/.65) + .2 log2(.2/.35))
    #    = .5 * 0.06803 + .5 * 0.07820 = 0.07312
    assert by["predictionDivergence"].value == pytest.approx(0.0731, abs=1e-3)
    assert by["predictionDivergence"].verdict == "pass"
    assert by["agreement"].value == pytest.approx(0.7) and by["agreement"].verdict == "fail"
    assert gates.overall(list(by.values())) == "fail"
    # agreement is a shadow gate: no mirrored rows in a canary step
    assert "agreement" not in {g.name for g in gates.evaluate(spec, stable, cand, "Canary")}


def test_ground_truth_and_drift_gates() -> None:
    ext = gates.External(drift_score=0.3, drifted=True, drift_samples=500, truth={
        "1": {"accuracy": 0.90, "count": 400, "fairnessGap": 0.05},
        "2": {"accuracy": 0.81, "count": 300, "fairnessGap": 0.12}})
    spec = analysis(maxAccuracyDrop=0.05, maxFairnessGapIncrease=0.1, maxDriftScore=0.5)
    by = {g.name: g for g in gates.evaluate(spec, Sample(), Sample(), "Canary", ("1", "2"),
                                            ext)}
    assert by["accuracy"].value == pytest.approx(0.09) and by["accuracy"].verdict == "fail"
    assert by["fairness"].value == pytest.approx(0.07) and by["fairness"].verdict == "pass"
    assert by["drift"].verdict == "pass"
    [g] = gates.evaluate(analysis(requireNoDrift=True), Sample(), Sample(), "Canary",
                         external=ext)
    assert g.verdict == "fail"
    [g] = gates.evaluate(analysis(minAccuracyRatio=0.95), Sample(), Sample(), "Canary",
                         ("1", "3"), ext)
    assert g.verdict == "inconclusive"


def rollout(**extra: object) -> RolloutSpec:
    return RolloutSpec.model_validate({
        "shadow": {"duration": "5m", "samplePercent": 50},
        "steps": [{"weight": 10, "duration": "2m"}, {"weight": 50, "duration": "2m"},
                  {"weight": 100, "duration": "1m"}], **extra})


V1 = {"uri": "s3://m/v1.skops", "version": "1"}
V2 = {"uri": "s3://m/v2.skops", "version": "2"}


def test_a_good_candidate_goes_through_every_step() -> None:
    spec = rollout()
    first = machine.decide(spec, V1, None, None, T0)
    assert first.status["phase"] == "Idle" and first.status["stable"] == V1
    st = machine.decide(spec, V2, first.status, None, T0)
    assert st.status["phase"] == "Shadow" and st.status["candidate"] == V2
    assert st.notice is not None and st.notice.reason == "RolloutStarted" and st.restarted
    # the shadow lasts 5m: a pass before then changes nothing
    same = machine.decide(spec, V2, st.status, "pass", T0 + timedelta(minutes=4))
    assert same.status == st.status and not same.restarted
    now = T0 + timedelta(minutes=5)
    st = machine.decide(spec, V2, st.status, "pass", now)
    assert (st.status["phase"], st.status["step"], st.status["weight"]) == ("Canary", 1, 10)
    assert st.notice is not None and st.notice.message == "step 1/3 weight 10%"
    for weight, minutes in ((50, 2), (100, 2)):
        now += timedelta(minutes=minutes)
        st = machine.decide(spec, V2, st.status, "pass", now)
        assert st.status["weight"] == weight
    now += timedelta(minutes=1)
    st = machine.decide(spec, V2, st.status, "pass", now)
    assert st.status["phase"] == "Promoted" and st.status["stable"] == V2
    # promoted stays promoted
    assert machine.decide(spec, V2, st.status, "fail", now).status["phase"] == "Promoted"


def test_a_failed_gate_rolls_back_and_stays_until_the_spec_changes() -> None:
    spec = rollout(shadow=None)
    st = machine.decide(spec, V2, {"phase": "Idle", "stable": V1}, None, T0)
    assert (st.status["phase"], st.status["weight"]) == ("Canary", 10)
    back = machine.decide(spec, V2, st.status, "fail", T0 + timedelta(seconds=30),
                          failed="errorRate 0.1 beyond threshold 0.01")
    assert back.status["phase"] == "RolledBack" and back.status["weight"] == 0
    assert back.notice is not None and back.notice.warning
    assert back.notice.message == ("rolled back at step 1/3 weight 10%: "
                                   "errorRate 0.1 beyond threshold 0.01")
    later = machine.decide(spec, V2, back.status, "pass", T0 + timedelta(hours=1))
    assert later.status["phase"] == "RolledBack"
    v3 = {"uri": "s3://m/v3.skops", "version": "3"}
    again = machine.decide(spec, v3, back.status, None, T0 + timedelta(hours=1))
    assert again.status["phase"] == "Canary" and again.status["candidate"] == v3
    assert again.status["stable"] == V1
    reverted = machine.decide(spec, V1, back.status, None, T0 + timedelta(hours=1))
    assert reverted.status["phase"] == "Idle" and "candidate" not in reverted.status


def test_manual_actions() -> None:
    spec = rollout(shadow=None)
    st = machine.decide(spec, V2, {"phase": "Idle", "stable": V1}, None, T0).status
    paused = machine.decide(spec, V2, st, "pass", T0 + timedelta(minutes=1), "pause")
    assert paused.status["phase"] == "Paused" and paused.status["pausedFrom"] == "Canary"
    # paused: time and verdicts do not move it
    assert machine.decide(spec, V2, paused.status, "pass",
                          T0 + timedelta(hours=2)).status["phase"] == "Paused"
    resumed = machine.decide(spec, V2, paused.status, None, T0 + timedelta(hours=2), "resume")
    assert resumed.status["phase"] == "Canary" and resumed.restarted
    assert resumed.status["stepStartedAt"] == "2026-01-01T14:00:00Z"
    promoted = machine.decide(spec, V2, resumed.status, None, T0, "promote")
    assert promoted.status["phase"] == "Promoted" and promoted.status["stable"] == V2
    aborted = machine.decide(spec, V2, st, None, T0, "abort")
    assert aborted.status["phase"] == "RolledBack" and aborted.status["lastAction"] == "abort"


def test_inconclusive_policies() -> None:
    st = {"phase": "Canary", "step": 1, "weight": 10, "stable": V1, "candidate": V2,
          "stepStartedAt": "2026-01-01T12:00:00Z"}
    wait = rollout(analysis={"onInconclusive": "wait", "maxInconclusive": "3m"})
    out = machine.decide(wait, V2, st, "inconclusive", T0 + timedelta(minutes=4))
    assert out.status["phase"] == "Canary" and "inconclusive" in out.status["message"]
    # 2m step + 3m allowed = 5m
    out = machine.decide(wait, V2, st, "inconclusive", T0 + timedelta(minutes=5))
    assert out.status["phase"] == "RolledBack"
    go = rollout(analysis={"onInconclusive": "promote"})
    out = machine.decide(go, V2, st, "inconclusive", T0 + timedelta(minutes=2))
    assert (out.status["phase"], out.status["step"]) == ("Canary", 2)
    stop = rollout(analysis={"onInconclusive": "rollback"})
    out = machine.decide(stop, V2, st, "inconclusive", T0 + timedelta(minutes=2))
    assert out.status["phase"] == "RolledBack"


def test_durations() -> None:
    assert machine.seconds("1m30s") == 90 and machine.seconds("500ms") == 0.5
    assert machine.seconds("2h") == 7200
