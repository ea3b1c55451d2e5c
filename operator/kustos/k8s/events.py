"""Kubernetes Events for what users must see: one per real change, never per log line."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .client import ApiError, create

log = logging.getLogger(__name__)
COMPONENT = "kustos"


def post(obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
    """Post an Event about ``obj``; failures are logged, never raised (an Event is not
    worth failing a reconcile for)."""
    meta = obj["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}",
                     "namespace": meta.get("namespace") or "default"},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        create(event)
    except ApiError as err:
        log.warning("could not post event %s on %s: %s", reason, meta["name"], err.message)
