"""Per-object background work of this process: the Vault refresh and the sidecar
collection both run on this.

A WorkLoop is kept in kopf's memo. Its entries (one per object, keyed as the user likes)
say when each object is due; a task looks every ``interval`` seconds, on the active peer
only, and runs what is due in threads (``asyncio.to_thread``: the work is blocking I/O),
``workers`` at a time. The work returns when the object is due next (None: at the next
round); a failure backs that object off exponentially (never longer than its entry's
``cap``) and never stops the others. Entries are touched only on kopf's event loop (the
watch handlers and the task), so they need no lock. Not a kopf daemon or timer per object:
those put a finalizer on every object, which would then block its own (or its namespace's)
deletion whenever the operator is not running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .context import backoff

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass
class Entry:
    """One object's schedule: when it is due (monotonic; 0: at the next round), failures
    in a row, the longest backoff, and what the loop's user keeps with it (``tag``)."""

    due: float = 0.0
    cap: float = 600.0
    failures: int = 0
    running: bool = False
    tag: Any = None


class WorkLoop(Generic[K]):
    def __init__(self, work: Callable[[K], float | None], *, workers: int,
                 name: str) -> None:
        self.work = work
        self.workers = workers
        self.name = name
        self.entries: dict[K, Entry] = {}
        self.task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(workers)
        self._running: set[asyncio.Task[None]] = set()

    def launch(self) -> list[asyncio.Task[None]]:
        """Start the work of every due entry that is not running yet; returns the tasks
        (the loop does not wait for them: a slow object never holds the others' turn)."""
        now = time.monotonic()
        started = []
        for key, entry in list(self.entries.items()):
            if entry.running or entry.due > now:
                continue
            entry.running = True
            task = asyncio.create_task(self._one(key, entry))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            started.append(task)
        return started

    async def run_once(self) -> None:
        """One round, waited for."""
        await asyncio.gather(*self.launch())

    async def _one(self, key: K, entry: Entry) -> None:
        try:
            async with self._slots:
                if self.entries.get(key) is not entry:
                    return  # deleted (maybe re-created) while waiting for a slot
                try:
                    delay = await asyncio.to_thread(self.work, key)
                except Exception as err:  # one object's trouble never stops the others
                    delay = min(entry.cap, backoff(entry.failures))
                    log.warning("%s: %s failed (retry in %.0fs): %s: %s", self.name, key,
                                delay, type(err).__name__, err)
                    entry.failures += 1
                    entry.due = time.monotonic() + delay
                    return
                entry.failures = 0
                entry.due = 0.0 if delay is None else time.monotonic() + delay
        finally:
            entry.running = False

    async def run(self, interval: float, is_active: Callable[[], bool]) -> None:
        """Every ``interval`` seconds a round, on the active peer only."""
        while True:
            await asyncio.sleep(interval)
            try:
                # A standby peer leaves the work to the active one; the peering check
                # reads the API, so not on the event loop.
                if await asyncio.to_thread(is_active):
                    self.launch()
            except Exception:  # a bug in one round must not end the loop for good
                log.exception("%s: round failed", self.name)

    def start(self, interval: float, is_active: Callable[[], bool]) -> None:
        self.task = asyncio.create_task(self.run(interval, is_active), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and the work it started, and wait for them (work already in its
        thread finishes there, its result unused)."""
        tasks = [t for t in (self.task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.task = None


# The loops that look at one object of a kind each: keyed by (namespace, name, uid).
ObjectKey = tuple[str, str, str]


def live_object(kind: str, key: ObjectKey) -> dict[str, Any] | None:
    """The object ``key`` names, read now: None when it is gone, was re-created (another
    uid) or is being deleted."""
    from kustos.k8s import client

    namespace, name, uid = key
    obj = client.get(kind, name, namespace)
    if obj is None or obj["metadata"]["uid"] != uid or obj["metadata"].get("deletionTimestamp"):
        return None
    return obj


def start_in_memo(memo: Any, attr: str, work: Callable[[ObjectKey], float | None], *,
                  workers: int, name: str, interval: float = 1.0) -> WorkLoop[ObjectKey]:
    """A WorkLoop kept in kopf's memo as ``attr``, looking every ``interval`` seconds on
    the active peer only (called from an on.startup handler, on kopf's loop)."""
    from . import peering

    loop: WorkLoop[ObjectKey] = WorkLoop(work, workers=workers, name=name)
    setattr(memo, attr, loop)
    loop.start(interval, peering.active_check(memo))
    return loop


async def stop_in_memo(memo: Any, attr: str) -> None:
    """Stop the memo's loop ``attr`` if it was started (an on.cleanup handler)."""
    loop: WorkLoop[Any] | None = getattr(memo, attr, None)
    if loop is not None:
        await loop.stop()
