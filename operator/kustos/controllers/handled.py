"""What kopf remembers of each object it handles: in this process's memory, not in
annotations on the object.

By default kopf writes two things on the objects: the last handled "essence" (to tell a
spec change from a status write) and each handler's progress (to retry a failing one),
each with a PATCH of the object after the handler ran, success included, plus a
``kopf-managed`` marker. That was a fifth write per model at creation and one more per
spec change. The reconcile needs neither: the create, update and resume handlers are one
function that renders the whole object and applies only what differs, so both may be
forgotten at exit. A restarted operator sees every object as new and reconciles it once
(the resume handler did that anyway), and a failing handler's retries start again from
the first delay. Kopf's "touch" (a dummy annotation that wakes a handler whose retry is
due) is still written: it happens only while a handler fails.

Entries go with the object's DELETED event (``forget``).
"""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

import kopf

T = TypeVar("T")


class _ByUid(Generic[T]):
    """Entries per object uid, under a lock (kopf calls from its loop and its threads)."""

    _lock: threading.Lock
    _by_uid: dict[str, T]

    def _init_entries(self) -> None:
        self._lock = threading.Lock()
        self._by_uid = {}

    def forget(self, uid: str) -> None:
        with self._lock:
            self._by_uid.pop(uid, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_uid)


class MemoryDiffBase(_ByUid[kopf.BodyEssence], kopf.DiffBaseStorage):
    def __init__(self) -> None:
        super().__init__()
        self._init_entries()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        with self._lock:
            return self._by_uid.get(body.metadata.uid or "")

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        with self._lock:
            self._by_uid[body.metadata.uid or ""] = essence


class MemoryProgress(_ByUid[dict[str, kopf.ProgressRecord]], kopf.AnnotationsProgressStorage):
    """Handlers' progress in memory; touches (and the clean-up of records an older
    Kustos left in annotations) through the annotations, as kopf does."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self._init_entries()

    def fetch(self, *, key: Any, body: kopf.Body) -> kopf.ProgressRecord | None:
        with self._lock:
            return self._by_uid.get(body.metadata.uid or "", {}).get(str(key))

    def store(self, *, key: Any, record: kopf.ProgressRecord, body: kopf.Body,
              patch: kopf.Patch) -> None:
        with self._lock:
            self._by_uid.setdefault(body.metadata.uid or "", {})[str(key)] = record

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        with self._lock:
            records = self._by_uid.get(body.metadata.uid or "", {})
            records.pop(str(key), None)
            if not records:
                self._by_uid.pop(body.metadata.uid or "", None)
        super().purge(key=key, body=body, patch=patch)  # patches only what is there


def install(settings: kopf.OperatorSettings, memo: Any, prefix: str) -> None:
    """Make kopf keep both in this process's memory (and in ``memo``, for ``forget``)."""
    memo.kustos_diffbase = MemoryDiffBase()
    memo.kustos_progress = MemoryProgress(prefix)
    settings.persistence.diffbase_storage = memo.kustos_diffbase
    settings.persistence.progress_storage = memo.kustos_progress


def forget(memo: Any, uid: str) -> None:
    """An object is gone: drop what kopf remembered of it."""
    for name in ("kustos_diffbase", "kustos_progress"):
        found = getattr(memo, name, None)
        if isinstance(found, MemoryDiffBase | MemoryProgress):
            found.forget(uid)
