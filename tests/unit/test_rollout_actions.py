"""Two claims of docs/rollouts.md: a kustos.dev/rollout-action value that is none of the
actions gets a Warning Event InvalidRolloutAction (and is not applied); spec.model going
back to the stable model in the middle of a rollout ends it with RolloutCancelled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kustos import rollout_cli
from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.rollout import RolloutSpec
from kustos.controllers import rollout as controller
from kustos.rollout import machine
from kustos.rollout.tracks import effective_spec, in_flight, shadowing

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
V1 = {"uri": "s3://m/v1.skops", "version": "1"}
V2 = {"uri": "s3://m/v2.skops", "version": "2"}
ROLLOUT = {"shadow": {"duration": "5m", "samplePercent": 50},
           "steps": [{"weight": 10, "duration": "2m"}, {"weight": 100, "duration": "2m"}]}


def annotated(value: str) -> dict[str, str]:
    return {"kustos.dev/rollout-action": value, "other": "x"}


@pytest.mark.parametrize("value", list(machine.ACTIONS))
def test_a_known_action_is_applied_without_a_warning(value: str) -> None:
    assert machine.manual_action(annotated(value)) == (value, None)


def test_no_annotation_is_no_action() -> None:
    assert machine.manual_action(None) == (None, None)
    assert machine.manual_action({"other": "abort"}) == (None, None)


@pytest.mark.parametrize("value", ["rollback", "Abort", " abort", "", "promote,abort"])
def test_an_unknown_value_is_refused_with_a_warning(value: str) -> None:
    action, notice = machine.manual_action(annotated(value))
    assert action is None  # nothing is applied
    assert notice is not None and notice.warning
    assert notice.reason == "InvalidRolloutAction"
    assert notice.message == (f"kustos.dev/rollout-action: {value!r} is none of "
                              "pause, resume, promote, abort; removed")


def test_the_warning_repeats_a_long_value_only_in_part() -> None:
    _, notice = machine.manual_action(annotated("x" * 5000))
    assert notice is not None
    assert f"'{'x' * 64}...'" in notice.message and len(notice.message) < 200


@pytest.mark.parametrize("value", ["promote", "abort", "nonsense"])
def test_any_action_without_a_rollout_is_refused_with_a_warning(value: str) -> None:
    notice = machine.ignored_action(annotated(value))
    assert notice is not None and notice.warning
    assert notice.reason == "RolloutActionIgnored"
    assert notice.message == (f"kustos.dev/rollout-action: {value!r} ignored: "
                              "spec.rollout is not set; removed")
    assert machine.ignored_action({"other": "promote"}) is None
    assert machine.ignored_action(None) is None


def test_the_controller_looks_at_a_model_with_only_an_action_annotation() -> None:
    meta = {"name": "m", "namespace": "ns", "uid": "u"}
    plain = {"metadata": meta, "spec": {"model": V1}}
    assert not controller._wanted(plain)
    assert controller._wanted({**plain, "metadata": {**meta, "annotations": annotated("")}})


def test_the_controller_and_the_cli_name_the_same_annotation_and_actions() -> None:
    # the CLI sets what the controller reads: a renamed action would be refused
    assert controller.ACTION == rollout_cli.ACTION == machine.ACTION_ANNOTATION
    assert sorted(rollout_cli.ACTIONS) == sorted(machine.ACTIONS)


def spec_with(model: dict[str, str]) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": model, "rollout": ROLLOUT})


def started(phase: str) -> dict[str, Any]:
    """status.rollout of a rollout of V2 over V1, in ``phase``."""
    spec = RolloutSpec.model_validate(ROLLOUT)
    st = machine.decide(spec, V2, {"phase": "Idle", "stable": V1}, None, T0).status
    assert st["phase"] == "Shadow"
    if phase == "Canary":
        st = machine.decide(spec, V2, st, "pass", T0 + timedelta(minutes=5)).status
    elif phase == "Paused":
        st = machine.decide(spec, V2, st, None, T0, "pause").status
    elif phase == "RolledBack":
        st = machine.decide(spec, V2, st, "fail", T0, failed="errorRate").status
    assert st["phase"] == phase
    return st


@pytest.mark.parametrize("phase", ["Shadow", "Canary", "Paused", "RolledBack"])
def test_spec_model_back_to_the_stable_one_cancels_the_rollout(phase: str) -> None:
    spec = RolloutSpec.model_validate(ROLLOUT)
    st = started(phase)
    now = T0 + timedelta(minutes=6)
    out = machine.decide(spec, V1, st, None, now)
    assert out.notice is not None
    assert (out.notice.reason, out.notice.warning) == ("RolloutCancelled", False)
    assert out.notice.message == "spec.model is the stable 1 again"
    assert out.status["phase"] == "Idle" and out.status["stable"] == V1
    assert out.status["weight"] == 0 and out.status["message"] == "serving 1"
    for gone in ("candidate", "step", "pausedFrom"):
        assert gone not in out.status
    assert out.restarted and out.status["stepStartedAt"] == "2026-01-01T12:06:00Z"
    # what is rendered from it: the stable model alone, no candidate track
    md = spec_with(V1)
    assert not in_flight(md, out.status) and not shadowing(md, out.status)
    assert effective_spec(md, out.status) is md and md.canary is None
    # the next look finds nothing to do and says nothing more
    again = machine.decide(spec, V1, out.status, "pass", now + timedelta(seconds=5))
    assert again.notice is None and again.status == out.status


def test_no_cancel_without_a_rollout_in_flight() -> None:
    spec = RolloutSpec.model_validate(ROLLOUT)
    idle = machine.decide(spec, V1, None, None, T0)
    assert idle.notice is None and idle.status["phase"] == "Idle"  # the first model
    promoted = {**started("Canary"), "phase": "Promoted", "stable": V2}
    out = machine.decide(spec, V2, promoted, None, T0)
    assert out.notice is None and out.status["phase"] == "Promoted"
