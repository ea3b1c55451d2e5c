"""Who owns which part of a status (pure).

Each concern writes only its own top-level status fields and condition types, with
server-side apply under its own field manager (kustos.k8s.status). ``conditions`` is a map
list keyed by ``type`` in the CRDs, so one owner's apply never drops another's conditions,
and no writer rebuilds what another one said.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StatusOwner:
    """A concern that writes part of a status: field manager, fields, condition types."""

    manager: str
    fields: tuple[str, ...]
    conditions: tuple[str, ...] = ()

    def part(self, status: Mapping[str, Any] | None) -> dict[str, Any]:
        """This owner's part of ``status`` (as ``normalise`` shapes what an owner wants)."""
        status = status or {}
        out = {k: status[k] for k in self.fields if status.get(k) is not None}
        conds = [dict(c) for c in status.get("conditions") or []
                 if c.get("type") in self.conditions]
        if conds or self.conditions:
            out["conditions"] = _by_type(conds)
        return out

    def normalise(self, want: Mapping[str, Any]) -> dict[str, Any]:
        """What an owner asks for, checked and comparable with ``part``: fields it does not
        own are a programming error; None means absent."""
        foreign = set(want) - set(self.fields) - {"conditions"}
        if foreign:
            raise ValueError(f"{self.manager} does not own status fields {sorted(foreign)}")
        out = {k: _without_none(v) for k, v in want.items()
               if k != "conditions" and v is not None}
        conds = [_without_none(c) for c in want.get("conditions") or []]
        stray = {c.get("type") for c in conds} - set(self.conditions)
        if stray:
            raise ValueError(f"{self.manager} does not own conditions {sorted(map(str, stray))}")
        if conds or self.conditions:
            out["conditions"] = _by_type(conds)
        return out

    def leftovers(self, status: Mapping[str, Any] | None,
                  want: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Fields and condition types of this owner that ``status`` still holds though
        ``want`` (normalised) leaves them out: set by an earlier writer of the same concern
        under another field manager (an older Kustos), so the apply did not remove them."""
        status = status or {}
        fields = [k for k in self.fields if k not in want and status.get(k) is not None]
        wanted = {c["type"] for c in want.get("conditions") or []}
        types = [str(c.get("type")) for c in status.get("conditions") or []
                 if c.get("type") in self.conditions and c.get("type") not in wanted]
        return fields, types


def _without_none(value: Any) -> Any:
    """``value`` with None-valued keys left out at every depth: an applied None is no
    value (the field is then absent, as a merge patch's None would make it)."""
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _by_type(conds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(conds, key=lambda c: str(c.get("type")))

