"""DriftMonitor handlers: wire the drift sidecar into the target's render, collect the
sidecars' results, report drift, post Events and create retraining Jobs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kustos import metrics
from kustos.api.v1alpha1 import GROUP, VERSION, DriftMonitorSpec, ModelDeploymentSpec
from kustos.k8s import client, events
from kustos.k8s.client import ApiError
from kustos.render import drift as render_dm
from kustos.render.attachments import NONE, Attachments
from kustos.render.sidecars import DRIFT_PORT, target_name
from kustos.status import driftmonitor as status_dm
from kustos.status.driftmonitor import RetrainJob
from kustos.status.modeldeployment import Failure
from kustos.status.sidecars import PodReport, changed

from . import sidecars
from .attachments import contributor
from .children import owned_by
from .context import backoff, config
from .sidecars import rerender_target

log = logging.getLogger(__name__)
KIND = "DriftMonitor"
STATUS_PATH = "/v1/drift/status"


@contributor
def drift_contribution(md: Mapping[str, Any]) -> Attachments:
    """The drift sidecar for a ModelDeployment that a DriftMonitor targets."""
    dm = sidecars.for_target(KIND, md)
    if dm is None:
        return NONE
    try:
        if ModelDeploymentSpec.model_validate(md["spec"]).runtime.kind != "kustos":
            return NONE  # the DriftMonitor reports RuntimeUnsupported
        return render_dm.attachments(dm, md, config())
    except ValidationError as err:
        log.warning("DriftMonitor %s not rendered: %s", dm["metadata"]["name"], err)
        return NONE


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


def refresh(namespace: str, name: str) -> None:
    """Collect the drift sidecars' results and act on them; retried on a write conflict
    with a fresh read."""
    for _ in range(3):
        body = client.get(KIND, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        if _write(body):
            return


def _write(body: dict[str, Any]) -> bool:
    meta = body["metadata"]
    wiring, target = sidecars.wiring(KIND, body)
    reports: list[PodReport] = []
    if target is not None and wiring.active == meta["name"] and wiring.runtime == "kustos":
        pods = sidecars.ready_pods(wiring.target, wiring.namespace, render_dm.CONTAINER)
        reports = sidecars.collect(pods, DRIFT_PORT, STATUS_PATH)
    now = datetime.now(UTC)
    spec = DriftMonitorSpec.model_validate(body["spec"])
    previous = last_job(body) if spec.on_drift.retrain_job else None
    result = status_dm.compute(body, wiring, reports, now, previous)
    if result.create_job and spec.on_drift.retrain_job:
        features = result.status["lastDrift"]["features"]
        failure = _create_job(body, result.create_job, spec, features)
        if failure is not None:
            result = status_dm.compute(body, wiring, reports, now, previous, failure)
            result.status.get("lastDrift", {})["job"] = None
    if changed(body.get("status"), result.status):
        try:
            client.patch_status(KIND, meta["name"], meta["namespace"], result.status,
                                meta.get("resourceVersion"))
        except ApiError as err:
            if err.status == 409:
                return False
            if err.status == 404:
                return True  # deleted meanwhile
            raise
    for notice in result.notices:
        events.post(body, notice.reason, notice.message, warning=notice.warning)
    return True


def _create_job(body: Mapping[str, Any], name: str, spec: DriftMonitorSpec,
                features: list[str]) -> Failure | None:
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
def reconcile(body: kopf.Body, old: Any, retry: int, **_: Any) -> None:
    """Re-render the target (and a former target) so its pods match this spec."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    previous = target_name(old) if isinstance(old, Mapping) else ""
    try:
        for target in dict.fromkeys(t for t in (previous, target_name(body)) if t):
            rerender_target(target, namespace)
        refresh(namespace, meta["name"])
    except ApiError as err:
        metrics.RECONCILES.labels(kind=KIND, result="retry").inc()
        raise kopf.TemporaryError(f"{err.reason}: {err.message}", delay=backoff(retry)) from err
    metrics.RECONCILES.labels(kind=KIND, result="ok").inc()


@kopf.on.event(GROUP, VERSION, "driftmonitors")
def driftmonitor_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Keep the collection list current; a deleted DriftMonitor leaves its target's pods."""
    meta = body["metadata"]
    sidecars.seen(KIND, meta["namespace"], meta["name"], deleted=type == "DELETED")
    if type != "DELETED":
        return
    try:
        rerender_target(target_name(body), meta["namespace"])
        sidecars.refresh_targeting(target_name(body), meta["namespace"], skip=meta["name"])
    except ApiError as err:
        log.warning("re-render after deleting DriftMonitor %s failed: %s", meta["name"], err)


sidecars.register(KIND, refresh)
