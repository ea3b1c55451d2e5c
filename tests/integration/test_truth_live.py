"""Ground truth on the real node: a DriftMonitor with spec.groundTruth gets its `kustos
truth` monitor (Deployment, Service, ConfigMap, NetworkPolicy) from the operator pod of the
Helm chart; the model's pods send every prediction to it (--truth-url); labels posted to
the model's Service (V2 feedback, forwarded by kustos serve) are joined by inference id;
status.groundTruth carries the accuracy this test computes itself from the same model and
labels; wrong labels (a model that is bad for them) raise PerformanceDegraded with a
Warning Event naming metric, version, value and threshold.

Needs the images rebuilt with the truth runtime (kustos-explain runs `kustos truth`,
kustos runs `kustos serve --truth-url`). Run:

    flock /tmp/kustos-cluster.lock .venv/bin/pytest -q tests/integration/test_truth_live.py
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import Kube, wait_for
from realpods import (
    IRIS_V1,
    ChartOperator,
    cluster_ip,
    feedback_routed,
    local_predictions,
    post_json,
    real_model,
    rolled_out,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

MIN_SAMPLES = 40


def iris_rows() -> tuple[list[list[float]], list[int]]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.tolist(), [int(v) for v in y]


def truth_monitor(name: str, namespace: str, min_accuracy: float) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"targetRef": {"name": name},
                     "featureNames": ["sepal_length", "sepal_width", "petal_length",
                                      "petal_width"],
                     "groundTruth": {"task": "classification", "window": "1h",
                                     "minSamples": MIN_SAMPLES,
                                     "thresholds": {"minAccuracy": min_accuracy}}}}


def predict_each(host: str, model: str, rows: list[list[float]], prefix: str) -> list[str]:
    """One request per row (the label ids are the requests' ids); the server echoes the id."""
    ids = []
    for i, row in enumerate(rows):
        rid = f"{prefix}-{i}"
        request = {"id": rid, "inputs": [{"name": "input-0", "shape": [1, 4],
                                          "datatype": "FP64", "data": row}]}

        def send(request: dict[str, Any] = request, rid: str = rid) -> tuple[int, Any]:
            return post_json(host, f"/v2/models/{model}/infer", request,
                             headers={"x-request-id": rid})

        status, body = wait_for(f"prediction {rid}", send, timeout=60)
        assert status == 200, body
        assert body["id"] == rid, body
        ids.append(rid)
    return ids


def post_labels(host: str, model: str, ids: list[str], labels: list[int]) -> None:
    status, body = post_json(host, f"/v2/models/{model}/feedback", {"labels": [
        {"id": i, "label": v} for i, v in zip(ids, labels, strict=True)]})
    assert 200 <= status < 300, (status, body)


def version_summary(kube: Kube, name: str, ns: str, version: str) -> dict[str, Any] | None:
    dm = kube.get("driftmonitor", name, ns)
    gt = ((dm or {}).get("status") or {}).get("groundTruth") or {}
    return next((v for v in gt.get("versions") or [] if v["version"] == version), None)


def diagnose(kube: Kube, name: str, ns: str) -> str:
    pods = kube.run("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
    logs = kube.run("logs", "-n", ns, f"deploy/{name}-truth", "--tail=40",
                    check=False)
    dm = kube.run("get", "driftmonitor", name, "-n", ns, "-o", "yaml", check=False).stdout
    return f"{pods}\n--- {name}-truth log\n{logs.stdout}{logs.stderr}\n--- dm\n{dm}"


def setup_model(kube: Kube, chart_operator: ChartOperator, store: dict[str, str], name: str,
                min_accuracy: float, replicas: int) -> str:
    ns = chart_operator.models_ns
    kube.apply(real_model(name, ns, IRIS_V1, store[IRIS_V1], replicas=replicas))
    kube.apply(truth_monitor(name, ns, min_accuracy))
    try:
        wait_for(f"the {name}-truth Deployment", lambda: kube.get(
            "deployment", f"{name}-truth", ns), timeout=60)
        wait_for(f"{name}-truth Ready", lambda: (
            d := kube.get("deployment", f"{name}-truth", ns))
            and (d.get("status") or {}).get("readyReplicas") == 1, timeout=300)
        wait_for(f"md/{name} Ready", lambda: (c := kube.condition("md", name, ns, "Ready"))
                 and c["status"] == "True", timeout=300)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{diagnose(kube, name, ns)}") from None
    # The model's pods are replaced once the monitor adds --truth-url; Ready stays True
    # through that, so wait for the template with the flag to be all that serves.
    def server_args() -> list[str] | None:
        d = kube.get("deployment", name, ns)
        args = next(c for c in d["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
                    if c["name"] == "server")["args"]
        return args if "--truth-url" in args else None
    args = wait_for(f"deployment/{name} with --truth-url", server_args, timeout=120)
    assert args[args.index("--truth-url") + 1] == f"http://{name}-truth.{ns}.svc:8080"
    try:
        rolled_out(kube, name, ns)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{diagnose(kube, name, ns)}") from None
    host = cluster_ip(kube, name, ns)
    feedback_routed(host, name)
    return host


def test_accuracy_from_labels_matches_and_bad_model_degrades(
        kube: Kube, chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    ns = chart_operator.models_ns
    rows, y = iris_rows()
    rows, y = rows[::2], y[::2]  # 75 rows of all three classes
    expected = float(np.mean(np.array(local_predictions(IRIS_V1, rows)) == np.array(y)))

    # Two replicas: labels and predictions meet in the one monitor whichever pod served.
    host = setup_model(kube, chart_operator, model_store, "iris", 0.8, replicas=2)
    ids = predict_each(host, "iris", rows, "good")
    post_labels(host, "iris", ids, y)
    try:
        summary = wait_for("status.groundTruth for version 1 with every label", lambda: (
            s := version_summary(kube, "iris", ns, "1")) and s.get("count") == len(rows)
            and (s.get("metrics") or {}).get("accuracy") is not None and s, timeout=180)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{diagnose(kube, 'iris', ns)}") from None
    assert summary["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-4)
    assert summary["coverage"] == pytest.approx(1.0)
    cond = wait_for("PerformanceDegraded False", lambda: (
        c := kube.condition("driftmonitor", "iris", ns, "PerformanceDegraded"))
        and c["status"] == "False" and c, timeout=60)
    assert cond["reason"] == "WithinThresholds"
    assert kube.condition("driftmonitor", "iris", ns, "Ready")["status"] == "True"  # type: ignore[index]
    # The monitor's children are the DriftMonitor's.
    dm = kube.get("driftmonitor", "iris", ns)
    assert dm is not None
    for kind in ("deployment", "service", "configmap", "networkpolicy"):
        child = kube.get(kind, "iris-truth", ns)
        assert child is not None, kind
        assert child["metadata"]["ownerReferences"][0]["uid"] == dm["metadata"]["uid"]

    # Labels the model gets wrong: accuracy far below the threshold.
    bad_host = setup_model(kube, chart_operator, model_store, "iris-bad", 0.9, replicas=1)
    wrong = [(v + 1) % 3 for v in y]
    bad_expected = float(np.mean(np.array(local_predictions(IRIS_V1, rows)) ==
                                 np.array(wrong)))
    ids = predict_each(bad_host, "iris-bad", rows, "bad")
    post_labels(bad_host, "iris-bad", ids, wrong)
    try:
        cond = wait_for("PerformanceDegraded True", lambda: (
            c := kube.condition("driftmonitor", "iris-bad", ns, "PerformanceDegraded"))
            and c["status"] == "True" and c, timeout=180)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{diagnose(kube, 'iris-bad', ns)}") from None
    assert cond["reason"] == "ThresholdViolated"
    assert "accuracy" in cond["message"] and "version 1" in cond["message"]
    assert "0.9" in cond["message"]
    bad = version_summary(kube, "iris-bad", ns, "1")
    assert bad is not None
    assert bad["metrics"]["accuracy"] == pytest.approx(bad_expected, abs=1e-4)
    warning = wait_for("a Warning PerformanceDegraded Event", lambda: [
        e for e in kube.events(ns, "iris-bad")
        if e["reason"] == "PerformanceDegraded" and e["type"] == "Warning"], timeout=60)
    assert "accuracy" in warning[0]["message"] and "0.9" in warning[0]["message"]
