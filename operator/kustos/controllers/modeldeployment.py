"""ModelDeployment handlers: render, apply what differs, report status from the cluster."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from kustos import metrics
from kustos.api.v1alpha1 import GROUP, VERSION
from kustos.k8s import client, events
from kustos.k8s.client import ApiError
from kustos.k8s.resources import MODEL_CHILD_KINDS
from kustos.render import modeldeployment as render_md
from kustos.render.meta import COMPONENT, INSTANCE, MANAGED, MANAGED_BY, base_labels
from kustos.status import modeldeployment as status_md
from kustos.status import pods as status_pods
from kustos.status.modeldeployment import Failure

from .attachments import AttachmentProblem, gather
from .children import NameConflict, sync
from .context import backoff, config

log = logging.getLogger(__name__)
KIND = "ModelDeployment"


def write_status(body: Mapping[str, Any], deployments: Mapping[str, Mapping[str, Any]],
                 failure: Failure | None = None) -> bool:
    """Compute the status from what the cluster reports and write it if it changed, only
    while the object is still at ``body``'s resourceVersion, so a status computed from a
    stale read never lands. False when it was not (the caller re-reads or lets the newer
    version's own event refresh it)."""
    meta = body["metadata"]
    pod_failure = None
    if not status_md.settled(body, deployments):
        # Only a rollout that is not done needs its pods read for the reason.
        pod_failure = status_pods.problem(client.list_objects(
            "Pod", meta["namespace"], {**base_labels(meta["name"]), COMPONENT: "predictor"}))
    new, notices = status_md.compute(body, deployments, config(), datetime.now(UTC), failure,
                                     pod_failure)
    if status_md.changed(body.get("status"), new):
        try:
            client.patch_status(KIND, meta["name"], meta["namespace"], new,
                                meta.get("resourceVersion"))
        except ApiError as err:
            if err.status == 409:
                return False
            raise
    for notice in notices:
        events.post(body, notice.reason, notice.message, warning=notice.warning)
    return True


def write_fresh_status(body: Mapping[str, Any], deployments: Mapping[str, Mapping[str, Any]],
                       failure: Failure | None = None) -> None:
    """write_status on a fresh read of the object, retried on a conflict: the reconcile's
    body may be older than a status another handler has written since (history and
    Events must not be recorded twice)."""
    meta = body["metadata"]
    for _ in range(5):
        fresh = client.get(KIND, meta["name"], meta["namespace"])
        if fresh is None or fresh["metadata"]["uid"] != meta["uid"]:
            return
        # Judge against the spec (and generation) this reconcile applied; a newer spec
        # gets its own reconcile.
        fresh["spec"] = body["spec"]
        fresh["metadata"] = {**fresh["metadata"], "generation": meta.get("generation")}
        if write_status(fresh, deployments, failure):
            return
    raise kopf.TemporaryError("status kept changing under the reconcile", delay=1)


def live_deployments(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The serving Deployments of a ModelDeployment, by name."""
    return {d["metadata"]["name"]: d for d in client.list_objects(
        "Deployment", meta["namespace"], base_labels(meta["name"]))}


def _deployments(children: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, Any]:
    return {name: obj for (kind, name), obj in children.items() if kind == "Deployment"}


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments")
def reconcile(body: kopf.Body, retry: int, **_: Any) -> None:
    started = time.perf_counter()
    result = "ok"
    try:
        _reconcile(body, retry)
    except kopf.PermanentError:
        result = "invalid"
        raise
    except kopf.TemporaryError:
        result = "retry"
        raise
    finally:
        metrics.RECONCILES.labels(kind=KIND, result=result).inc()
        metrics.RECONCILE_SECONDS.labels(kind=KIND).observe(time.perf_counter() - started)


# One render at a time per ModelDeployment: kopf serialises its own handler calls, but
# rerender() runs from ExplainerSpec/DriftMonitor handlers; without this a render that
# gathered its attachments earlier could apply after (and undo) a newer one.
_RENDER_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_RENDER_LOCKS_GUARD = threading.Lock()


def _render_lock(meta: Mapping[str, Any]) -> threading.Lock:
    with _RENDER_LOCKS_GUARD:
        return _RENDER_LOCKS.setdefault((meta["namespace"], meta["name"]), threading.Lock())


def _reconcile(body: Mapping[str, Any], retry: int) -> None:
    with _render_lock(body["metadata"]):
        _reconcile_locked(body, retry)


def _reconcile_locked(body: Mapping[str, Any], retry: int) -> None:
    body = dict(body)
    try:
        attachments = gather(body)
    except AttachmentProblem as err:
        _fail(body, err.reason, err.message, permanent=False, retry=retry)
        return
    try:
        desired = render_md.render(body, config(), attachments)
    except ValidationError as err:
        # The schema should have refused this; an older CRD or a manual status edit can
        # still get here. Say so, don't retry until the spec changes.
        _fail(body, "InvalidSpec", _validation_message(err), permanent=True)
        return
    try:
        missing = _missing_references(body)
        if missing:
            _fail(body, "CredentialsNotFound", missing, permanent=False, retry=retry)
        children = sync(body, desired, MODEL_CHILD_KINDS)
        write_fresh_status(body, _deployments(children))
    except NameConflict as err:
        _fail(body, "NameConflict", str(err), permanent=True)
    except ApiError as err:
        if err.status == 404 and err.reason == "NotFound" and _gone(body):
            return  # deleted while we worked; garbage collection does the rest
        if err.status in (400, 422):
            _fail(body, "InvalidChild", err.message, permanent=True)
        _fail(body, "Forbidden" if err.status == 403 else "ApiError", err.message,
              permanent=False, retry=retry)


def rerender(name: str, namespace: str) -> None:
    """Reconcile a ModelDeployment again because something that attaches to its pods
    changed (an ExplainerSpec or DriftMonitor targeting it); nothing if it is gone."""
    md = client.get(KIND, name, namespace)
    if md is not None and not md["metadata"].get("deletionTimestamp"):
        _reconcile(md, 0)


def _missing_references(body: Mapping[str, Any]) -> str | None:
    """Objects the pods need that must exist before they can start (checked here because
    a pod would otherwise sit in CreateContainerConfigError with nobody told)."""
    ref = ((body["spec"].get("model") or {}).get("credentialsSecretRef") or {}).get("name")
    if ref and client.get("Secret", ref, body["metadata"]["namespace"]) is None:
        return (f"Secret {ref} named by spec.model.credentialsSecretRef does not exist; "
                "create it and the deployment continues by itself")
    return None


def _gone(body: Mapping[str, Any]) -> bool:
    meta = body["metadata"]
    try:
        return client.get(KIND, meta["name"], meta["namespace"]) is None
    except ApiError:
        return False


def _fail(body: Mapping[str, Any], reason: str, message: str, *, permanent: bool,
          retry: int = 0) -> NoReturn:
    metrics.RECONCILE_ERRORS.labels(kind=KIND, reason=reason).inc()
    try:
        write_fresh_status(body, live_deployments(body["metadata"]), Failure(reason, message))
    except ApiError as err:
        log.warning("could not record %s on %s: %s", reason, body["metadata"]["name"], err)
    if permanent:
        raise kopf.PermanentError(f"{reason}: {message}")
    raise kopf.TemporaryError(f"{reason}: {message}", delay=backoff(retry))


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"spec.{loc}: {e['msg']}")
    return "; ".join(parts)


# Degraded reasons the status refresh derives from the Deployments itself; every other
# reason is a failure only the reconcile can clear (a spec change or a retry).
_FROM_ROLLOUT = ("ProgressDeadlineExceeded", "ReplicaFailure", *status_pods.REASONS)


def refresh_status(md: Mapping[str, Any]) -> None:
    """Recompute a ModelDeployment's status from its live Deployments, once its reconcile
    has caught up with the spec; writes only when something changed."""
    meta = md["metadata"]
    status = md.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return  # the reconcile is due; it writes the status itself
    degraded = next((c for c in status.get("conditions") or []
                     if c.get("type") == "Degraded" and c.get("status") == "True"
                     and c.get("reason") not in _FROM_ROLLOUT), None)
    failure = Failure(degraded["reason"], degraded.get("message", "")) if degraded else None
    deployments = live_deployments(meta)
    stale = status_md.stale_templates(md, deployments)
    if stale:
        # The spec was reconciled, yet a Deployment carries an older render: converge
        # again rather than report a version that no pod serves.
        log.info("%s/%s: %s carry an older model version than the spec; re-rendering",
                 meta["namespace"], meta["name"], ", ".join(stale))
        _reconcile(md, 0)
        return
    write_status(md, deployments, failure)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def model_deployment_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Every change of a ModelDeployment, its status included. A Deployment that became
    Available between the reconcile's apply and its status write is seen here, so no
    status is left behind by that race."""
    if type == "DELETED":
        return
    try:
        refresh_status(dict(body))
    except (ApiError, ValidationError) as err:
        log.warning("status refresh of %s/%s failed: %s", body["metadata"]["namespace"],
                    body["metadata"]["name"], err)


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED: MANAGED_BY})
def deployment_changed(body: kopf.Body, **_: Any) -> None:
    """A serving Deployment changed (rollout progress, availability): refresh the owner's
    status. Event handlers store nothing on the object."""
    owner = next((ref for ref in body["metadata"].get("ownerReferences") or []
                  if ref.get("kind") == KIND and ref.get("controller")), None)
    if owner is None:
        return
    namespace = body["metadata"]["namespace"]
    try:
        md = client.get(KIND, owner["name"], namespace)
        if md is not None and md["metadata"]["uid"] == owner["uid"]:
            refresh_status(md)
    except (ApiError, ValidationError) as err:
        log.warning("status refresh of %s/%s failed: %s", namespace, owner["name"], err)


@kopf.on.event("", "v1", "pods", labels={MANAGED: MANAGED_BY, COMPONENT: "predictor"})
def pod_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A serving pod reports a problem (the fetch failed, an image cannot be pulled, the
    server crashes): say why in the owner's status. Recovery shows in the Deployment,
    whose own events refresh the status, so healthy pods cost nothing here."""
    if type == "DELETED" or status_pods.problem([body]) is None:
        return
    namespace = body["metadata"]["namespace"]
    name = (body["metadata"].get("labels") or {}).get(INSTANCE)
    if not name:
        return
    try:
        md = client.get(KIND, name, namespace)
        if md is not None:
            refresh_status(md)
    except (ApiError, ValidationError) as err:
        log.warning("status refresh of %s/%s failed: %s", namespace, name, err)
