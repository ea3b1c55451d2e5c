"""A BatchInference's status from its Job and the Job's pods (pure).

Each finished shard's pod ends with a report as its termination message (`kustos batch`:
rows written, rows in the input); the rows done are their sum, so the count moves per
finished shard. The rate is taken between the Job's start and the last finished shard,
from what the API server recorded: recomputing it writes nothing new.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .conditions import set_condition

READY, COMPLETE, FAILED = "Ready", "Complete", "Failed"
CONDITIONS = (READY, COMPLETE, FAILED)
FIELDS = ("observedGeneration", "phase", "jobName", "model", "shards", "shardsDone",
          "rowsDone", "rowsTotal", "rowsPerSecond", "startTime", "completionTime",
          "outputUri", "image")
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CONTAINER = "batch"


@dataclass(frozen=True)
class Blocked:
    """Why the Job is not created (yet): a reason and a message for Ready=False."""

    reason: str
    message: str
    final: bool = False  # no retry until the spec changes: the run has Failed


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            state = (status.get("state") or {}).get("terminated")
            return state if state else None
    return None


def _report(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    state = _terminated(pod)
    if state is None:
        return None
    try:
        report = json.loads(state.get("message") or "")
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def shard_reports(pods: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """The report of each finished shard (one per completion index), with finishedAt."""
    out: dict[int, dict[str, Any]] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Succeeded":
            continue
        index = ((pod.get("metadata") or {}).get("annotations") or {}).get(INDEX_ANNOTATION)
        report = _report(pod)
        if index is None or report is None or "rows" not in report:
            continue
        finished = (_terminated(pod) or {}).get("finishedAt")
        out[int(index)] = {**report, "finishedAt": finished}
    return out


def last_error(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The error line of the latest failed shard pod (its termination message)."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda p: str((_terminated(p) or {}).get("finishedAt") or ""))
    for pod in reversed(failed):
        report = _report(pod)
        if report and report.get("error"):
            return str(report["error"])
        state = _terminated(pod)
        if state and state.get("message"):
            return str(state["message"]).strip().splitlines()[-1][:1024]
    return None


def job_image(job: Mapping[str, Any]) -> str | None:
    """The batch container's image (kustos-explain when the run reads or writes Parquet)."""
    pod = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in pod.get("containers") or []:
        if container.get("name") == CONTAINER:
            image = container.get("image")
            return str(image) if image else None
    return None


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def compute(body: Mapping[str, Any], job: Mapping[str, Any] | None,
            pods: Iterable[Mapping[str, Any]], *, shards: int, output_uri: str,
            model: Mapping[str, Any] | None, blocked: Blocked | None,
            now: datetime) -> dict[str, Any]:
    """The BatchInference's whole status (one owner writes it)."""
    status = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    conds: list[dict[str, Any]] = list(status.get("conditions") or [])
    out: dict[str, Any] = {"observedGeneration": generation, "shards": shards,
                           "outputUri": output_uri, "model": model or status.get("model")}

    def cond(type_: str, value: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, type_, value, reason, message, generation, now)

    if job is None:
        blocked = blocked or Blocked("Creating", "the Job is being created")
        out["phase"] = "Failed" if blocked.final else "Pending"
        cond(READY, False, blocked.reason, blocked.message)
        cond(COMPLETE, False, blocked.reason, "the run has not started")
        cond(FAILED, blocked.final, blocked.reason,
             blocked.message if blocked.final else "the run has not started")
        out["conditions"] = [c for c in conds if c["type"] in CONDITIONS]
        return out

    pods = list(pods)
    js = job.get("status") or {}
    reports = shard_reports(pods)
    start = _parse_time(js.get("startTime"))
    out["jobName"] = job["metadata"]["name"]
    out["image"] = job_image(job)
    out["startTime"] = js.get("startTime")
    out["shardsDone"] = len(reports)
    out["rowsDone"] = sum(int(r.get("rows") or 0) for r in reports.values())
    totals = [int(r["rowsTotal"]) for r in reports.values() if "rowsTotal" in r]
    out["rowsTotal"] = max(totals) if totals else None
    finished = [t for t in (_parse_time(r.get("finishedAt")) for r in reports.values()) if t]
    if start is not None and finished:
        seconds = (max(finished) - start).total_seconds()
        out["rowsPerSecond"] = round(out["rowsDone"] / seconds) if seconds > 0 else None

    complete = _job_condition(job, "Complete")
    failed = _job_condition(job, "Failed")
    if complete is not None:
        out["phase"] = "Complete"
        out["completionTime"] = js.get("completionTime") or complete.get("lastTransitionTime")
        cond(READY, True, "Complete", "every shard is written")
        cond(COMPLETE, True, "Complete",
             f"{out['rowsDone']} rows predicted in {shards} shards to {output_uri}")
        cond(FAILED, False, "Complete", "every shard is written")
    elif failed is not None:
        out["phase"] = "Failed"
        out["completionTime"] = failed.get("lastTransitionTime")
        error = last_error(pods)
        reason = str(failed.get("reason") or "JobFailed")
        message = error or str(failed.get("message") or "the Job failed")
        cond(READY, False, reason, message)
        cond(COMPLETE, False, reason, "the run failed")
        cond(FAILED, True, reason, message)
    else:
        running = int(js.get("active") or 0) > 0 or start is not None
        out["phase"] = "Running" if running else "Pending"
        cond(READY, True, "JobCreated", f"Job {out['jobName']}: {len(reports)} of {shards} "
                                        "shards done")
        cond(COMPLETE, False, "Running", "shards are still running")
        error = last_error(pods)
        cond(FAILED, False, "Retrying" if error else "Running",
             f"a shard failed and is retried: {error}" if error else "no shard has failed")
    out["conditions"] = [c for c in conds if c["type"] in CONDITIONS]
    return out
