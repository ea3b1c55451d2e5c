"""DriftMonitor spec.groundTruth on the kwok cluster with real processes: the real operator
renders the `kustos truth` monitor (ConfigMap, Deployment, Service, NetworkPolicy) and
--truth-url on the model server; this test runs the real `kustos truth` and `kustos serve`
with exactly the rendered arguments and config, bound on their pods' (loopback) IPs.
Predictions and labels go through the real server; the operator reads the monitor's
status into status.groundTruth, sets PerformanceDegraded and posts its Events. The API
server refuses inconsistent specs with messages naming the field."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import OPERATOR_LOGS, Kube, Operator, stop_process, wait_for
from sidecar_helpers import Sidecar, Sidecars, model_deployment, wait_condition

pytestmark = pytest.mark.integration
pytest_plugins = ["sidecar_helpers"]  # fixtures iris, fast, sidecars

MIN_SAMPLES = 20


def truth_monitor(name: str, namespace: str, target: str, iris: dict[str, Any],
                  **ground_truth: Any) -> dict[str, Any]:
    gt = {"task": "classification", "window": "1h", "minSamples": MIN_SAMPLES,
          "thresholds": {"minAccuracy": 0.9}, **ground_truth}
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"targetRef": {"name": target}, "featureNames": iris["names"],
                     "groundTruth": gt}}


def pod_of(kube: Kube, ns: str, instance: str, component: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pods = [p for p in kube.list("pods", ns, f"app.kubernetes.io/instance={instance},"
                                                 f"app.kubernetes.io/component={component}")
                if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in pods if (p.get("status") or {}).get("podIP") and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions") or [])]
        return ready[0] if len(ready) == 1 and len(pods) == 1 else None
    found: dict[str, Any] = wait_for(f"one Ready {component} pod of {instance}", check,
                                     timeout=60)
    return found


class Truth:
    """The real `kustos truth` with the rendered args and config, on the pod's IP."""

    def __init__(self, kube: Kube, ns: str, name: str, pod: dict[str, Any],
                 tmp: Path) -> None:
        cm = kube.get("configmap", f"{name}-truth", ns)
        assert cm is not None
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "config.json"
        config.write_text(cm["data"]["config.json"])
        container = pod["spec"]["containers"][0]
        args = list(container["args"])
        args[args.index("--config") + 1] = str(config)
        args[args.index("--data-dir") + 1] = str(tmp / "store")
        args[args.index("--host") + 1] = self.ip = pod["status"]["podIP"]
        self.port = int(args[args.index("--port") + 1])
        OPERATOR_LOGS.mkdir(parents=True, exist_ok=True)
        self.log = OPERATOR_LOGS / f"truth-{self.ip}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kustos.cli", *args], cwd=tmp,
            env={**os.environ, "TMPDIR": str(tmp)}, stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(f"kustos truth on {self.ip}:{self.port}", self._live, timeout=60)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def _live(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"kustos truth exited with {self.proc.returncode}; "
                               f"see {self.log}")
        try:
            with urllib.request.urlopen(self.url + "/v2/health/live", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc, timeout=10, kill_timeout=5)


@pytest.fixture
def truths() -> Iterator[list[Truth]]:
    started: list[Truth] = []
    try:
        yield started
    finally:
        for t in started:
            t.stop()


def infer(server: Sidecar, rid: str, row: list[float]) -> None:
    status, body = server.post("/v2/models/iris/infer", {
        "id": rid, "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                               "data": row}]})
    assert status == 200 and body["id"] == rid, body


def labels(server: Sidecar, ids: list[str], values: list[int]) -> None:
    status, body = server.post("/v2/models/iris/feedback", {
        "labels": [{"id": i, "label": v} for i, v in zip(ids, values, strict=True)]})
    assert 200 <= status < 300, (status, body)


def ground_truth(kube: Kube, name: str, ns: str) -> dict[str, Any]:
    dm = kube.get("driftmonitor", name, ns)
    return ((dm or {}).get("status") or {}).get("groundTruth") or {}


def v1(kube: Kube, name: str, ns: str) -> dict[str, Any] | None:
    return next((v for v in ground_truth(kube, name, ns).get("versions") or []
                 if v["version"] == "1"), None)


def test_monitor_rendered_fed_and_judged(
        kube: Kube, fast: Operator, namespace: str, iris: dict[str, Any], sidecars: Sidecars,
        truths: list[Truth], tmp_path: Path) -> None:
    ns = namespace
    kube.apply(model_deployment("iris", ns, iris))
    kube.apply(truth_monitor("watch", ns, "iris", iris))
    dep = wait_for("the monitor's Deployment", lambda: kube.get("deployment", "watch-truth",
                                                                ns))
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    for kind in ("service", "configmap", "networkpolicy"):
        def child(kind: str = kind) -> dict[str, Any] | None:
            return kube.get(kind, "watch-truth", ns)
        assert wait_for(f"{kind} watch-truth", child)

    def server_args() -> list[str] | None:
        d = kube.get("deployment", "iris", ns)
        if d is None:
            return None
        c = next(c for c in d["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "server")
        return list(c["args"]) if "--truth-url" in c["args"] else None
    args = wait_for("--truth-url on the server", server_args)
    assert args[args.index("--truth-url") + 1] == f"http://watch-truth.{ns}.svc:8080"

    # Nothing answers on the monitor's pod yet: the DriftMonitor says so.
    wait_condition(kube, "driftmonitor", "watch", ns, "Ready", "False", "TruthUnreachable")

    truth_pod = pod_of(kube, ns, "watch", "truth")
    truth = Truth(kube, ns, "watch", truth_pod, tmp_path / "truth")
    truths.append(truth)
    model_pod = pod_of(kube, ns, "iris", "predictor")
    containers = {c["name"]: copy.deepcopy(c) for c in model_pod["spec"]["containers"]}
    # The server hands every prediction to the pod's payload-log container, which sends
    # them to the monitor; the server forwards the labels itself. Both run here as the
    # pod would run them, on its IP, the socket in this test's directory.
    assert list(containers) == ["server", "payload-log"]
    sock = str(tmp_path / "relay.sock")
    sargs, rargs = containers["server"]["args"], containers["payload-log"]["args"]
    # The Service name resolves only in a cluster's DNS: the monitor's pod IP instead.
    for args in (sargs, rargs):
        args[args.index("--truth-url") + 1] = truth.url
    sargs[sargs.index("--payload-log-relay") + 1] = sock
    assert sargs[sargs.index("--payload-log-sample") + 1] == "1"
    rargs[rargs.index("--socket") + 1] = sock
    rargs += ["--host", "0.0.0.0"]  # the pod's IP (Sidecar binds it)
    sidecars.start(containers["payload-log"], model_pod, iris, tmp_path)
    server = sidecars.start(containers["server"], model_pod, iris, tmp_path)

    def model_ready() -> bool:
        with urllib.request.urlopen(server.url("/v2/health/ready"), timeout=2) as r:
            return bool(r.status == 200)
    wait_for("the model loaded", model_ready)
    wait_condition(kube, "driftmonitor", "watch", ns, "Ready", "True", "Monitoring")
    assert kube.condition("driftmonitor", "watch", ns, "DriftDetected") is None

    from sklearn.datasets import load_iris

    x, y = iris["x"], load_iris().target
    rows = list(range(0, 150, 3))  # 50 rows of all three classes
    ids = [f"r-{i}" for i in rows]
    for rid, i in zip(ids, rows, strict=True):
        infer(server, rid, x[i].tolist())
    labels(server, ids, [int(y[i]) for i in rows])
    import joblib
    predicted = joblib.load(iris["model"]).predict(x[rows])
    expected = float(np.mean(predicted == y[rows]))
    summary = wait_for("status.groundTruth with every label", lambda: (
        s := v1(kube, "watch", ns)) and s.get("count") == len(rows)
        and (s.get("metrics") or {}).get("accuracy") is not None and s, timeout=60)
    assert summary["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-4)
    assert summary["coverage"] == pytest.approx(1.0)
    wait_condition(kube, "driftmonitor", "watch", ns, "PerformanceDegraded", "False",
                   "WithinThresholds")

    # The same ids labelled wrongly (a later label replaces the earlier): the model is
    # bad for these outcomes.
    wrong = [int((y[i] + 1) % 3) for i in rows]
    labels(server, ids, wrong)
    cond = wait_condition(kube, "driftmonitor", "watch", ns, "PerformanceDegraded", "True",
                          "ThresholdViolated", timeout=60)
    bad = float(np.mean(predicted == np.array(wrong)))
    assert cond["message"].startswith("accuracy ") and "< 0.9 (version 1)" in cond["message"]
    got = v1(kube, "watch", ns)
    assert got is not None and got["metrics"]["accuracy"] == pytest.approx(bad, abs=1e-4)
    gt = ground_truth(kube, "watch", ns)
    assert {"version": "1", "metric": "accuracy", "kind": "performance"}.items() <= \
        gt["violations"][0].items()
    events = wait_for("a Warning PerformanceDegraded Event", lambda: [
        e for e in kube.events(ns, "watch")
        if e["reason"] == "PerformanceDegraded" and e["type"] == "Warning"])
    assert len(events) == 1 and "accuracy" in events[0]["message"]

    # groundTruth removed (a reference instead): the monitor and --truth-url go.
    kube.run("patch", "driftmonitor", "watch", "-n", ns, "--type=json", "-p", json.dumps([
        {"op": "add", "path": "/spec/reference",
         "value": {"uri": f"file://{iris['csv']}", "digest": iris["csv_digest"]}},
        {"op": "remove", "path": "/spec/groundTruth"}]))
    wait_for("the monitor's children deleted", lambda: all(
        kube.get(k, "watch-truth", ns) is None
        for k in ("deployment", "service", "configmap", "networkpolicy")))
    wait_for("--truth-url gone", lambda: server_args() is None and kube.get(
        "deployment", "iris", ns) is not None)
    wait_for("status.groundTruth and its condition gone", lambda: not ground_truth(
        kube, "watch", ns) and kube.condition("driftmonitor", "watch", ns,
                                              "PerformanceDegraded") is None)


@pytest.mark.parametrize(("ground_truth", "spec", "field"), [
    (None, {}, "reference"),
    ({"thresholds": {"maxMae": 1.0}}, {}, "task regression"),
    ({"task": "regression", "fairness": {"sensitiveFeatures": [{"name": "s"}]}}, {},
     "fairness needs task classification"),
    ({"fairness": {"sensitiveFeatures": [{"name": "s"}], "maxAccuracyGap": 1.5}}, {},
     "maxAccuracyGap"),
    ({"bulk": [{"uri": "s3://labels/daily/"}]}, {}, "bulk format"),
    ({"bulk": [{"uri": "s3://labels/x.csv", "format": "parquet"}]}, {}, "suffix"),
    ({"onDegraded": {"retrainJob": True}}, {}, "onDrift.retrainJob"),
])
def test_schema_refuses_inconsistent_ground_truth(
        kube: Kube, namespace: str, iris: dict[str, Any], ground_truth: dict[str, Any] | None,
        spec: dict[str, Any], field: str) -> None:
    body = truth_monitor("odd", namespace, "iris", iris, **(ground_truth or {}))
    if ground_truth is None:
        del body["spec"]["groundTruth"]
    body["spec"].update(spec)
    proc = kube.apply(body, check=False)
    assert proc.returncode != 0 and field in proc.stderr, proc.stderr
