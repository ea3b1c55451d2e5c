"""`kustos rollback` and `kustos status` end to end, against the real control plane and the
real operator: the commands are run as a user runs them, with a kubeconfig."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Kube, Operator, wait_for

pytestmark = pytest.mark.integration

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def kustos(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([sys.executable, "-m", "kustos.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def md(name: str, ns: str, version: str, digest: str | None,
       **governance: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"version": version, "uri": f"s3://models/{name}/{version}.skops"}
    if digest:
        model["digest"] = digest
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": model, "governance": governance or {"riskTier": "low"}}}


def serving(kube: Kube, name: str, ns: str, version: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.get("md", name, ns)
        st = (obj or {}).get("status") or {}
        if (st.get("model") or {}).get("version") == version and \
                st.get("observedGeneration") == obj["metadata"]["generation"]:  # type: ignore[index]
            return obj
        return None
    result: dict[str, Any] = wait_for(f"md/{name} serving {version}", check, timeout=90)
    return result


def test_rollback_through_the_api(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(md("fraud", namespace, "1", D1))
    serving(kube, "fraud", namespace, "1")
    kube.apply(md("fraud", namespace, "2", D2))
    obj = serving(kube, "fraud", namespace, "2")
    (entry,) = obj["status"]["history"]
    assert (entry["version"], entry["digest"], entry["uri"]) == (
        "1", D1, "s3://models/fraud/1.skops")
    assert entry["deployedAt"]

    proc = kustos(kube.kubeconfig, "rollback", "fraud", "-n", namespace, "--to", "7")
    assert proc.returncode == 1
    assert "version 7 is not in fraud's history (known: 1)" in proc.stderr
    proc = kustos(kube.kubeconfig, "rollback", "fraud", "-n", namespace, "--dry-run")
    assert proc.returncode == 0 and "would roll back" in proc.stdout
    assert kube.get("md", "fraud", namespace)["spec"]["model"]["version"] == "2"  # type: ignore[index]

    proc = kustos(kube.kubeconfig, "rollback", "fraud", "-n", namespace)
    assert proc.returncode == 0, proc.stderr
    assert f"rolled back {namespace}/fraud: version 2 -> 1" in proc.stdout
    obj = serving(kube, "fraud", namespace, "1")
    assert obj["spec"]["model"] == {"version": "1", "uri": "s3://models/fraud/1.skops",
                                    "digest": D1, "format": "sklearn"}
    assert [h["version"] for h in obj["status"]["history"]] == ["2", "1"]
    events = {e["reason"]: e["message"] for e in kube.events(namespace, "fraud")}
    assert events["RolledBack"].startswith("rolled back by ")
    assert "from version 2 to 1" in events["RolledBack"]
    assert "ModelVersionChanged" in events

    # Forward again to a named version; its pods follow like for any spec change.
    proc = kustos(kube.kubeconfig, "rollback", "fraud", "-n", namespace, "--to", "2")
    assert proc.returncode == 0, proc.stderr
    serving(kube, "fraud", namespace, "2")


def test_status_inventory(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(md("alpha", namespace, "3", D1, owner="risk-team", riskTier="high"))
    kube.apply(md("beta", namespace, "1", None, riskTier="low"))
    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
                "metadata": {"name": "alpha-drift", "namespace": namespace},
                "spec": {"targetRef": {"name": "alpha"},
                         "reference": {"uri": "s3://models/alpha/reference.csv"}}})
    serving(kube, "alpha", namespace, "3")
    serving(kube, "beta", namespace, "1")

    proc = kustos(kube.kubeconfig, "status", "-n", namespace)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "VERSION", "READY", "DRIFT", "OWNER",
                                "RISK", "COMPLIANT"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert set(rows) == {"alpha", "beta"}
    # Whatever the DriftMonitor's DriftDetected says is what the table shows.
    dm = kube.get("driftmonitor", "alpha-drift", namespace) or {}
    drift = next((c["status"] for c in (dm.get("status") or {}).get("conditions") or []
                  if c["type"] == "DriftDetected"), None)
    assert rows["alpha"][2:4] == ["3", "True"]
    assert rows["alpha"][4] in ({drift} if drift else {"Unknown", "False", "True"})
    assert rows["alpha"][5:7] == ["risk-team", "high"]
    assert rows["beta"][2:] == ["1", "True", "-", "-", "low", "-"]

    proc = kustos(kube.kubeconfig, "status", "-A", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    mine = [r for r in json.loads(proc.stdout) if r["NAMESPACE"] == namespace]
    assert [r["NAME"] for r in mine] == ["alpha", "beta"]
    assert mine[0]["OWNER"] == "risk-team"
