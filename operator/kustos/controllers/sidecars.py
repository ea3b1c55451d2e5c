"""What the ExplainerSpec and DriftMonitor controllers share (I/O side): finding the
target, its pods, polling the sidecars, writing status, the handlers' bodies and the
periodic collection.

The collection is a :class:`Collector`, a WorkLoop (controllers/workloop.py, which the
Vault refresh uses too) kept in kopf's memo as ``memo.kustos_sidecars``, started at
startup, cancelled and awaited at cleanup. Its list of known objects is fed by the kinds'
async event handlers. Which resource targets which ModelDeployment comes from kopf's
indexes (controllers/indexes.py, through a ``Lookup``), never from a namespace LIST.

What refreshes an object of a kind (``_REFRESH``, filled by :func:`register` when the
controller modules are imported) is code, not state: a static registry like kopf's own
handler registry, so it stays a module constant.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from pydantic import BaseModel, ValidationError

from kustos import metrics
from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.config import OperatorConfig
from kustos.k8s import client, events
from kustos.k8s import status as k8s_status
from kustos.k8s.client import ApiError
from kustos.render.attachments import NONE, Attachments
from kustos.render.meta import COMPONENT, INSTANCE
from kustos.render.sidecars import active_for, target_name
from kustos.status.conditions import Notice
from kustos.status.owners import StatusOwner
from kustos.status.sidecars import PodReport, Wiring

from . import handled, peering
from .context import backoff, config
from .indexes import Lookup, lookup_from
from .modeldeployment import Models, models, rerender
from .workloop import Entry, WorkLoop

log = logging.getLogger(__name__)

MD = "ModelDeployment"

# (namespace, name, the indexes) -> collect and write status
Refresh = Callable[[str, str, Lookup], None]
# (resource, its target ModelDeployment, config) -> the sidecar's contribution (pure render)
Render = Callable[[Mapping[str, Any], Mapping[str, Any], OperatorConfig], Attachments]

# kind -> the refresh of one object of that kind; registered by the controller modules
# at import (code, not state: see the module's docstring).
_REFRESH: dict[str, Refresh] = {}

WORKERS = 4  # objects refreshed at once (each polls its pods with up to 8 threads more)

Key = tuple[str, str, str]  # (kind, namespace, name)


def register(kind: str, refresh: Refresh) -> None:
    _REFRESH[kind] = refresh


class Collector(WorkLoop[Key]):
    """The periodic collection (a WorkLoop kept in kopf's memo as ``kustos_sidecars``).

    ``known`` holds every ExplainerSpec / DriftMonitor the watches have shown (the initial
    listing included) with its backoff; a DELETED event drops the entry, backoff and all.
    Each round refreshes every known object whose backoff allows."""

    def __init__(self, lookup: Lookup, workers: int = WORKERS) -> None:
        super().__init__(self._refresh, workers=workers, name="kustos-sidecar-collect")
        self.lookup = lookup

    def _refresh(self, key: Key) -> None:
        kind, namespace, name = key
        _REFRESH[kind](namespace, name, self.lookup)  # due again at the next round

    @property
    def known(self) -> dict[Key, Entry]:
        return self.entries

    def seen(self, kind: str, namespace: str, name: str, deleted: bool = False) -> None:
        key = (kind, namespace, name)
        if deleted:
            self.entries.pop(key, None)
        else:
            self.entries.setdefault(key, Entry())


def collector(memo: Any) -> Collector:
    """This process's Collector, from kopf's memo (per-object memos are shallow copies of
    the operator's, so every handler sees the same one)."""
    found: Collector = memo.kustos_sidecars
    return found


def wiring(kind: str, body: Mapping[str, Any],
           lookup: Lookup) -> tuple[Wiring, dict[str, Any] | None]:
    """Is ``body`` wired into its target, and the target itself (None if missing)."""
    namespace, target = body["metadata"]["namespace"], target_name(body)
    md = client.get(MD, target, namespace)
    if md is None or md["metadata"].get("deletionTimestamp"):
        return Wiring(target, namespace, exists=False), None
    active = active_for(target, lookup.targeting(kind, namespace, target))
    try:
        runtime = ModelDeploymentSpec.model_validate(md["spec"]).runtime.kind
    except ValidationError:
        runtime = None
    return Wiring(target, namespace, True, runtime,
                  active["metadata"]["name"] if active else None), md


def for_target(kind: str, md: Mapping[str, Any], lookup: Lookup) -> Mapping[str, Any] | None:
    """The resource of ``kind`` wired into this ModelDeployment (the contributors' view;
    without its CRD installed, kopf watches nothing and the index stays empty)."""
    meta = md["metadata"]
    return active_for(meta["name"], lookup.targeting(kind, meta["namespace"], meta["name"]))


def contribution(kind: str, md: Mapping[str, Any], render: Render,
                 lookup: Lookup) -> Attachments:
    """The body of a kind's @contributor: the sidecar of the resource of ``kind`` that
    targets ``md``, for the kustos runtime only (others are reported RuntimeUnsupported by
    the resource's status)."""
    resource = for_target(kind, md, lookup)
    if resource is None:
        return NONE
    try:
        if ModelDeploymentSpec.model_validate(md["spec"]).runtime.kind != "kustos":
            return NONE  # the resource reports RuntimeUnsupported
        return render(resource, md, config())
    except ValidationError as err:
        log.warning("%s %s not rendered: %s", kind, resource["metadata"]["name"], err)
        return NONE


# (fresh object) -> its new status, as a merge patch says it (a key left out is kept, None
# removes it), and the Events to post once written; None: nothing to say now. It may do
# idempotent work of its own first (the report ConfigMap, a retraining Job by name).
Compute = Callable[[dict[str, Any]], tuple[dict[str, Any], list[Notice]] | None]


def owner_of(model: type[BaseModel], conditions: tuple[str, ...]) -> StatusOwner:
    """The sidecar controller owns the whole status of its kind (no other writer)."""
    fields = tuple(info.alias or name for name, info in model.model_fields.items()
                   if name != "conditions")
    return StatusOwner("kustos-sidecars", fields, conditions)


def refresh_with(kind: str, namespace: str, name: str, owner: StatusOwner,
                 compute: Compute) -> None:
    """Compute the object's status from a fresh read and write it if it changed (the one
    status writer, kustos.k8s.status, retries on a conflict); then post the Events."""
    notices: list[Notice] = []

    def update(fresh: dict[str, Any]) -> dict[str, Any] | None:
        if fresh["metadata"].get("deletionTimestamp"):
            return None
        result = compute(fresh)
        if result is None:
            return None
        status, found = result
        notices[:] = found
        return {**owner.part(fresh.get("status")), **status}

    written = k8s_status.write(kind, name, namespace, None, owner, update)
    if written is not None and written.wrote:
        for notice in notices:
            events.post(written.before, notice.reason, notice.message, warning=notice.warning)


def poll(kind: str, body: Mapping[str, Any], container: str, port: int, path: str,
         lookup: Lookup) -> tuple[Wiring, dict[str, Any] | None, list[PodReport]]:
    """The wiring, the target, and the sidecar reports of the target's Ready pods (none
    unless ``body`` is the one wired into a kustos-runtime target)."""
    found, target = wiring(kind, body, lookup)
    reports: list[PodReport] = []
    if (target is not None and found.active == body["metadata"]["name"]
            and found.runtime == "kustos"):
        reports = collect(ready_pods(found.target, found.namespace, container), port, path)
    return found, target, reports


def reconcile(kind: str, body: Mapping[str, Any], old: Any, retry: int, state: Models) -> None:
    """The create/update/resume handler of a kind: re-render the target (and a former
    target) so its pods match the spec, then refresh the status."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    previous = target_name(old) if isinstance(old, Mapping) else ""
    try:
        for target in dict.fromkeys(t for t in (previous, target_name(body)) if t):
            rerender(target, namespace, state)
        _REFRESH[kind](namespace, meta["name"], state.lookup)
    except ApiError as err:
        metrics.RECONCILES.labels(kind=kind, result="retry").inc()
        raise kopf.TemporaryError(f"{err.reason}: {err.message}", delay=backoff(retry)) from err
    metrics.RECONCILES.labels(kind=kind, result="ok").inc()


async def on_event(kind: str, body: Mapping[str, Any], type: str | None,
                   memo: Any) -> None:
    """The (async) event handler of a kind: keep the collection list current, on the event
    loop; a deleted resource leaves its target's pods (re-rendered without the sidecar)
    and hands over to a conflicting one (blocking, so in a thread)."""
    meta = body["metadata"]
    collector(memo).seen(kind, meta["namespace"], meta["name"], deleted=type == "DELETED")
    if type == "DELETED":
        handled.forget(memo, meta.get("uid") or "")
        await asyncio.to_thread(_deleted, kind, body, models(memo))


def _deleted(kind: str, body: Mapping[str, Any], state: Models) -> None:
    meta = body["metadata"]
    try:
        rerender(target_name(body), meta["namespace"], state)
    except ApiError as err:
        log.warning("re-render after deleting %s %s failed: %s", kind, meta["name"], err)
    try:
        refresh_targeting(target_name(body), meta["namespace"], state.lookup,
                          skip=meta["name"])
    except ApiError as err:
        log.warning("refresh after deleting %s %s failed: %s", kind, meta["name"], err)


def ready_ip(pod: Mapping[str, Any]) -> str | None:
    """The pod's IP while it is Ready and not being deleted (what may be asked now)."""
    st = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions") or [])
    if ready and st.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
        return str(st["podIP"])
    return None


def ready_pods(md_name: str, namespace: str, container: str) -> list[tuple[str, str]]:
    """(pod name, pod IP) of the target's Ready pods that run ``container``."""
    pods = client.list_objects("Pod", namespace, {INSTANCE: md_name, COMPONENT: "predictor"})
    out = []
    for pod in pods:
        ip = ready_ip(pod)
        has = any(c.get("name") == container for c in pod["spec"].get("containers") or [])
        if ip and has:
            out.append((pod["metadata"]["name"], ip))
    return sorted(out)


def _get(pod: str, url: str, timeout: float) -> PodReport:
    report = _fetch(pod, url, timeout)
    metrics.SIDECAR_POLLS.labels(result="error" if report.error else "ok").inc()
    return report


def _fetch(pod: str, url: str, timeout: float) -> PodReport:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read(4 << 20))
    except urllib.error.HTTPError as err:
        return PodReport(pod, error=f"HTTP {err.code}")
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        return PodReport(pod, error=str(reason)[:200] or type(err).__name__)
    if not isinstance(data, dict):
        return PodReport(pod, error="status is not a JSON object")
    return PodReport(pod, report=data)


def collect(pods: list[tuple[str, str]], port: int, path: str) -> list[PodReport]:
    """Each pod's sidecar status; an unreachable pod is noted, never raised."""
    if not pods:
        return []
    timeout = config().sidecars.collect_timeout
    with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
        return list(pool.map(lambda p: _get(p[0], f"http://{p[1]}:{port}{path}", timeout),
                             pods))


@kopf.on.startup()
async def start_collecting(memo: kopf.Memo, **kwargs: Any) -> None:
    found = Collector(lookup_from(memo, kwargs))  # kopf's indexes: live views, filled later
    memo.kustos_sidecars = found
    found.start(config().sidecars.collect_interval, peering.active_check(memo))


@kopf.on.cleanup()
async def stop_collecting(memo: kopf.Memo, **_: Any) -> None:
    found: Collector | None = getattr(memo, "kustos_sidecars", None)
    if found is not None:
        await found.stop()


def refresh_targeting(md_name: str, namespace: str, lookup: Lookup,
                      skip: str | None = None) -> None:
    """Refresh every ExplainerSpec / DriftMonitor that targets this ModelDeployment (its
    creation or deletion changes their status at once, not at the next poll)."""
    for kind, refresh in _REFRESH.items():
        for obj in lookup.targeting(kind, namespace, md_name):
            if obj["metadata"]["name"] != skip:
                try:
                    refresh(namespace, obj["metadata"]["name"], lookup)
                except (ApiError, ValidationError) as err:
                    log.warning("refresh of %s %s/%s failed: %s", kind, namespace,
                                obj["metadata"]["name"], err)


def attached_to_changed(body: Mapping[str, Any], type_: str | None, lookup: Lookup) -> bool:
    """Did a ModelDeployment that ExplainerSpecs or DriftMonitors target appear or go
    away? (In memory; then :func:`target_changed` tells them, in a thread.)"""
    if type_ not in ("ADDED", "DELETED") or not _REFRESH:
        return False
    meta = body["metadata"]
    return any(lookup.targeting(kind, meta["namespace"], meta["name"]) for kind in _REFRESH)


def target_changed(body: Mapping[str, Any], type_: str | None, lookup: Lookup) -> None:
    """A ModelDeployment appeared or went away: its ExplainerSpecs and DriftMonitors
    learn at once (TargetNotFound resolves by itself)."""
    try:
        refresh_targeting(body["metadata"]["name"], body["metadata"]["namespace"], lookup)
    except ApiError as err:
        log.warning("refresh after %s of md %s failed: %s", type_, body["metadata"]["name"],
                    err)
