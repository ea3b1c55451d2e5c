"""What the reconcile reads of the cluster, kept in kopf indexes instead of LISTed per pass.

Kopf fills every index from its initial listing before it calls any resource handler
(kopf/_core/reactor/processing.py waits for the operator-wide "indexed" toggle; pinned in
tests/unit/test_kopf_contract.py), and keeps it current from the watch. So a reconcile
resumed after a restart compares its render with the indexes and sends nothing when
nothing changed:

- the children of ModelDeployments (and ExplainerSpecs), one index per kind, watched
  with the ``app.kubernetes.io/managed-by=kustos`` selector (run.py sets it, so the API
  server filters), keyed by (namespace, instance label). Each value is a small
  :class:`Child`: name, uid, controller owner's uid, spec-hash, and for a Deployment what
  the status computation reads of it (not the whole body);
- ExplainerSpecs and DriftMonitors keyed by (namespace, target ModelDeployment name),
  each value the resource without its status and managed fields.

The indexes reach the code through :class:`Lookup`, built by a startup handler from the
indexes kopf hands it (live views, filled later) and kept in kopf's memo by the
controllers that read them. The lookups run in threads (kopf's sync handlers, the work
loops) while kopf updates the indexes on its event loop; a read that meets an update
in the middle of an iteration is read again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf

from kustos.api.v1alpha1 import GROUP, VERSION
from kustos.render.meta import INSTANCE, MANAGED, MANAGED_BY, SPEC_HASH

T = TypeVar("T")

# kind -> (group, version, plural) of the kinds of the children Kustos labels (those of
# kustos.k8s.resources.MODEL_CHILD_KINDS, a unit test keeps them in step; an
# ExplainerSpec's report ConfigMap too). A kind missing here is LISTed instead.
CHILD_RESOURCES: dict[str, tuple[str, str, str]] = {
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "ConfigMap": ("", "v1", "configmaps"),
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}
# kind -> the index's name (kopf injects indexes into handlers' kwargs by this name).
CHILD_INDEX = {kind: f"kustos_children_{plural}"
               for kind, (_, _, plural) in CHILD_RESOURCES.items()}
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


def _register_children() -> None:
    for kind, (group, version, plural) in CHILD_RESOURCES.items():
        keep = deployment_kept if kind == "Deployment" else None

        def make(kind: str = kind, keep: Any = keep) -> Any:
            async def index_child(body: kopf.Body, **_: Any) -> dict[Key, Child] | None:
                return child_entry(kind, body, keep)
            return index_child

        kopf.index(group, version, plural, id=CHILD_INDEX[kind],
                   labels={MANAGED: MANAGED_BY})(make())


_register_children()


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
    """Read access to the indexes above (kept in kopf's memo by the controllers).

    ``indexes`` maps the index names to kopf's indexes (or plain mappings of key to
    list of values, in tests)."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        missing = [name for name in (*CHILD_INDEX.values(), *ATTACHMENT_INDEX.values())
                   if name not in indexes]
        if missing:
            raise ValueError(f"kopf did not provide the indexes {', '.join(missing)}")
        self._children = {kind: indexes[name] for kind, name in CHILD_INDEX.items()}
        self._attachments = {kind: indexes[name] for kind, name in ATTACHMENT_INDEX.items()}

    def children(self, namespace: str, instance: str, uid: str,
                 kinds: Iterable[str]) -> dict[tuple[str, str], Child]:
        """The live children of ``kinds`` labelled for ``instance`` whose controller owner
        is ``uid``, by (kind, name)."""
        found: dict[tuple[str, str], Child] = {}
        for kind in kinds:
            for child in _values(self._children[kind], (namespace, instance)):
                if child.owner == uid:
                    found[(kind, child.name)] = child
        return found

    def targeting(self, kind: str, namespace: str, target: str) -> list[dict[str, Any]]:
        """The ExplainerSpecs or DriftMonitors (``kind``) that target this ModelDeployment,
        deleted ones included (render.sidecars.active_for picks the wired one)."""
        return _values(self._attachments[kind], (namespace, target))


def lookup_from(kwargs: Mapping[str, Any]) -> Lookup:
    """The Lookup over the indexes kopf injected into a handler's kwargs."""
    return Lookup(kwargs)
