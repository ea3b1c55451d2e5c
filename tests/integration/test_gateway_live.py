"""Exact canary weights through the Gateway API, on the real node.

Traefik v3 runs as a host process (hack/traefik.sh) with its kubernetesGateway provider:
the Gateway API CRDs, a GatewayClass and the Gateway traefik/kustos, whose HTTP listener
is Traefik's entrypoint on the node's bridge address. The chart's operator starts after
them, so it finds the HTTPRoute CRD at start-up, and a ModelDeployment with spec.gateway
and a canary at 20 % gets an HTTPRoute weighting its two tracks' Services 80/20. Both
tracks have one pod each (replicas 2): the replica ratio would give 50 %.

10 000 V2 inference requests go through Traefik's entrypoint (16 connections, bounded
in time); each answer's model_version says which track served it (the stable track
serves iris version 1, the canary iris version 2), and the measured share must be within
2 points of the weight. The weight then changes to 50 and the share follows; removing
the canary leaves a route to the model's Service alone, removing spec.gateway removes
the route. The figures are printed (run with -s).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from cluster import REPO, bin_dir, in_ci, required_binary
from conftest import Kube, wait_for, wait_ready
from realpods import BRIDGE_ADDR, IRIS_V1, IRIS_V2, ROWS, ChartOperator, real_model, v2_request

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

TRAEFIK = REPO / "hack" / "traefik.sh"
WEB_PORT = int(os.environ.get("KUSTOS_TRAEFIK_WEB_PORT", "16271"))
GATEWAY_REF = {"name": "kustos", "namespace": "traefik"}  # hack/traefik.sh's Gateway
NAME = "gw"
# per measurement: requests, connections at a time, the time it may take at most, and
# how far (in percentage points) the canary's measured share may be from its weight
REQUESTS, CONCURRENCY, LOAD_LIMIT_SECONDS, TOLERANCE = 10_000, 16, 300.0, 2.0
STABLE_VERSION, CANARY_VERSION = "1", "2"


def traefik(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(TRAEFIK), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def traefik_running(kube: Kube) -> Iterator[None]:
    """Traefik serving the Gateway traefik/kustos; stopped again if this module started
    it (the CRDs, GatewayClass and Gateway stay)."""
    required_binary(bin_dir() / "traefik", "make tools (hack/traefik.sh build)")
    started_here = traefik("status").returncode != 0
    if started_here:
        proc = traefik("start")
        if proc.returncode != 0:
            msg = f"hack/traefik.sh start failed:\n{proc.stderr[-3000:]}"
            if in_ci():
                pytest.fail(msg)
            raise AssertionError(msg)
    yield
    if started_here:
        traefik("stop", timeout=120)


@pytest.fixture(scope="module")
def chart_values(traefik_running: None) -> list[str]:
    """No extra values; depending on Traefik makes the operator start after the Gateway
    API CRDs exist (it looks for the HTTPRoute CRD once, at start-up)."""
    return []


def host_of(namespace: str) -> str:
    """The route's host name (unique per test namespace: the Gateway is shared)."""
    return f"{NAME}.{namespace}.gateway.test"


def gateway_model(namespace: str, store: dict[str, str], weight: int) -> dict[str, Any]:
    return real_model(
        NAME, namespace, IRIS_V1, store[IRIS_V1], version=STABLE_VERSION, replicas=2,
        canary={"model": {"version": CANARY_VERSION, "uri": IRIS_V2,
                          "digest": store[IRIS_V2]},
                "trafficPercent": weight},
        gateway={"parentRefs": [GATEWAY_REF], "hostnames": [host_of(namespace)]})


@dataclass
class Tally:
    """Which model version answered how many requests, and what failed."""

    versions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(self.versions.values())

    @property
    def sent(self) -> int:
        return self.ok + sum(self.errors.values())

    def share(self, version: str) -> float:
        """Percent of the answered requests that ``version`` answered."""
        return 100.0 * self.versions[version] / self.ok if self.ok else float("nan")

    def line(self) -> str:
        return (f"{self.sent} requests in {self.seconds:.1f} s "
                f"({self.sent / max(self.seconds, 1e-9):.0f}/s, {CONCURRENCY} connections): "
                f"stable {self.versions[STABLE_VERSION]}, canary {self.versions[CANARY_VERSION]}"
                f" = {self.share(CANARY_VERSION):.2f} % canary; errors {dict(self.errors)}")


def through_gateway(namespace: str, total: int, concurrency: int = CONCURRENCY,
                    limit: float = LOAD_LIMIT_SECONDS) -> Tally:
    """``total`` V2 inference requests to the model through Traefik's entrypoint, on
    ``concurrency`` keep-alive connections (Traefik picks a backend per request); stops
    after ``limit`` seconds whatever it has sent."""
    host, path = host_of(namespace), f"/v2/models/{NAME}/infer"
    body = json.dumps(v2_request(ROWS)).encode()
    headers = {"Host": host, "Content-Type": "application/json"}
    tally, lock = Tally(), threading.Lock()
    issued = 0
    t0 = time.monotonic()
    deadline = t0 + limit

    def worker() -> None:
        nonlocal issued
        conn: http.client.HTTPConnection | None = None
        try:
            while True:
                with lock:
                    if issued >= total or time.monotonic() > deadline:
                        return
                    issued += 1
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(BRIDGE_ADDR, WEB_PORT, timeout=15)
                    conn.request("POST", path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    version = str(json.loads(data).get("model_version")) \
                        if resp.status == 200 else None
                except (OSError, http.client.HTTPException, ValueError) as err:
                    if conn is not None:
                        conn.close()
                    conn = None
                    with lock:
                        tally.errors[type(err).__name__] += 1
                    continue
                with lock:
                    if version is None:
                        tally.errors[f"status {resp.status}"] += 1
                    else:
                        tally.versions[version] += 1
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit + 30)
    tally.seconds = time.monotonic() - t0
    return tally


def route_weights(kube: Kube, namespace: str) -> list[tuple[str, int | None]] | None:
    route = kube.get("httproute", NAME, namespace)
    if route is None:
        return None
    return [(b["name"], b.get("weight")) for b in route["spec"]["rules"][0]["backendRefs"]]


def route_accepted(kube: Kube, namespace: str) -> bool:
    """Traefik took the route: Accepted and its backends resolved, on our Gateway."""
    route = kube.get("httproute", NAME, namespace) or {}
    for parent in (route.get("status") or {}).get("parents") or []:
        if parent["parentRef"]["name"] != GATEWAY_REF["name"]:
            continue
        conds = {c["type"]: c["status"] for c in parent.get("conditions") or []}
        return conds.get("Accepted") == "True" and conds.get("ResolvedRefs") == "True"
    return False


def following(namespace: str, weight: int) -> Tally | None:
    """A short sample (400 requests) whose canary share is within the tolerance of
    ``weight``: Traefik has loaded the route's weights (else None)."""
    sample = through_gateway(namespace, 400, limit=60)
    ok = sample.ok > 0 and abs(sample.share(CANARY_VERSION) - weight) <= TOLERANCE
    return sample if ok else None


def measure(namespace: str, weight: int) -> Tally:
    """Wait until the route's weights are in effect, then the measured run."""
    wait_for(f"Traefik splitting {100 - weight}/{weight}", lambda: following(namespace, weight),
             timeout=180, interval=2)
    tally = through_gateway(namespace, REQUESTS)
    print(f"\nweight {weight}: {tally.line()}")
    return tally


def check_split(tally: Tally, weight: int) -> None:
    assert tally.sent == REQUESTS, f"only {tally.sent} requests in {LOAD_LIMIT_SECONDS} s"
    assert not tally.errors, tally.errors
    assert set(tally.versions) == {STABLE_VERSION, CANARY_VERSION}, tally.versions
    assert abs(tally.share(CANARY_VERSION) - weight) <= TOLERANCE, tally.line()


def gone(kube: Kube, kind: str, name: str, namespace: str) -> Callable[[], bool]:
    return lambda: kube.get(kind, name, namespace) is None


def canary_status(kube: Kube, namespace: str, name: str = NAME) -> Any:
    md = kube.get("md", name, namespace) or {}
    return (md.get("status") or {}).get("canary")


@pytest.fixture(scope="module")
def routed(chart_operator: ChartOperator, model_store: dict[str, str]) -> Iterator[str]:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    kube.apply(gateway_model(ns, model_store, 20))
    try:
        wait_ready(kube, NAME, ns, timeout=300)
        yield ns
    finally:
        kube.run("delete", "md", NAME, "-n", ns, "--wait=false", check=False)


# The setup may build Traefik (minutes on a fresh machine) and start the model pods.
@pytest.mark.timeout(3600)
def test_canary_weight_20_through_the_gateway(chart_operator: ChartOperator,
                                              routed: str) -> None:
    kube, ns = chart_operator.kube, routed
    md = kube.get("md", NAME, ns)
    assert md is not None
    route = wait_for("the HTTPRoute", lambda: kube.get("httproute", NAME, ns), timeout=60)
    assert route["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    assert route_weights(kube, ns) == [(f"{NAME}-stable", 80), (f"{NAME}-canary", 20)]
    assert route["spec"]["hostnames"] == [host_of(ns)]
    wait_for("Traefik accepting the HTTPRoute", lambda: route_accepted(kube, ns), timeout=60)
    assert wait_for("status.canary", lambda: canary_status(kube, ns), timeout=60) == {
        "trafficSplit": "gateway", "trafficPercent": 20}
    # one pod per track: the replica ratio would be 50/50
    for dep in (NAME, f"{NAME}-canary"):
        assert (kube.get("deployment", dep, ns) or {})["spec"]["replicas"] == 1
    check_split(measure(ns, 20), 20)


@pytest.mark.timeout(1200)
def test_the_split_follows_a_weight_change(chart_operator: ChartOperator, routed: str) -> None:
    kube, ns = chart_operator.kube, routed
    kube.run("patch", "md", NAME, "-n", ns, "--type=merge",
             "-p", json.dumps({"spec": {"canary": {"trafficPercent": 50}}}))
    wait_for("the route at 50/50", lambda: route_weights(kube, ns) == [
        (f"{NAME}-stable", 50), (f"{NAME}-canary", 50)], timeout=120)
    check_split(measure(ns, 50), 50)
    wait_for("status.canary at 50", lambda: canary_status(kube, ns) == {
        "trafficSplit": "gateway", "trafficPercent": 50}, timeout=60)


@pytest.mark.timeout(900)
def test_removing_the_canary_then_the_gateway(chart_operator: ChartOperator,
                                              routed: str) -> None:
    kube, ns = chart_operator.kube, routed
    kube.run("patch", "md", NAME, "-n", ns, "--type=merge",
             "-p", json.dumps({"spec": {"canary": None}}))
    # the route keeps the model reachable through the Gateway, on its own Service
    wait_for("the route to the model's Service alone",
             lambda: [n for n, _ in route_weights(kube, ns) or []] == [NAME], timeout=120)
    for kind, name in (("deployment", f"{NAME}-canary"), ("service", f"{NAME}-canary"),
                       ("service", f"{NAME}-stable")):
        wait_for(f"{kind} {name} deleted", gone(kube, kind, name, ns), timeout=120)
    wait_for("status.canary gone", lambda: canary_status(kube, ns) is None, timeout=60)
    only_stable = wait_for("only the stable version through the gateway", lambda: (
        t := through_gateway(ns, 200, limit=60)) and set(t.versions) == {STABLE_VERSION}
        and not t.errors and t, timeout=120, interval=2)
    print(f"\nwithout the canary: {only_stable.line()}")
    kube.run("patch", "md", NAME, "-n", ns, "--type=merge",
             "-p", json.dumps({"spec": {"gateway": None}}))
    wait_for("the HTTPRoute deleted", lambda: kube.get("httproute", NAME, ns) is None,
             timeout=120)


@pytest.mark.timeout(900)
def test_both_tracks_autoscale_behind_the_route(chart_operator: ChartOperator,
                                                model_store: dict[str, str]) -> None:
    """With spec.autoscaling and a route, the canary gets an HPA of its own (its load is
    its weight's share): the kube-controller-manager scales both, reading the pods' CPU
    from metrics-server."""
    kube, ns = chart_operator.kube, chart_operator.models_ns
    md = gateway_model(ns, model_store, 20)
    md["metadata"]["name"] = name = f"{NAME}-auto"
    md["spec"].pop("replicas")
    md["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 6,
                                 "targetCPUUtilization": 80}
    md["spec"]["gateway"]["hostnames"] = [f"auto.{host_of(ns)}"]
    kube.apply(md)
    try:
        wait_ready(kube, name, ns, timeout=300)
        for target, bounds in ((name, (1, 5)), (f"{name}-canary", (1, 2))):
            hpa = wait_for(f"HPA {target} ScalingActive", scaling_active(kube, target, ns),
                           timeout=180, interval=2)
            assert hpa["spec"]["scaleTargetRef"]["name"] == target
            assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == bounds
            dep = kube.get("deployment", target, ns) or {}
            assert dep["spec"]["replicas"] == hpa["status"]["desiredReplicas"]
        assert canary_status(kube, ns, name) == {"trafficSplit": "gateway",
                                                 "trafficPercent": 20}
    finally:
        kube.run("delete", "md", name, "-n", ns, "--wait=false", check=False)


def scaling_active(kube: Kube, name: str, namespace: str) -> Callable[[], Any]:
    def check() -> Any:
        hpa = kube.get("hpa", name, namespace) or {}
        conds = {c["type"]: c["status"]
                 for c in (hpa.get("status") or {}).get("conditions") or []}
        return hpa if conds.get("ScalingActive") == "True" else None
    return check


# --------------------------------------------------------------- the API server's rules


def refused(kube: Kube, namespace: str, gateway: dict[str, Any], **spec: Any) -> str:
    md = real_model("bad", namespace, IRIS_V1, "sha256:" + "a" * 64, gateway=gateway, **spec)
    proc = kube.run("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(md),
                    check=False)
    assert proc.returncode != 0, f"accepted: {gateway} {spec}"
    return proc.stderr


def test_the_api_server_refuses_bad_gateways(kube: Kube, namespace: str) -> None:
    ref = {"name": "kustos", "namespace": "traefik"}
    err = refused(kube, namespace, {"parentRefs": [ref, dict(ref)]})
    assert "spec.gateway.parentRefs" in err and "same Gateway listener twice" in err, err
    err = refused(kube, namespace, {"parentRefs": [ref], "hostnames": ["a.test", "a.test"]})
    assert "spec.gateway.hostnames" in err and "must be distinct" in err, err
    err = refused(kube, namespace, {"parentRefs": [ref]},
                  runtime={"tls": {"secretName": "model-tls"}})
    assert "spec.gateway" in err and "spec.runtime.tls" in err, err
    err = refused(kube, namespace, {"parentRefs": [ref], "pathPrefix": "v2"})
    assert "spec.gateway.pathPrefix" in err, err
    err = refused(kube, namespace, {"parentRefs": []})
    assert "spec.gateway.parentRefs" in err, err
    # the same with distinct listeners is fine
    ok = real_model("good", namespace, IRIS_V1, "sha256:" + "a" * 64, gateway={
        "parentRefs": [{**ref, "sectionName": "web"}, {**ref, "sectionName": "other"}]})
    kube.run("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(ok))
