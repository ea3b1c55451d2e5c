"""ModelDeployments whose spec.model.uri is models:/NAME@ALIAS or models:/NAME/VERSION:
resolve it in the MLflow Model Registry on a timer and record the answer in
status.registry (kustos.registry.status says what is written when).

Polling, not watching: MLflow's registry has no watch API (webhooks exist only in some
hosted registries), so a WorkLoop looks every TICK seconds which objects are due (each
after its spec.model.registry.pollInterval, at once after a spec change) and asks the
registry. A changed answer is written once, with an Event (ModelAliasMoved when an alias
moved), and re-renders the ModelDeployment: its pods then fetch the new version.

Until a models:/ URI is resolved the render is held back (the contributor below raises
AttachmentPending: Progressing, Waiting, no pods with an unresolvable URI). A failed poll
keeps the last good resolution: the pods stay as they are, RegistryResolved is False and
the ModelDeployment Degraded with the reason (RegistryUnreachable, ModelVersionNotFound,
RegistryUnauthorized, ...), until the registry answers again.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kustos.api.v1alpha1.modeldeployment import ModelSource
from kustos.k8s import client, events
from kustos.k8s import status as k8s_status
from kustos.registry import status as registry_status
from kustos.registry.client import Credentials, RegistryClient, RegistryError
from kustos.registry.resolution import matches, resolve
from kustos.registry.uri import InvalidModelUri, is_registry_uri, parse
from kustos.render.attachments import NONE, Attachments
from kustos.status.conditions import Failure, Notice

from .attachments import AttachmentPending, AttachmentProblem, contributor
from .modeldeployment import models, rerender
from .vault import seconds
from .workloop import Entry, ObjectKey, WorkLoop, live_object, start_in_memo, stop_in_memo

log = logging.getLogger(__name__)
KIND = "ModelDeployment"
TICK = 5.0  # seconds between two looks at one object (its poll is due less often)
ROUND = 1.0  # seconds between the loop's looks at what is due
MIN_POLL = 10.0
DEFAULT_POLL = 60.0
# fresh object -> (the registry part of its status, the Events to post once written)
Compute = Callable[[dict[str, Any]], tuple[dict[str, Any], list[Notice]]]


def _uri(body: Mapping[str, Any]) -> str:
    return str(((body.get("spec") or {}).get("model") or {}).get("uri") or "")


def _registry_part(body: Mapping[str, Any]) -> bool:
    status = body.get("status") or {}
    return bool(status.get("registry")) or any(
        c.get("type") == registry_status.RESOLVED for c in status.get("conditions") or [])


@contributor
def registry_attachments(body: Mapping[str, Any], _lookup: object = None) -> Attachments:
    """Nothing to add to the pods; holds the render back until a models:/ URI is resolved
    (the render reads status.registry itself: kustos.registry.resolution.served_spec)."""
    uri = _uri(body)
    if not is_registry_uri(uri):
        return NONE
    failure = registry_status.problem(body)
    if failure is not None:
        raise AttachmentProblem(failure.reason, failure.message)
    try:
        if matches(uri, (body.get("status") or {}).get("registry")):
            return NONE
    except InvalidModelUri:
        return NONE  # the schema refuses it; the render reports InvalidSpec
    raise AttachmentPending(f"waiting for {uri} to be resolved in the model registry")


def poll_seconds(model: ModelSource) -> float:
    if model.registry is None:
        return DEFAULT_POLL
    return max(MIN_POLL, seconds(model.registry.poll_interval))


def credentials(model: ModelSource, namespace: str) -> Credentials | None:
    """From spec.model.registry.credentialsSecretRef; None for an anonymous registry."""
    ref = model.registry.credentials_secret_ref if model.registry else None
    if ref is None:
        return None
    secret = client.get("Secret", ref.name, namespace)
    if secret is None:
        raise RegistryError(f"Secret {ref.name} named by spec.model.registry."
                            "credentialsSecretRef does not exist", reason="CredentialsNotFound")
    try:
        data = {k: base64.b64decode(v, validate=True).decode()
                for k, v in (secret.get("data") or {}).items()}
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"Secret {ref.name}: a value is not base64 UTF-8 text",
                            reason="RegistryCredentialsInvalid") from None
    data.update(secret.get("stringData") or {})
    return Credentials.from_secret_data(data)


def poll(body: Mapping[str, Any], state: Any = None) -> bool:
    """Resolve one ModelDeployment's models:/ URI now and write what changed; re-render
    it when the write changed anything. True when the registry answered."""
    meta = body["metadata"]
    now = datetime.now(UTC)
    try:
        model = ModelSource.model_validate((body.get("spec") or {}).get("model") or {})
    except ValidationError:
        return False  # the reconcile reports InvalidSpec
    failure: Failure | None = None
    try:
        if model.registry is None:
            raise RegistryError("spec.model.registry is missing", reason="RegistryMissing")
        ref = parse(model.uri)
        registry = RegistryClient(model.registry.url, credentials(model, meta["namespace"]))
        res = resolve(registry, ref, model.format)
    except InvalidModelUri as err:
        failure = Failure("InvalidModelUri", str(err))
    except RegistryError as err:
        failure = Failure(err.reason, err.message)
    if failure is not None:
        log.warning("registry resolution of %s/%s failed: %s", meta["namespace"],
                    meta["name"], failure.message)
        _write(body, lambda fresh: registry_status.failed(fresh, failure, now), state)
        return False
    _write(body, lambda fresh: registry_status.resolved(fresh, res, now), state)
    return True


def _write(body: Mapping[str, Any], compute: Compute, state: Any) -> bool:
    meta = body["metadata"]
    notices: list[Notice] = []

    def update(fresh: dict[str, Any]) -> dict[str, Any]:
        part, found = compute(fresh)
        notices[:] = found
        return part

    written = k8s_status.write(KIND, meta["name"], meta["namespace"], meta["uid"],
                               registry_status.REGISTRY, update)
    if written is None or not written.wrote:
        return False
    for notice in notices:
        events.post(written.before, notice.reason, notice.message, warning=notice.warning)
    if state is not None:
        rerender(meta["name"], meta["namespace"], state)
    return True


def cleanup(body: Mapping[str, Any]) -> None:
    """spec.model.uri is no models:/ URI any more: drop status.registry and the condition."""
    meta = body["metadata"]
    k8s_status.write(KIND, meta["name"], meta["namespace"], meta["uid"],
                     registry_status.REGISTRY, lambda fresh: registry_status.cleared())


def due(body: Mapping[str, Any], last_poll: float | None, now: float) -> bool:
    """Whether a poll is due: never polled by this process, the spec changed since the
    condition was written (a new URI, registry or interval), or pollInterval passed."""
    if last_poll is None:
        return True
    cond = next((c for c in (body.get("status") or {}).get("conditions") or []
                 if c.get("type") == registry_status.RESOLVED), None)
    if cond is None or cond.get("observedGeneration") != body["metadata"].get("generation"):
        return True
    try:
        model = ModelSource.model_validate(body["spec"]["model"])
    except (ValidationError, KeyError):
        return False
    return now - last_poll >= poll_seconds(model)


def _watched(body: Mapping[str, Any]) -> bool:
    return is_registry_uri(_uri(body)) or _registry_part(body)


# The polls are a WorkLoop (controllers/workloop.py, as the rollout and the Vault refresh):
# not a kopf timer, whose finalizer on every object would block its deletion (and its
# namespace's) whenever the operator is not running. Keyed by (namespace, name, uid), fed
# by the ModelDeployment events (controllers/model_events.py).
Target = ObjectKey  # (namespace, name, uid)
WORKERS = 4


def track(memo: Any, body: Mapping[str, Any], type_: str | None) -> None:
    """Keep the list of ModelDeployments with a models:/ URI (or a registry status to
    clean up); called on kopf's loop for every ModelDeployment event."""
    loop: WorkLoop[Target] | None = getattr(memo, "kustos_registry", None)
    if loop is None:
        return
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"], meta["uid"])
    if type_ == "DELETED" or meta.get("deletionTimestamp") or not _watched(body):
        loop.entries.pop(key, None)
        memo.kustos_registry_polls.pop(meta["uid"], None)
        return
    entry = loop.entries.setdefault(key, Entry(cap=300.0))
    if entry.tag != meta.get("generation"):  # a new spec: look now
        entry.tag = meta.get("generation")
        entry.due = 0.0


def look(body: Mapping[str, Any], memo: Any) -> None:
    """One look at one ModelDeployment: poll the registry when due, or clean up."""
    meta = body["metadata"]
    polls: dict[str, float] = memo.kustos_registry_polls
    if not is_registry_uri(_uri(body)):
        cleanup(body)
        polls.pop(meta["uid"], None)
        return
    now = time.monotonic()
    if not due(body, polls.get(meta["uid"]), now):
        return
    polls[meta["uid"]] = now
    poll(body, models(memo))


@kopf.on.startup()
async def start_registry_polls(memo: kopf.Memo, **_: Any) -> None:
    # uid -> monotonic time of this process's last poll
    memo.kustos_registry_polls = {}

    def work(key: Target) -> float:
        md = live_object(KIND, key)
        if md is not None:
            look(md, memo)
        return TICK

    start_in_memo(memo, "kustos_registry", work, workers=WORKERS, name="kustos-registry",
                  interval=ROUND)


@kopf.on.cleanup()
async def stop_registry_polls(memo: kopf.Memo, **_: Any) -> None:
    await stop_in_memo(memo, "kustos_registry")
