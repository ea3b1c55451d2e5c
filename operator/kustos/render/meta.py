"""Names, labels and owner references every child of a Kustos resource carries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kustos.api.v1alpha1 import API_VERSION

MANAGED_BY = "kustos"
INSTANCE = "app.kubernetes.io/instance"
MANAGED = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
NAME = "app.kubernetes.io/name"
TRACK = "kustos.dev/track"
SPEC_HASH = "kustos.dev/spec-hash"
# On a model pod template: which model it serves (status judges rollouts by them).
MODEL_VERSION = "kustos.dev/model-version"
MODEL_DIGEST = "kustos.dev/model-digest"


def base_labels(instance: str) -> dict[str, str]:
    """Labels on every child; the operator finds its children by these."""
    return {INSTANCE: instance, MANAGED: MANAGED_BY}


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference to a Kustos resource, so GC deletes the child with it."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_meta(owner: Mapping[str, Any], name: str, labels: Mapping[str, str] | None = None,
               annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """metadata of a child: name, namespace, labels, owner reference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": {**base_labels(owner["metadata"]["name"]), **(labels or {})},
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """A stable hash of a desired manifest (without the hash annotation itself).

    Stored on the child; a reconcile whose desired manifest hashes the same as the live
    child's annotation sends nothing to the API server.
    """
    clean = json.loads(json.dumps(manifest, sort_keys=True, default=str))
    clean.get("metadata", {}).get("annotations", {}).pop(SPEC_HASH, None)
    digest = hashlib.sha256(json.dumps(clean, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:32]


def with_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its spec-hash annotation set."""
    h = spec_hash(manifest)
    manifest.setdefault("metadata", {}).setdefault("annotations", {})[SPEC_HASH] = h
    return manifest
