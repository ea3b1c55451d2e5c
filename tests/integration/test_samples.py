"""manifests/samples/ against the real API server, and served by the real operator.

Every sample passes a server-side dry run (CRD schema, CEL rules, admission); the ones
`make dev` applies (manifests/samples/*.yaml, not the subdirectories that need outside
systems) are really applied in a test namespace, and every ModelDeployment among them
reaches Ready with the operator fixture.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO
from conftest import Kube, Operator, wait_for

pytestmark = pytest.mark.integration

SAMPLES = REPO / "manifests" / "samples"
ALL = sorted(SAMPLES.rglob("*.yaml"))
TOP = sorted(SAMPLES.glob("*.yaml"))


def load(path: Path, namespace: str, uid: str) -> list[dict[str, Any]]:
    """The sample's objects moved into ``namespace``; a cluster-scoped GovernancePolicy gets a
    unique name and applies to ``namespace`` alone, so it never governs other tests."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        if d["kind"] == "GovernancePolicy":
            d["metadata"]["name"] = f"{d['metadata']['name']}-{uid}"
            d["spec"]["namespaceSelector"] = {
                "matchLabels": {"kubernetes.io/metadata.name": namespace}}
        else:
            d["metadata"]["namespace"] = namespace
    return docs


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(SAMPLES)) for p in ALL])
def test_sample_passes_server_side_dry_run(kube: Kube, namespace: str, path: Path) -> None:
    docs = load(path, namespace, uuid.uuid4().hex[:6])
    proc = kube.run("apply", "--dry-run=server", "-f", "-",
                    input=yaml.safe_dump_all(docs), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(docs), proc.stdout


def test_samples_make_dev_applies_reach_ready(kube: Kube, operator: Operator,
                                              namespace: str) -> None:
    uid = uuid.uuid4().hex[:6]
    docs = [d for p in TOP for d in load(p, namespace, uid)]
    policies = [d["metadata"]["name"] for d in docs if d["kind"] == "GovernancePolicy"]
    # Like `make dev`: the store's credentials, then the whole directory in one apply.
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "model-store", "namespace": namespace},
              "stringData": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}}
    try:
        kube.run("apply", "-f", "-", input=yaml.safe_dump_all([secret, *docs]))
        names = [d["metadata"]["name"] for d in docs if d["kind"] == "ModelDeployment"]
        assert len(names) >= 5

        def all_ready() -> bool:
            items = json.loads(kube.run("get", "md", "-n", namespace, "-o", "json").stdout)
            ready = {i["metadata"]["name"] for i in items["items"]
                     if any(c["type"] == "Ready" and c["status"] == "True"
                            for c in (i.get("status") or {}).get("conditions") or [])}
            return ready >= set(names)

        wait_for(f"samples {names} Ready", all_ready, timeout=240, interval=2)

        canary = kube.get("deployment", "iris-canary-canary", namespace)
        assert canary is not None and canary["spec"]["replicas"] == 1
        stable = kube.get("deployment", "iris-canary", namespace)
        assert stable is not None and stable["spec"]["replicas"] == 3
        hpa = kube.get("hpa", "wine-onnx", namespace)
        assert hpa is not None and hpa["spec"]["maxReplicas"] == 10
        injector = kube.get("deployment", "iris-vault-injector", namespace)
        assert injector is not None
        annotations = injector["spec"]["template"]["metadata"]["annotations"]
        assert annotations["vault.hashicorp.com/agent-inject"] == "true"
        assert annotations["vault.hashicorp.com/role"] == "iris-reader"

        # explainer.yaml and drift-monitor.yaml add their sidecars to breast-cancer's pods.
        def sidecars() -> set[str] | None:
            dep = kube.get("deployment", "breast-cancer", namespace)
            names = {c["name"] for c in (dep or {}).get("spec", {}).get("template", {})
                     .get("spec", {}).get("containers", [])}
            return names if {"explainer", "drift"} <= names else None

        assert wait_for("explainer and drift sidecars", sidecars, timeout=120)
    finally:
        for name in policies:
            kube.run("delete", "governancepolicy", name, "--wait=false", check=False)
