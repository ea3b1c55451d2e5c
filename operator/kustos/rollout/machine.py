"""The rollout state machine (pure): from status.rollout, spec.rollout, the model spec
asks for, the last analysis verdict, the time and a manual action, the next
status.rollout and the Event to post."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kustos.api.v1alpha1.common import duration_seconds
from kustos.api.v1alpha1.rollout import RolloutSpec
from kustos.status.conditions import Notice

from .gates import Verdict

ACTIVE = ("Shadow", "Canary", "Paused")
ACTION_ANNOTATION = "kustos.dev/rollout-action"
ACTIONS = ("pause", "resume", "promote", "abort")
# Characters of a bad annotation value repeated in the Event: enough to recognise a typo,
# not a place to copy arbitrary text (an annotation may hold up to 256 KiB).
SHOWN = 64
seconds = duration_seconds  # what the rollout's durations are read with


def model_ref(model: Any) -> dict[str, str]:
    """The identity of a model (spec.model, as pydantic or wire dict)."""
    keys = ("uri", "digest", "version", "format")
    if isinstance(model, Mapping):
        out = {k: model.get(k) for k in keys}
    else:
        out = {k: getattr(model, k, None) for k in keys}
    return {k: str(v) for k, v in out.items() if v}


def same(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Same model: uri, digest and version (format follows the file)."""
    if not a or not b:
        return False
    return all(a.get(k) == b.get(k) for k in ("uri", "digest", "version"))


def manual_action(annotations: Mapping[str, str] | None) -> tuple[str | None, Notice | None]:
    """The action the annotation kustos.dev/rollout-action asks for (None: no annotation,
    or a value that is none of ACTIONS), and for such a value the Warning Event to post.
    The controller removes the annotation either way."""
    if not annotations or ACTION_ANNOTATION not in annotations:
        return None, None
    value = str(annotations[ACTION_ANNOTATION])
    if value in ACTIONS:
        return value, None
    return None, Notice("InvalidRolloutAction",
                        f"{ACTION_ANNOTATION}: {_shown(value)!r} is none of "
                        f"{', '.join(ACTIONS)}; removed", warning=True)


def _shown(value: str) -> str:
    """An annotation's value as an Event repeats it: its first SHOWN characters."""
    return value if len(value) <= SHOWN else value[:SHOWN] + "..."


def ignored_action(annotations: Mapping[str, str] | None) -> Notice | None:
    """The Warning Event for an action annotation on a ModelDeployment without
    spec.rollout (None: no annotation). It is removed unapplied: kept, it would act on the
    first candidate of a rollout added later (a stale `promote` skipping every gate)."""
    if not annotations or ACTION_ANNOTATION not in annotations:
        return None
    return Notice("RolloutActionIgnored",
                  f"{ACTION_ANNOTATION}: {_shown(str(annotations[ACTION_ANNOTATION]))!r} "
                  "ignored: spec.rollout is not set; removed", warning=True)


@dataclass(frozen=True)
class Step:
    """The next status.rollout (wire form, without lastAnalysis) and what to tell."""

    status: dict[str, Any]
    notice: Notice | None = None
    # the phase or step changed: the next analysis window starts now
    restarted: bool = False


def _ts(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _name(ref: Mapping[str, Any] | None) -> str:
    return str((ref or {}).get("version") or (ref or {}).get("uri") or "?")


def decide(spec: RolloutSpec, model: Mapping[str, Any], status: Mapping[str, Any] | None,
           verdict: Verdict | None, now: datetime, action: str | None = None,
           failed: str = "") -> Step:
    """The next status.rollout. ``model``: spec.model's identity (model_ref);
    ``verdict``: the overall verdict of an analysis of the current window (None: none
    ran); ``failed``: the failed gates in words (gates.failures)."""
    st: dict[str, Any] = {k: v for k, v in (status or {}).items() if k != "lastAnalysis"}
    steps = len(spec.steps)
    stable = st.get("stable")
    phase = st.get("phase", "Idle")
    candidate = st.get("candidate")

    def to(new_phase: str, notice: Notice | None = None, **fields: Any) -> Step:
        out = {**st, "phase": new_phase, "steps": steps, **fields}
        restarted = (new_phase, out.get("step")) != (phase, st.get("step")) or \
            "candidate" in fields
        if restarted:
            out["stepStartedAt"] = _ts(now)
        return Step({k: v for k, v in out.items() if v is not None}, notice, restarted)

    if not stable:
        # The first model: nothing to roll out against; it is the stable one.
        return to("Idle", stable=dict(model), candidate=None, step=None, weight=0,
                  message=f"serving {_name(model)}")
    if same(model, stable):
        if phase in ("Idle", "Promoted"):
            return Step({k: v for k, v in st.items() if v is not None})
        # spec.model went back to the stable model: nothing to roll out any more.
        return to("Idle", Notice("RolloutCancelled",
                                 f"spec.model is the stable {_name(stable)} again"),
                  candidate=None, step=None, weight=0, pausedFrom=None,
                  message=f"serving {_name(stable)}")
    if not same(model, candidate):
        # A new candidate (or another one mid-rollout): start over against the stable.
        first = ("Shadow", None, 0) if spec.shadow else ("Canary", 1, spec.steps[0].weight)
        msg = (f"rolling out {_name(model)} over {_name(stable)}: "
               + ("shadow" if first[0] == "Shadow" else f"step 1/{steps} weight {first[2]}%"))
        return to(first[0], Notice("RolloutStarted", msg), candidate=dict(model),
                  step=first[1], weight=first[2], pausedFrom=None, message=msg)

    # The candidate is known; the rollout goes on.
    if phase in ("RolledBack", "Promoted") and action != "promote":
        return Step({k: v for k, v in st.items() if v is not None})
    if action == "abort" and phase != "RolledBack":
        msg = f"aborted by kustos.dev/rollout-action: {_name(stable)} serves all traffic"
        return to("RolledBack", Notice("RolloutAborted", msg, warning=True), step=None,
                  weight=0, pausedFrom=None, message=msg, lastAction="abort")
    if action == "promote":
        return _promote(to, model, "promoted by kustos.dev/rollout-action",
                        lastAction="promote")
    if action == "pause" and phase in ("Shadow", "Canary"):
        msg = f"paused in {_where(st, steps)}"
        return to("Paused", Notice("RolloutPaused", msg), pausedFrom=phase, message=msg,
                  lastAction="pause")
    if action == "resume" and phase == "Paused":
        back = st.get("pausedFrom") or "Canary"
        msg = f"resumed in {_where({**st, 'phase': back}, steps)}"
        out = to(back, Notice("RolloutResumed", msg), pausedFrom=None, message=msg,
                 lastAction="resume")
        # the step's window starts again: time paused does not count
        out.status["stepStartedAt"] = _ts(now)
        return Step(out.status, out.notice, True)
    if action is not None:
        st["lastAction"] = action  # consumed, nothing to do in this phase
    if phase == "Paused" or phase not in ACTIVE:
        return Step({k: v for k, v in st.items() if v is not None})

    if verdict == "fail":
        msg = f"rolled back at {_where(st, steps)}: {failed or 'a gate failed'}"
        return to("RolledBack", Notice("RolledBack", msg, warning=True), step=None,
                  weight=0, message=msg)
    started = _parse_ts(st.get("stepStartedAt")) or now
    elapsed = (now - started).total_seconds()
    duration = seconds(spec.shadow.duration if phase == "Shadow" and spec.shadow
                       else spec.steps[(st.get("step") or 1) - 1].duration)
    if elapsed < duration or verdict is None:
        return Step({k: v for k, v in st.items() if v is not None})
    if verdict == "inconclusive":
        policy = spec.analysis.on_inconclusive
        limit = spec.analysis.max_inconclusive
        if policy == "rollback" or (policy == "wait" and limit is not None
                                    and elapsed >= duration + seconds(limit)):
            msg = f"rolled back at {_where(st, steps)}: analysis inconclusive"
            return to("RolledBack", Notice("RolledBack", msg, warning=True), step=None,
                      weight=0, message=msg)
        if policy == "wait":
            st["message"] = f"{_where(st, steps)}: analysis inconclusive, waiting"
            return Step({k: v for k, v in st.items() if v is not None})
    # passed (or inconclusive with onInconclusive promote): the next step
    nxt = 1 if phase == "Shadow" else (st.get("step") or 1) + 1
    if nxt > steps:
        return _promote(to, model, f"every gate passed over {steps} step(s)")
    weight = spec.steps[nxt - 1].weight
    msg = f"step {nxt}/{steps} weight {weight}%"
    return to("Canary", Notice("RolloutStep", msg), step=nxt, weight=weight, message=msg)


def _promote(to: Any, model: Mapping[str, Any], why: str, **extra: Any) -> Step:
    msg = f"{_name(model)} promoted: {why}"
    out: Step = to("Promoted", Notice("RolloutPromoted", msg), stable=dict(model),
                   step=None, weight=100, pausedFrom=None, message=msg, **extra)
    return out


def _where(st: Mapping[str, Any], steps: int) -> str:
    if st.get("phase") == "Shadow":
        return "shadow"
    return f"step {st.get('step') or 1}/{steps} weight {st.get('weight', 0)}%"


def elapsed_in_step(status: Mapping[str, Any] | None, now: datetime) -> timedelta:
    started = _parse_ts((status or {}).get("stepStartedAt"))
    return now - started if started else timedelta(0)
