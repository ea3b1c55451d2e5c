"""Fixtures for the tests that run real pods on the local cluster's real node.

The operator runs the way users run it: installed by the Helm chart as a pod from the
image `make images` built, with the chart's RBAC, in a namespace enforcing the restricted
Pod Security Standard, watching one models namespace (also restricted). Models come from
the local S3 store (hack/model_store.py: moto on the node's bridge address), fetched by the
real init container with credentials from a Secret. Requests reach the pods through the
Service's ClusterIP, which kube-proxy routes on this host.

Loaded as a pytest plugin by the test modules that use it (``pytest_plugins``).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO, cluster_dir, in_ci
from conftest import OPERATOR_LOGS, Kube, wait_for
from helm_cli import CHART, Helm, chart_crds

REAL_NODE = os.environ.get("KUSTOS_NODE_NAME_REAL", "kustos-node-0")
# The host's address on the pod bridge: the one host address pods can reach.
BRIDGE_ADDR = os.environ.get("KUSTOS_MODEL_STORE_ADDR", "10.244.0.1")
MODEL_STORE = REPO / "hack" / "model_store.py"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def require_real_node(kube: Kube) -> None:
    """The real node is Ready; without it the test fails in CI and is skipped elsewhere
    (KUSTOS_REAL_NODE=0 starts a kwok-only cluster)."""
    node = json.loads(kube.run("get", "node", REAL_NODE, "-o", "json", check=False).stdout
                      or "{}")
    ready = {c["type"]: c["status"]
             for c in node.get("status", {}).get("conditions", [])}.get("Ready")
    if ready == "True":
        return
    msg = f"the real node {REAL_NODE} is not Ready (hack/cluster.sh up starts it)"
    if in_ci() or os.environ.get("KUSTOS_REAL_NODE", "1") != "0":
        pytest.fail(msg)
    pytest.skip(msg)


def store(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(MODEL_STORE), *args], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"model_store.py {' '.join(args)}: {proc.stderr}{proc.stdout}")
    return proc.stdout


@pytest.fixture(scope="session")
def model_store() -> Iterator[dict[str, str]]:
    """The local S3 store, up, with every sample model published: {uri: digest}; stopped
    again if this session started it (a `make dev` store stays)."""
    started_here = not (cluster_dir() / "run" / "model-store.pid").exists()
    store("up")
    digests: dict[str, str] = json.loads(store("publish"))
    yield digests
    if started_here:
        store("down")


@dataclass
class ChartOperator:
    release: str
    system_ns: str
    models_ns: str
    kube: Kube
    helm: Helm

    def pod(self) -> dict[str, Any]:
        pods = self.kube.list("pods", self.system_ns,
                              selector=f"app.kubernetes.io/instance={self.release}")
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) == 1, [p["metadata"]["name"] for p in pods]
        return live[0]

    def webhook_answers(self) -> bool:
        """The admission webhook is reached through its Service (a server-side dry run):
        the pod being Ready is not enough, kube-proxy routes to it a moment later."""
        probe = real_model("webhook-probe", self.models_ns, "s3://models/probe/model.skops",
                           "sha256:" + "0" * 64)
        proc = self.kube.run("create", "--dry-run=server", "-f", "-", input=manifests(probe),
                             check=False)
        return "failed calling webhook" not in proc.stderr

    def logs(self) -> str:
        return self.kube.run("logs", "-n", self.system_ns, "-l",
                             f"app.kubernetes.io/instance={self.release}", "--tail=-1",
                             check=False).stdout


@pytest.fixture(scope="module")
def chart_values() -> list[str]:
    """Extra `helm install --set` values of ``chart_operator``; a module overrides this."""
    return []


@pytest.fixture(scope="module")
def chart_operator(kube: Kube, kubeconfig: Path, model_store: dict[str, str],
                   chart_values: list[str]) -> Iterator[ChartOperator]:
    """The chart installed with the locally built image, watching one models namespace."""
    require_real_node(kube)
    helm = Helm(kubeconfig)
    uid = uuid.uuid4().hex[:6]
    release, system_ns, models_ns = f"kustos-e{uid}", f"e{uid}-system", f"e{uid}-models"
    label = f"kustos-e2e-{uid}"
    kube.create_namespace(system_ns, kwok=False, labels=RESTRICTED)
    kube.create_namespace(models_ns, kwok=False, labels={**RESTRICTED, label: "on"})
    kube.apply(store("secret", "-n", models_ns))
    args = ["install", release, str(CHART), "--namespace", system_ns, "--wait",
            "--timeout", "300s",
            "--set", f"watchNamespaces={{{models_ns}}}",
            # The image is imported into the node, never pulled.
            "--set", "image.pullPolicy=Never",
            # Poll the sidecars often: the drift test waits on it.
            "--set", "config.sidecars.collect_interval=3",
            # Only this test's namespace goes through this operator's webhook.
            "--set", f"webhook.namespaceSelector.matchLabels.{label}=on"]
    for value in chart_values:
        args += ["--set", value]
    if all(kube.run("get", "crd", n, check=False).returncode == 0 for n in chart_crds()):
        args.append("--skip-crds")
    op = ChartOperator(release, system_ns, models_ns, kube, helm)
    try:
        helm.run(*args)
        wait_for("the operator's webhook reachable through its Service", op.webhook_answers,
                 timeout=120)
        yield op
    finally:
        (OPERATOR_LOGS / f"operator-{release}.log").write_text(op.logs())
        helm.run("uninstall", release, "--namespace", system_ns, "--wait", check=False)
        for ns in (models_ns, system_ns):
            kube.run("delete", "namespace", ns, "--wait=false", check=False)


# The iris models the store publishes (hack/model_store.py), and rows of different classes.
IRIS_V1, IRIS_V2 = "s3://models/iris/1/model.skops", "s3://models/iris/2/model.skops"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.9, 3.0, 5.1, 1.8]]


def store_module() -> Any:
    """hack/model_store.py as a module: the store's endpoint, credentials and region."""
    spec = importlib.util.spec_from_file_location("model_store", MODEL_STORE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def s3_client() -> Any:
    """A client of the local S3 store, as the tests reach it from this host."""
    import boto3

    ms = store_module()
    return boto3.client("s3", endpoint_url=ms.ENDPOINT, aws_access_key_id=ms.ACCESS_KEY,
                        aws_secret_access_key=ms.SECRET_KEY, region_name=ms.REGION)


def stored_model(uri: str) -> Any:
    """The published skops model at `uri`, loaded here from the store."""
    import skops.io

    bucket, key = uri.removeprefix("s3://").split("/", 1)
    blob = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return skops.io.loads(blob, trusted=skops.io.get_untrusted_types(data=blob))


def upload_model(key: str, model: Any) -> tuple[str, str]:
    """A model trained by the test, saved with skops to the local store: (uri, digest)."""
    import skops.io

    blob = skops.io.dumps(model)
    s3_client().put_object(Bucket="models", Key=key, Body=io.BytesIO(blob))
    return f"s3://models/{key}", "sha256:" + hashlib.sha256(blob).hexdigest()


def local_predictions(uri: str, rows: list[list[float]]) -> list[int]:
    """What the published model itself predicts."""
    import numpy as np

    return [int(v) for v in stored_model(uri).predict(np.array(rows))]


def v2_request(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64",
                        "data": [v for r in rows for v in r]}]}


def live_pods(kube: Kube, name: str, namespace: str) -> list[dict[str, Any]]:
    """A model's serving pods (both tracks; not its ground-truth monitor's, which carries
    the same instance label) that are not being deleted."""
    return [p for p in kube.list("pods", namespace, selector=(
                f"app.kubernetes.io/instance={name},app.kubernetes.io/component=predictor"))
            if not p["metadata"].get("deletionTimestamp")]


def real_model(name: str, namespace: str, uri: str, digest: str, version: str = "1",
               replicas: int = 2, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment of a model in the local store."""
    body: dict[str, Any] = {
        "model": {"version": version, "uri": uri, "digest": digest,
                  "credentialsSecretRef": {"name": "model-store"}},
        "replicas": replicas,
        "governance": {"owner": "e2e", "riskTier": "medium"},
    }
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


# the breast-cancer model of the local store, with its explainer background and drift
# reference (hack/model_store.py)
BC = "s3://models/breast-cancer/7"


def breast_cancer_with_sidecars(name: str, namespace: str, store: dict[str, str],
                                **explainer: Any) -> list[dict[str, Any]]:
    """The breast-cancer model (one replica) with an ExplainerSpec (shap-tree, plus the
    ``explainer`` spec fields given) and a DriftMonitor (ks) attached, to apply in order."""
    md = real_model(name, namespace, f"{BC}/model.skops", store[f"{BC}/model.skops"],
                    replicas=1)
    md["spec"]["model"]["format"] = "sklearn"
    target = {"targetRef": {"name": name}}
    return [
        md,
        {"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {**target, "method": "shap-tree",
                  "background": {"uri": f"{BC}/background.csv",
                                 "digest": store[f"{BC}/background.csv"], "maxSamples": 50},
                  **explainer}},
        {"apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {**target, "detector": "ks",
                  "reference": {"uri": f"{BC}/reference.csv",
                                "digest": store[f"{BC}/reference.csv"], "maxSamples": 600},
                  "window": {"size": 100, "maxAge": "1h"}, "pValue": 0.05}},
    ]


def cluster_ip(kube: Kube, name: str, namespace: str) -> str:
    svc = kube.get("service", name, namespace)
    assert svc is not None, f"no Service {namespace}/{name}"
    return str(svc["spec"]["clusterIP"])


def post_json(host: str, path: str, body: Any, port: int = 80, timeout: float = 10,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request on a fresh connection (as a new client would open it)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def answered(host: str, path: str, body: Any, timeout: float = 60) -> tuple[int, Any]:
    """The first answer through a Service, once kube-proxy routes it (a Service's new
    endpoints are programmed a moment after its pods are Ready)."""
    result: tuple[int, Any] = wait_for(f"an answer from {host}{path}",
                                       lambda: post_json(host, path, body), timeout=timeout)
    return result


def ready_endpoints(kube: Kube, name: str, namespace: str) -> list[str]:
    """Addresses the Service routes to (ready endpoints of its EndpointSlices)."""
    slices = kube.list("endpointslices", namespace,
                       selector=f"kubernetes.io/service-name={name}")
    return [a for s in slices for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready") for a in e["addresses"]]


def wait_degraded(kube: Kube, name: str, namespace: str, reason: str,
                  timeout: float = 300) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = kube.condition("md", name, namespace, "Degraded")
        return cond if cond and cond["status"] == "True" and cond["reason"] == reason else None
    result: dict[str, Any] = wait_for(f"md/{name} Degraded {reason}", check, timeout=timeout,
                                      interval=1)
    return result


def rolled_out(kube: Kube, name: str, namespace: str, timeout: float = 300) -> None:
    """Wait until the Deployment's latest template is all there is: every replica updated
    and available, and the Service routing to exactly the live pods (a Ready
    ModelDeployment may still be replacing pods, e.g. after a DriftMonitor added a flag)."""
    def done() -> bool:
        d = kube.get("deployment", name, namespace)
        if d is None:
            return False
        st, want = d.get("status") or {}, int(d["spec"].get("replicas", 1))
        if not (st.get("observedGeneration", 0) >= d["metadata"]["generation"]
                and st.get("updatedReplicas") == st.get("replicas") == want
                and st.get("availableReplicas") == want):
            return False
        pods = {p["status"].get("podIP") for p in live_pods(kube, name, namespace)}
        return len(pods) == want and set(ready_endpoints(kube, name, namespace)) == pods
    wait_for(f"deployment/{name} rolled out", done, timeout=timeout, interval=1)


def feedback_routed(host: str, model: str, run: int = 20) -> None:
    """Wait until a Service with a ground-truth monitor routes only to pods that have the
    link: the EndpointSlices can already be final (rolled_out) while kube-proxy still
    sends some connections to a terminating pod of the old template (no --truth-url:
    feedback is 404 there). An empty label list is refused with 400 by a pod with the link
    and changes nothing; ``run`` answers in a row from such pods make a stale route
    vanishingly unlikely ((2/3)**20 < 0.03 %)."""
    streak = 0

    def probe() -> bool:
        nonlocal streak
        status, _ = post_json(host, f"/v2/models/{model}/feedback", {"labels": []})
        streak = streak + 1 if status == 400 else 0
        return streak >= run
    wait_for(f"{model}'s feedback routed only to pods with --truth-url", probe,
             timeout=120, interval=0.2)


def manifests(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs))
