"""ModelDeployments with spec.rollout: scrape both tracks' pods, judge the gates, move the
rollout on (kustos.rollout.machine), write status.rollout and re-render.

A WorkLoop looks every TICK seconds; an analysis runs every spec.rollout.analysis
interval. Its window starts when the phase or step does: the first look at a step
scrapes the pods' /metrics as the baseline (kept in kopf's memo, per object), each later
one compares a new scrape with it, so the window grows until the step ends and
minSamples can be reached. An operator restart starts the window again (the step's time
already spent still counts).

Manual actions arrive as the annotation kustos.dev/rollout-action (pause, resume,
promote, abort): applied, recorded in status.rollout.lastAction, then removed.
"""

from __future__ import annotations

import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kustos import metrics
from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.k8s import client, events
from kustos.k8s import status as k8s_status
from kustos.k8s.client import ApiError
from kustos.registry.resolution import served_spec
from kustos.registry.uri import is_registry_uri
from kustos.render import modeldeployment as render_md
from kustos.render.meta import COMPONENT, INSTANCE, TRACK
from kustos.render.runtimes import runtime_ports
from kustos.rollout import gates, machine
from kustos.rollout.tracks import effective_spec, rollout_status
from kustos.rollout.window import Sample, parse, track_window
from kustos.status.rollout import ANALYSIS

from .context import config
from .modeldeployment import models, rerender
from .sidecars import ready_ip
from .workloop import Entry, ObjectKey, WorkLoop, live_object, start_in_memo, stop_in_memo

log = logging.getLogger(__name__)
KIND = "ModelDeployment"
ACTION = machine.ACTION_ANNOTATION
TICK = 5.0
SCRAPE_TIMEOUT = 5.0


@dataclass
class Tracker:
    """One object's analysis window: what its baseline belongs to, the baseline scrape
    of each track's pods, and when the last analysis ran."""

    key: tuple[Any, ...]
    baseline: dict[str, dict[str, Sample]] = field(default_factory=dict)
    last: float = 0.0


def _wanted(body: Mapping[str, Any]) -> bool:
    """A rollout to drive, a rollout status to clean up, or an action annotation to
    answer (applied, or refused when there is no rollout)."""
    return (bool((body.get("spec") or {}).get("rollout")) or bool(rollout_status(body))
            or ACTION in (body["metadata"].get("annotations") or {}))


# The looks are a WorkLoop (controllers/workloop.py, as the Vault refresh): not a kopf
# timer, whose finalizer on every object would block its deletion (and its namespace's)
# whenever the operator is not running. Keyed by (namespace, name, uid), fed by the
# ModelDeployment events (controllers/model_events.py).
Target = ObjectKey  # (namespace, name, uid)
WORKERS = 4
ROUND = 1.0  # seconds between looks at what is due


def track(memo: Any, body: Mapping[str, Any], type_: str | None) -> None:
    """Keep the list of ModelDeployments with a rollout (or a rollout status to clean
    up); called on kopf's loop for every ModelDeployment event."""
    loop: WorkLoop[Target] | None = getattr(memo, "kustos_rollout", None)
    if loop is None:
        return
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"], meta["uid"])
    live = type_ != "DELETED" and not meta.get("deletionTimestamp")
    if not live or not _wanted(body):
        loop.entries.pop(key, None)
        memo.kustos_rollouts.pop(meta["uid"], None)
        return
    entry = loop.entries.setdefault(key, Entry(cap=60.0))
    if entry.tag != meta.get("generation"):  # a new spec or action: look now
        entry.tag = meta.get("generation")
        entry.due = 0.0
    if (meta.get("annotations") or {}).get(ACTION):
        entry.due = 0.0


@kopf.on.startup()
async def start_rollouts(memo: kopf.Memo, **_: Any) -> None:
    memo.kustos_rollouts = {}  # uid -> Tracker

    def work(key: Target) -> float:
        md = live_object(KIND, key)
        if md is not None:
            step(md, memo.kustos_rollouts, memo)
        return TICK

    start_in_memo(memo, "kustos_rollout", work, workers=WORKERS, name="kustos-rollout",
                  interval=ROUND)


@kopf.on.cleanup()
async def stop_rollouts(memo: kopf.Memo, **_: Any) -> None:
    await stop_in_memo(memo, "kustos_rollout")


def step(body: dict[str, Any], trackers: dict[str, Tracker], memo: Any) -> None:
    """One look at one ModelDeployment's rollout."""
    meta = body["metadata"]
    try:
        spec = served_spec(body)
    except ValidationError:
        return  # the reconcile says what is wrong with the spec
    if spec.rollout is None:
        if rollout_status(body):  # spec.rollout was removed: so is its status
            k8s_status.write(KIND, meta["name"], meta["namespace"], meta["uid"], ANALYSIS,
                             lambda fresh: {}, body)
        trackers.pop(meta["uid"], None)
        ignored = machine.ignored_action(meta.get("annotations"))
        if ignored is not None:
            events.post(body, ignored.reason, ignored.message, warning=ignored.warning)
            _consume(body)
        return
    if is_registry_uri(spec.model.uri):
        return  # not resolved yet: no model to roll out
    st = dict(rollout_status(body))
    action, invalid = machine.manual_action(meta.get("annotations"))
    if invalid is not None:
        events.post(body, invalid.reason, invalid.message, warning=invalid.warning)
        _consume(body)
    verdict, analysis, failed = _analyse(body, spec, st, trackers)
    now = datetime.now(UTC)
    decided: list[machine.Step] = []

    def update(fresh: dict[str, Any]) -> dict[str, Any] | None:
        fresh_spec = served_spec(fresh)
        if fresh_spec.rollout is None or machine.model_ref(fresh_spec.model) != \
                machine.model_ref(spec.model):
            return None  # the spec changed meanwhile: the next look starts from it
        current = dict(rollout_status(fresh))
        out = machine.decide(fresh_spec.rollout, machine.model_ref(fresh_spec.model),
                             current, verdict, now, action, failed)
        decided[:] = [out]
        new = dict(out.status)
        if analysis is not None:
            new["lastAnalysis"] = analysis
        elif current.get("lastAnalysis"):
            new["lastAnalysis"] = current["lastAnalysis"]
        return {"rollout": new}

    written = k8s_status.write(KIND, meta["name"], meta["namespace"], meta["uid"], ANALYSIS,
                               update, body)
    if action is not None:
        _consume(body)
    if written is None or not written.wrote or not decided:
        _export(meta, st)
        return
    out = decided[0]
    new = out.status
    _export(meta, new)
    if out.notice is not None:
        events.post(written.before, out.notice.reason, out.notice.message,
                    warning=out.notice.warning)
    if out.notice is not None and out.notice.reason == "RolledBack":
        metrics.ROLLOUT_ROLLBACKS.labels(model_namespace=meta["namespace"],
                                         model=meta["name"]).inc()
    moved = any(new.get(k) != st.get(k) for k in ("phase", "weight", "stable"))
    if moved:
        rerender(meta["name"], meta["namespace"], models(memo))


def _consume(body: Mapping[str, Any]) -> None:
    """Remove the action annotation (a merge patch with null), once applied."""
    meta = body["metadata"]
    try:
        client.patch(KIND, meta["name"], meta["namespace"],
                     {"metadata": {"annotations": {ACTION: None}}})
    except ApiError as err:
        log.warning("could not remove %s from %s: %s", ACTION, meta["name"], err)


def _analyse(body: Mapping[str, Any], spec: ModelDeploymentSpec, st: Mapping[str, Any],
             trackers: dict[str, Tracker],
             ) -> tuple[gates.Verdict | None, dict[str, Any] | None, str]:
    """Scrape and judge when an analysis is due: (verdict, lastAnalysis, failed gates in
    words); (None, None, "") when none ran."""
    assert spec.rollout is not None
    meta = body["metadata"]
    phase = st.get("phase")
    if phase not in ("Shadow", "Canary") or not machine.same(
            machine.model_ref(spec.model), st.get("candidate")):
        trackers.pop(meta["uid"], None)
        return None, None, ""
    key = (phase, st.get("step"), st.get("stepStartedAt"), str(st.get("candidate")))
    tracker = trackers.get(meta["uid"])
    interval = machine.seconds(spec.rollout.analysis.interval)
    now = time.monotonic()
    if tracker is None or tracker.key != key:
        trackers[meta["uid"]] = Tracker(key, scrape(body, spec), now)
        return None, None, ""
    if now - tracker.last < interval:
        return None, None, ""
    tracker.last = now
    after = scrape(body, spec)
    stable = track_window(tracker.baseline.get("stable", {}), after.get("stable", {}))
    candidate = track_window(tracker.baseline.get("canary", {}), after.get("canary", {}))
    versions = ((st.get("stable") or {}).get("version"), spec.model.version)
    found = gates.evaluate(spec.rollout.analysis, stable, candidate, str(phase), versions,
                           external(body))
    verdict = gates.overall(found)
    for g in found:
        metrics.ROLLOUT_VERDICTS.labels(model_namespace=meta["namespace"], model=meta["name"],
                                        metric=g.name, verdict=g.verdict).inc()
    return verdict, gates.result(found, datetime.now(UTC)), gates.failures(found)


def scrape(body: Mapping[str, Any], spec: ModelDeploymentSpec) -> dict[str, dict[str, Sample]]:
    """Each track's ready pods' prediction counters, by pod name (a pod that does not
    answer is left out of this scrape)."""
    meta = body["metadata"]
    rendered = effective_spec(spec, rollout_status(body))
    sspec = render_md.serving_spec(meta["name"], rendered, rendered.model, config())
    ports = runtime_ports(sspec)
    port = ports.metrics or ports.http
    path = ports.metrics_path or "/metrics"
    scheme = ports.metrics_scheme if ports.metrics is not None else "http"
    model = spec.model.name or meta["name"]
    targets: list[tuple[str, str, str]] = []
    for track in ("stable", "canary"):
        for pod in client.list_objects("Pod", meta["namespace"], {
                INSTANCE: meta["name"], COMPONENT: "predictor", TRACK: track}):
            ip = ready_ip(pod)
            if ip:
                targets.append((track, pod["metadata"]["name"], f"{scheme}://{ip}:{port}{path}"))
    out: dict[str, dict[str, Sample]] = {"stable": {}, "canary": {}}
    if not targets:
        return out
    context = scrape_context() if scheme == "https" else None
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        texts = list(pool.map(lambda t: _get(t[2], context), targets))
    for (track, pod_name, _), text in zip(targets, texts, strict=True):
        if text is not None:
            out[track][pod_name] = parse(text, model)
    return out


def scrape_context() -> ssl.SSLContext:
    """HTTPS to a pod's IP (spec.runtime.tls without a client CA: /metrics is on the TLS
    port): encrypted, not authenticated, as the kubelet's HTTPS probes of the same port.
    No certificate names a pod IP, and the operator does not read the TLS Secret (it
    holds the private key); what is read is the counters any plain scrape reads."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _get(url: str, context: ssl.SSLContext | None = None) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT, context=context) as resp:
            text: str = resp.read(16 * 1024 * 1024).decode("utf-8", "replace")
            return text
    except (urllib.error.URLError, OSError, ValueError) as err:
        log.info("scrape of %s failed: %s", url, err)
        return None


def external(body: Mapping[str, Any]) -> gates.External:
    """What a DriftMonitor targeting the model says: drift (the model's traffic), and
    ground-truth figures per version."""
    meta = body["metadata"]
    try:
        monitors = [m for m in client.list_objects("DriftMonitor", meta["namespace"])
                    if ((m.get("spec") or {}).get("targetRef") or {}).get("name")
                    == meta["name"]]
    except ApiError:
        return gates.External()
    if not monitors:
        return gates.External()
    st = monitors[0].get("status") or {}
    drifted = None
    for cond in st.get("conditions") or []:
        if cond.get("type") == "DriftDetected":
            drifted = cond.get("status") == "True"
    distances = [float(f["distance"]) for f in st.get("featurePValues") or []
                 if f.get("distance") is not None]
    truth: dict[str, dict[str, float]] = {}
    for v in (st.get("groundTruth") or {}).get("versions") or []:
        figures: dict[str, float] = {"count": float(v.get("count") or 0)}
        acc = (v.get("metrics") or {}).get("accuracy")
        if acc is not None:
            figures["accuracy"] = float(acc)
        gaps = [float(g[k]) for g in v.get("fairness") or []
                for k in ("demographicParityDifference", "equalizedOddsDifference",
                          "accuracyGap") if g.get(k) is not None]
        if gaps:
            figures["fairnessGap"] = max(gaps)
        truth[str(v.get("version"))] = figures
    return gates.External(
        drift_score=max(distances) if distances else None, drifted=drifted,
        drift_samples=int(st.get("windowsEvaluated") or 0), truth=truth)


PHASES = ("Idle", "Shadow", "Canary", "Paused", "Promoted", "RolledBack")


def _export(meta: Mapping[str, Any], st: Mapping[str, Any]) -> None:
    labels = {"model_namespace": meta["namespace"], "model": meta["name"]}
    for phase in PHASES:
        metrics.ROLLOUT_PHASE.labels(**labels, phase=phase).set(
            1 if st.get("phase") == phase else 0)
    metrics.ROLLOUT_STEP.labels(**labels).set(float(st.get("step") or 0))
    metrics.ROLLOUT_WEIGHT.labels(**labels).set(float(st.get("weight") or 0))
