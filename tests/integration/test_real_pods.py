"""Real pods: the images built here run on the real node, and predictions go through the
model's Service, with the operator itself a pod installed by the Helm chart."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from cluster import kubectl_path
from conftest import wait_for, wait_ready
from realpods import (
    IRIS_V1,
    IRIS_V2,
    REAL_NODE,
    ROWS,
    ChartOperator,
    answered,
    breast_cancer_with_sidecars,
    cluster_ip,
    live_pods,
    local_predictions,
    post_json,
    ready_endpoints,
    real_model,
    v2_request,
    wait_degraded,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]


@pytest.fixture(scope="module")
def iris(chart_operator: ChartOperator, model_store: dict[str, str]) -> Iterator[str]:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    kube.apply(real_model("iris", ns, IRIS_V1, model_store[IRIS_V1]))
    wait_ready(kube, "iris", ns, timeout=300)
    yield "iris"


def test_operator_runs_as_a_pod_of_the_chart_on_the_real_node(
        chart_operator: ChartOperator) -> None:
    pod = chart_operator.pod()
    assert pod["spec"]["nodeName"] == REAL_NODE
    assert pod["status"]["phase"] == "Running"
    statuses = pod["status"]["containerStatuses"]
    assert all(s["ready"] for s in statuses), statuses
    assert all(s["restartCount"] == 0 for s in statuses), chart_operator.logs()[-3000:]
    assert pod["spec"]["containers"][0]["image"].startswith("ghcr.io/kustos-dev/kustos:")


def test_predictions_through_the_service(chart_operator: ChartOperator, iris: str) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    pods = live_pods(kube, "iris", ns)
    assert len(pods) == 2
    for p in pods:
        assert p["spec"]["nodeName"] == REAL_NODE
        init = p["status"]["initContainerStatuses"][0]
        assert init["name"] == "fetch-model" and init["state"]["terminated"]["exitCode"] == 0
    # Ready follows the pods; the EndpointSlice controller follows them on its own time
    wait_for("both pods in the Service's endpoints",
             lambda: len(ready_endpoints(kube, "iris", ns)) == 2, timeout=120)
    expected = local_predictions(IRIS_V1, ROWS)
    assert len(set(expected)) > 1  # rows of different classes: a constant answer fails
    ip = cluster_ip(kube, "iris", ns)

    status, body = answered(ip, "/v2/models/iris/infer", v2_request(ROWS))
    assert status == 200, body
    label = next(o for o in body["outputs"] if o["name"] == "predict")
    assert [int(v) for v in label["data"]] == expected
    assert body["model_version"] == "1"

    status, body = post_json(ip, "/v1/models/iris:predict", {"instances": ROWS})
    assert status == 200, body
    assert [int(v) for v in body["predictions"]] == expected

    status, body = post_json(ip, "/api/v1.0/predictions", {"data": {"ndarray": ROWS}})
    assert status == 200, body
    assert body["data"]["ndarray"] and len(body["data"]["ndarray"]) == len(ROWS)

    # A malformed request is the protocol's 4xx, through the Service as well.
    status, body = post_json(ip, "/v2/models/iris/infer", {"inputs": "nope"})
    assert 400 <= status < 500 and "error" in body


def test_tritonclient_http_through_the_service(chart_operator: ChartOperator,
                                               iris: str) -> None:
    import tritonclient.http as triton

    ip = cluster_ip(chart_operator.kube, "iris", chart_operator.models_ns)
    client = triton.InferenceServerClient(url=f"{ip}:80", connection_timeout=10,
                                          network_timeout=10)
    assert client.is_server_ready() and client.is_model_ready("iris")
    data = np.array(ROWS, dtype=np.float64)
    inp = triton.InferInput("input-0", list(data.shape), "FP64")
    inp.set_data_from_numpy(data, binary_data=False)
    out = triton.InferRequestedOutput("predict", binary_data=False)
    result = client.infer("iris", [inp], outputs=[out])
    assert [int(v) for v in result.as_numpy("predict")] == local_predictions(IRIS_V1, ROWS)


def test_tritonclient_binary_tensors_through_the_service(chart_operator: ChartOperator,
                                                         iris: str) -> None:
    """The V2 binary tensor extension (tritonclient's default for outputs) end to end."""
    import tritonclient.http as triton

    ip = cluster_ip(chart_operator.kube, "iris", chart_operator.models_ns)
    client = triton.InferenceServerClient(url=f"{ip}:80", connection_timeout=10,
                                          network_timeout=10)
    data = np.array(ROWS, dtype=np.float64)
    inp = triton.InferInput("input-0", list(data.shape), "FP64")
    inp.set_data_from_numpy(data, binary_data=True)
    out = triton.InferRequestedOutput("predict", binary_data=True)
    result = client.infer("iris", [inp], outputs=[out])
    assert [int(v) for v in result.as_numpy("predict")] == local_predictions(IRIS_V1, ROWS)


def test_tritonclient_grpc_through_the_service(chart_operator: ChartOperator,
                                               iris: str) -> None:
    """OIP V2 over gRPC: the Service's grpc port reaches kustos serve --grpc-port (and the
    NetworkPolicy lets the client in)."""
    import tritonclient.grpc as triton_grpc

    kube, ns = chart_operator.kube, chart_operator.models_ns
    svc = kube.get("service", "iris", ns)
    assert svc is not None
    grpc_ports = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_ports, svc["spec"]["ports"]
    ip = cluster_ip(kube, "iris", ns)
    client = triton_grpc.InferenceServerClient(url=f"{ip}:{grpc_ports[0]['port']}")
    try:
        assert client.is_server_live() and client.is_model_ready("iris")
        meta = client.get_model_metadata("iris")
        assert meta.name == "iris" and meta.inputs
        data = np.array(ROWS, dtype=np.float64)
        inp = triton_grpc.InferInput("input-0", list(data.shape), "FP64")
        inp.set_data_from_numpy(data)
        result = client.infer("iris", [inp], outputs=[triton_grpc.InferRequestedOutput("predict")],
                              request_id="real-node-1", client_timeout=30)
        assert [int(v) for v in result.as_numpy("predict")] == \
            local_predictions(IRIS_V1, ROWS)
        assert result.get_response().id == "real-node-1"
    finally:
        client.close()


def test_kubectl_port_forward_to_the_service(chart_operator: ChartOperator, iris: str) -> None:
    """What a new user tries first (it failed with "no preferred addresses" under kwok)."""
    exe = kubectl_path()
    assert exe is not None
    proc = subprocess.Popen(
        [str(exe), "--kubeconfig", str(chart_operator.kube.kubeconfig), "port-forward",
         "-n", chart_operator.models_ns, "svc/iris", ":80"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        status, body = post_json("127.0.0.1", "/v2/models/iris/infer", v2_request(ROWS[:1]),
                                 port=int(match.group(1)))
        assert status == 200 and body["outputs"], body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_wrong_digest_is_degraded_with_the_fetchers_reason_and_never_serves(
        chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    # v1's file with v2's digest: what a tampered or mixed-up artifact looks like.
    kube.apply(real_model("tampered", ns, IRIS_V1, model_store[IRIS_V2], replicas=1))
    try:
        cond = wait_degraded(kube, "tampered", ns, "ModelFetchFailed")
        assert "digest" in cond["message"].lower(), cond
        assert model_store[IRIS_V2].removeprefix("sha256:")[:12] in cond["message"], cond
        ready = kube.condition("md", "tampered", ns, "Ready")
        assert ready is not None and ready["status"] == "False"
        assert ready_endpoints(kube, "tampered", ns) == []
        events = [e for e in kube.events(ns, "tampered") if e["reason"] == "ModelFetchFailed"]
        assert events and events[0]["type"] == "Warning"
        pods = kube.list("pods", ns, selector="app.kubernetes.io/instance=tampered")
        assert pods and all(not c.get("ready") for p in pods
                            for c in p["status"].get("containerStatuses") or [])
    finally:
        kube.run("delete", "md", "tampered", "-n", ns, "--wait=false", check=False)


class Load:
    """Constant-rate requests through the Service, each on a fresh connection, from a
    thread, until stopped or ``limit`` seconds pass (it always stops by itself)."""

    def __init__(self, host: str, path: str, rate: float, limit: float = 300) -> None:
        self.host, self.path, self.interval, self.limit = host, path, 1.0 / rate, limit
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set() and time.monotonic() - start < self.limit:
            t0 = time.monotonic()
            try:
                status, body = post_json(self.host, self.path, v2_request(ROWS[:1]),
                                         timeout=10)
                if status != 200:
                    self.failures.append(f"HTTP {status}: {body}")
                else:
                    v = str(body.get("model_version"))
                    self.versions[v] = self.versions.get(v, 0) + 1
            except OSError as err:
                self.failures.append(f"{type(err).__name__}: {err}")
            self.latencies.append(time.monotonic() - t0)
            n += 1
            # Keep the rate: sleep until this request's slot ends.
            self._stop.wait(max(0.0, start + n * self.interval - time.monotonic()))

    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies, 99) * 1000)


def test_version_change_under_load_fails_no_request(
        chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    kube.apply(real_model("rolling", ns, IRIS_V1, model_store[IRIS_V1]))
    try:
        first = wait_ready(kube, "rolling", ns, timeout=300)
        ip = cluster_ip(kube, "rolling", ns)
        path = "/v2/models/rolling/infer"
        wait_for("the Service answers", lambda: post_json(
            ip, path, v2_request(ROWS[:1]))[0] == 200, timeout=60)
        with Load(ip, path, rate=100) as load:
            wait_for("load flowing", lambda: len(load.latencies) >= 100, timeout=60)
            kube.apply(real_model("rolling", ns, IRIS_V2, model_store[IRIS_V2], version="2"))
            md = wait_ready(kube, "rolling", ns, generation=first["metadata"]["generation"] + 1,
                            timeout=300)
            assert md["status"]["model"]["version"] == "2"
            done = len(load.latencies)
            # Keep going a little on the new pods only.
            wait_for("load after the rollout", lambda: len(load.latencies) >= done + 100,
                     timeout=60)
        print(f"\nrollout under load: {len(load.latencies)} requests, "
              f"{len(load.failures)} failed, p99 {load.p99_ms():.1f} ms, "
              f"versions served {load.versions}")
        assert load.failures == [], load.failures[:5]
        assert load.versions.get("1", 0) > 0 and load.versions.get("2", 0) > 0
    finally:
        kube.run("delete", "md", "rolling", "-n", ns, "--wait=false", check=False)


def test_restricted_namespace_admits_canary_and_autoscaled_pods(
        chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    canary = real_model("shapes-canary", ns, IRIS_V1, model_store[IRIS_V1], replicas=2,
                        canary={"model": {"version": "2", "uri": IRIS_V2,
                                          "digest": model_store[IRIS_V2]},
                                "trafficPercent": 50})
    scaled = real_model("shapes-hpa", ns, IRIS_V1, model_store[IRIS_V1],
                        autoscaling={"minReplicas": 1, "maxReplicas": 2})
    kube.apply(canary)
    kube.apply(scaled)
    try:
        wait_ready(kube, "shapes-canary", ns, timeout=300)
        wait_ready(kube, "shapes-hpa", ns, timeout=300)
        ip = cluster_ip(kube, "shapes-canary", ns)
        seen: set[str] = set()

        def both_versions() -> bool:
            status, body = post_json(ip, "/v2/models/shapes-canary/infer",
                                     v2_request(ROWS[:1]))
            assert status == 200, body
            seen.add(str(body["model_version"]))
            return seen >= {"1", "2"}

        wait_for("both canary tracks answering", both_versions, timeout=60, interval=0.05)
    finally:
        kube.run("delete", "md", "shapes-canary", "shapes-hpa", "-n", ns, "--wait=false",
                 check=False)




def test_explainer_and_drift_sidecars_run_as_real_containers(
        chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    """The explain and drift images in the model's pods: `:explain` through the Service
    answers with attributions, and shifted traffic through the Service is detected."""
    from sklearn.datasets import load_breast_cancer

    kube, ns = chart_operator.kube, chart_operator.models_ns
    for doc in breast_cancer_with_sidecars("bc", ns, model_store):
        kube.apply(doc)
    try:
        wait_ready(kube, "bc", ns, timeout=600)

        def sidecars_running() -> bool:
            pods = live_pods(kube, "bc", ns)
            names = {c["name"] for p in pods for c in p["status"].get("containerStatuses") or []
                     if c.get("ready")}
            return len(pods) == 1 and {"server", "explainer", "drift"} <= names

        wait_for("server, explainer and drift containers ready", sidecars_running, timeout=600,
                 interval=2)
        x = load_breast_cancer().data
        ip = cluster_ip(kube, "bc", ns)

        def explained() -> dict[str, Any] | None:
            status, body = post_json(ip, "/v1/models/bc:explain", {"instances": x[:2].tolist()},
                                     timeout=60)
            return body if status == 200 else None

        body = wait_for(":explain through the Service", explained, timeout=300, interval=2)
        rows = body["explanations"]
        assert len(rows) == 2
        first = rows[0]["outputs"][-1]
        assert len(first["attributions"]) == x.shape[1]
        # Additivity: base value + attributions = the model's output for that row.
        total = first["base_value"] + sum(first["attributions"].values())
        assert abs(total - first["output_value"]) < 1e-4, first

        # Served traffic with one feature shifted, 20 rows per poll: the windows fill from
        # traffic as it keeps arriving (the sidecar may still be loading its reference).
        shifted = x.copy()
        shifted[:, 0] += 3 * x[:, 0].std()
        sent = {"n": 0}

        def drifted() -> dict[str, Any] | None:
            start = sent["n"] % len(shifted)
            rows_ = shifted[start:start + 20].tolist()
            sent["n"] += len(rows_)
            status, answer = post_json(ip, "/v2/models/bc/infer", {"inputs": [{
                "name": "input-0", "shape": [len(rows_), x.shape[1]], "datatype": "FP64",
                "data": [v for r in rows_ for v in r]}]})
            assert status == 200, answer
            cond = kube.condition("driftmonitor", "bc", ns, "DriftDetected")
            return cond if cond and cond["status"] == "True" else None

        try:
            cond = wait_for("DriftDetected from traffic through the Service", drifted,
                            timeout=600, interval=1)
        except AssertionError as err:
            logs = kube.run("logs", "-n", ns, "deploy/bc", "-c", "drift", "--tail=40",
                            check=False)
            raise AssertionError(f"{err}\nsent {sent['n']} rows; DriftMonitor status: "
                                 f"{(kube.get('driftmonitor', 'bc', ns) or {}).get('status')}"
                                 f"\ndrift sidecar log:\n{logs.stdout}{logs.stderr}") from None
        dm = kube.get("driftmonitor", "bc", ns)
        assert dm is not None
        worst = min(dm["status"]["featurePValues"], key=lambda f: f["pValue"])
        assert worst["feature"] in ("mean_radius", "0", "feature_0"), (worst, cond)
    finally:
        kube.run("delete", "md,explainerspec,driftmonitor", "bc", "-n", ns, "--wait=false",
                 check=False)
