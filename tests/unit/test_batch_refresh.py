"""The BatchInference status refresh is a WorkLoop fed by the BatchInference events (no
kopf timer, whose finalizer would block the object's and its namespace's deletion while
the operator is not running): only started, unfinished runs are in it."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from kustos.controllers.batchinference import REFRESH_SECONDS, running, track
from kustos.controllers.workloop import WorkLoop


def bi(uid: str = "u1", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "score", "namespace": "ns", "uid": uid, "generation": 1},
            "spec": {}, "status": status}


def test_track_keeps_only_live_running_runs() -> None:
    loop: WorkLoop[tuple[str, str, str]] = WorkLoop(lambda key: None, workers=1, name="t")
    memo = SimpleNamespace(kustos_batch=loop)
    key = ("ns", "score", "u1")

    track(memo, bi(phase="Pending"), "ADDED")  # blocked or not started: the reconcile's
    assert key not in loop.entries
    before = time.monotonic()
    track(memo, bi(phase="Running", jobName="score"), "MODIFIED")
    due = loop.entries[key].due
    assert due >= before + REFRESH_SECONDS  # first look one interval later, as the timer
    loop.entries[key].due = 1.0
    track(memo, bi(phase="Running", jobName="score", rowsDone=10), "MODIFIED")
    assert loop.entries[key].due == 1.0  # a status write does not move the schedule
    track(memo, bi(phase="Complete", jobName="score"), "MODIFIED")
    assert key not in loop.entries

    track(memo, bi(phase="Running", jobName="score"), "MODIFIED")
    track(memo, bi(phase="Failed", jobName="score"), "MODIFIED")
    assert key not in loop.entries

    track(memo, bi(phase="Running", jobName="score"), None)  # kopf's initial listing
    assert key in loop.entries
    deleting = bi(phase="Running", jobName="score")
    deleting["metadata"]["deletionTimestamp"] = "2026-12-06T13:00:00Z"
    track(memo, deleting, "MODIFIED")
    assert key not in loop.entries
    track(memo, bi(phase="Running", jobName="score"), "MODIFIED")
    track(memo, bi(phase="Running", jobName="score"), "DELETED")
    assert not loop.entries

    # a re-created object of the same name is another entry
    track(memo, bi(phase="Running", jobName="score"), "MODIFIED")
    track(memo, bi("u2", phase="Running", jobName="score"), "ADDED")
    assert set(loop.entries) == {key, ("ns", "score", "u2")}


def test_running() -> None:
    assert running(bi(phase="Running", jobName="j"))
    assert running(bi(phase="Pending", jobName="j"))  # the Job exists, no pod started yet
    assert not running(bi(phase="Pending"))
    assert not running(bi(phase="Complete", jobName="j"))
    assert not running(bi(phase="Failed", jobName="j"))
    assert not running({"metadata": {}, "spec": {}})

