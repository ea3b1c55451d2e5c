"""controllers/handled.py: kopf's per-object memory (the last handled essence, handlers'
progress) kept in the process and nothing written on the object, except kopf's touch
that wakes a retry."""

from __future__ import annotations

from typing import Any

import kopf

from kustos.controllers import handled

KEY: Any = "reconcile"  # a kopf HandlerId


def body(uid: str = "u1", annotations: dict[str, str] | None = None) -> kopf.Body:
    raw: dict[str, Any] = {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
                           "metadata": {"name": "m", "namespace": "ns", "uid": uid,
                                        "annotations": annotations or {}},
                           "spec": {"replicas": 1}}
    return kopf.Body(raw)  # type: ignore[arg-type]  # a RawBody is a TypedDict


def test_progress_and_essence_stay_in_memory_and_write_nothing() -> None:
    settings, memo = kopf.OperatorSettings(), kopf.Memo()
    handled.install(settings, memo, prefix="kustos.dev")
    progress: handled.MemoryProgress = memo.kustos_progress
    diffbase: handled.MemoryDiffBase = memo.kustos_diffbase
    assert settings.persistence.progress_storage is progress
    assert settings.persistence.diffbase_storage is diffbase
    b, patch = body(), kopf.Patch()
    record: Any = {"started": "2026-12-06T00:00:00", "retries": 1, "success": False}
    progress.store(key=KEY, record=record, body=b, patch=patch)
    essence = diffbase.build(body=b)
    diffbase.store(body=b, patch=patch, essence=essence)
    assert not patch, "nothing is written on the object"
    assert progress.fetch(key=KEY, body=b) == record
    assert diffbase.fetch(body=b) == essence
    assert progress.fetch(key=KEY, body=body("u2")) is None
    progress.purge(key=KEY, body=b, patch=patch)
    assert progress.fetch(key=KEY, body=b) is None and not patch
    handled.forget(memo, "u1")
    assert diffbase.fetch(body=b) is None and len(diffbase) == 0 and len(progress) == 0


def test_a_touch_still_wakes_a_retry_and_old_annotations_are_cleaned() -> None:
    progress = handled.MemoryProgress("kustos.dev")
    patch = kopf.Patch()
    progress.touch(body=body(), patch=patch, value="1")
    assert patch["metadata"]["annotations"]["kustos.dev/touch-dummy"] == "1"
    # a record an older Kustos left in an annotation is removed at the purge
    old = body(annotations={"kustos.dev/reconcile": '{"retries": 3}'})
    patch = kopf.Patch()
    progress.purge(key=KEY, body=old, patch=patch)
    assert patch["metadata"]["annotations"]["kustos.dev/reconcile"] is None
