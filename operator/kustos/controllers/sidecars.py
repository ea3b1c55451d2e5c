"""What the ExplainerSpec and DriftMonitor controllers share (I/O side): finding the
target, its pods, polling the sidecars, and the periodic collection.

The collection runs in one background thread instead of kopf timers: a kopf timer puts a
finalizer on every object, and an ExplainerSpec or DriftMonitor would then block its own
(or its namespace's) deletion whenever the operator is not running.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from pydantic import ValidationError

from kustos import metrics
from kustos.api.v1alpha1 import GROUP, VERSION, ModelDeploymentSpec
from kustos.k8s import client
from kustos.k8s.client import ApiError
from kustos.render.meta import COMPONENT, INSTANCE
from kustos.render.sidecars import active_for, target_name
from kustos.status.sidecars import PodReport, Wiring

from . import peering
from .context import backoff, config
from .modeldeployment import rerender

log = logging.getLogger(__name__)

MD = "ModelDeployment"

Refresh = Callable[[str, str], None]  # (namespace, name) -> collect and write status

# kind -> the refresh of one object of that kind; registered by the controller modules.
_REFRESH: dict[str, Refresh] = {}
# kind -> {(namespace, name): None}: every object of those kinds the operator has seen.
_KNOWN: dict[str, dict[tuple[str, str], None]] = {}
# (kind, namespace, name) -> (failures in a row, monotonic time of the next attempt)
_BACKOFF: dict[tuple[str, str, str], tuple[int, float]] = {}
_LOCK = threading.Lock()
_STOP = threading.Event()


def register(kind: str, refresh: Refresh) -> None:
    _REFRESH[kind] = refresh
    _KNOWN.setdefault(kind, {})


def seen(kind: str, namespace: str, name: str, deleted: bool = False) -> None:
    with _LOCK:
        if deleted:
            _KNOWN[kind].pop((namespace, name), None)
            _BACKOFF.pop((kind, namespace, name), None)
        else:
            _KNOWN[kind][(namespace, name)] = None


def wiring(kind: str, body: Mapping[str, Any]) -> tuple[Wiring, dict[str, Any] | None]:
    """Is ``body`` wired into its target, and the target itself (None if missing)."""
    namespace, target = body["metadata"]["namespace"], target_name(body)
    md = client.get(MD, target, namespace)
    if md is None or md["metadata"].get("deletionTimestamp"):
        return Wiring(target, namespace, exists=False), None
    active = active_for(target, client.list_objects(kind, namespace))
    try:
        runtime = ModelDeploymentSpec.model_validate(md["spec"]).runtime.kind
    except ValidationError:
        runtime = None
    return Wiring(target, namespace, True, runtime,
                  active["metadata"]["name"] if active else None), md


def for_target(kind: str, md: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The resource of ``kind`` wired into this ModelDeployment (the contributors' view)."""
    meta = md["metadata"]
    try:
        candidates = client.list_objects(kind, meta["namespace"])
    except ApiError as err:
        if err.status == 404:
            return None  # that CRD is not installed: nothing can target the model
        raise
    return active_for(meta["name"], candidates)


def rerender_target(name: str, namespace: str) -> None:
    """Re-render a ModelDeployment whose attachments changed. A problem of the
    ModelDeployment itself is its own handler's to report and retry, not ours."""
    try:
        rerender(name, namespace)
    except (kopf.TemporaryError, kopf.PermanentError) as err:
        log.info("ModelDeployment %s/%s not re-rendered now: %s", namespace, name, err)


def ready_pods(md_name: str, namespace: str, container: str) -> list[tuple[str, str]]:
    """(pod name, pod IP) of the target's Ready pods that run ``container``."""
    pods = client.list_objects("Pod", namespace, {INSTANCE: md_name, COMPONENT: "predictor"})
    out = []
    for pod in pods:
        st = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in st.get("conditions") or [])
        has = any(c.get("name") == container for c in pod["spec"].get("containers") or [])
        if ready and has and st.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
            out.append((pod["metadata"]["name"], str(st["podIP"])))
    return sorted(out)


def _get(pod: str, url: str, timeout: float) -> PodReport:
    report = _fetch(pod, url, timeout)
    metrics.SIDECAR_POLLS.labels(result="error" if report.error else "ok").inc()
    return report


def _fetch(pod: str, url: str, timeout: float) -> PodReport:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read(4 << 20))
    except urllib.error.HTTPError as err:
        return PodReport(pod, error=f"HTTP {err.code}")
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        return PodReport(pod, error=str(reason)[:200] or type(err).__name__)
    if not isinstance(data, dict):
        return PodReport(pod, error="status is not a JSON object")
    return PodReport(pod, report=data)


def collect(pods: list[tuple[str, str]], port: int, path: str) -> list[PodReport]:
    """Each pod's sidecar status; an unreachable pod is noted, never raised."""
    if not pods:
        return []
    timeout = config().sidecars.collect_timeout
    with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
        return list(pool.map(lambda p: _get(p[0], f"http://{p[1]}:{port}{path}", timeout),
                             pods))


def _run_once() -> None:
    with _LOCK:
        work = [(kind, ns, name) for kind, keys in _KNOWN.items() for ns, name in keys]
    now = time.monotonic()
    for kind, ns, name in work:
        if _STOP.is_set():
            return
        failures, due = _BACKOFF.get((kind, ns, name), (0, 0.0))
        if due > now:
            continue
        try:
            _REFRESH[kind](ns, name)
            _BACKOFF.pop((kind, ns, name), None)
        except Exception as err:  # one object's trouble never stops the others
            delay = backoff(failures)
            log.warning("collecting %s %s/%s failed (retry in %.0fs): %s: %s", kind, ns, name,
                        delay, type(err).__name__, err)
            _BACKOFF[(kind, ns, name)] = (failures + 1, now + delay)


def _loop() -> None:
    interval = config().sidecars.collect_interval
    while not _STOP.wait(interval):
        # A standby peer leaves polling, status, Events and Jobs to the active one.
        if peering.is_active():
            _run_once()


@kopf.on.startup()
def start_collecting(**_: Any) -> None:
    _STOP.clear()
    threading.Thread(target=_loop, name="kustos-sidecar-collect", daemon=True).start()


@kopf.on.cleanup()
def stop_collecting(**_: Any) -> None:
    _STOP.set()


def refresh_targeting(md_name: str, namespace: str, skip: str | None = None) -> None:
    """Refresh every known ExplainerSpec / DriftMonitor that targets this ModelDeployment
    (its creation or deletion changes their status at once, not at the next poll)."""
    for kind, refresh in _REFRESH.items():
        for obj in client.list_objects(kind, namespace):
            if target_name(obj) == md_name and obj["metadata"]["name"] != skip:
                try:
                    refresh(namespace, obj["metadata"]["name"])
                except (ApiError, ValidationError) as err:
                    log.warning("refresh of %s %s/%s failed: %s", kind, namespace,
                                obj["metadata"]["name"], err)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def sidecar_target_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A ModelDeployment appeared or went away: its ExplainerSpecs and DriftMonitors
    learn at once (TargetNotFound resolves by itself)."""
    if type not in ("ADDED", "DELETED") or not _REFRESH:
        return
    try:
        refresh_targeting(body["metadata"]["name"], body["metadata"]["namespace"])
    except ApiError as err:
        log.warning("refresh after %s of md %s failed: %s", type, body["metadata"]["name"], err)
