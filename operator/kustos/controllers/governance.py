"""Governance handlers: PolicyCompliant on ModelDeployments, the approval audit trail, and
the GovernancePolicies' own status.

Kopf indexes keep the policies, namespace labels and the ExplainerSpecs / DriftMonitors
by target in memory, so a ModelDeployment event is judged without an API read, and only
when its spec or one of those changed since it was last judged (most of its events are
status writes). Compliance is re-judged when any of those change. Writes
are governance's own part of the status (POLICY, server-side applied), only on a change.
What the handlers last judged with (targets, namespace labels, policy specs) is one
:class:`Governance` in kopf's memo (``memo.kustos_governance``), pruned on DELETED events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from kustos.api.v1alpha1 import GROUP, VERSION
from kustos.governance import compliance
from kustos.governance.policy import (
    Policy,
    applicable,
    monitors_fairness,
    policies_from,
    selector_matches,
)
from kustos.k8s import client, events
from kustos.k8s import status as k8s_status
from kustos.k8s.client import ApiError
from kustos.status.conditions import get_condition, set_condition
from kustos.status.owners import StatusOwner

log = logging.getLogger(__name__)
KIND = "ModelDeployment"
NAME_LABEL = "kubernetes.io/metadata.name"

Indices = Mapping[str, Any]

# Governance's part of a ModelDeployment's status.
POLICY = StatusOwner("kustos-policy", fields=("approval",),
                     conditions=(compliance.CONDITION,))


class Governance:
    """What governance's event handlers last judged with, kept in kopf's memo. The handlers
    are sync (kopf runs them in its threads, one object at a time, several objects at
    once), so each check-and-set holds a lock; every entry goes with its object's
    DELETED event."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        # The target each ExplainerSpec / DriftMonitor had when last seen: a retargeted or
        # deleted one re-judges its former target too.
        self._targets: dict[tuple[str, str | None, str], str] = {}
        # The DriftMonitors that monitored fairness when last seen (only those): one that
        # starts or stops doing so re-judges its target (requireFairnessMonitoring).
        self._fairness: set[tuple[str, str | None, str]] = set()
        # Labels each namespace was last judged with: a namespace event without a label
        # change (they come for every namespace at start-up and on every status change)
        # costs nothing.
        self._labels: dict[str, dict[str, str]] = {}
        # The spec each policy was last judged with: its own status writes re-judge nothing.
        self._policies: dict[str, dict[str, Any]] = {}
        # The ModelDeployments by namespace (what a policy or namespace change re-judges),
        # kept from their events: not a kopf index, which would hold every handler at
        # start-up until all of them are indexed (controllers/indexes.py).
        self._models: dict[str, set[str]] = {}
        # uid -> (generation, inputs) a ModelDeployment was last judged at: its status
        # writes (most of its events) re-judge nothing. ``_inputs`` counts the changes of
        # what a verdict reads besides the spec (policies, namespace labels, attachments).
        self._judged: dict[str, tuple[Any, int]] = {}
        self._inputs = 0

    def retarget(self, key: tuple[str, str | None, str], target: str | None) -> str | None:
        """Record the target (None: deleted or untargeted); the one recorded before."""
        with self._guard:
            before = self._targets.pop(key, None)
            if target:
                self._targets[key] = target
            if before != target:
                self._inputs += 1
            return before

    def fairness_seen(self, key: tuple[str, str | None, str], monitors: bool) -> bool:
        """Record whether a DriftMonitor monitors fairness (False when deleted); whether
        that changed."""
        with self._guard:
            before = key in self._fairness
            if monitors:
                self._fairness.add(key)
            else:
                self._fairness.discard(key)
            if before != monitors:
                self._inputs += 1
            return before != monitors

    def model_seen(self, meta: Mapping[str, Any], deleted: bool) -> tuple[Any, int] | None:
        """Record a ModelDeployment's event; what to judge it at (its generation and the
        inputs' count), None when it was judged at that already (or is deleted)."""
        namespace, name, uid = meta.get("namespace") or "", meta["name"], meta["uid"]
        with self._guard:
            if deleted:
                self._judged.pop(uid, None)
                names = self._models.get(namespace, set())
                names.discard(name)
                if not names:
                    self._models.pop(namespace, None)
                return None
            self._models.setdefault(namespace, set()).add(name)
            now = (meta.get("generation"), self._inputs)
            return None if self._judged.get(uid) == now else now

    def judged(self, uid: str, at: tuple[Any, int]) -> None:
        with self._guard:
            self._judged[uid] = at

    def models(self, namespace: str | None = None) -> dict[str, list[str]]:
        """The ModelDeployments seen, by namespace (in ``namespace`` only, if given)."""
        with self._guard:
            return {ns: sorted(names) for ns, names in self._models.items()
                    if namespace in (None, ns)}

    def relabel(self, namespace: str, labels: dict[str, str] | None) -> tuple[bool, bool]:
        """Record a namespace's labels (None: deleted): (changed, first time seen)."""
        with self._guard:
            if labels is None:
                self._labels.pop(namespace, None)
                return False, False
            before = self._labels.get(namespace)
            self._labels[namespace] = labels
            if before != labels:
                self._inputs += 1
            return before != labels, before is None

    def respec(self, name: str, spec: dict[str, Any] | None) -> dict[str, Any] | None:
        """Record a policy's spec (None: gone); the one recorded before."""
        with self._guard:
            before = self._policies.pop(name, None)
            if spec is not None:
                self._policies[name] = spec
            if before != spec:
                self._inputs += 1
            return before

    def __len__(self) -> int:
        with self._guard:
            return (len(self._targets) + len(self._labels) + len(self._policies)
                    + len(self._fairness))


def governance(memo: Any) -> Governance:
    """This process's Governance, from kopf's memo (per-object memos are shallow copies
    of the operator's, so every handler sees the same one)."""
    found: Governance = memo.kustos_governance
    return found


@kopf.on.startup()
def create_governance_state(memo: kopf.Memo, **_: Any) -> None:
    memo.kustos_governance = Governance()


@kopf.index(GROUP, VERSION, "governancepolicies")
def kustos_gov_policies(name: str, spec: kopf.Spec, meta: kopf.Meta,
                        **_: Any) -> dict[str, Any] | None:
    if meta.get("deletionTimestamp"):
        return None
    return {name: dict(spec)}


@kopf.index("", "v1", "namespaces")
def kustos_gov_namespaces(name: str, labels: kopf.Labels, **_: Any) -> dict[str, Any]:
    return {name: dict(labels)}


@kopf.index(GROUP, VERSION, "explainerspecs")
def kustos_gov_explainers(namespace: str | None, spec: kopf.Spec,
                          **_: Any) -> dict[Any, bool] | None:
    target = (spec.get("targetRef") or {}).get("name")
    return {(namespace, target): True} if target else None


@kopf.index(GROUP, VERSION, "driftmonitors")
def kustos_gov_drift_monitors(namespace: str | None, spec: kopf.Spec,
                              **_: Any) -> dict[Any, bool] | None:
    """By (namespace, target): whether the DriftMonitor monitors fairness."""
    target = (spec.get("targetRef") or {}).get("name")
    return {(namespace, target): monitors_fairness(spec)} if target else None


def _policies(idx: Indices) -> list[Policy]:
    store = idx["kustos_gov_policies"]
    return policies_from({"metadata": {"name": name}, "spec": spec}
                         for name in list(store) for spec in store.get(name, []))


def _namespace_labels(idx: Indices, namespace: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for found in idx["kustos_gov_namespaces"].get(namespace, []):
        labels.update(found)
    return {NAME_LABEL: namespace, **labels}


def _approval(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The approval as the audit trail records it (who and which ticket, nothing else)."""
    approval = (spec.get("governance") or {}).get("approval")
    if not approval:
        return None
    out = {k: approval[k] for k in ("approvedBy", "ticket", "approvedAt") if approval.get(k)}
    return out or None


def verdict(spec: Mapping[str, Any], namespace: str, name: str,
            idx: Indices) -> compliance.Verdict | None:
    """PolicyCompliant's verdict for the ModelDeployment ``namespace/name`` with ``spec``,
    from the indexes (no API read)."""
    policies = applicable(_policies(idx), _namespace_labels(idx, namespace))
    key = (namespace, name)
    monitors = idx["kustos_gov_drift_monitors"]
    return compliance.verdict(spec, policies, has_explainer=key in idx["kustos_gov_explainers"],
                              has_drift_monitor=key in monitors,
                              has_fairness_monitor=any(monitors.get(key, [])))


def judge(md: Mapping[str, Any], idx: Indices) -> None:
    """Recompute PolicyCompliant and the recorded approval of one ModelDeployment and write
    them (governance's part of the status, POLICY) only if they changed."""
    meta = md["metadata"]
    if meta.get("deletionTimestamp"):
        return
    name, namespace = meta["name"], meta["namespace"]
    found: dict[str, Any] = {}

    def update(fresh: dict[str, Any]) -> dict[str, Any] | None:
        if fresh["metadata"].get("deletionTimestamp"):
            return None
        spec = fresh.get("spec") or {}
        found["verdict"] = v = verdict(spec, namespace, name, idx)
        cond = compliance.condition(fresh.get("status"), v, fresh["metadata"].get("generation"),
                                    datetime.now(UTC))
        found["approval"] = approval = _approval(spec)
        return {"conditions": [cond] if cond else [], "approval": approval}

    written = k8s_status.write(KIND, name, namespace, meta["uid"], POLICY, update, dict(md))
    if written is None or not written.wrote:
        return
    before = written.before
    previous = get_condition(before, compliance.CONDITION)
    note = compliance.notice(previous, found["verdict"])
    if note:
        events.post(before, note[0], note[1], warning=note[2])
    recorded = (before.get("status") or {}).get("approval")
    if _who(found["approval"]) != _who(recorded):
        events.post(before, "ApprovalChanged", _approval_message(found["approval"], recorded))


def _who(approval: Mapping[str, Any] | None) -> tuple[Any, Any]:
    return ((approval or {}).get("approvedBy"), (approval or {}).get("ticket"))


def _approval_message(new: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> str:
    was = f" (was {old.get('approvedBy')}, ticket {old.get('ticket')})" if old else ""
    if new is None:
        return f"approval removed{was}"
    return f"approved by {new.get('approvedBy')}, ticket {new.get('ticket')}{was}"


def _safely(what: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except ApiError as err:
        log.warning("governance: %s failed: %s", what, err.message)


def judge_event(md: dict[str, Any], at: tuple[Any, int], idx: Indices) -> None:
    """Judge a ModelDeployment after its event (in a thread: controllers/model_events.py
    calls this when Governance.model_seen says it is due)."""
    try:
        judge(md, idx)
    except ApiError as err:
        log.warning("governance: judging %s failed: %s", md["metadata"].get("name"),
                    err.message)
        return
    governance(idx["memo"]).judged(md["metadata"]["uid"], at)


def _rejudge_target(namespace: str | None, target: str | None, idx: Indices) -> None:
    if not target or not namespace:
        return
    md = client.get(KIND, target, namespace)
    if md is not None:
        judge(md, idx)


def _attachment_changed(kind: str, namespace: str | None, name: str, spec: kopf.Spec,
                        type_: str | None, idx: Indices) -> None:
    target = None if type_ == "DELETED" else (spec.get("targetRef") or {}).get("name")
    state = governance(idx["memo"])
    before = state.retarget((kind, namespace, name), target)
    # A DriftMonitor that starts or stops monitoring fairness changes its target's verdict.
    refair = kind == "DriftMonitor" and state.fairness_seen(
        (kind, namespace, name), bool(target) and monitors_fairness(spec))
    if before == target and not refair:
        return  # a status or other change: which model it targets is what matters here
    for md_name in {before, target} - {None}:
        _safely(f"judging {namespace}/{md_name}", _rejudge_target, namespace, md_name, idx)


@kopf.on.event(GROUP, VERSION, "explainerspecs")
def explainer_changed(namespace: str | None, name: str, spec: kopf.Spec, type: str | None,
                      **kwargs: Any) -> None:
    """An ExplainerSpec appeared, changed or went: its target's compliance may change."""
    _attachment_changed("ExplainerSpec", namespace, name, spec, type, kwargs)


@kopf.on.event(GROUP, VERSION, "driftmonitors")
def drift_monitor_changed(namespace: str | None, name: str, spec: kopf.Spec, type: str | None,
                          **kwargs: Any) -> None:
    _attachment_changed("DriftMonitor", namespace, name, spec, type, kwargs)


def _rejudge_namespace(namespace: str, idx: Indices) -> None:
    for name in governance(idx["memo"]).models(namespace).get(namespace, []):
        _safely(f"judging {namespace}/{name}", _rejudge_target, namespace, name, idx)


@kopf.on.event("", "v1", "namespaces")
def namespace_changed(name: str, labels: kopf.Labels, type: str | None,
                      **kwargs: Any) -> None:
    changed, first = governance(kwargs["memo"]).relabel(
        name, None if type == "DELETED" else dict(labels))
    if changed and not first:  # at start-up the ModelDeployments' own events judge them
        _rejudge_namespace(name, kwargs)


@kopf.on.event(GROUP, VERSION, "governancepolicies")
def policy_changed(body: kopf.Body, name: str, type: str | None, **kwargs: Any) -> None:
    """A policy appeared, changed or went: mark it Ready, re-judge the watched
    ModelDeployments in the namespaces it selected before or selects now."""
    gone = type == "DELETED" or bool(body["metadata"].get("deletionTimestamp"))
    if not gone:
        _safely(f"status of GovernancePolicy {name}", _policy_status, body)
    new = None if gone else dict(body.get("spec") or {})
    old = governance(kwargs["memo"]).respec(name, new)
    if old == new:
        return
    selectors = [s.get("namespaceSelector") for s in (old, new) if s is not None]
    for namespace in governance(kwargs["memo"]).models():
        labels = _namespace_labels(kwargs, namespace)
        if any(selector_matches(sel, labels) for sel in selectors):
            _rejudge_namespace(namespace, kwargs)


# A GovernancePolicy's own status: only this controller writes it.
POLICY_STATUS = StatusOwner("kustos-policy", fields=("observedGeneration",),
                            conditions=("Ready",))


def _policy_status(body: Mapping[str, Any]) -> None:
    meta = body["metadata"]

    def update(fresh: dict[str, Any]) -> dict[str, Any] | None:
        status = fresh.get("status") or {}
        generation = fresh["metadata"].get("generation")
        if status.get("observedGeneration") == generation:
            return None
        ready = get_condition(fresh, "Ready")
        conds = set_condition([ready] if ready else [], "Ready", True, "Accepted",
                              "enforced at admission; compliance reported as PolicyCompliant",
                              generation, datetime.now(UTC))
        return {"observedGeneration": generation, "conditions": conds}

    k8s_status.write("GovernancePolicy", meta["name"], None, meta["uid"], POLICY_STATUS,
                     update, dict(body))
