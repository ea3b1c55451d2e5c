"""Bring a resource's children to the rendered state, writing only what differs."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kustos import metrics
from kustos.k8s import client
from kustos.render.meta import SPEC_HASH, base_labels

from .indexes import CHILD_RESOURCES, Child, Lookup, child_of

log = logging.getLogger(__name__)


class NameConflict(Exception):
    """A child's name is taken by an object Kustos does not own."""


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in obj["metadata"].get("ownerReferences") or [])


def listed(owner: Mapping[str, Any], kinds: Iterable[str]) -> dict[tuple[str, str], Child]:
    """The owned children of ``kinds``, LISTed by label (for kinds no index keeps)."""
    meta = owner["metadata"]
    live: dict[tuple[str, str], Child] = {}
    for kind in kinds:
        for obj in client.list_objects(kind, meta["namespace"], base_labels(meta["name"])):
            if owned_by(obj, meta["uid"]):
                live[(kind, obj["metadata"]["name"])] = child_of(kind, obj)
    return live


def known(owner: Mapping[str, Any], kinds: Iterable[str],
          lookup: Lookup) -> dict[tuple[str, str], Child]:
    """The owned children of ``kinds``: from the children cache (controllers/indexes.py),
    LISTed for a kind it does not keep."""
    meta = owner["metadata"]
    kinds = tuple(kinds)
    live = lookup.children(meta["namespace"], meta["name"], meta["uid"],
                           [k for k in kinds if k in CHILD_RESOURCES])
    rest = [k for k in kinds if k not in CHILD_RESOURCES]
    if rest:
        live.update(listed(owner, rest))
    return live


def sync(owner: Mapping[str, Any], desired: Iterable[dict[str, Any]],
         kinds: Iterable[str], live: Mapping[tuple[str, str], Child] | None = None,
         ) -> dict[tuple[str, str], dict[str, Any]]:
    """Apply each desired child that differs from the live one; delete owned children of
    ``kinds`` that are no longer desired. ``live``: the owned children as an index shows
    them (controllers.indexes); None lists them. Returns what each apply returned, by
    (kind, name).

    A child whose spec-hash annotation matches its desired manifest is not touched, so a
    reconcile that finds nothing to change sends no request at all. A child that ``live``
    does not show is read before it is created: its name may be taken by a foreign object
    (NameConflict), or it may be ours and newer than the index (then its hash decides).
    """
    meta = owner["metadata"]
    uid, namespace = meta["uid"], meta["namespace"]
    kinds = tuple(kinds)
    if live is None:
        live = listed(owner, kinds)
    applied: dict[tuple[str, str], dict[str, Any]] = {}
    wanted: set[tuple[str, str]] = set()
    for manifest in desired:
        key = (manifest["kind"], manifest["metadata"]["name"])
        wanted.add(key)
        current = live.get(key)
        want_hash = manifest["metadata"]["annotations"][SPEC_HASH]
        if current is None:
            other = client.get(key[0], key[1], namespace)
            if other is not None:
                if not owned_by(other, uid):
                    raise NameConflict(f"{key[0]} {key[1]} exists and is not owned by this "
                                       f"{owner['kind']}; rename or delete it")
                current = child_of(key[0], other)
        if current is not None and current.spec_hash == want_hash:
            continue
        log.info("applying %s %s/%s", key[0], namespace, key[1])
        metrics.CHILDREN_APPLIED.labels(kind=key[0]).inc()
        applied[key] = client.apply(manifest)
    for key, child in live.items():
        if key not in wanted and key[0] in kinds:
            log.info("deleting %s %s/%s: no longer wanted", key[0], namespace, key[1])
            client.delete(key[0], key[1], namespace, child.uid)
    return applied
