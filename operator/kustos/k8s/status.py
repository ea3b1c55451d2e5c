"""Status writes by owner: the one read-compute-apply loop every status writer uses.

An owner (kustos.status.owners.StatusOwner) computes its part of the status from a fresh
read; the part is server-side applied under the owner's field manager, guarded by the
read's resourceVersion so a part computed from a stale read never lands (history entries
and Events are recorded once), and retried on a conflict with a new read after a short
random pause. A part equal to what is stored costs no write.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kustos.status.owners import StatusOwner

from . import client
from .client import ApiError

# fresh object -> the owner's whole part of its status (fields left out or None are
# removed), or None when the owner has nothing to say about this object now.
Update = Callable[[dict[str, Any]], Mapping[str, Any] | None]

ATTEMPTS = 10
# Before attempt n (n >= 1) after a conflict, wait a random time up to BACKOFF * 2**n
# (capped at 1 s): writers that keep invalidating each other's read spread out.
BACKOFF = 0.02


@dataclass(frozen=True)
class Written:
    """The outcome of a write: the object as read, and whether a write happened."""

    before: dict[str, Any]
    wrote: bool


def write(kind: str, name: str, namespace: str | None, uid: str | None, owner: StatusOwner,
          update: Update, current: dict[str, Any] | None = None) -> Written | None:
    """Bring ``owner``'s part of the status to what ``update`` computes. ``current`` is a
    recent read to start from (a watch event's body), saving a GET; a conflict reads again.
    None when the object is gone (or another object with that name has replaced it)."""
    body = current
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0, min(1.0, BACKOFF * 2 ** attempt)))
        if body is None:
            body = client.get(kind, name, namespace)
        if body is None or (uid and body["metadata"]["uid"] != uid):
            return None
        want = update(body)
        if want is None:
            return Written(body, False)
        part = owner.normalise(want)
        status = body.get("status") or {}
        if owner.part(status) == part:
            return Written(body, False)
        try:
            stored = client.apply_status(kind, name, namespace, part, owner.manager,
                                         body["metadata"]["resourceVersion"])
            _remove_leftovers(kind, name, namespace, owner, part, stored)
        except ApiError as err:
            if err.status == 409:
                body = None
                continue
            if err.status == 404:
                return None
            raise
        return Written(body, True)
    raise ApiError(409, "Conflict", f"the status of {kind} {name} kept changing while "
                                    f"{owner.manager} wrote it")


def _remove_leftovers(kind: str, name: str, namespace: str | None, owner: StatusOwner,
                      part: Mapping[str, Any], stored: Mapping[str, Any]) -> None:
    """Remove what this owner left out but the apply kept (fields another manager set for
    this concern before); a JSON patch whose tests make it fail (409) on any change."""
    status = stored.get("status") or {}
    fields, types = owner.leftovers(status, part)
    if not fields and not types:
        return
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                  "value": stored["metadata"]["resourceVersion"]}]
    ops += [{"op": "remove", "path": f"/status/{field}"} for field in fields]
    conds = status.get("conditions") or []
    for index in sorted((i for i, c in enumerate(conds) if c.get("type") in types),
                        reverse=True):
        ops += [{"op": "test", "path": f"/status/conditions/{index}/type",
                 "value": conds[index]["type"]},
                {"op": "remove", "path": f"/status/conditions/{index}"}]
    try:
        client.json_patch_status(kind, name, namespace, ops)
    except ApiError as err:
        if err.status == 422:  # a test failed: something changed since; read again
            raise ApiError(409, "Conflict", err.message) from None
        raise
