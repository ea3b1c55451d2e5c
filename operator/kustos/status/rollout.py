"""status.rollout's owner, and what a rollout adds to the reconcile's conditions (pure).

The rollout controller writes status.rollout only (its own field manager); the
reconcile's status (status/modeldeployment.py) reads it to say Progressing with the step
while the candidate is analysed and Degraded (RolledBack) after an automatic rollback,
which is what Argo CD's health check reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.registry.resolution import served_spec
from kustos.rollout.machine import model_ref, same
from kustos.rollout.tracks import effective_spec, rollout_status

from .owners import StatusOwner

ANALYSIS = StatusOwner("kustos-rollout-analysis", fields=("rollout",))


def rendered_spec(body: Mapping[str, Any]) -> ModelDeploymentSpec:
    """The spec the children were rendered from (registry resolution, then rollout)."""
    return effective_spec(served_spec(body), rollout_status(body))


def progressing(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of Progressing=True while a candidate is being analysed."""
    spec = served_spec(body)
    st = rollout_status(body)
    if spec.rollout is None or st.get("phase") not in ("Shadow", "Canary", "Paused") \
            or same(model_ref(spec.model), st.get("stable")):
        return None
    steps = st.get("steps") or len(spec.rollout.steps)
    if st.get("phase") == "Shadow":
        where = "shadow"
    else:
        where = f"step {st.get('step') or 1}/{steps} weight {st.get('weight', 0)}%"
    if st.get("phase") == "Paused":
        return "RolloutPaused", f"rollout paused at {where}"
    version = (st.get("candidate") or {}).get("version", "?")
    return "RolloutAnalysis", f"rolling out version {version}: {where}"


def rolled_back(body: Mapping[str, Any]) -> str | None:
    """The message of Degraded (RolledBack) while spec.model is a candidate that was
    rolled back (cleared when the spec changes)."""
    spec = served_spec(body)
    st = rollout_status(body)
    if spec.rollout is None or st.get("phase") != "RolledBack" \
            or same(model_ref(spec.model), st.get("stable")):
        return None
    return str(st.get("message") or "the candidate was rolled back")


# status.history is the reconcile's (status/modeldeployment.py, one writer per field): it
# records a rollback it reads from status.rollout, so the rollout controller never writes
# history itself.
ROLLED_BACK = "RolledBack"


def rollback_entry(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The status.history entry of the candidate status.rollout says was rolled back
    (automatically or by an abort); None when no rollback is on record. Its ``event``
    keeps `kustos rollback` from taking it for a version to return to."""
    st = rollout_status(body)
    candidate = st.get("candidate") or {}
    if st.get("phase") != ROLLED_BACK or not candidate:
        return None
    out = {"event": ROLLED_BACK, "version": candidate.get("version"),
           "uri": candidate.get("uri"), "digest": candidate.get("digest"),
           "message": st.get("message"),
           # the machine starts the phase's clock when it rolls back
           "rolledBackAt": st.get("stepStartedAt")}
    return {k: v for k, v in out.items() if v}


def with_rollback(history: Sequence[Mapping[str, Any]],
                  body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``history`` with the rollback on record in status.rollout added first, once."""
    out = [dict(h) for h in history]
    entry = rollback_entry(body)
    if entry is None:
        return out
    keys = ("event", "version", "uri", "digest", "rolledBackAt")
    if any(all(h.get(k) == entry.get(k) for k in keys) for h in out):
        return out
    return [entry, *out]
