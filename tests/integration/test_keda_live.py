"""Requests-per-second autoscaling for real, through KEDA's Prometheus scaler.

KEDA's operator and metrics adapter run as host processes (hack/keda.sh), a host
Prometheus scrapes the real model pod with the scrape job prometheus-operator would build
from the shipped PodMonitor (test_prometheus_live.podmonitor_jobs), and the chart's
operator runs with ``autoscaling.requests_backend: keda``: a ModelDeployment with
``targetRequestsPerSecond`` gets a ScaledObject instead of an HPA, KEDA creates the HPA,
and the kube-controller-manager's HPA controller reads the request rate through the
external metrics API. A bounded load above the per-pod target scales the real Deployment
up, and with the window the spec sets it comes back down while a paced probe counts
failed requests; the figures (time to scale up and down, error rates) are printed (run
with -s).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO, in_ci
from conftest import OPERATOR_LOGS, Kube, free_port, stop_process, wait_for, wait_ready
from loadgen import Load
from promjobs import podmonitor_jobs, prometheus_binary
from realpods import (
    IRIS_V1,
    ROWS,
    ChartOperator,
    answered,
    cluster_ip,
    live_pods,
    real_model,
    v2_request,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

KEDA = REPO / "hack" / "keda.sh"
NAME = "rps"
# replicas, and the per-pod target in requests/s: one pod under the load below serves
# hundreds per second, far above it, so KEDA's HPA asks for the maximum.
MIN, MAX, TARGET = 1, 3, 20
RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "300m"}}
SCRAPE_INTERVAL = 5
LOAD_LIMIT_SECONDS = 240.0
# spec.autoscaling.scaleDownStabilizationSeconds, which Kustos hands to KEDA's HPA
SCALE_DOWN_WINDOW = 20


def keda(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(KEDA), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def keda_running(kube: Kube) -> Iterator[None]:
    """KEDA serving external.metrics.k8s.io; stopped again (APIService removed first) if
    this module started it."""
    started_here = keda("status").returncode != 0
    if started_here:
        proc = keda("start")
        if proc.returncode != 0:
            msg = f"hack/keda.sh start failed:\n{proc.stderr[-3000:]}"
            if in_ci():
                pytest.fail(msg)
            raise AssertionError(msg)
    yield
    if started_here:
        keda("stop", timeout=120)


@pytest.fixture(scope="module")
def prometheus_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def chart_values(prometheus_port: int) -> list[str]:
    """The chart's operator renders ScaledObjects whose trigger queries this module's
    Prometheus (KEDA's operator, a host process, reaches it on loopback)."""
    return ["config.autoscaling.requests_backend=keda",
            f"config.autoscaling.prometheus_address=http://127.0.0.1:{prometheus_port}",
            "config.autoscaling.rate_window=30s",
            "config.autoscaling.polling_interval=5"]


@dataclass
class Prom:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(kubeconfig: Path, chart_operator: ChartOperator, prometheus_port: int,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    tmp = tmp_path_factory.mktemp("prometheus-keda")
    config = {"global": {"scrape_interval": f"{SCRAPE_INTERVAL}s",
                         "scrape_timeout": f"{SCRAPE_INTERVAL - 1}s"},
              "scrape_configs": podmonitor_jobs(kubeconfig, chart_operator.models_ns)}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    OPERATOR_LOGS.mkdir(parents=True, exist_ok=True)
    log_path = OPERATOR_LOGS / "prometheus-keda-test.log"
    proc = subprocess.Popen(
        [str(prometheus_binary()), f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        cwd=tmp, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    prom = Prom(f"http://127.0.0.1:{prometheus_port}")

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for("prometheus ready", ready, timeout=120)
        yield prom
    finally:
        stop_process(proc, timeout=30, kill_timeout=10)


@pytest.fixture(scope="module")
def rps(chart_operator: ChartOperator, model_store: dict[str, str], keda_running: None,
        prometheus: Prom) -> Iterator[str]:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    kube.apply(real_model(
        NAME, ns, IRIS_V1, model_store[IRIS_V1], runtime={"resources": RESOURCES},
        autoscaling={"minReplicas": MIN, "maxReplicas": MAX,
                     "targetRequestsPerSecond": TARGET,
                     "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW}))
    try:
        wait_ready(kube, NAME, ns, timeout=300)
        yield NAME
    finally:
        kube.run("delete", "md", NAME, "-n", ns, "--wait=false", check=False)
        # KEDA's finalizer: the ScaledObject must go while KEDA still runs
        wait_for("the ScaledObject deleted",
                 lambda: kube.get("scaledobject", NAME, ns) is None, timeout=120)


def state(kube: Kube, ns: str) -> dict[str, Any]:
    hpa = kube.get("hpa", f"keda-hpa-{NAME}", ns) or {}
    st = hpa.get("status") or {}
    value = next((m["external"]["current"].get("averageValue")
                  for m in st.get("currentMetrics") or [] if m.get("type") == "External"),
                 None)
    dep = kube.get("deployment", NAME, ns) or {}
    return {"desired": st.get("desiredReplicas", 0), "current": st.get("currentReplicas", 0),
            "value": value, "replicas": (dep.get("spec") or {}).get("replicas"),
            "ready": (dep.get("status") or {}).get("readyReplicas", 0),
            "conditions": {c["type"]: c for c in st.get("conditions") or []}}


def quantity(q: str | None) -> float:
    """A Kubernetes quantity as the HPA prints averageValue ("41", "41500m")."""
    if q is None:
        return math.nan
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


# The setup may build KEDA (long on a fresh machine) and the chart's model pods.
@pytest.mark.timeout(3600)
def test_scaled_object_instead_of_hpa(chart_operator: ChartOperator, rps: str) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    md = kube.get("modeldeployment", rps, ns)
    assert md is not None
    so = wait_for("KEDA's ScaledObject Ready", lambda: (
        s := kube.get("scaledobject", rps, ns)) and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (s.get("status") or {}).get("conditions") or []) and s, timeout=120)
    assert so["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == str(TARGET)
    # Kustos renders no HPA of its own; KEDA's is owned by the ScaledObject.
    assert kube.get("hpa", rps, ns) is None
    hpa = wait_for("KEDA's HPA", lambda: kube.get("hpa", f"keda-hpa-{rps}", ns), timeout=60)
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == so["metadata"]["uid"]
    assert hpa["spec"]["metrics"][0]["type"] == "External"
    # The operator does not own the Deployment's replica count (the HPA writes it).
    dep = kube.get("deployment", rps, ns)
    assert dep is not None
    for entry in dep["metadata"].get("managedFields") or []:
        if entry.get("manager") == "kustos":
            assert "f:replicas" not in json.dumps(entry.get("fieldsV1", {})), entry
    print(f"\nScaledObject query: {trigger['metadata']['query']}")


@pytest.mark.timeout(1200)
def test_request_rate_scales_up(chart_operator: ChartOperator, prometheus: Prom,
                                rps: str) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    ip = cluster_ip(kube, rps, ns)
    path = f"/v2/models/{rps}/infer"
    status, _ = answered(ip, path, v2_request(ROWS))
    assert status == 200
    # Idle: the HPA reads the external metric (near 0) and keeps the minimum.
    idle = wait_for("KEDA's HPA reading the request rate", lambda: (
        s := state(kube, ns)) and s["value"] is not None and s, timeout=180, interval=2)
    assert idle["desired"] == MIN and quantity(idle["value"]) < TARGET, idle
    assert idle["conditions"]["ScalingActive"]["status"] == "True", idle
    so = kube.get("scaledobject", rps, ns)
    assert so is not None
    query = so["spec"]["triggers"][0]["metadata"]["query"]

    load = Load(ip, path, json.dumps(v2_request(ROWS)).encode())
    samples: list[tuple[float, dict[str, Any]]] = []
    marks: dict[str, float] = {}
    seen_rate: list[float] = []

    async def watch(t0: float) -> None:
        while not load.stop.is_set():
            s = await asyncio.to_thread(state, kube, ns)
            now = time.monotonic() - t0
            samples.append((now, s))
            if s["desired"] > MIN:
                marks.setdefault("decided", now)
            if s["ready"] > MIN:
                marks.setdefault("ready", now)
            if s["desired"] > MIN and s["ready"] >= s["desired"]:
                marks.setdefault("all_ready", now)
                if now - marks["all_ready"] >= 10:
                    result = await asyncio.to_thread(prometheus.query, query)
                    seen_rate.extend(float(r["value"][1]) for r in result)
                    load.stop.set()
            if now > LOAD_LIMIT_SECONDS:
                load.stop.set()
            await asyncio.sleep(1)

    async def scenario() -> float:
        t0 = time.monotonic()
        runner = asyncio.create_task(load.run())
        watcher = asyncio.create_task(watch(t0))
        await runner
        load.stop.set()
        await watcher
        return time.monotonic() - t0

    duration = asyncio.run(scenario())
    errors = sum(load.errors.values())
    rate = errors / max(1, load.sent)
    peak = max((quantity(s["value"]) for _, s in samples if s["value"]), default=math.nan)
    print(f"\nload: {load.sent} requests in {duration:.1f} s ({load.sent / duration:.0f}/s), "
          f"errors {errors} ({rate:.2%}) {load.errors}")
    print(f"scale-up: KEDA's HPA decided {marks.get('decided', math.nan):.1f} s after the "
          f"load began, first new pod Ready {marks.get('ready', math.nan):.1f} s, all "
          f"{max(s['desired'] for _, s in samples)} Ready "
          f"{marks.get('all_ready', math.nan):.1f} s; "
          f"peak per-pod rate the HPA saw {peak:.0f}/s (target {TARGET}); Prometheus "
          f"then: {seen_rate} requests/s in total")
    assert "decided" in marks, f"no scale-up within {duration:.0f} s: {samples[-5:]}"
    assert peak > TARGET, samples[-5:]
    assert "all_ready" in marks, samples[-5:]
    assert seen_rate and seen_rate[0] > TARGET, seen_rate
    # the HPA, not the operator, holds the replica count it chose
    final = state(kube, ns)
    assert final["replicas"] == final["desired"] > MIN, final
    assert load.ok > 0 and rate < 0.01, (load.errors, load.sent)


@pytest.mark.timeout(900)
def test_back_down_when_the_requests_stop(chart_operator: ChartOperator, rps: str) -> None:
    """After the load (the test above): KEDA's HPA, with the window the spec set, returns
    to the minimum while a paced probe (10 requests/s, half the per-pod target) checks that
    the leaving pods drop nothing."""
    kube, ns = chart_operator.kube, chart_operator.models_ns
    so = kube.get("scaledobject", rps, ns)
    assert so is not None
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"] == SCALE_DOWN_WINDOW
    start = state(kube, ns)
    assert start["desired"] > MIN, f"nothing to scale down from: {start}"
    ip = cluster_ip(kube, rps, ns)
    probe = Load(ip, f"/v2/models/{rps}/infer", json.dumps(v2_request(ROWS)).encode())
    t0 = time.monotonic()
    deadline = t0 + 300 + SCALE_DOWN_WINDOW

    async def paced() -> None:
        while not probe.stop.is_set() and time.monotonic() < deadline + 10:
            await probe.one()
            await asyncio.sleep(0.1)

    async def watch() -> float | None:
        try:
            while time.monotonic() < deadline:
                s = await asyncio.to_thread(state, kube, ns)
                pods = await asyncio.to_thread(live_pods, kube, rps, ns)
                if s["desired"] == MIN and len(pods) == MIN:
                    took = time.monotonic() - t0
                    await asyncio.sleep(5)
                    return took
                await asyncio.sleep(2)
            return None
        finally:
            probe.stop.set()

    async def scenario() -> float | None:
        prober = asyncio.create_task(paced())
        took = await watch()
        await prober
        return took

    took = asyncio.run(scenario())
    errors = sum(probe.errors.values())
    print(f"\nscale-down: from {start['desired']} back to {MIN} pod "
          f"{took if took is None else round(took, 1)} s after the load stopped "
          f"(window {SCALE_DOWN_WINDOW} s); probe {probe.sent} requests, {errors} errors "
          f"{probe.errors}")
    assert took is not None, f"not back to {MIN} pod: {state(kube, ns)}"
    assert probe.ok > 0 and errors <= probe.sent * 0.01, (probe.errors, probe.sent)
