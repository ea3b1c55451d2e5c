"""Gather what other resources contribute to a ModelDeployment's pods (I/O side).

Each contributor reads what it needs (the ExplainerSpecs and DriftMonitors that target the
model from kopf's indexes through the ``Lookup`` it is handed, the Vault settings from the
object) and returns pure ``Attachments``; the
ModelDeployment render applies their sum. Contributors only read (no writes: a render has
no side effects) and raise ``AttachmentProblem`` for a problem the ModelDeployment should
report as Degraded, ``AttachmentPending`` for something still on its way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kustos.render.attachments import NONE, Attachments

from .indexes import Lookup

# (the ModelDeployment, the indexes) -> its contribution
Contributor = Callable[[Mapping[str, Any], Lookup], Attachments]

# Registered by the controller modules of the contributing resources at import time.
CONTRIBUTORS: list[Contributor] = []


class AttachmentProblem(Exception):
    """A contribution cannot be rendered; the ModelDeployment goes Degraded with reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class AttachmentPending(Exception):
    """A contribution is not ready yet (the first Vault sync of its items has not
    finished): the ModelDeployment waits, Progressing, and whoever is working on it
    re-renders it when done."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def contributor(fn: Contributor) -> Contributor:
    """Decorator: register ``fn`` as a contributor to every ModelDeployment's render."""
    CONTRIBUTORS.append(fn)
    return fn


def gather(body: Mapping[str, Any], lookup: Lookup) -> Attachments:
    total = NONE
    for fn in CONTRIBUTORS:
        total = total + fn(body, lookup)
    return total
