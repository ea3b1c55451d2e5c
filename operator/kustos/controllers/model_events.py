"""The one handler of every ModelDeployment event (its status writes included: most of
them). Four concerns read these events; one kopf handler, run on kopf's loop, asks each
in memory whether it has work and goes to a thread only for the ones that do, rather
than four handlers (two of them sync, so two thread hops per event for nothing).

- the rollout status: a debounced refresh (controllers/modeldeployment.py);
- the Vault refresh's list of sync-mode models (controllers/vault.py);
- the list of models with a gated rollout (controllers/rollout.py);
- the list of models with a models:/ URI to poll (controllers/registry.py);
- governance: judged again when its spec or the policies' inputs changed
  (controllers/governance.py);
- the ExplainerSpecs / DriftMonitors that target it, told when it appears or goes
  (controllers/sidecars.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from kustos.api.v1alpha1 import GROUP, VERSION

from . import governance, handled, registry, rollout, sidecars, vault
from .modeldeployment import model_changed, models


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def model_deployment_event(body: kopf.Body, type: str | None, memo: kopf.Memo,
                                 **kwargs: Any) -> None:
    deleted = type == "DELETED"
    if deleted:
        handled.forget(memo, body["metadata"]["uid"])
    state = models(memo)
    model_changed(state, body, type)
    vault.track(memo, body, type)
    rollout.track(memo, body, type)
    registry.track(memo, body, type)
    judge_at = governance.governance(memo).model_seen(body["metadata"], deleted)
    if judge_at is not None and not body["metadata"].get("deletionTimestamp"):
        await asyncio.to_thread(governance.judge_event, dict(body), judge_at,
                                {**kwargs, "memo": memo})
    if sidecars.attached_to_changed(body, type, state.lookup):
        await asyncio.to_thread(sidecars.target_changed, dict(body), type, state.lookup)
