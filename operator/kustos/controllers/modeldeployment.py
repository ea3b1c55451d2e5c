"""ModelDeployment handlers: render, apply what differs, report status from the cluster."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from kustos import metrics
from kustos.api.v1alpha1 import GROUP, VERSION
from kustos.k8s import client, events
from kustos.k8s import status as k8s_status
from kustos.k8s.client import ApiError
from kustos.render import modeldeployment as render_md
from kustos.render.keda import model_child_kinds
from kustos.render.meta import COMPONENT, INSTANCE, base_labels
from kustos.status import modeldeployment as status_md
from kustos.status import pods as status_pods
from kustos.status.conditions import Failure, Notice

from .attachments import AttachmentPending, AttachmentProblem, gather
from .child_watches import child_watches
from .children import NameConflict, known, sync
from .context import backoff, config
from .gateway import gateway_api
from .indexes import Child, Lookup, lookup_from

log = logging.getLogger(__name__)
KIND = "ModelDeployment"
# How long a status refresh waits for more events of the same object: status is at most
# this much behind the cluster, and a rollout step's burst of events costs one write.
REFRESH_DELAY = 1.0
# How long a new object's first status waits for its rollout to finish: a model whose pods
# are ready within this costs one status write (Ready), not two (Progressing, then Ready).
# A failure is written at once; a slower rollout shows Progressing after this.
FIRST_STATUS_GRACE = 5.0


def write_status(body: Mapping[str, Any], deployments: Mapping[str, Mapping[str, Any]],
                 failure: Failure | None = None, waiting: str | None = None, *,
                 current: dict[str, Any] | None = None,
                 reconciled: Callable[[], Reconciled | None] | None = None,
                 gateway_api: bool = False) -> None:
    """Write the rollout's part of the status (status_md.ROLLOUT) from what the cluster
    reports, judged against ``body``'s spec and generation (the ones this pass rendered; a
    newer spec gets its own reconcile). ``current`` is a recent read to start from.
    ``reconciled`` (the refresh's): the failure comes from the reconcile's latest record,
    read after each read of the object, so a failure recorded (and written) meanwhile is
    never overwritten by a status computed without it."""
    meta = body["metadata"]
    notices: list[Notice] = []

    def update(fresh: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal failure, waiting
        if reconciled is not None:
            done = reconciled()
            if done is None or done.generation != meta.get("generation"):
                return None  # the reconcile is due; it writes the status itself
            failure, waiting = done.failure, done.waiting
        fresh = {**fresh, "spec": body["spec"],
                 "metadata": {**fresh["metadata"], "generation": meta.get("generation")}}
        pod_failure = None
        if not status_md.settled(fresh, deployments):
            # Only a rollout that is not done needs its pods read for the reason.
            pod_failure = status_pods.problem(client.list_objects(
                "Pod", meta["namespace"],
                {**base_labels(meta["name"]), COMPONENT: "predictor"}))
        new, found = status_md.compute(fresh, deployments, config(), datetime.now(UTC),
                                       failure, pod_failure, waiting, gateway_api)
        notices[:] = found
        return new

    written = k8s_status.write(KIND, meta["name"], meta["namespace"], meta["uid"],
                               status_md.ROLLOUT, update, current)
    if written is not None and written.wrote:
        for notice in notices:
            events.post(written.before, notice.reason, notice.message, warning=notice.warning)


def live_deployments(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The serving Deployments of a ModelDeployment, by name, LISTed (the Vault loop's;
    the reconcile and the refresh read them from the index: Models.deployments)."""
    return {d["metadata"]["name"]: d for d in client.list_objects(
        "Deployment", meta["namespace"], base_labels(meta["name"]))}


def _deployments(desired: list[dict[str, Any]],
                 applied: Mapping[tuple[str, str], Mapping[str, Any]],
                 live: Mapping[tuple[str, str], Child]) -> dict[str, Any]:
    """The rendered Deployments as they stand after a sync: what the apply returned, else
    what the index keeps of the live one."""
    found: dict[str, Any] = {}
    for manifest in desired:
        key = (manifest["kind"], manifest["metadata"]["name"])
        if key[0] != "Deployment":
            continue
        if key in applied:
            found[key[1]] = applied[key]
        elif key in live and live[key].kept is not None:
            found[key[1]] = dict(live[key].kept or {})
    return found


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments")
def reconcile(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    started = time.perf_counter()
    result = "ok"
    try:
        _reconcile(body, retry, models(memo))
    except kopf.PermanentError:
        result = "invalid"
        raise
    except kopf.TemporaryError:
        result = "retry"
        raise
    finally:
        metrics.RECONCILES.labels(kind=KIND, result=result).inc()
        metrics.RECONCILE_SECONDS.labels(kind=KIND).observe(time.perf_counter() - started)


@dataclass(frozen=True)
class Reconciled:
    """What this process's last reconcile of an object found: the generation it rendered,
    the failure it ran into (None: it applied everything) or what it waits for."""

    generation: int | None
    failure: Failure | None = None
    waiting: str | None = None  # what the render waits for (no pods yet)
    at: float = field(default_factory=time.monotonic)  # when it was recorded


class Models:
    """The ModelDeployment controller's state in this process, kept in kopf's memo.

    ``lookup`` reads kopf's indexes (the children, the ExplainerSpecs and DriftMonitors by
    target). The status refresh needs the reconcile's last failure (a failure stays Degraded until
    the reconcile clears it): it is remembered here rather than rebuilt from the status.
    Until this process has reconciled an object (just after a start) the refresh waits.
    One render at a time per object: kopf serialises its own handler calls, but the Vault
    loop and the ExplainerSpec/DriftMonitor handlers re-render too, and a render that
    gathered its attachments earlier must not apply after (and undo) a newer one."""

    def __init__(self, lookup: Lookup, gateway_api: bool = False) -> None:
        self.lookup = lookup
        # the cluster serves HTTPRoutes (controllers/gateway.py), looked up at start-up
        self.gateway_api = gateway_api
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._reconciled: dict[str, Reconciled] = {}
        self._due: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._refreshing: set[asyncio.Task[float | None]] = set()

    def lock(self, uid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(uid, threading.Lock())

    def record(self, uid: str, done: Reconciled) -> None:
        with self._guard:
            self._reconciled[uid] = done

    def reconciled(self, uid: str) -> Reconciled | None:
        with self._guard:
            return self._reconciled.get(uid)

    def forget(self, uid: str) -> None:
        with self._guard:
            self._locks.pop(uid, None)
            self._reconciled.pop(uid, None)

    # -- the serving Deployments, as the Deployment index shows them

    def deployments(self, namespace: str, name: str, uid: str) -> dict[str, Any]:
        """The object's serving Deployments by name (what the status reads of each)."""
        return {c.name: dict(c.kept or {}) for c in
                self.lookup.children(namespace, name, uid, ("Deployment",)).values()}

    # -- the debounced status refresh (only touched on kopf's event loop)

    def refresh_soon(self, namespace: str, name: str, uid: str | None,
                     delay: float = REFRESH_DELAY) -> None:
        """Refresh this object's status ``delay`` from now, unless one is due already:
        the burst of Deployment and pod events of a rollout step costs one read and at
        most one write. ``uid`` None: whichever object has that name."""
        key = (namespace, name)
        if key in self._due:
            return
        loop = asyncio.get_running_loop()
        self._due[key] = loop.call_later(delay, self._start_refresh, namespace, name, uid)

    def _start_refresh(self, namespace: str, name: str, uid: str | None) -> None:
        self._due.pop((namespace, name), None)  # events from now on schedule the next one
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(_refresh_by_name, namespace, name, uid, self))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

        def again(done: asyncio.Task[float | None]) -> None:
            # a first status held back (FIRST_STATUS_GRACE): look again when it ends
            if not done.cancelled() and done.exception() is None and done.result():
                self.refresh_soon(namespace, name, uid, delay=done.result() or REFRESH_DELAY)
        task.add_done_callback(again)

    async def stop(self) -> None:
        for handle in self._due.values():
            handle.cancel()
        self._due.clear()
        await asyncio.gather(*self._refreshing, return_exceptions=True)


def models(memo: Any) -> Models:
    """This process's Models, from kopf's memo (operator-wide; per-object memos are
    shallow copies of it, so every handler sees the same one)."""
    found: Models = memo.kustos_models
    return found


@kopf.on.startup()
def create_state(memo: kopf.Memo, **kwargs: Any) -> None:
    # kopf hands startup handlers its indexes, still empty: live views it fills before
    # any resource handler runs (controllers/indexes.py).
    memo.kustos_models = Models(lookup_from(memo, kwargs), gateway_api(memo))


@kopf.on.cleanup()
async def stop_refreshes(memo: kopf.Memo, **_: Any) -> None:
    await models(memo).stop()


def _reconcile(body: Mapping[str, Any], retry: int, state: Models) -> None:
    uid = body["metadata"]["uid"]
    with state.lock(uid):
        _reconcile_locked(body, retry, state)


def _reconcile_locked(body: Mapping[str, Any], retry: int, state: Models) -> None:
    body = dict(body)
    meta = body["metadata"]
    try:
        attachments = gather(body, state.lookup)
    except AttachmentPending as err:
        state.record(meta["uid"], Reconciled(meta.get("generation"), waiting=err.message))
        write_status(body, state.deployments(meta["namespace"], meta["name"], meta["uid"]),
                     waiting=err.message, gateway_api=state.gateway_api)
        log.info("%s/%s waits: %s", body["metadata"]["namespace"], body["metadata"]["name"],
                 err.message)
        return
    except AttachmentProblem as err:
        _fail(state, body, err.reason, err.message, permanent=False, retry=retry)
    try:
        desired = render_md.render(body, config(), attachments, state.gateway_api)
    except ValidationError as err:
        # The schema should have refused this; an older CRD or a manual status edit can
        # still get here. Say so, don't retry until the spec changes.
        _fail(state, body, "InvalidSpec", _validation_message(err), permanent=True)
    try:
        missing = _missing_references(body)
        if missing:
            _fail(state, body, "CredentialsNotFound", missing, permanent=False, retry=retry)
        # Recorded before the children change: the refresh a Deployment event schedules
        # must find this generation reconciled. A failure of this generation stands until
        # this pass has applied everything (a refresh meanwhile must not clear it, only
        # for the pass to set it again: two Events for one problem).
        uid, generation = body["metadata"]["uid"], body["metadata"].get("generation")
        before = state.reconciled(uid)
        standing = before.failure if before and before.generation == generation else None
        state.record(uid, Reconciled(generation, standing))
        kinds = model_child_kinds(config(), state.gateway_api)
        live = known(body, kinds, state.lookup)
        applied = sync(body, desired, kinds, live)
        state.record(uid, Reconciled(generation))
        if standing is not None or not any(kind == "Deployment" for kind, _ in applied):
            # Compared with the body kopf handed us (fresh from its listing on a resume),
            # not a GET: a stale one fails the write's resourceVersion precondition and is
            # read again, and any later change of the object schedules a refresh anyway.
            write_status(body, _deployments(desired, applied, live), current=body,
                         gateway_api=state.gateway_api)
        # else: the applied Deployment's watch event refreshes the status in a moment,
        # from what its controller reports by then (one write instead of two).
    except NameConflict as err:
        _fail(state, body, "NameConflict", str(err), permanent=True)
    except ApiError as err:
        if err.status == 404 and err.reason == "NotFound" and _gone(body):
            return  # deleted while we worked; garbage collection does the rest
        if err.status in (400, 422):
            _fail(state, body, "InvalidChild", err.message, permanent=True)
        _fail(state, body, "Forbidden" if err.status == 403 else "ApiError", err.message,
              permanent=False, retry=retry)


def rerender(name: str, namespace: str, state: Models) -> None:
    """Reconcile a ModelDeployment again because something that attaches to its pods
    changed (an ExplainerSpec or DriftMonitor targeting it, a Vault sync); nothing if it
    is gone. Its errors are its own: they land in its status."""
    md = client.get(KIND, name, namespace)
    if md is None or md["metadata"].get("deletionTimestamp"):
        return
    try:
        _reconcile(md, 0, state)
    except (kopf.TemporaryError, kopf.PermanentError) as err:
        log.info("ModelDeployment %s/%s not re-rendered now: %s", namespace, name, err)


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


def _fail(state: Models, body: Mapping[str, Any], reason: str, message: str, *,
          permanent: bool, retry: int = 0) -> NoReturn:
    metrics.RECONCILE_ERRORS.labels(kind=KIND, reason=reason).inc()
    failure = Failure(reason, message)
    state.record(body["metadata"]["uid"], Reconciled(body["metadata"].get("generation"), failure))
    try:
        meta = body["metadata"]
        write_status(body, state.deployments(meta["namespace"], meta["name"], meta["uid"]),
                     failure, gateway_api=state.gateway_api)
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


def refresh_status(md: dict[str, Any], state: Models) -> float | None:
    """Recompute a ModelDeployment's rollout status from its live Deployments, once this
    process has reconciled its generation; writes only when something changed. Returns
    the seconds after which to look again when it held a first status back."""
    meta = md["metadata"]
    done = state.reconciled(meta["uid"])
    if done is None or done.generation != meta.get("generation"):
        return None  # the reconcile is due; it writes the status itself
    deployments = state.deployments(meta["namespace"], meta["name"], meta["uid"])
    stale = status_md.stale_templates(md, deployments)
    if stale:
        # The spec was reconciled, yet a Deployment carries an older render: converge
        # again rather than report a version that no pod serves.
        log.info("%s/%s: %s carry an older model version than the spec; re-rendering",
                 meta["namespace"], meta["name"], ", ".join(stale))
        _reconcile(md, 0, state)
        return None
    wait = done.at + FIRST_STATUS_GRACE - time.monotonic()
    if (wait > 0 and not (md.get("status") or {}).get("observedGeneration")
            and done.failure is None and done.waiting is None
            and not status_md.settled(md, deployments)):
        return wait  # no status yet and the rollout is under way: the next look may be Ready
    write_status(md, deployments, current=md,
                 reconciled=lambda: state.reconciled(meta["uid"]),
                 gateway_api=state.gateway_api)
    return None


def _refresh_by_name(namespace: str, name: str, uid: str | None,
                     state: Models) -> float | None:
    try:
        md = client.get(KIND, name, namespace)
        if md is not None and uid in (None, md["metadata"]["uid"]) and \
                not md["metadata"].get("deletionTimestamp"):
            return refresh_status(md, state)
    except (ApiError, ValidationError) as err:
        log.warning("status refresh of %s/%s failed: %s", namespace, name, err)
    return None


def model_changed(state: Models, body: Mapping[str, Any], type_: str | None) -> None:
    """Every change of a ModelDeployment, its status included (controllers/model_events.py
    calls this on kopf's loop). A Deployment that became Available between the
    reconcile's apply and its status write is seen here, so no status is left behind by
    that race."""
    meta = body["metadata"]
    if type_ == "DELETED":
        state.forget(meta["uid"])
        return
    if state.reconciled(meta["uid"]) is None:
        # Not reconciled by this process yet (the listing at start-up): the reconcile is
        # due and writes the status itself from what this event shows; a refresh would
        # only read the object to find that out (1000 GETs in a resync of 1000).
        return
    state.refresh_soon(meta["namespace"], meta["name"], meta["uid"])


def deployment_changed(state: Models, type_: str, body: Mapping[str, Any]) -> None:
    """A serving Deployment changed (rollout progress, availability): refresh the owner's
    status (the refresh reads the Deployments from the ChildCache, which has the change
    before this runs)."""
    owner = _owner(body)
    if owner is not None and state.reconciled(owner["uid"]) is not None:
        # (else the owner's reconcile is due: it reads this Deployment from the cache)
        state.refresh_soon(body["metadata"]["namespace"], owner["name"], owner["uid"])


def _owner(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((ref for ref in body["metadata"].get("ownerReferences") or []
                 if ref.get("kind") == KIND and ref.get("controller")), None)


def pod_changed(state: Models, type_: str, body: Mapping[str, Any]) -> None:
    """A serving pod reports a problem (the fetch failed, an image cannot be pulled, the
    server crashes): say why in the owner's status. Recovery shows in the Deployment,
    whose own events refresh the status, so healthy pods cost nothing here."""
    if type_ == "DELETED" or status_pods.problem([body]) is None:
        return
    name = (body["metadata"].get("labels") or {}).get(INSTANCE)
    if name:
        state.refresh_soon(body["metadata"]["namespace"], name, None)


@kopf.on.startup()
async def listen_to_children(memo: kopf.Memo, **_: Any) -> None:
    """Deployment and pod events (controllers/child_watches.py) refresh the status."""
    def to(handler: Callable[[Models, str, Mapping[str, Any]], None],
           ) -> Callable[[str, Mapping[str, Any]], None]:
        def listener(type_: str, body: Mapping[str, Any]) -> None:
            state = getattr(memo, "kustos_models", None)
            if state is not None:  # (create_state has run)
                handler(state, type_, body)
        return listener

    watches = child_watches(memo)
    watches.listen("Deployment", to(deployment_changed))
    watches.listen("Pod", to(pod_changed))
