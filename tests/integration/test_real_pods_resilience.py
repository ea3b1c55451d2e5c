"""Real pods, continued: Vault-synced secrets read by the real containers, and the
operator pod killed in the middle of a rollout.

A module of its own: it kills its chart's operator pod, which the other real-pod tests
must not see.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Collection, Iterator
from typing import Any

import pytest
from cluster import REPO
from conftest import Kube, wait_for, wait_ready
from openbao import OpenBao, reviewed_openbao
from realpods import (
    BRIDGE_ADDR,
    IRIS_V1,
    IRIS_V2,
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

ROW = v2_request(ROWS[:1])


@pytest.fixture(scope="module")
def bao(kube: Kube) -> Iterator[OpenBao]:
    # On the bridge address: the operator runs in a pod and cannot reach host loopback.
    yield from reviewed_openbao(kube, "realpods", host=BRIDGE_ADDR)


def settled_pods(kube: Kube, name: str, ns: str, replicas: int,
                 not_in: Collection[str] = ()) -> list[dict[str, Any]] | None:
    """The model's pods once exactly ``replicas`` run, all Ready and none of ``not_in``
    (the old ones have terminated)."""
    pods = live_pods(kube, name, ns)
    if len(pods) != replicas or {p["metadata"]["name"] for p in pods} & set(not_in):
        return None
    ready = all(all(s["ready"] for s in p["status"].get("containerStatuses") or [{"ready": 0}])
                for p in pods)
    return pods if ready else None


def in_container(kube: Kube, pod: str, ns: str, *command: str) -> str:
    return kube.run("exec", "-n", ns, pod, "-c", "server", "--", *command).stdout


def test_vault_synced_credentials_fetch_the_model_and_rotation_rolls_new_pods(
        chart_operator: ChartOperator, model_store: dict[str, str], bao: OpenBao) -> None:
    """The S3 endpoint and keys live only in Vault: the operator (a pod) syncs them into a
    Secret, the real fetch init container uses it (without the endpoint it could not reach
    the store), the server container sees the files and env, and a new Vault version rolls
    pods that see the new value."""
    kube, ns = chart_operator.kube, chart_operator.models_ns
    ms = json.loads(kube.run("get", "secret", "model-store", "-n", ns, "-o", "json").stdout)
    store = {k: base64.b64decode(v).decode() for k, v in ms["data"].items()}
    name, kv = "vaulted", f"ml/{ns}/vaulted"
    first = f"key-{uuid.uuid4().hex}"
    assert bao.put(kv, {**store, "api_key": first}) == 1
    role = f"{ns}-{name}"
    bao.read_policy(role, f"secret/data/{kv}")
    bao.role(role, name, ns, role)
    items = [{"path": f"secret/data/{kv}", "key": k, "file": k} for k in sorted(store)]
    items.append({"path": f"secret/data/{kv}", "key": "api_key", "file": "api_key",
                  "env": "API_KEY"})
    body = real_model(name, ns, IRIS_V1, model_store[IRIS_V1],
                      secrets={"vault": {"mode": "sync", "address": bao.address, "role": role,
                                         "refreshInterval": "5s", "items": items}})
    body["spec"]["model"]["credentialsSecretRef"] = {"name": f"{name}-vault"}
    kube.apply(body)
    try:
        md = wait_ready(kube, name, ns, timeout=300)
        assert md["status"]["secrets"]["versions"] == [{"path": f"secret/data/{kv}",
                                                        "version": 1}]
        status, answer = answered(cluster_ip(kube, name, ns), f"/v2/models/{name}/infer", ROW)
        assert status == 200, answer
        pods = wait_for("two Ready pods", lambda: settled_pods(kube, name, ns, 2), timeout=120)
        for pod in pods:
            pn = pod["metadata"]["name"]
            assert in_container(kube, pn, ns, "cat", "/var/run/secrets/kustos/api_key") == first
            assert in_container(kube, pn, ns, "printenv", "API_KEY").strip() == first

        second = f"key-{uuid.uuid4().hex}"
        rotated_at = time.monotonic()
        assert bao.put(kv, {**store, "api_key": second}) == 2
        old = {p["metadata"]["name"] for p in pods}
        new = wait_for("new Ready pods after the rotation",
                       lambda: settled_pods(kube, name, ns, 2, not_in=old), timeout=300)
        print(f"\nrotation: new pods Ready {time.monotonic() - rotated_at:.1f}s after the "
              "Vault write (refreshInterval 5s)")
        for pod in new:
            pn = pod["metadata"]["name"]
            assert in_container(kube, pn, ns, "cat", "/var/run/secrets/kustos/api_key") == second
            assert in_container(kube, pn, ns, "printenv", "API_KEY").strip() == second
        status, answer = answered(cluster_ip(kube, name, ns), f"/v2/models/{name}/infer", ROW)
        assert status == 200, answer
        logs = chart_operator.logs()
        assert first not in logs and second not in logs and store["AWS_SECRET_ACCESS_KEY"] \
            not in logs, "a secret value in the operator's log"
    finally:
        kube.run("delete", "md", name, "-n", ns, "--wait=false", check=False)


def template_generation(kube: Kube, name: str, ns: str) -> int:
    dep = kube.get("deployment", name, ns)
    assert dep is not None
    return int(dep["metadata"]["generation"])


def assert_one_set_of_children(kube: Kube, name: str, ns: str, replicas: int) -> None:
    """Exactly one of each child, no orphan, and the pods all from the newest ReplicaSet."""
    md = kube.get("md", name, ns)
    assert md is not None
    uid = md["metadata"]["uid"]
    # (no ServiceAccount: a model without Vault runs as its namespace's default account)
    for kind in ("deployments", "services", "serviceaccounts", "poddisruptionbudgets"):
        owned = [o["metadata"]["name"] for o in kube.list(kind, ns)
                 if any(r["uid"] == uid for r in o["metadata"].get("ownerReferences") or [])]
        if kind == "serviceaccounts":
            assert owned == [], (kind, owned)
            continue
        assert owned == [name] or (kind == "poddisruptionbudgets" and owned == []), \
            (kind, owned)
    dep = kube.get("deployment", name, ns)
    assert dep is not None
    sets = [rs for rs in kube.list("replicasets", ns)
            if any(r["uid"] == dep["metadata"]["uid"]
                   for r in rs["metadata"].get("ownerReferences") or [])]
    active = [rs["metadata"]["name"] for rs in sets if rs["spec"].get("replicas")]
    assert len(active) == 1, active
    # One ReplicaSet per pod template the model had (v1, v2, v3): none twice.
    assert len(sets) <= 3, [rs["metadata"]["name"] for rs in sets]
    pods = wait_for("the old pods gone", lambda: settled_pods(kube, name, ns, replicas),
                    timeout=180)
    hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in pods}
    assert hashes == {active[0].rsplit("-", 1)[1]}, hashes


def operator_ready(op: ChartOperator, restarts_above: int = -1,
                   not_name: str = "") -> dict[str, Any] | None:
    """The operator pod once it is Ready again (its webhook answers through the Service):
    a replacement of ``not_name``, or its container restarted past ``restarts_above``."""
    pod = op.pod()
    status = pod["status"].get("containerStatuses") or [{}]
    if pod["metadata"]["name"] == not_name or status[0].get("restartCount", 0) <= restarts_above:
        return None
    ready = all(s.get("ready") for s in status) and op.webhook_answers()
    return pod if ready else None


def node_ctr(*args: str) -> None:
    subprocess.run(["bash", str(REPO / "hack" / "node.sh"), "ctr", *args], check=True,
                   capture_output=True, timeout=60)


def test_operator_pod_killed_mid_rollout_converges_without_duplicates(
        chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    kube, ns, sys_ns = chart_operator.kube, chart_operator.models_ns, chart_operator.system_ns
    name = "steady"
    kube.apply(real_model(name, ns, IRIS_V1, model_store[IRIS_V1]))
    try:
        md = wait_ready(kube, name, ns, timeout=300)

        # 1. The pod deleted as soon as the operator has started the rollout to v2.
        before = template_generation(kube, name, ns)
        victim = chart_operator.pod()["metadata"]["name"]
        kube.apply(real_model(name, ns, IRIS_V2, model_store[IRIS_V2], version="2"))
        wait_for("the operator starting the rollout",
                 lambda: template_generation(kube, name, ns) > before, timeout=120,
                 interval=0.1)
        killed_at = time.monotonic()
        kube.run("delete", "pod", victim, "-n", sys_ns, "--wait=false")
        md = wait_ready(kube, name, ns, generation=md["metadata"]["generation"] + 1,
                        timeout=300)
        print(f"\nafter kubectl delete pod: Ready on v2 in {time.monotonic() - killed_at:.1f}s")
        assert md["status"]["model"]["version"] == "2"
        # The next change goes through the webhook: wait for the replacement to serve it
        # (with one replica the fail-closed webhook refuses changes in between).
        wait_for("the replacement operator pod Ready",
                 lambda: operator_ready(chart_operator, not_name=victim), timeout=180)
        assert_one_set_of_children(kube, name, ns, 2)

        # 2. The operator's container SIGKILLed (no shutdown at all) mid-rollout to v3.
        pod = chart_operator.pod()
        container = pod["status"]["containerStatuses"][0]
        restarts = container["restartCount"]
        before = template_generation(kube, name, ns)
        kube.apply(real_model(name, ns, IRIS_V1, model_store[IRIS_V1], version="3"))
        wait_for("the operator starting the rollout",
                 lambda: template_generation(kube, name, ns) > before, timeout=120,
                 interval=0.1)
        killed_at = time.monotonic()
        node_ctr("tasks", "kill", "-s", "SIGKILL", container["containerID"].split("//", 1)[1])
        wait_for("the operator container restarted and Ready",
                 lambda: operator_ready(chart_operator, restarts_above=restarts), timeout=180)
        md = wait_ready(kube, name, ns, generation=md["metadata"]["generation"] + 1,
                        timeout=300)
        print(f"after SIGKILL of the container: Ready on v3 in "
              f"{time.monotonic() - killed_at:.1f}s")
        assert md["status"]["model"]["version"] == "3"
        dep = kube.get("deployment", name, ns)
        assert dep is not None
        template = dep["spec"]["template"]["metadata"]["annotations"]
        previous = kube.run("logs", "-n", sys_ns, chart_operator.pod()["metadata"]["name"],
                            "--previous", "--tail=80", check=False).stdout
        assert template.get("kustos.dev/model-version") == "3", (
            template, md["metadata"].get("annotations"), md["status"],
            chart_operator.logs()[-4000:], previous[-4000:])
        assert_one_set_of_children(kube, name, ns, 2)
        status, answer = answered(cluster_ip(kube, name, ns), f"/v2/models/{name}/infer", ROW)
        assert status == 200 and answer["model_version"] == "3", answer
    finally:
        kube.run("delete", "md", name, "-n", ns, "--wait=false", check=False)
