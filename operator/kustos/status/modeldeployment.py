"""ModelDeployment status from the Deployments the cluster reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.modeldeployment import ModelSource
from kustos.config import OperatorConfig
from kustos.render.httproute import traffic_split
from kustos.render.meta import MODEL_DIGEST, MODEL_VERSION
from kustos.render.modeldeployment import (
    selector_string,
    serves_tls,
    service_url,
    split_tracks,
)
from kustos.render.signature import SIGNER_ANNOTATION, signer

from .conditions import Failure, Notice, get_condition, set_condition, timestamp
from .owners import StatusOwner
from .rollout import progressing, rendered_spec, rolled_back, with_rollback

# The reconcile's part of a ModelDeployment's status (Vault's and governance's parts are
# theirs: controllers/vault.py, controllers/governance.py).
ROLLOUT = StatusOwner(
    "kustos-rollout",
    fields=("observedGeneration", "replicas", "readyReplicas", "selector", "url", "model",
            "history", "canary"),
    conditions=("Progressing", "Ready", "Degraded"))




@dataclass
class Rollout:
    """One Deployment's rollout state, as `kubectl rollout status` judges it."""

    wanted: int
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    exists: bool = False
    observed: bool = False
    available_cond: bool = False
    deadline_exceeded: str | None = None
    replica_failure: str | None = None
    # The pod template carries the model version and digest the spec asks for: a finished
    # rollout of an older template (the reconcile has not applied the new one yet, or an
    # operator died in between) is not the rollout of this version.
    current: bool = True
    name: str = ""  # the Deployment's, when it exists

    @property
    def done(self) -> bool:
        return (self.exists and self.observed and self.current and self.updated >= self.wanted
                and self.replicas == self.updated and self.available >= self.updated)


def rollout(deployment: Mapping[str, Any] | None, wanted: int | None,
            model: ModelSource | None = None) -> Rollout:
    if deployment is None:
        return Rollout(wanted=wanted or 0)
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    notes = template.get("annotations") or {}
    current = model is None or (
        notes.get(MODEL_VERSION) == model.version
        and notes.get(MODEL_DIGEST) == (model.digest or None)
        and notes.get(SIGNER_ANNOTATION) == signer(model.signature))
    spec_replicas = int(deployment.get("spec", {}).get("replicas", 1))
    st = deployment.get("status") or {}
    r = Rollout(
        wanted=spec_replicas if wanted is None else wanted,
        replicas=int(st.get("replicas", 0)),
        ready=int(st.get("readyReplicas", 0)),
        updated=int(st.get("updatedReplicas", 0)),
        available=int(st.get("availableReplicas", 0)),
        exists=True,
        name=str(deployment["metadata"].get("name", "")),
        observed=int(st.get("observedGeneration", 0))
        >= int(deployment["metadata"].get("generation", 0)),
        current=current,
    )
    for cond in st.get("conditions") or []:
        if cond.get("type") == "Available":
            r.available_cond = cond.get("status") == "True"
        elif (cond.get("type") == "Progressing" and cond.get("status") == "False"
              and cond.get("reason") == "ProgressDeadlineExceeded"):
            r.deadline_exceeded = cond.get("message") or "progress deadline exceeded"
        elif cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            r.replica_failure = cond.get("message") or cond.get("reason") or "replica failure"
    return r


def _rollouts(name: str, spec: ModelDeploymentSpec,
              deployments: Mapping[str, Mapping[str, Any]]) -> list[Rollout]:
    out = []
    for t in split_tracks(name, spec):
        # Under autoscaling the HPA decides the stable track's size: judge against it; the
        # canary's too when a route splits the traffic (its own HPA, render/httproute.py;
        # without the Gateway API its Deployment's replicas are the rendered ones anyway).
        scaled = spec.autoscaling is not None and (
            t.track == "stable" or spec.gateway is not None)
        wanted = None if scaled else t.replicas
        out.append(rollout(deployments.get(t.name), wanted, t.model))
    return out


def settled(body: Mapping[str, Any], deployments: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether every track's rollout is complete (then the pods need no reading)."""
    spec = rendered_spec(body)  # models:/ as status.registry resolved it; a rollout's tracks
    return all(r.done for r in _rollouts(body["metadata"]["name"], spec, deployments))


def stale_templates(body: Mapping[str, Any],
                    deployments: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Deployments whose pod template serves another model version or digest than the spec
    asks for: a render of an older spec is live (a writer that died or lost a race)."""
    spec = rendered_spec(body)  # models:/ as status.registry resolved it; a rollout's tracks
    return [r.name for r in _rollouts(body["metadata"]["name"], spec, deployments)
            if r.exists and not r.current]


def compute(body: Mapping[str, Any], deployments: Mapping[str, Mapping[str, Any]],
            config: OperatorConfig, now: datetime, failure: Failure | None = None,
            pod_failure: Failure | None = None,
            waiting: str | None = None,
            gateway_api: bool = False) -> tuple[dict[str, Any], list[Notice]]:
    """The ROLLOUT part of the status and the Events to post, from the live Deployments
    by name.

    ``failure`` is a problem the reconcile ran into; ``pod_failure`` one the pods report
    (status/pods.py), which clears by itself when the pods recover; ``waiting`` what the
    render waits for before it creates the pods (the first Vault sync); ``gateway_api``
    whether the cluster serves HTTPRoutes (which split a canary's traffic)."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = meta.get("generation")
    old: Mapping[str, Any] = body.get("status") or {}
    spec = rendered_spec(body)  # models:/ as status.registry resolved it; a rollout's tracks
    rollouts = _rollouts(name, spec, deployments)
    stable = rollouts[0]
    notices: list[Notice] = []
    conds: list[dict[str, Any]] = [c for c in old.get("conditions") or []
                                   if c.get("type") in ROLLOUT.conditions]

    def cond(type_: str, status: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, type_, status, reason, message, generation, now)

    done = all(r.done for r in rollouts)
    total_wanted = sum(r.wanted for r in rollouts)
    total_ready = sum(r.ready for r in rollouts)
    if waiting is not None and not stable.exists:
        cond("Progressing", True, "Waiting", waiting)
    elif not stable.exists:
        cond("Progressing", True, "Creating", "creating the serving Deployment")
    elif not done:
        cond("Progressing", True, "RollingOut",
             f"{sum(r.updated for r in rollouts)}/{total_wanted} replicas updated, "
             f"{sum(r.available for r in rollouts)} available")
    else:
        cond("Progressing", False, "RolloutComplete",
             f"{total_wanted} replica(s) serving version {spec.model.version}")

    analysed = progressing(body)  # spec.rollout: the step under analysis
    if analysed is not None:
        cond("Progressing", True, *analysed)

    if total_wanted == 0 and stable.exists:
        cond("Ready", False, "ScaledToZero", "replicas is 0")
    elif stable.exists and all(r.available_cond for r in rollouts if r.exists) and total_ready:
        cond("Ready", True, "Available", f"{total_ready}/{total_wanted} replicas ready")
    elif not stable.exists:
        cond("Ready", False, "Creating", "the serving Deployment does not exist yet")
    else:
        cond("Ready", False, "Unavailable", f"{total_ready}/{total_wanted} replicas ready")

    problems = [(r.deadline_exceeded, "ProgressDeadlineExceeded") for r in rollouts] + \
        [(r.replica_failure, "ReplicaFailure") for r in rollouts]
    if pod_failure is not None and not done:
        # What the pods say is more precise than the Deployment's deadline.
        problems.insert(0, (pod_failure.message, pod_failure.reason))
    problem = next(((msg, reason) for msg, reason in problems if msg), None)
    old_degraded = get_condition({"status": old}, "Degraded") or {}
    was_degraded = old_degraded.get("status") == "True"
    if failure is not None:
        cond("Degraded", True, failure.reason, failure.message)
        if not was_degraded or old_degraded.get("reason") != failure.reason:
            notices.append(Notice(failure.reason, failure.message, warning=True))
    elif problem is not None:
        cond("Degraded", True, problem[1], problem[0])
        if not was_degraded or old_degraded.get("reason") != problem[1]:
            notices.append(Notice(problem[1], problem[0], warning=True))
    elif rolled_back(body) is not None:
        # the rollout controller posted the Warning Event naming the failed gate
        cond("Degraded", True, "RolledBack", str(rolled_back(body)))
    else:
        cond("Degraded", False, "AsExpected", "")
        if was_degraded:
            notices.append(Notice("Recovered", "the ModelDeployment is no longer degraded"))

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conds,
        "replicas": sum(r.replicas for r in rollouts),
        "readyReplicas": total_ready,
        "selector": selector_string(name),
        "url": service_url(name, namespace, config, serves_tls(spec)),
    }
    split = traffic_split(spec, gateway_api)
    if split == "gateway" and spec.canary is not None:
        status["canary"] = {"trafficSplit": split, "trafficPercent": spec.canary.traffic_percent}
    elif split == "replicas" and len(rollouts) == 2:
        pods = rollouts[0].wanted + rollouts[1].wanted
        status["canary"] = {"trafficSplit": split} | (
            {"trafficPercent": round(100 * rollouts[1].wanted / pods)} if pods else {})
    served = dict(old.get("model") or {})
    history = [dict(h) for h in old.get("history") or []]
    # uri too: `kustos rollback` restores a history entry as it was deployed.
    # signer: the fetch of every pod of a finished rollout verified it (render/signature.py).
    current = {"version": spec.model.version, "digest": spec.model.digest, "uri": spec.model.uri,
               "signer": signer(spec.model.signature)}
    # The served version changes when the stable rollout of a new version completes.
    if stable.done and (served.get("version"), served.get("digest")) != \
            (current["version"], current["digest"]):
        # An Event for a version that replaces another; the first one is told by the
        # status alone (model.deployedAt), not by one more write per model.
        if served.get("version"):
            history.insert(0, served)
            notices.append(Notice(
                "ModelVersionChanged",
                f"serving version {current['version']} (was {served.get('version')})"))
        served = {k: v for k, v in current.items() if v} | {"deployedAt": timestamp(now)}
    elif stable.done and served.get("version") and served.get("signer") != current["signer"]:
        # Same model, signature requirement added or changed: record it once rolled out.
        served = {k: v for k, v in served.items() if k != "signer"}
        if current["signer"]:
            served["signer"] = current["signer"]
    if served:
        status["model"] = served
    history = with_rollback(history, body)  # a gated rollout's rolled-back candidate
    if history:
        status["history"] = history[: config.history_limit]
    return status, notices
