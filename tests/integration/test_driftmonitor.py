"""DriftMonitor end to end: the real operator wires the drift sidecar into its target's
pods, collects what the real `kustos drift` sidecar (bound on the pod's IP) detects, posts
Events on drift transitions and creates one retraining Job per episode (with cooldown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Kube, Operator, wait_for
from sidecar_helpers import (
    Sidecar,
    Sidecars,
    containers,
    model_deployment,
    ready_pods_with,
    wait_condition,
)
from sidecar_helpers import drift_monitor as base_drift_monitor

pytestmark = pytest.mark.integration
pytest_plugins = ["sidecar_helpers"]  # fixtures iris, fast, sidecars

RESTRICTED = {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65532,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def drift_monitor(name: str, namespace: str, target: str, iris: dict[str, Any],
                  **spec: Any) -> dict[str, Any]:
    """The shared KS DriftMonitor, creating a retraining Job on drift."""
    on_drift = {"event": True, "retrainJob": {"cooldown": "1h", "template": {
        "metadata": {"labels": {"team": "ml"}},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "retrain", "image": "registry.local/retrain:1",
                            "args": ["--model", target],
                            "securityContext": RESTRICTED}]}}}}}}
    return base_drift_monitor(name, namespace, target, iris, **{"onDrift": on_drift, **spec})


def post_window(drift: Sidecar, rows: list[list[float]]) -> None:
    """What kustos serve's DriftSender posts, sent directly."""
    flat = [v for row in rows for v in row]
    status, body = drift.post("/v1/inputs", {
        "model_name": "iris", "model_version": "1",
        "inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])],
                    "datatype": "FP64", "data": flat}],
        "parameters": {"requests": 1}})
    assert status == 202, body


def predict(server: Sidecar, rows: list[list[float]]) -> None:
    """Served predictions: kustos serve copies their inputs to the drift sidecar."""
    status, body = server.post("/v1/models/iris:predict", {"instances": rows})
    assert status == 200, body


def jobs(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return kube.list("jobs", ns)


def events(kube: Kube, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.events(ns, name) if e["reason"] == reason]


def test_restricted_namespace_admits_pods_with_both_sidecars(
        kube: Kube, fast: Operator, namespace: str, iris: dict[str, Any]) -> None:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
             "pod-security.kubernetes.io/enforce-version=latest")
    kube.apply(model_deployment("strict", namespace, iris, replicas=2))
    kube.apply(drift_monitor("strict", namespace, "strict", iris))
    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
                "metadata": {"name": "strict", "namespace": namespace},
                "spec": {"targetRef": {"name": "strict"},
                         "background": {"uri": f"file://{iris['csv']}"}}})
    wait_for("both sidecars", lambda: {"drift", "explainer"} <= set(
        containers(kube, "strict", namespace)))
    pods = ready_pods_with(kube, "strict", namespace, "drift", count=2, also=("explainer",))
    for pod in pods:
        assert {c["name"] for c in pod["spec"]["containers"]} == {"server", "explainer",
                                                                   "drift"}
    server = containers(kube, "strict", namespace)["server"]
    assert server["args"][server["args"].index("--drift-url") + 1] == \
        "http://127.0.0.1:8091/v1/inputs"
    # Both pods are polled; neither answers (no process runs in kwok's pods): noted.
    wait_for("both pods named unreachable", lambda: (
        c := kube.condition("driftmonitor", "strict", namespace, "Ready"))
        and c["reason"] == "SidecarUnreachable"
        and all(p["metadata"]["name"] in c["message"] for p in pods))
    kube.run("delete", "driftmonitor/strict", "-n", namespace)
    wait_for("drift sidecar removed", lambda: "drift" not in containers(
        kube, "strict", namespace))
    assert "--drift-url" not in containers(kube, "strict", namespace)["server"]["args"]


def test_drift_episodes_events_and_retraining_job(
        kube: Kube, fast: Operator, namespace: str, iris: dict[str, Any], sidecars: Sidecars,
        tmp_path: Path) -> None:
    kube.apply(model_deployment("iris", namespace, iris))
    kube.apply(drift_monitor("iris", namespace, "iris", iris))
    pod = ready_pods_with(kube, "iris", namespace, "drift")[0]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "drift")
    drift = sidecars.start(container, pod, iris, tmp_path)
    # The model server as rendered (--drift-url), on the same pod IP.
    server = sidecars.start(next(c for c in pod["spec"]["containers"] if c["name"] == "server"),
                            pod, iris, tmp_path)
    wait_condition(kube, "driftmonitor", "iris", namespace, "Ready", "True", "Monitoring")
    x = iris["x"]
    shifted = [[r[0], r[1], r[2] + 3.0, r[3]] for r in x[::5].tolist()]
    normal = x[::5].tolist()

    # Episode 1, from served traffic: petal_length shifted -> DriftDetected, an Event,
    # one Job.
    predict(server, shifted)
    cond = wait_condition(kube, "driftmonitor", "iris", namespace, "DriftDetected", "True")
    assert "petal_length" in cond["message"]
    dm = kube.get("driftmonitor", "iris", namespace)
    assert dm is not None
    st = dm["status"]
    assert st["windowsEvaluated"] >= 1 and st["lastCheck"]
    pvals = {p["feature"]: p["pValue"] for p in st["featurePValues"]}
    assert pvals["petal_length"] < 0.05
    assert "petal_length" in st["lastDrift"]["features"]
    job_name = st["lastDrift"]["job"]
    job = wait_for("retraining Job", lambda: kube.get("job", job_name, namespace))
    assert job["metadata"]["ownerReferences"][0]["uid"] == dm["metadata"]["uid"]
    assert job["metadata"]["labels"]["team"] == "ml"
    assert len(jobs(kube, namespace)) == 1
    warnings = events(kube, namespace, "iris", "DriftDetected")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert "petal_length" in warnings[0]["message"]

    # Recovery.
    post_window(drift, normal)
    wait_condition(kube, "driftmonitor", "iris", namespace, "DriftDetected", "False", "NoDrift")
    resolved = wait_for("DriftResolved", lambda: events(kube, namespace, "iris",
                                                        "DriftResolved"))
    assert len(resolved) == 1 and resolved[0]["type"] == "Normal"

    # Episode 2 inside the cooldown: Event again, no new Job.
    post_window(drift, shifted)
    cond = wait_condition(kube, "driftmonitor", "iris", namespace, "DriftDetected", "True")
    assert "cooldown" in cond["message"]
    wait_for("second DriftDetected Event",
             lambda: len(events(kube, namespace, "iris", "DriftDetected")) == 2)
    dm = kube.get("driftmonitor", "iris", namespace)
    assert dm is not None and "job" not in dm["status"]["lastDrift"]
    assert [j["metadata"]["name"] for j in jobs(kube, namespace)] == [job_name]
    assert kube.condition("driftmonitor", "iris", namespace, "Degraded")["status"] == "False"  # type: ignore[index]


def test_reference_digest_mismatch_is_degraded(
        kube: Kube, fast: Operator, namespace: str, iris: dict[str, Any], sidecars: Sidecars,
        tmp_path: Path) -> None:
    kube.apply(model_deployment("bad", namespace, iris))
    kube.apply(drift_monitor("bad", namespace, "bad", iris, reference={
        "uri": f"file://{iris['csv']}", "digest": "sha256:" + "0" * 64}))
    pod = ready_pods_with(kube, "bad", namespace, "drift")[0]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "drift")
    sidecars.start(container, pod, iris, tmp_path)
    cond = wait_condition(kube, "driftmonitor", "bad", namespace, "Degraded", "True",
                          "DigestMismatch")
    assert pod["metadata"]["name"] in cond["message"]
    warnings = wait_for("Warning Event", lambda: events(kube, namespace, "bad",
                                                        "DigestMismatch"))
    assert warnings[0]["type"] == "Warning"
    # Still reported, not re-posted: one Event per transition.
    wait_for("a few more polls", lambda: (
        dm := kube.get("driftmonitor", "bad", namespace)) and dm, timeout=5)
    assert len(events(kube, namespace, "bad", "DigestMismatch")) == 1
    assert kube.condition("driftmonitor", "bad", namespace, "Ready")["status"] == "False"  # type: ignore[index]


def test_schema_refuses_unknown_detector_and_method(kube: Kube, namespace: str,
                                                    iris: dict[str, Any]) -> None:
    proc = kube.apply(drift_monitor("odd", namespace, "iris", iris, detector="lsdd"),
                      check=False)
    assert proc.returncode != 0 and "spec.detector" in proc.stderr, proc.stderr
    proc = kube.apply(drift_monitor("tab", namespace, "iris", iris, detector="tabular"),
                      check=False)
    assert proc.returncode != 0 and "categoricalFeatures" in proc.stderr, proc.stderr
    proc = kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
                       "metadata": {"name": "odd", "namespace": namespace},
                       "spec": {"targetRef": {"name": "iris"}, "method": "anchors",
                                "background": {"uri": f"file://{iris['csv']}",
                                               "digest": "sha256:short"}}}, check=False)
    assert proc.returncode != 0 and "spec.method" in proc.stderr, proc.stderr
    assert "spec.background.digest" in proc.stderr, proc.stderr
