"""The rendered NetworkPolicy, enforced for real: kube-router's network-policy controller
(hack/kube-router.sh) runs on the real node for this module, and client pods in other
namespaces connect to a real model pod's ports.

The model: breast-cancer served by `kustos serve` (port 8080, its /metrics too) with an explainer
(8090) and a drift (8091) sidecar, all from the images on the node, the operator a pod of
the Helm chart in its own namespace. Every refusal is shown next to an answer on the same
pod, port and path from a namespace the policy lets in, so a broken network cannot pass
as "denied". Denied connections are REJECTed by kube-router (connection refused, not a
time-out); whatever a client pod does runs through `kubectl exec` with busybox's nc.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cluster import REPO, unavailable
from conftest import Kube, wait_for, wait_ready
from realpods import RESTRICTED, ChartOperator, breast_cancer_with_sidecars, cluster_ip, live_pods

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

KUBE_ROUTER = REPO / "hack" / "kube-router.sh"
BUSYBOX = "kustos.local/busybox:1"
SERVING, EXPLAINER, DRIFT = 8080, 8090, 8091
GRPC = 8081  # kustos serve --grpc-port: open to the same clients as HTTP
UID = uuid.uuid4().hex[:6]
# The namespace Prometheus would run in: selected by name, like the default
# (`kubernetes.io/metadata.name: monitoring`) but unique, so that no other test's
# `monitoring` namespace is touched.
MONITORING_NS = f"np{UID}-monitoring"
FOREIGN_NS = f"np{UID}-foreign"


def kube_router(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(KUBE_ROUTER), command], capture_output=True, text=True,
                          timeout=1200)


@pytest.fixture(scope="module")
def enforcer() -> Iterator[None]:
    """kube-router enforcing NetworkPolicies on the real node while this module runs (the
    cluster normally runs it already); left afterwards as it was found."""
    if os.geteuid() != 0:
        unavailable("kube-router needs root (iptables, ipset)")
    # hack/cluster.sh runs it with the real node; this module's last test stops it, so it
    # is left as found: running again, or stopped
    was_running = kube_router("status").returncode == 0
    started = kube_router("start")
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield
    finally:
        after = kube_router("start" if was_running else "stop")
        assert after.returncode == 0, after.stderr[-3000:]


@pytest.fixture(scope="module")
def chart_values() -> list[str]:
    return [r"config.network_policy.monitoring_namespace_selector.matchLabels"
            rf".kubernetes\.io/metadata\.name={MONITORING_NS}"]


# busybox as the restricted profile wants it (the operator's namespace enforces it)
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def client_pod(name: str, namespace: str) -> dict[str, Any]:
    """A busybox pod that serves its index page on :8000 (for the egress check) and runs
    nc for the ingress checks."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "client", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["httpd", "-f", "-p", "8000", "-h", "/www"],
                "securityContext": RESTRICTED_CONTAINER,
            }],
        },
    }


@dataclass
class Client:
    kube: Kube
    name: str
    namespace: str

    def ip(self) -> str:
        pod = self.kube.get("pod", self.name, self.namespace)
        assert pod is not None
        return str(pod["status"]["podIP"])

    def http(self, ip: str, port: int, path: str) -> str:
        """The status line of a GET from this pod, or nc's error (``refused``...)."""
        request = f"GET {path} HTTP/1.1\\r\\nHost: {ip}\\r\\nConnection: close\\r\\n\\r\\n"
        proc = self.kube.run("exec", "-n", self.namespace, self.name, "--", "sh", "-c",
                             f"printf '{request}' | timeout 10 nc {ip} {port} 2>&1 | head -n1",
                             check=False)
        assert proc.returncode == 0, proc.stderr  # kubectl exec itself worked
        return proc.stdout.strip()


def answers(line: str) -> bool:
    return line.startswith("HTTP/1.")


def refused(line: str) -> bool:
    return "refused" in line.lower()


@pytest.fixture(scope="module")
def clients(chart_operator: ChartOperator, enforcer: None) -> Iterator[dict[str, Client]]:
    """Client pods: a foreign namespace, the monitoring namespace, the operator's own."""
    kube = chart_operator.kube
    for ns in (FOREIGN_NS, MONITORING_NS):
        kube.create_namespace(ns, kwok=False, labels=RESTRICTED)
    where = {"foreign": FOREIGN_NS, "monitoring": MONITORING_NS,
             "operator": chart_operator.system_ns}
    out = {k: Client(kube, f"np-client-{k}", ns) for k, ns in where.items()}
    try:
        for c in out.values():
            kube.apply(client_pod(c.name, c.namespace))
        for c in out.values():
            kube.run("wait", "--for=condition=Ready", f"pod/{c.name}", "-n", c.namespace,
                     "--timeout=180s")
        yield out
    finally:
        kube.run("delete", "pod", out["operator"].name, "-n", chart_operator.system_ns,
                 "--wait=false", check=False)
        for ns in (FOREIGN_NS, MONITORING_NS):
            kube.run("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def model(chart_operator: ChartOperator, model_store: dict[str, str], enforcer: None
          ) -> Iterator[dict[str, Any]]:
    """The breast-cancer model with an explainer and a drift sidecar, all containers
    ready: its (only) pod."""
    kube, ns = chart_operator.kube, chart_operator.models_ns
    for doc in breast_cancer_with_sidecars("np", ns, model_store):
        kube.apply(doc)
    try:
        wait_ready(kube, "np", ns, timeout=600)

        def all_ready() -> dict[str, Any] | None:
            pods = live_pods(kube, "np", ns)
            if len(pods) != 1:
                return None
            names = {c["name"] for c in pods[0]["status"].get("containerStatuses") or []
                     if c.get("ready")}
            return pods[0] if {"server", "explainer", "drift"} <= names else None

        pod = wait_for("server, explainer and drift containers ready", all_ready,
                       timeout=600, interval=2)
        yield pod
    finally:
        kube.run("delete", "md,explainerspec,driftmonitor", "np", "-n", ns, "--wait=false",
                 check=False)


def test_the_rendered_policy_is_the_one_enforced(chart_operator: ChartOperator,
                                                 model: dict[str, Any]) -> None:
    """What the checks below rely on: the operator rendered the policy for these ports and
    the namespaces of this test."""
    policy = chart_operator.kube.get("networkpolicy", "np", chart_operator.models_ns)
    assert policy is not None
    rules = {tuple(p["port"] for p in r["ports"]):
             [f.get("namespaceSelector") for f in r.get("from", [])]
             for r in policy["spec"]["ingress"]}
    name = "kubernetes.io/metadata.name"
    assert rules == {
        (SERVING, GRPC): [],
        (SERVING, EXPLAINER, DRIFT): [{"matchLabels": {name: MONITORING_NS}}],
        (EXPLAINER, DRIFT): [{"matchLabels": {name: chart_operator.system_ns}}],
    }, policy["spec"]


def test_serving_port_answers_everyone_sidecars_only_monitoring_and_operator(
        chart_operator: ChartOperator, model: dict[str, Any],
        clients: dict[str, Client]) -> None:
    ip = model["status"]["podIP"]
    foreign = clients["foreign"]
    # The enforcer programs a new pod a moment after it is seen: wait for the first refusal.
    wait_for("the foreign namespace refused on the drift port",
             lambda: refused(foreign.http(ip, DRIFT, "/metrics")), timeout=120, interval=1)

    results: dict[tuple[str, int, str], str] = {}
    for who, client in clients.items():
        for port, path in ((SERVING, "/v2/health/ready"), (SERVING, "/metrics"),
                           (EXPLAINER, "/metrics"), (EXPLAINER, "/v1/explainer/status"),
                           (DRIFT, "/metrics"), (DRIFT, "/v1/drift/status")):
            results[who, port, path] = client.http(ip, port, path)
    shown = "\n".join(f"{k}: {v}" for k, v in results.items())

    # The serving port (with kustos serve's /metrics) answers every namespace.
    for who in ("foreign", "monitoring", "operator"):
        for path in ("/v2/health/ready", "/metrics"):
            assert answers(results[who, SERVING, path]), shown
    # The sidecars: refused from the foreign namespace ...
    for port in (EXPLAINER, DRIFT):
        for path in ("/metrics", f"/v1/{'explainer' if port == EXPLAINER else 'drift'}/status"):
            assert refused(results["foreign", port, path]), shown
            # ... while the same port and path answer monitoring and the operator's namespace
            assert answers(results["monitoring", port, path]), shown
            assert answers(results["operator", port, path]), shown
    # The Service's ClusterIP from the foreign namespace, as a caller would use it.
    svc = cluster_ip(chart_operator.kube, "np", chart_operator.models_ns)
    assert answers(foreign.http(svc, 80, "/v2/health/ready"))


def test_a_policy_of_the_users_own_adds_to_the_operators(
        chart_operator: ChartOperator, model: dict[str, Any],
        clients: dict[str, Client]) -> None:
    """Policies add up, live: a second policy letting the foreign namespace in on the drift
    port opens that port (and no other) to it; deleting it closes it again."""
    kube, ns = chart_operator.kube, chart_operator.models_ns
    ip = model["status"]["podIP"]
    foreign = clients["foreign"]
    assert refused(foreign.http(ip, DRIFT, "/metrics"))
    extra = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "np-extra", "namespace": ns},
             "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "np"}},
                      "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": FOREIGN_NS}}}],
                          "ports": [{"protocol": "TCP", "port": DRIFT}]}]}}
    kube.apply(extra)
    try:
        wait_for("the foreign namespace let in on the drift port by a second policy",
                 lambda: answers(foreign.http(ip, DRIFT, "/metrics")), timeout=120, interval=1)
        # only that port: the explainer stays closed to it
        assert refused(foreign.http(ip, EXPLAINER, "/metrics"))
    finally:
        kube.run("delete", "networkpolicy", "np-extra", "-n", ns, check=False)
    wait_for("the foreign namespace refused again once the second policy is gone",
             lambda: refused(foreign.http(ip, DRIFT, "/metrics")), timeout=120, interval=1)


def test_egress_is_not_restricted(chart_operator: ChartOperator, model: dict[str, Any],
                                  clients: dict[str, Client]) -> None:
    """As documented: the policy restricts ingress only. The model's server container
    reaches a pod in the foreign namespace, which itself cannot reach the sidecars."""
    kube, ns = chart_operator.kube, chart_operator.models_ns
    target = clients["foreign"].ip()
    code = (f"import urllib.request; print(urllib.request.urlopen("
            f"'http://{target}:8000/index.html', timeout=10).read().decode().strip())")
    proc = kube.run("exec", "-n", ns, model["metadata"]["name"], "-c", "server", "--",
                    "python", "-c", code, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "hello from kustos-node", proc
    ip = model["status"]["podIP"]
    assert refused(clients["foreign"].http(ip, DRIFT, "/metrics"))


def test_the_refusals_were_the_enforcers(model: dict[str, Any],
                                         clients: dict[str, Client]) -> None:
    """Last: once kube-router is stopped (its chains and ipsets removed), the foreign
    namespace reaches the sidecars, so the refusals above were the policy's."""
    ip = model["status"]["podIP"]
    assert refused(clients["foreign"].http(ip, DRIFT, "/metrics"))
    stopped = kube_router("stop")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    rules = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True,
                           check=True).stdout
    assert "KUBE-ROUTER" not in rules and "KUBE-POD-FW" not in rules
    for port in (EXPLAINER, DRIFT):
        assert answers(clients["foreign"].http(ip, port, "/metrics"))
