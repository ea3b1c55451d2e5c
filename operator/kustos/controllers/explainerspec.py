"""ExplainerSpec handlers: wire the explainer into the target's render, report its status.

The sidecar is added through the ModelDeployment's render (the contributor below), never
by editing the ModelDeployment; a change of the ExplainerSpec re-renders its target.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kustos import metrics
from kustos.api.v1alpha1 import GROUP, VERSION, ModelDeploymentSpec
from kustos.k8s import client, events
from kustos.k8s.client import ApiError
from kustos.render import explainer as render_es
from kustos.render.attachments import NONE, Attachments
from kustos.render.sidecars import EXPLAIN_PORT, target_name
from kustos.status import explainerspec as status_es
from kustos.status.modeldeployment import Failure
from kustos.status.sidecars import changed

from . import sidecars
from .attachments import contributor
from .children import NameConflict, sync
from .context import backoff, config
from .sidecars import rerender_target

log = logging.getLogger(__name__)
KIND = "ExplainerSpec"
STATUS_PATH = "/v1/explainer/status"


@contributor
def explainer_contribution(md: Mapping[str, Any]) -> Attachments:
    """The explainer sidecar for a ModelDeployment that an ExplainerSpec targets."""
    es = sidecars.for_target(KIND, md)
    if es is None:
        return NONE
    try:
        if ModelDeploymentSpec.model_validate(md["spec"]).runtime.kind != "kustos":
            return NONE  # the ExplainerSpec reports RuntimeUnsupported
        return render_es.attachments(es, md, config())
    except ValidationError as err:
        log.warning("ExplainerSpec %s not rendered: %s", es["metadata"]["name"], err)
        return NONE


def refresh(namespace: str, name: str) -> None:
    """Collect the explainers' reports and write status (and the report ConfigMap) if
    anything changed; retried on a write conflict with a fresh read."""
    for _ in range(3):
        body = client.get(KIND, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        if _write(body):
            return


def _write(body: dict[str, Any]) -> bool:
    meta = body["metadata"]
    wiring, target = sidecars.wiring(KIND, body)
    reports = []
    if target is not None and wiring.active == meta["name"] and wiring.runtime == "kustos":
        pods = sidecars.ready_pods(wiring.target, wiring.namespace, render_es.CONTAINER)
        reports = sidecars.collect(pods, EXPLAIN_PORT, STATUS_PATH)
    result = status_es.compute(body, wiring, target, reports, config(), datetime.now(UTC))
    if result.report is not None:
        # children.sync writes only when the report's hash differs from the live one.
        try:
            sync(body, [render_es.report_configmap(body, result.report)], ["ConfigMap"])
        except NameConflict as err:
            result = status_es.compute(body, wiring, target, reports, config(),
                                       datetime.now(UTC), Failure("NameConflict", str(err)))
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


@kopf.on.resume(GROUP, VERSION, "explainerspecs")
@kopf.on.create(GROUP, VERSION, "explainerspecs")
@kopf.on.update(GROUP, VERSION, "explainerspecs")
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


@kopf.on.event(GROUP, VERSION, "explainerspecs")
def explainerspec_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Keep the collection list current; a deleted ExplainerSpec leaves its target's
    pods (re-rendered without the sidecar) and hands over to a conflicting one."""
    meta = body["metadata"]
    sidecars.seen(KIND, meta["namespace"], meta["name"], deleted=type == "DELETED")
    if type != "DELETED":
        return
    try:
        rerender_target(target_name(body), meta["namespace"])
    except ApiError as err:
        log.warning("re-render after deleting ExplainerSpec %s failed: %s", meta["name"], err)
    try:
        sidecars.refresh_targeting(target_name(body), meta["namespace"], skip=meta["name"])
    except ApiError as err:
        log.warning("refresh after deleting ExplainerSpec %s failed: %s", meta["name"], err)


sidecars.register(KIND, refresh)
