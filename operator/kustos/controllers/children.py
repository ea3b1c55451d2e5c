"""Bring a resource's children to the rendered state, writing only what differs."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kustos import metrics
from kustos.k8s import client
from kustos.render.meta import SPEC_HASH, base_labels

log = logging.getLogger(__name__)


class NameConflict(Exception):
    """A child's name is taken by an object Kustos does not own."""


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in obj["metadata"].get("ownerReferences") or [])


def sync(owner: Mapping[str, Any], desired: Iterable[dict[str, Any]],
         kinds: Iterable[str], applied: list[tuple[str, str]] | None = None,
         ) -> dict[tuple[str, str], dict[str, Any]]:
    """Apply each desired child that differs from the live one; delete owned children of
    ``kinds`` that are no longer desired. Returns the live children by (kind, name), and
    appends the (kind, name) of each child it applied to ``applied``.

    A child whose spec-hash annotation matches its desired manifest is not touched, so a
    reconcile that finds nothing to change sends no write at all.
    """
    meta = owner["metadata"]
    uid, namespace = meta["uid"], meta["namespace"]
    selector = base_labels(meta["name"])
    live: dict[tuple[str, str], dict[str, Any]] = {}
    for kind in kinds:
        for obj in client.list_objects(kind, namespace, selector):
            if owned_by(obj, uid):
                live[(kind, obj["metadata"]["name"])] = obj
    result: dict[tuple[str, str], dict[str, Any]] = {}
    wanted: set[tuple[str, str]] = set()
    for manifest in desired:
        key = (manifest["kind"], manifest["metadata"]["name"])
        wanted.add(key)
        current = live.get(key)
        want_hash = manifest["metadata"]["annotations"][SPEC_HASH]
        if current is not None and \
                (current["metadata"].get("annotations") or {}).get(SPEC_HASH) == want_hash:
            result[key] = current
            continue
        if current is None:
            other = client.get(key[0], key[1], namespace)
            if other is not None and not owned_by(other, uid):
                raise NameConflict(f"{key[0]} {key[1]} exists and is not owned by this "
                                   f"{owner['kind']}; rename or delete it")
        log.info("applying %s %s/%s", key[0], namespace, key[1])
        metrics.CHILDREN_APPLIED.labels(kind=key[0]).inc()
        result[key] = client.apply(manifest)
        if applied is not None:
            applied.append(key)
    for key, obj in live.items():
        if key not in wanted:
            log.info("deleting %s %s/%s: no longer wanted", key[0], namespace, key[1])
            client.delete(key[0], key[1], namespace, obj["metadata"]["uid"])
    return result
