"""CPU autoscaling for real: metrics-server (hack/metrics-server.sh) scrapes the real node's
kubelet, the HPA Kustos renders from spec.autoscaling reads it through the aggregated
metrics API, and a ModelDeployment on the real node scales up under load and back down.

The load is a small asyncio generator on this host against the model's Service (one
connection per request, so kube-proxy spreads it over the pods, new ones included), bounded
in time and in requests. The figures (time to scale up, error rate while scaling, time to
scale down) are printed; run with -s to see them.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cluster import REPO, in_ci
from conftest import Kube, wait_for, wait_ready
from loadgen import CONCURRENCY, LOAD_SECONDS, Load
from realpods import (
    IRIS_V1,
    REAL_NODE,
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

METRICS_SERVER = REPO / "hack" / "metrics-server.sh"
NAME = "busy"
MIN, MAX, TARGET = 1, 3, 50  # replicas, and the CPU target in percent of the request
# Small on purpose: one pod under load far exceeds 50% of 100m, and the limit keeps the
# pods' share of the shared 2-core machine bounded (3 pods x 300m at most).
RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "300m"}}
# The HPA's default scale-down stabilization is 300 s: the spec asks for a short one
# (spec.autoscaling.scaleDownStabilizationSeconds, rendered into the HPA's behavior).
SCALE_DOWN_WINDOW = 20


def ms(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(METRICS_SERVER), *args], capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def metrics_server(kube: Kube) -> Iterator[None]:
    """metrics-server serving metrics.k8s.io; stopped again (APIService removed first) if
    this module started it: an APIService without its server would leave the namespace
    controller unable to discover resources, and namespaces stuck Terminating."""
    started_here = ms("status").returncode != 0
    if started_here:
        proc = ms("start")
        if proc.returncode != 0:
            msg = f"hack/metrics-server.sh start failed:\n{proc.stderr[-3000:]}"
            if in_ci():
                pytest.fail(msg)
            raise AssertionError(msg)
    yield
    if started_here:
        ms("stop", timeout=120)


@pytest.fixture(scope="module")
def busy(chart_operator: ChartOperator, model_store: dict[str, str],
         metrics_server: None) -> Iterator[str]:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    kube.apply(real_model(
        NAME, ns, IRIS_V1, model_store[IRIS_V1],
        runtime={"resources": RESOURCES},
        autoscaling={"minReplicas": MIN, "maxReplicas": MAX, "targetCPUUtilization": TARGET,
                     "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW}))
    wait_ready(kube, NAME, ns, timeout=300)
    hpa = wait_for("the HPA", lambda: kube.get("hpa", NAME, ns), timeout=60)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == \
        SCALE_DOWN_WINDOW
    yield NAME
    kube.run("delete", "md", NAME, "-n", ns, "--wait=false", check=False)


def top_pods(kube: Kube, ns: str) -> dict[str, tuple[int, int]]:
    """`kubectl top pods`: {pod: (CPU millicores, memory MiB)}."""
    out = kube.run("top", "pods", "-n", ns, "--no-headers", check=False).stdout
    figures = {}
    for line in out.splitlines():
        m = re.match(r"(\S+)\s+(\d+)m\s+(\d+)Mi\s*$", line)
        if m:
            figures[m[1]] = (int(m[2]), int(m[3]))
    return figures


def hpa_state(kube: Kube, ns: str) -> dict[str, Any]:
    hpa = kube.get("hpa", NAME, ns) or {}
    st = hpa.get("status") or {}
    cpu = next((m["resource"]["current"].get("averageUtilization")
                for m in st.get("currentMetrics") or []
                if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"), None)
    dep = kube.get("deployment", NAME, ns) or {}
    return {"desired": st.get("desiredReplicas", 0), "current": st.get("currentReplicas", 0),
            "cpu": cpu, "ready": (dep.get("status") or {}).get("readyReplicas", 0),
            "conditions": {c["type"]: c for c in st.get("conditions") or []}}


# The first test's setup may build metrics-server (a few minutes on a fresh machine).
@pytest.mark.timeout(1800)
def test_kubectl_top_shows_the_model_pods(chart_operator: ChartOperator, busy: str) -> None:
    """metrics-server's figures for the real pods, as `kubectl top` prints them."""
    kube, ns = chart_operator.kube, chart_operator.models_ns
    pods = {p["metadata"]["name"] for p in live_pods(kube, busy, ns)}
    assert len(pods) == MIN
    figures = wait_for("kubectl top pods with the model's pods",
                       lambda: (f := top_pods(kube, ns)) and pods <= set(f) and f,
                       timeout=120, interval=2)
    for pod in pods:
        assert figures[pod][1] > 10, figures  # a Python server with a model: tens of MiB
    node = kube.run("top", "node", REAL_NODE, "--no-headers").stdout
    assert re.match(rf"{REAL_NODE}\s+\d+m\s+\d+%\s+\d+Mi\s+\d+%", node), node
    print(f"\nkubectl top pods: {figures}\nkubectl top node: {node.strip()}")


@pytest.mark.timeout(1200)
def test_cpu_load_scales_up_and_back_down(chart_operator: ChartOperator, busy: str) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    ip = cluster_ip(kube, busy, ns)
    path = f"/v2/models/{busy}/infer"
    status, _ = answered(ip, path, v2_request(ROWS))
    assert status == 200
    # Idle first: the HPA has read the CPU metric and keeps the minimum.
    idle = wait_for("the HPA reading the pods' CPU", lambda: (
        s := hpa_state(kube, ns)) and s["cpu"] is not None and s, timeout=180, interval=2)
    assert idle["desired"] == MIN and idle["cpu"] < TARGET, idle
    assert idle["conditions"]["ScalingActive"]["status"] == "True", idle

    load = Load(ip, path, json.dumps(v2_request(ROWS)).encode())
    samples: list[tuple[float, dict[str, Any]]] = []
    marks: dict[str, float] = {}

    async def watch(t0: float) -> None:
        """Until the HPA has added pods and they are Ready (then the load stops)."""
        while not load.stop.is_set():
            s = await asyncio.to_thread(hpa_state, kube, ns)
            now = time.monotonic() - t0
            samples.append((now, s))
            if s["desired"] > MIN:
                marks.setdefault("decided", now)
            if s["ready"] > MIN:
                marks.setdefault("ready", now)
            if s["desired"] > MIN and s["ready"] >= s["desired"]:
                marks.setdefault("all_ready", now)
                # a few seconds more of load over the new pods, then stop
                if now - marks["all_ready"] >= 10:
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
    peak = max((s["cpu"] or 0 for _, s in samples), default=0)
    rate = sum(load.errors.values()) / max(1, load.sent)
    lat = sorted(load.latencies)
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p99 = lat[int(len(lat) * 0.99)] if lat else float("nan")
    print(f"\nload: {load.sent} requests in {duration:.1f} s ({load.sent / duration:.1f}/s, "
          f"{CONCURRENCY} connections at a time), errors {sum(load.errors.values())} "
          f"({rate:.2%}) {load.errors}, latency p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms")
    print(f"scale-up: HPA decided {marks.get('decided', float('nan')):.1f} s after the load "
          f"began, first new pod Ready at {marks.get('ready', float('nan')):.1f} s, all "
          f"{max(s['desired'] for _, s in samples)} Ready at "
          f"{marks.get('all_ready', float('nan')):.1f} s; peak CPU {peak}% of the request")
    assert "decided" in marks, f"no scale-up within {LOAD_SECONDS} s: {samples[-5:]}"
    assert peak > TARGET, samples
    assert "all_ready" in marks, samples[-5:]
    assert load.ok > 0 and rate < 0.01, (load.errors, load.sent)

    # The load has stopped: the HPA comes back to the minimum after its (short) window,
    # while a light paced probe (10 requests/s, far below the target) checks that the
    # pods going away drop no request.
    down, after, probe = asyncio.run(scale_down(kube, ns, Load(ip, path, load.body)))
    probe_errors = sum(probe.errors.values())
    print(f"scale-down: back to {MIN} pod {after:.1f} s after the load stopped "
          f"(stabilization window {SCALE_DOWN_WINDOW} s), CPU then {down and down['cpu']}%; "
          f"probe {probe.sent} requests, {probe_errors} errors {probe.errors}")
    assert down is not None, f"no scale-down to {MIN} within {after:.0f} s"
    assert probe.ok > 0 and probe_errors <= probe.sent * 0.01, (probe.errors, probe.sent)
    status, _ = answered(ip, path, v2_request(ROWS))
    assert status == 200


async def scale_down(kube: Kube, ns: str, probe: Load
                     ) -> tuple[dict[str, Any] | None, float, Load]:
    """Poll until the HPA wants MIN and only MIN pods are left (None on timeout), probing
    meanwhile and for 5 s after; returns the last state, the seconds it took, the probe."""
    t0 = time.monotonic()
    deadline = t0 + 300 + SCALE_DOWN_WINDOW

    async def paced() -> None:
        while not probe.stop.is_set() and time.monotonic() < deadline + 10:
            await probe.one()
            await asyncio.sleep(0.1)

    async def watch() -> tuple[dict[str, Any] | None, float]:
        try:
            while time.monotonic() < deadline:
                s = await asyncio.to_thread(hpa_state, kube, ns)
                pods = await asyncio.to_thread(live_pods, kube, NAME, ns)
                if s["desired"] == MIN and len(pods) == MIN:
                    took = time.monotonic() - t0
                    await asyncio.sleep(5)
                    return s, took
                await asyncio.sleep(2)
            return None, time.monotonic() - t0
        finally:
            probe.stop.set()

    prober = asyncio.create_task(paced())
    state, took = await watch()
    await prober
    return state, took, probe
