"""ExplainerSpec handlers: wire the explainer into the target's render, report its status.

The sidecar is added through the ModelDeployment's render (the contributor below), never
by editing the ModelDeployment; a change of the ExplainerSpec re-renders its target.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from kustos.api.v1alpha1 import GROUP, VERSION
from kustos.api.v1alpha1.explainerspec import ExplainerSpecStatus
from kustos.render import explainer as render_es
from kustos.render.attachments import Attachments
from kustos.render.sidecars import EXPLAIN_PORT
from kustos.status import explainerspec as status_es
from kustos.status.conditions import Failure, Notice

from . import sidecars
from .attachments import contributor
from .children import NameConflict, known, sync
from .context import config
from .indexes import Lookup
from .modeldeployment import models

KIND = "ExplainerSpec"
OWNER = sidecars.owner_of(ExplainerSpecStatus, ("Ready", "Degraded"))
STATUS_PATH = "/v1/explainer/status"


@contributor
def explainer_contribution(md: Mapping[str, Any], lookup: Lookup) -> Attachments:
    """The explainer sidecar for a ModelDeployment that an ExplainerSpec targets."""
    return sidecars.contribution(KIND, md, render_es.attachments, lookup)


def refresh(namespace: str, name: str, lookup: Lookup) -> None:
    """Collect the explainers' reports and write status (and the report ConfigMap) if
    anything changed; retried on a write conflict with a fresh read."""
    sidecars.refresh_with(KIND, namespace, name, OWNER,
                          lambda body: _compute(body, lookup))


def _compute(body: dict[str, Any], lookup: Lookup) -> tuple[dict[str, Any], list[Notice]]:
    wiring, target, reports = sidecars.poll(KIND, body, render_es.CONTAINER, EXPLAIN_PORT,
                                            STATUS_PATH, lookup)
    result = status_es.compute(body, wiring, target, reports, config(), datetime.now(UTC))
    if result.report is not None:
        # children.sync writes only when the report's hash differs from the live one.
        try:
            report = render_es.report_configmap(body, result.report)
            live = known(body, ["ConfigMap"], lookup)  # from kopf's index
            sync(body, [report], live=live, kinds=["ConfigMap"])
        except NameConflict as err:
            result = status_es.compute(body, wiring, target, reports, config(),
                                       datetime.now(UTC), Failure("NameConflict", str(err)))
    return result.status, result.notices


@kopf.on.resume(GROUP, VERSION, "explainerspecs")
@kopf.on.create(GROUP, VERSION, "explainerspecs")
@kopf.on.update(GROUP, VERSION, "explainerspecs")
def reconcile(body: kopf.Body, old: Any, retry: int, memo: kopf.Memo, **_: Any) -> None:
    """Re-render the target (and a former target) so its pods match this spec."""
    sidecars.reconcile(KIND, body, old, retry, models(memo))


@kopf.on.event(GROUP, VERSION, "explainerspecs")
async def explainerspec_event(body: kopf.Body, type: str | None, memo: kopf.Memo,
                             **_: Any) -> None:
    """Keep the collection list current; a deleted ExplainerSpec leaves its target's
    pods (re-rendered without the sidecar) and hands over to a conflicting one."""
    await sidecars.on_event(KIND, body, type, memo)


sidecars.register(KIND, refresh)
