"""status.registry and the RegistryResolved condition of a ModelDeployment (pure).

The registry controller owns both (field manager kustos-registry). A failed poll keeps the
last good resolution: the pods go on serving it while RegistryResolved is False, and the
ModelDeployment is Degraded with the failure's reason (controllers/registry.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kustos.status.conditions import Failure, Notice, get_condition, set_condition
from kustos.status.owners import StatusOwner

from .resolution import Resolution

RESOLVED = "RegistryResolved"
REGISTRY = StatusOwner("kustos-registry", fields=("registry",), conditions=(RESOLVED,))




def _condition(fresh: Mapping[str, Any], ok: bool, reason: str, message: str,
               now: datetime) -> dict[str, Any]:
    was = get_condition(fresh, RESOLVED)
    return set_condition([was] if was else [], RESOLVED, ok, reason, message,
                         fresh["metadata"].get("generation"), now)[0]


def describe(res: Resolution) -> str:
    ref = f"models:/{res.name}@{res.alias}" if res.alias else f"models:/{res.name}/{res.version}"
    return f"{ref} is version {res.version}" + (f" ({res.digest})" if res.digest else "")


def resolved(fresh: Mapping[str, Any], res: Resolution, now: datetime
             ) -> tuple[dict[str, Any], list[Notice]]:
    """The part to write after a successful poll, and the Events it calls for.
    resolvedAt moves only when the resolution changes, so a poll that finds the same
    answer writes nothing."""
    old = (fresh.get("status") or {}).get("registry") or {}
    was = get_condition(fresh, RESOLVED) or {}
    notices: list[Notice] = []
    if res.same_as(old):
        registry = dict(old)
    else:
        registry = res.status(now)
        if old.get("version") and old.get("name") == res.name and res.alias \
                and old.get("alias") == res.alias:
            notices.append(Notice(
                "ModelAliasMoved",
                f"models:/{res.name}@{res.alias} moved from version {old['version']} to "
                f"{res.version}" + ("" if old.get("version") != res.version
                                    else " (same version, new file or digest)")))
        else:
            notices.append(Notice("ModelResolved", describe(res)))
    if was.get("status") == "False":
        notices.append(Notice("RegistryRecovered", f"the registry answers again: "
                                                   f"{describe(res)}"))
    part = {"registry": registry,
            "conditions": [_condition(fresh, True, "Resolved", describe(res), now)]}
    return part, notices


def failed(fresh: Mapping[str, Any], failure: Failure, now: datetime
           ) -> tuple[dict[str, Any], list[Notice]]:
    """The part to write after a failed poll: the last resolution stays; a Warning Event
    when the condition turns False or its reason changes."""
    old = (fresh.get("status") or {}).get("registry")
    was = get_condition(fresh, RESOLVED) or {}
    notices = []
    if was.get("status") != "False" or was.get("reason") != failure.reason:
        kept = f" (still serving version {old['version']})" if old and old.get("version") \
            else ""
        notices.append(Notice(failure.reason, failure.message + kept, warning=True))
    part = {"registry": dict(old) if old else None,
            "conditions": [_condition(fresh, False, failure.reason, failure.message, now)]}
    return part, notices


def cleared() -> dict[str, Any]:
    """The part once spec.model.uri is no models:/ URI any more: nothing."""
    return {"conditions": []}


def problem(body: Mapping[str, Any]) -> Failure | None:
    """The failure RegistryResolved records for the current spec, if it is False (one
    recorded for an older generation waits for the next poll to say again)."""
    cond = get_condition(body, RESOLVED) or {}
    if cond.get("status") != "False" or \
            cond.get("observedGeneration") != body["metadata"].get("generation"):
        return None
    return Failure(str(cond.get("reason") or "RegistryError"), str(cond.get("message") or ""))

