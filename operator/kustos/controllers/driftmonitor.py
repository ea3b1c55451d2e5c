"""DriftMonitor handlers: wire the drift sidecar into the target's render, collect the
sidecars' results, report drift, post Events and create retraining Jobs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from kustos.api.v1alpha1 import GROUP, VERSION, DriftMonitorSpec
from kustos.api.v1alpha1.driftmonitor import DriftMonitorStatus
from kustos.k8s import client, events
from kustos.k8s.client import ApiError
from kustos.render import drift as render_dm
from kustos.render import truth as render_truth
from kustos.render.attachments import Attachments
from kustos.render.sidecars import DRIFT_PORT
from kustos.status import driftmonitor as status_dm
from kustos.status.conditions import Failure, Notice
from kustos.status.driftmonitor import RetrainJob
from kustos.status.sidecars import PodReport

from . import sidecars
from .attachments import contributor
from .children import NameConflict, known, owned_by, sync
from .context import config
from .indexes import Lookup
from .modeldeployment import models

log = logging.getLogger(__name__)
KIND = "DriftMonitor"
OWNER = sidecars.owner_of(DriftMonitorStatus, ("Ready", "DriftDetected", "Degraded",
                                                "PerformanceDegraded", "FairnessViolated"))
STATUS_PATH = "/v1/drift/status"


@contributor
def drift_contribution(md: Mapping[str, Any], lookup: Lookup) -> Attachments:
    """The drift sidecar for a ModelDeployment that a DriftMonitor targets."""
    return sidecars.contribution(KIND, md, render_dm.attachments, lookup)


def last_job(body: Mapping[str, Any]) -> RetrainJob | None:
    """The newest retraining Job this DriftMonitor created (the cooldown counts from it)."""
    meta = body["metadata"]
    jobs = [j for j in client.list_objects("Job", meta["namespace"],
                                           {render_dm.MONITOR_LABEL: meta["name"]})
            if owned_by(j, meta["uid"])]
    if not jobs:
        return None
    newest = max(jobs, key=lambda j: str(j["metadata"].get("creationTimestamp")))
    created = datetime.fromisoformat(
        str(newest["metadata"]["creationTimestamp"]).replace("Z", "+00:00"))
    return RetrainJob(newest["metadata"]["name"], created)


def refresh(namespace: str, name: str, lookup: Lookup) -> None:
    """Collect the drift sidecars' results and act on them; retried on a write conflict
    with a fresh read."""
    sidecars.refresh_with(KIND, namespace, name, OWNER,
                          lambda body: _compute(body, lookup))


def _compute(body: dict[str, Any], lookup: Lookup) -> tuple[dict[str, Any], list[Notice]]:
    spec = DriftMonitorSpec.model_validate(body["spec"])
    if spec.reference is not None:
        wiring, target, reports = sidecars.poll(KIND, body, render_dm.CONTAINER, DRIFT_PORT,
                                                STATUS_PATH, lookup)
    else:
        (wiring, target), reports = sidecars.wiring(KIND, body, lookup), []
    failure = _sync_truth(body, target, lookup)
    truth_report = _poll_truth(body) if spec.ground_truth is not None else None
    now = datetime.now(UTC)
    previous = last_job(body) if spec.on_drift.retrain_job else None

    def judge(failure: Failure | None) -> status_dm.Result:
        return status_dm.compute(body, wiring, reports, now, previous, failure, truth_report)

    result = judge(failure)
    if result.create_job and spec.on_drift.retrain_job:
        features = result.status["lastDrift"]["features"]
        job_failure = _create_job(body, result.create_job, spec, features)
        if job_failure is not None:
            result = judge(failure or job_failure)
            result.status.get("lastDrift", {})["job"] = None
    if result.create_truth_job and spec.on_drift.retrain_job:
        last = result.status["groundTruth"]["lastDegraded"]
        job_failure = _create_job(body, result.create_truth_job, spec,
                                  last.get("violations") or [])
        if job_failure is not None:
            result = judge(failure or job_failure)
            result.status["groundTruth"]["lastDegraded"]["job"] = None
    return result.status, result.notices


def _sync_truth(body: Mapping[str, Any], target: Mapping[str, Any] | None,
                lookup: Lookup) -> Failure | None:
    """Bring the ground-truth monitor's children to the render (none without
    spec.groundTruth); children.sync writes only what differs."""
    try:
        desired = render_truth.children(body, target, config())
        live = known(body, render_truth.SYNCED_KINDS, lookup)
        sync(body, desired, kinds=render_truth.SYNCED_KINDS,
             live={k: v for k, v in live.items() if _is_truth(k, body)})
    except NameConflict as err:
        return Failure("NameConflict", str(err))
    except ApiError as err:
        if err.status in (400, 403, 422):
            return Failure("Forbidden" if err.status == 403 else "TruthMonitorInvalid",
                           f"ground-truth monitor not applied: {err.message}")
        raise
    return None


def _is_truth(key: tuple[str, str], body: Mapping[str, Any]) -> bool:
    return key[1] == render_truth.name(body["metadata"]["name"])


def _poll_truth(body: Mapping[str, Any]) -> PodReport | None:
    """The monitor's /v1/truth/status, from its Ready pod (as the sidecars' are read)."""
    meta = body["metadata"]
    pods = [p for p in client.list_objects("Pod", meta["namespace"],
                                           render_truth.labels(meta["name"]))
            if _ready(p)]
    found = sidecars.collect([(p["metadata"]["name"], str(p["status"]["podIP"]))
                              for p in pods], render_truth.PORT, render_truth.STATUS_PATH)
    return found[0] if found else None


def _ready(pod: Mapping[str, Any]) -> bool:
    st = pod.get("status") or {}
    return bool(st.get("podIP")) and not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in st.get("conditions") or [])


def _create_job(body: Mapping[str, Any], name: str, spec: DriftMonitorSpec,
                features: list[str]) -> Failure | None:
    """The retraining Job (a drift episode's features, or a ground-truth episode's
    version/metric list, in its annotation)."""
    assert spec.on_drift.retrain_job is not None
    job = render_dm.retrain_job(body, spec.on_drift.retrain_job.template, name, features)
    try:
        client.create(job)
    except ApiError as err:
        if err.status == 409 and err.reason == "AlreadyExists":
            return None
        if err.status in (400, 403, 422):
            reason = "Forbidden" if err.status == 403 else "RetrainJobInvalid"
            return Failure(reason, f"retraining Job {name} not created: {err.message}; "
                                   "fix spec.onDrift.retrainJob.template")
        raise
    log.info("created retraining Job %s/%s", body["metadata"]["namespace"], name)
    events.post(body, "RetrainJobCreated", f"created retraining Job {name}")
    return None


@kopf.on.resume(GROUP, VERSION, "driftmonitors")
@kopf.on.create(GROUP, VERSION, "driftmonitors")
@kopf.on.update(GROUP, VERSION, "driftmonitors")
def reconcile(body: kopf.Body, old: Any, retry: int, memo: kopf.Memo, **_: Any) -> None:
    """Re-render the target (and a former target) so its pods match this spec."""
    sidecars.reconcile(KIND, body, old, retry, models(memo))


@kopf.on.event(GROUP, VERSION, "driftmonitors")
async def driftmonitor_event(body: kopf.Body, type: str | None, memo: kopf.Memo,
                            **_: Any) -> None:
    """Keep the collection list current; a deleted DriftMonitor leaves its target's pods
    (re-rendered without the sidecar) and hands over to a conflicting one."""
    await sidecars.on_event(KIND, body, type, memo)


sidecars.register(KIND, refresh)
