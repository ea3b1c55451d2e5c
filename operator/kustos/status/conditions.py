"""Conditions by the Kubernetes API conventions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Notice:
    """An Event to post (the pure code only says which), once the status write that
    carries the change has landed."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Failure:
    """A problem the reconcile ran into: becomes Degraded with this reason."""

    reason: str
    message: str


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: Iterable[Mapping[str, Any]], type_: str, status: bool | str,
                  reason: str, message: str, generation: int | None,
                  now: datetime) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; lastTransitionTime moves only when status does."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != value
        out.append({
            "type": type_, "status": value, "reason": reason, "message": message,
            "lastTransitionTime": timestamp(now) if changed
            else cond.get("lastTransitionTime", timestamp(now)),
            "observedGeneration": generation,
        })
    if not found:
        out.append({"type": type_, "status": value, "reason": reason, "message": message,
                    "lastTransitionTime": timestamp(now), "observedGeneration": generation})
    return out


def get_condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None
