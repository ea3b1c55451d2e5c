"""What the reconcile reads of the cluster, kept in memory instead of LISTed per pass.

- The children of Kustos resources (ServiceAccounts, Deployments, Services, ...), one
  ``ChildCache`` in kopf's memo, kept by plain LIST+WATCH threads of our own
  (controllers/child_watches.py) with the ``app.kubernetes.io/managed-by=kustos``
  selector (the API server filters). Keyed by (namespace, instance label); each value is
  a small :class:`Child`: name, uid, controller owner's uid, spec-hash, and for a
  Deployment what the status computation reads of it (not the whole body).
  Neither kopf indexes nor kopf event handlers: kopf holds every resource handler until
  every indexed object has been indexed, and that wait grows with the square of the
  objects (1000 indexed objects 2.7 s, 4000 58 s, measured with
  tests/unit/test_kopf_contract.py's fake API server); and kopf keeps a worker, state
  and a handler task per watched object, which for 4000 children made a restart's
  resync and memory the largest costs of the operator.
- ExplainerSpecs and DriftMonitors (few) in kopf indexes keyed by (namespace, target
  ModelDeployment name), each value the resource without its status and managed fields.
  Kopf fills its indexes before it calls any resource handler (pinned in
  tests/unit/test_kopf_contract.py).

Both reach the code through :class:`Lookup`, built by startup handlers (kopf hands them
its indexes, live views filled later) and kept in kopf's memo by the controllers that
read them. A watch that ends is resumed from its last version, or listed again after
410 Gone or an error, and a listing drops what the watch missed (ChildCache.relist).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf

from kustos.api.v1alpha1 import GROUP, VERSION
from kustos.k8s.client import ApiError
from kustos.render.meta import INSTANCE, SPEC_HASH

log = logging.getLogger(__name__)
T = TypeVar("T")

# kind -> (group, version, plural) of the kinds of the children Kustos labels (those of
# kustos.render.keda.model_child_kinds, a unit test keeps them in step; an
# ExplainerSpec's report ConfigMap too). A kind missing here is LISTed instead.
CHILD_RESOURCES: dict[str, tuple[str, str, str]] = {
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "ConfigMap": ("", "v1", "configmaps"),
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
    # watched only with the operator config's autoscaling.requests_backend: keda (its CRD
    # may be missing elsewhere): kustos.render.keda.model_child_kinds
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
    # watched only when the cluster serves the Gateway API (controllers/gateway.py)
    "HTTPRoute": ("gateway.networking.k8s.io", "v1", "httproutes"),
}
# kind -> the index's name (kopf injects indexes into handlers' kwargs by this name).
ATTACHMENT_INDEX = {"ExplainerSpec": "kustos_explainers_by_target",
                    "DriftMonitor": "kustos_drift_monitors_by_target"}

Key = tuple[str, str]  # (namespace, name of the ModelDeployment)


@dataclass(frozen=True, slots=True)
class Child:
    """What the children sync needs of a live child (and the status, of a Deployment)."""

    kind: str
    name: str
    uid: str
    owner: str  # the uid of its controller owner ("" when it has none)
    spec_hash: str | None
    # A Deployment's fields the rollout status reads (deployment_kept), else None.
    kept: Mapping[str, Any] | None = None


def controller_uid(meta: Mapping[str, Any]) -> str:
    return next((str(ref.get("uid")) for ref in meta.get("ownerReferences") or []
                 if ref.get("controller")), "")


def child_of(kind: str, body: Mapping[str, Any],
             keep: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> Child:
    meta = body["metadata"]
    return Child(kind, meta["name"], meta["uid"], controller_uid(meta),
                 (meta.get("annotations") or {}).get(SPEC_HASH),
                 keep(body) if keep is not None else None)


def child_entry(kind: str, body: Mapping[str, Any],
                keep: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
                ) -> dict[Key, Child] | None:
    """The index entry of a labelled child: under its namespace and instance label."""
    meta = body["metadata"]
    instance = (meta.get("labels") or {}).get(INSTANCE)
    if not instance:
        return None
    return {(meta["namespace"], instance): child_of(kind, body, keep)}


def attachment_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]] | None:
    """The index entry of an ExplainerSpec / DriftMonitor: under (namespace, target), the
    resource without status and managed fields (the render reads metadata and spec)."""
    meta = body["metadata"]
    target = ((body.get("spec") or {}).get("targetRef") or {}).get("name")
    if not target:
        return None
    kept_meta = {k: meta[k] for k in ("name", "namespace", "uid", "creationTimestamp",
                                      "deletionTimestamp", "generation", "labels")
                 if meta.get(k) is not None}
    return {(meta["namespace"], str(target)): {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": kept_meta, "spec": _plain(body.get("spec") or {})}}


def _plain(value: Any) -> Any:
    """A deep copy in builtins (kopf's bodies are views over the raw event)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def deployment_kept(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """What the status computation reads of a Deployment (status_md.rollout), not the
    whole body: a thousand pod templates cost memory for nothing."""
    meta, spec = deployment["metadata"], deployment.get("spec") or {}
    template = (spec.get("template") or {}).get("metadata") or {}
    kept: dict[str, Any] = {
        "metadata": {"name": meta["name"], "generation": meta.get("generation", 0)},
        "spec": {"template": {"metadata": {"annotations": _plain(template.get("annotations")
                                                                 or {})}}},
        "status": _plain(deployment.get("status") or {})}
    if "replicas" in spec:
        kept["spec"]["replicas"] = spec["replicas"]
    return kept


def slim(kind: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """What a listing keeps of each child of ``kind`` until the ChildCache has filed it:
    the fields child_entry (and for a Deployment, deployment_kept) read, not the whole
    body (a thousand pod templates and managed fields in one listing)."""
    def keep(body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        out: dict[str, Any] = {k: meta[k] for k in ("name", "namespace", "uid", "generation")
                               if k in meta}
        instance = (meta.get("labels") or {}).get(INSTANCE)
        if instance:
            out["labels"] = {INSTANCE: instance}
        spec_hash = (meta.get("annotations") or {}).get(SPEC_HASH)
        if spec_hash:
            out["annotations"] = {SPEC_HASH: spec_hash}
        out["ownerReferences"] = [dict(ref) for ref in meta.get("ownerReferences") or []
                                  if ref.get("controller")]
        if kind != "Deployment":
            return {"metadata": out}
        kept = deployment_kept(body)
        return {**kept, "metadata": {**out, **kept["metadata"]}}
    return keep


class NotListedYet(ApiError):
    """The children of a kind in a namespace are not listed yet (the watch's first LIST
    has not answered): the caller retries later."""

    def __init__(self, kind: str, namespace: str) -> None:
        super().__init__(503, "NotListedYet",
                         f"the {kind} objects in {namespace} are not listed yet")


# How long a read waits for a kind's first listing before it gives up (and its
# reconcile is retried): an API server that does not answer LISTs for this long.
LIST_WAIT = 30.0


class ChildCache:
    """The labelled children as the watches show them: kind -> (namespace, instance) ->
    uid -> Child. Written by the watch threads (controllers/child_watches.py), read by
    kopf's handler threads: a lock guards it.

    A read waits until its kind is listed for the namespace read, once a watch of that
    scope is expected (``expect``): a reconcile must never take a child that exists for
    missing (it would read it by name and find it, but the status would not see it)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._by_kind: dict[str, dict[Key, dict[str, Child]]] = {k: {} for k in CHILD_RESOURCES}
        self._where: dict[str, tuple[str, Key]] = {}  # uid -> where it is filed
        # uid -> when an event last said something of it (deletions included), so a re-list
        # does not undo what the watch told after the LIST began
        self._told: dict[str, float] = {}
        # (kind, scope) -> listed yet; scope: a namespace, or None for every namespace
        self._scopes: dict[tuple[str, str | None], bool] = {}

    def see(self, kind: str, body: Mapping[str, Any], deleted: bool = False) -> None:
        uid = body["metadata"]["uid"]
        entry = None if deleted else child_entry(
            kind, body, deployment_kept if kind == "Deployment" else None)
        with self._lock:
            self._told[uid] = time.monotonic()
            self._file(kind, uid, entry)

    def _file(self, kind: str, uid: str, entry: Mapping[Key, Child] | None) -> None:
        before = self._where.pop(uid, None)
        if before is not None:
            bucket = self._by_kind[before[0]]
            bucket.get(before[1], {}).pop(uid, None)
            if not bucket.get(before[1], True):
                del bucket[before[1]]
        for key, child in (entry or {}).items():
            self._by_kind[kind].setdefault(key, {})[uid] = child
            self._where[uid] = (kind, key)

    def relist(self, kind: str, listed: Iterable[Mapping[str, Any]], began: float,
               namespace: str | None = None) -> int:
        """Make ``kind``'s entries (in ``namespace``; None: all) agree with a LIST begun at
        ``began`` (time.monotonic()): a watch that restarts from a new listing reports no
        deletions it missed, so without this a child deleted during an outage would stay
        here, and its owner's reconcile would never re-create it. Entries an event spoke
        of after ``began`` are left as it said. Marks the scope listed. Returns how many
        entries changed."""
        keep = deployment_kept if kind == "Deployment" else None
        bodies = {obj["metadata"]["uid"]: obj for obj in listed}
        changed = 0
        with self._lock:
            for uid, (filed_kind, key) in list(self._where.items()):
                if (filed_kind == kind and namespace in (None, key[0]) and uid not in bodies
                        and self._told.get(uid, 0) < began):
                    self._file(kind, uid, None)
                    changed += 1
            for uid, obj in bodies.items():
                if self._told.get(uid, 0) >= began:
                    continue
                entry = child_entry(kind, obj, keep)
                filed = self._where.get(uid)
                now = (self._by_kind[kind].get(filed[1], {}).get(uid)
                       if filed is not None else None)
                if entry is not None and now not in entry.values():
                    self._file(kind, uid, entry)
                    changed += 1
            # what is neither filed nor recent is forgotten
            self._told = {uid: t for uid, t in self._told.items()
                          if uid in self._where or t >= began}
            self._scopes[(kind, namespace)] = True
            self._lock.notify_all()
        return changed

    def expect(self, kind: str, namespace: str | None) -> None:
        """A watch of ``kind`` in ``namespace`` (None: everywhere) starts: reads there wait
        for its first listing."""
        with self._lock:
            self._scopes.setdefault((kind, namespace), False)

    def drop(self, kind: str, namespace: str) -> None:
        """The watch of ``kind`` in ``namespace`` ended (the namespace went out of scope):
        forget its entries."""
        with self._lock:
            self._scopes.pop((kind, namespace), None)
            for uid, (filed_kind, key) in list(self._where.items()):
                if filed_kind == kind and key[0] == namespace:
                    self._file(kind, uid, None)

    def _listed(self, kind: str, namespace: str) -> bool:
        return all(self._scopes.get((kind, scope), True) for scope in (None, namespace))

    def get(self, kind: str, key: Key) -> list[Child]:
        with self._lock:
            if not self._lock.wait_for(lambda: self._listed(kind, key[0]), LIST_WAIT):
                raise NotListedYet(kind, key[0])
            return list(self._by_kind[kind].get(key, {}).values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._where)


def children_cache(memo: Any) -> ChildCache:
    """This process's ChildCache, in kopf's operator-wide memo (created on first use,
    kept by the watches of controllers/child_watches.py)."""
    found = memo.get("kustos_children")
    if found is None:
        found = memo.setdefault("kustos_children", ChildCache())
    assert isinstance(found, ChildCache)
    return found


@kopf.index(GROUP, VERSION, "explainerspecs", id=ATTACHMENT_INDEX["ExplainerSpec"])
async def index_explainers(body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]] | None:
    return attachment_entry(body)


@kopf.index(GROUP, VERSION, "driftmonitors", id=ATTACHMENT_INDEX["DriftMonitor"])
async def index_drift_monitors(body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]] | None:
    return attachment_entry(body)


def _values(index: Mapping[Any, Iterable[T]], key: Any) -> list[T]:
    """The values under ``key``, read while kopf may be updating the index on its loop:
    an iteration that meets a change of size is simply done again."""
    for _ in range(1000):
        try:
            store = index.get(key)
            return [] if store is None else list(store)
        except RuntimeError:  # "changed size during iteration"
            continue
    raise RuntimeError(f"index entry {key!r} kept changing while read")


class Lookup:
    """Read access to the children cache and the attachment indexes (kept in kopf's memo
    by the controllers).

    ``indexes`` maps the index names to kopf's indexes (or plain mappings of key to
    list of values, in tests)."""

    def __init__(self, indexes: Mapping[str, Any], children: ChildCache) -> None:
        missing = [name for name in ATTACHMENT_INDEX.values() if name not in indexes]
        if missing:
            raise ValueError(f"kopf did not provide the indexes {', '.join(missing)}")
        self._children = children
        self._attachments = {kind: indexes[name] for kind, name in ATTACHMENT_INDEX.items()}

    def children(self, namespace: str, instance: str, uid: str,
                 kinds: Iterable[str]) -> dict[tuple[str, str], Child]:
        """The live children of ``kinds`` labelled for ``instance`` whose controller owner
        is ``uid``, by (kind, name)."""
        found: dict[tuple[str, str], Child] = {}
        for kind in kinds:
            for child in self._children.get(kind, (namespace, instance)):
                if child.owner == uid:
                    found[(kind, child.name)] = child
        return found

    def targeting(self, kind: str, namespace: str, target: str) -> list[dict[str, Any]]:
        """The ExplainerSpecs or DriftMonitors (``kind``) that target this ModelDeployment,
        deleted ones included (render.sidecars.active_for picks the wired one)."""
        return _values(self._attachments[kind], (namespace, target))


def lookup_from(memo: Any, kwargs: Mapping[str, Any]) -> Lookup:
    """The Lookup over the indexes kopf injected into a handler's kwargs and the children
    cache in its memo."""
    return Lookup(kwargs, children_cache(memo))
