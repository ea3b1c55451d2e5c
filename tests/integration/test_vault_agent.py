"""Vault agent mode, live: a real OpenBao, a real pod on the real node with the OpenBao
agent Kustos renders (init container + sidecar from the kustos-vault-agent image), the
files read inside the pod's server container, a rotation in OpenBao reaching the file
without a restart, and a wrong role surfacing on the ModelDeployment.

OpenBao listens on the node's bridge address (pods cannot reach host loopback); its
Kubernetes auth method checks the agent's projected token with a real TokenReview. The
operator is the session's local process (agent mode: it never talks to Vault itself).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import NS_PREFIX, OPERATOR_LOGS, Kube, Operator, wait_for, wait_ready
from openbao import OpenBao, reviewed_openbao
from realpods import (
    BRIDGE_ADDR,
    IRIS_V1,
    RESTRICTED,
    live_pods,
    real_model,
    require_real_node,
    store,
    wait_degraded,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

SECRETS = "/var/run/secrets/kustos"


@pytest.fixture(scope="module")
def bao(kube: Kube) -> Iterator[OpenBao]:
    yield from reviewed_openbao(kube, "agent", host=BRIDGE_ADDR)


@pytest.fixture(scope="module")
def real_ns(kube: Kube, operator: Operator, model_store: dict[str, str]) -> Iterator[str]:
    """A namespace on the real node (restricted Pod Security) that the session's operator
    watches, with the model store's credentials."""
    require_real_node(kube)
    name = f"{NS_PREFIX}agent-{uuid.uuid4().hex[:4]}"
    kube.create_namespace(name, kwok=False, labels=RESTRICTED)
    kube.apply(store("secret", "-n", name))
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


def agent_model(name: str, ns: str, digest: str, vault: dict[str, Any]) -> dict[str, Any]:
    return real_model(name, ns, IRIS_V1, digest, replicas=1,
                      secrets={"vault": {"mode": "agent", **vault}})


def grant(bao: OpenBao, name: str, ns: str, kv_path: str) -> str:
    role = f"{ns}-{name}"
    bao.read_policy(role, f"secret/data/{kv_path}")
    bao.role(role, name, ns, role)
    return role


def one_pod(kube: Kube, name: str, ns: str) -> dict[str, Any]:
    pods = wait_for(f"one live pod of {name}", lambda: (lambda p: p if len(p) == 1 else None)(
        live_pods(kube, name, ns)), timeout=120)
    return dict(pods[0])


def read(kube: Kube, pod: str, ns: str, path: str) -> str:
    return kube.run("exec", "-n", ns, pod, "-c", "server", "--", "cat", path).stdout


def restarts(pod: dict[str, Any]) -> dict[str, int]:
    return {c["name"]: int(c.get("restartCount", 0))
            for c in pod["status"].get("containerStatuses") or []}


def assert_nowhere(kube: Kube, ns: str, values: list[str]) -> None:
    """No secret value (nor its base64) in the operator's log or in any object of the
    namespace a reader of metadata, ConfigMaps or pods could see."""
    needles = values + [base64.b64encode(v.encode()).decode() for v in values]
    log_path = OPERATOR_LOGS / "operator-test.log"
    texts = {"operator log": log_path.read_text(errors="replace") if log_path.exists() else "",
             **{kind: json.dumps(kube.list(kind, ns)) for kind in
                ("events", "modeldeployments", "deployments", "configmaps", "pods")}}
    for where, text in texts.items():
        for needle in needles:
            assert needle not in text, f"a secret value appears in the {where}"


def test_agent_renders_files_into_the_pod_and_rotation_rewrites_them(
        kube: Kube, bao: OpenBao, real_ns: str, model_store: dict[str, str]) -> None:
    ns, name = real_ns, "agented"
    kv = f"ml/{ns}/{name}"
    first, user = f"key-{uuid.uuid4().hex}", f"user-{uuid.uuid4().hex[:8]}"
    assert bao.put(kv, {"api_key": first, "user": user}) == 1
    role = grant(bao, name, ns, kv)
    items = [{"path": f"secret/data/{kv}", "key": "api_key", "file": "api_key"},
             {"path": f"secret/data/{kv}", "file": "all.json"}]
    kube.apply(agent_model(name, ns, model_store[IRIS_V1],
                           {"address": bao.address, "role": role, "refreshInterval": "5s",
                            "items": items}))
    try:
        wait_ready(kube, name, ns, timeout=300)
        pod = one_pod(kube, name, ns)
        pn = pod["metadata"]["name"]
        # The files were there before the server started (the init container rendered them).
        assert read(kube, pn, ns, f"{SECRETS}/api_key") == first
        assert json.loads(read(kube, pn, ns, f"{SECRETS}/all.json")) == \
            {"api_key": first, "user": user}
        # The server reads them; it cannot write there (its mount is read-only).
        touch = kube.run("exec", "-n", ns, pn, "-c", "server", "--", "touch",
                         f"{SECRETS}/planted", check=False)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch.stderr
        spec = pod["spec"]
        assert [c["name"] for c in spec["initContainers"]] == ["fetch-model", "vault-agent-init"]
        assert [c["name"] for c in spec["containers"]] == ["server", "vault-agent"]
        cm = kube.get("configmap", f"{name}-vault-agent", ns)
        assert cm is not None and set(cm["data"]) == {"init.json", "agent.json"}

        second = f"key-{uuid.uuid4().hex}"
        rotated_at = time.monotonic()
        assert bao.put(kv, {"api_key": second, "user": user}) == 2
        wait_for("the rotated value in the pod's file",
                 lambda: read(kube, pn, ns, f"{SECRETS}/api_key") == second, timeout=120,
                 interval=1)
        print(f"\nagent rotation: file rewritten {time.monotonic() - rotated_at:.1f}s after "
              "the Vault write (refreshInterval 5s)")
        same = kube.get("pod", pn, ns)
        assert same is not None and same["metadata"]["uid"] == pod["metadata"]["uid"]
        assert restarts(same) == {"server": 0, "vault-agent": 0}, "rotated without a restart"
        assert json.loads(read(kube, pn, ns, f"{SECRETS}/all.json"))["api_key"] == second
        md = kube.get("md", name, ns)
        assert md is not None
        conds = {c["type"]: c["status"] for c in md["status"]["conditions"]}
        assert conds["Ready"] == "True" and "SecretsReady" not in conds
        assert kube.get("secret", f"{name}-vault", ns) is None  # no synced Secret
        assert_nowhere(kube, ns, [first, second, user])
    finally:
        kube.run("delete", "md", name, "-n", ns, "--wait=false", check=False)


def test_wrong_role_is_degraded_then_a_fixed_role_recovers_and_leaving_removes_the_agent(
        kube: Kube, bao: OpenBao, real_ns: str, model_store: dict[str, str]) -> None:
    ns, name = real_ns, "wrongrole"
    kv = f"ml/{ns}/{name}"
    bao.put(kv, {"token": f"t-{uuid.uuid4().hex}"})
    items = [{"path": f"secret/data/{kv}", "key": "token", "file": "token"}]
    vault = {"address": bao.address, "role": "no-such-role", "items": items}
    kube.apply(agent_model(name, ns, model_store[IRIS_V1], vault))
    try:
        cond = wait_degraded(kube, name, ns, "VaultAgentFailed")
        print(f"\nDegraded: {cond['message']}")
        assert "Vault agent" in cond["message"] and "role" in cond["message"], cond
        ready = kube.condition("md", name, ns, "Ready")
        assert ready is not None and ready["status"] == "False"
        events = [e for e in kube.events(ns, name) if e["reason"] == "VaultAgentFailed"]
        assert events and events[0]["type"] == "Warning"
        # The server never started: the agent's init container stands before it.
        pod = live_pods(kube, name, ns)[0]
        assert not [c for c in pod["status"].get("containerStatuses") or []
                    if c.get("state", {}).get("running")]

        role = grant(bao, name, ns, kv)
        kube.apply(agent_model(name, ns, model_store[IRIS_V1], {**vault, "role": role}))
        wait_ready(kube, name, ns, timeout=300)
        wait_for("Degraded cleared", lambda: (kube.condition("md", name, ns, "Degraded")
                                              or {}).get("status") != "True", timeout=120)

        # Injector mode instead: the ConfigMap and the agent containers go.
        kube.apply(real_model(name, ns, IRIS_V1, model_store[IRIS_V1], replicas=1,
                              secrets={"vault": {"mode": "injector", "role": role,
                                                 "items": items}}))
        wait_for("the agent's ConfigMap deleted",
                 lambda: kube.get("configmap", f"{name}-vault-agent", ns) is None, timeout=120)
        dep = kube.get("deployment", name, ns)
        assert dep is not None
        names = [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]]
        assert names == ["server"]
    finally:
        kube.run("delete", "md", name, "-n", ns, "--wait=false", check=False)


@pytest.mark.parametrize(("vault", "field", "says"), [
    ({"items": [{"path": "secret/data/x", "file": "f", "env": "F"}]},
     "spec.secrets.vault.items", "env is for sync mode only"),
    ({"items": [{"path": "secret/data/x", "file": ".."}]},
     "spec.secrets.vault.items", "must not be '.', '..'"),
    ({"mode": "vault-agent", "items": [{"path": "secret/data/x", "file": "f"}]},
     "spec.secrets.vault.mode", "Unsupported value"),
])
def test_invalid_agent_spec_refused(kube: Kube, namespace: str, vault: dict[str, Any],
                                    field: str, says: str) -> None:
    body = {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "bad", "namespace": namespace},
            "spec": {"model": {"version": "1", "uri": "s3://models/iris/model.skops"},
                     "secrets": {"vault": {"mode": "agent", "role": "r", **vault}}}}
    proc = kube.apply(body, check=False)
    assert proc.returncode != 0
    assert field in proc.stderr and says in proc.stderr, proc.stderr
