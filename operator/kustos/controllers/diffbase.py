"""Where kopf keeps the last handled state of each object: in this process's memory, not
in an annotation on the object.

Kopf compares an object with its last handled "essence" to tell a spec change (the
update handler) from a status write, and by default stores that essence in an annotation,
one PATCH of the object after every handled change: a fifth write per model at creation
and one per spec change, and thousands of patches after an upgrade. The reconcile does not
need a diff (the create, update and resume handlers are one function that renders the
whole object and applies only what differs), so the essence may as well be forgotten at
exit: a restarted operator then sees every object as new and reconciles it once, which is
what the resume handler did anyway. Kopf's progress of retried handlers stays in
annotations (written only when a handler fails), so a retry's backoff survives a restart.
"""

from __future__ import annotations

import threading
from typing import Any

import kopf


class MemoryDiffBase(kopf.DiffBaseStorage):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._by_uid: dict[str, kopf.BodyEssence] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        with self._lock:
            return self._by_uid.get(body.metadata.uid or "")

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        with self._lock:
            self._by_uid[body.metadata.uid or ""] = essence

    def forget(self, uid: str) -> None:
        """The object is gone (its DELETED event)."""
        with self._lock:
            self._by_uid.pop(uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_uid)


def diffbase(memo: Any) -> MemoryDiffBase | None:
    found = getattr(memo, "kustos_diffbase", None)
    return found if isinstance(found, MemoryDiffBase) else None
