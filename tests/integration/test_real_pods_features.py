"""Real pods for features first tested as local processes: HTTPS and mTLS at the model
server (spec.runtime.tls), a LIME explainer sidecar, an MLflow model archive
(format mlflow) and payload logging to an in-cluster CloudEvents sink (spec.logging).
The operator is a pod of the Helm chart; requests go through the model's Service."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Kube, wait_for, wait_ready
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from realpods import (
    BC,
    IRIS_V1,
    ROWS,
    ChartOperator,
    answered,
    cluster_ip,
    live_pods,
    local_predictions,
    post_json,
    real_model,
    s3_client,
    v2_request,
)

from kustos.governance import tls

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]


def delete(kube: Kube, ns: str, *objects: str) -> None:
    for obj in objects:
        kube.run("delete", obj, "-n", ns, "--wait=false", "--ignore-not-found", check=False)


def diagnose(kube: Kube, name: str, ns: str) -> str:
    """What a failed wait shows: the pods' states and the server container's last lines."""
    pods = kube.run("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}",
                    "-o", "wide", check=False).stdout
    logs = kube.run("logs", "-n", ns, f"deploy/{name}", "-c", "server", "--tail=30",
                    check=False)
    # A restarted container's own log may be empty yet: the one before it says why.
    previous = kube.run("logs", "-n", ns, f"deploy/{name}", "-c", "server", "--previous",
                        "--tail=30", check=False)
    return (f"pods:\n{pods}\nserver log:\n{logs.stdout}{logs.stderr}"
            f"\nprevious server log:\n{previous.stdout}{previous.stderr}")


class CrashLooping(Exception):
    """A model pod's container keeps restarting: waiting longer will not make it Ready."""


def ready(kube: Kube, name: str, ns: str, timeout: float = 420) -> None:
    """wait_ready, but a container restarting for the third time fails at once, and a
    failure shows the pods and the server's log."""
    def settled() -> bool:
        for pod in live_pods(kube, name, ns):
            st = pod.get("status") or {}
            for c in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses")
                                                                  or []):
                if c.get("restartCount", 0) >= 3:
                    raise CrashLooping(f"md/{name}: container {c['name']} restarted "
                                       f"{c['restartCount']} times\n{diagnose(kube, name, ns)}")
        wait_ready(kube, name, ns, timeout=0.1)
        return True

    try:
        wait_for(f"md/{name} Ready", settled, timeout=timeout, interval=2)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{diagnose(kube, name, ns)}") from None


# --- TLS -------------------------------------------------------------------------------


def client_cert(ca: tls.Bundle, name: str, directory: Path) -> tuple[Path, Path]:
    """A client certificate (clientAuth) signed by ``ca``'s CA; (certfile, keyfile)."""
    assert ca.ca_key is not None
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert)
    ca_key = serialization.load_pem_private_key(ca.ca_key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certfile, keyfile = directory / f"{name}.crt", directory / f"{name}.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to an address (the ClusterIP: there is no cluster DNS here) verified against
    the Service's DNS name, as a client resolving that name would."""

    def __init__(self, address: str, port: int, server_hostname: str,
                 context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_hostname = server_hostname
        self._ctx = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self._server_hostname)


@dataclass
class HttpsAnswer:
    status: int
    body: Any
    serial: int  # the serving certificate's serial number


def https_post(address: str, server_hostname: str, path: str, body: Any, cadata: str,
               client: tuple[Path, Path] | None = None, port: int = 443,
               timeout: float = 10) -> HttpsAnswer:
    ctx = ssl.create_default_context(cadata=cadata)
    if client is not None:
        ctx.load_cert_chain(*client)
    conn = _SNIConnection(address, port, server_hostname, ctx, timeout)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        serial = x509.load_der_x509_certificate(der).serial_number
        return HttpsAnswer(resp.status, json.loads(data) if data else None, serial)
    finally:
        conn.close()


def service_hosts(name: str, ns: str) -> list[str]:
    return [f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]


def tls_secret(name: str, ns: str, bundle: tls.Bundle) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns},
            "stringData": {"tls.crt": bundle.cert.decode(), "tls.key": bundle.key.decode()}}


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


@dataclass
class TLSModel:
    name: str
    ns: str
    ip: str
    bundle: tls.Bundle


@pytest.fixture(scope="module")
def tls_model(chart_operator: ChartOperator, model_store: dict[str, str]) -> Iterator[TLSModel]:
    kube, ns, name = chart_operator.kube, chart_operator.models_ns, "iris-tls"
    bundle = tls.issue(service_hosts(name, ns))
    kube.apply(tls_secret(f"{name}-cert", ns, bundle))
    kube.apply(real_model(name, ns, IRIS_V1, model_store[IRIS_V1], replicas=1,
                          runtime={"tls": {"secretName": f"{name}-cert"}}))
    try:
        ready(kube, name, ns)
        yield TLSModel(name, ns, cluster_ip(kube, name, ns), bundle)
    finally:
        delete(kube, ns, f"md/{name}", f"secret/{name}-cert")


def test_tls_model_serves_https_on_443_verified_against_the_test_ca(
        chart_operator: ChartOperator, tls_model: TLSModel) -> None:
    kube, m = chart_operator.kube, tls_model
    svc = kube.get("service", m.name, m.ns)
    assert svc is not None
    https = [p for p in svc["spec"]["ports"] if p["name"] == "https"]
    assert https and https[0]["port"] == 443 and https[0].get("appProtocol") == "https", \
        svc["spec"]["ports"]
    assert not [p for p in svc["spec"]["ports"] if p["port"] == 80], svc["spec"]["ports"]
    # Ready came from the HTTPS probes: the rendered probes say so.
    (pod,) = live_pods(kube, m.name, m.ns)
    server = next(c for c in pod["spec"]["containers"] if c["name"] == "server")
    assert server["readinessProbe"]["httpGet"]["scheme"] == "HTTPS", server["readinessProbe"]

    cadata = m.bundle.ca_cert.decode()
    answer: HttpsAnswer = wait_for(
        "an HTTPS answer through the Service",
        lambda: https_post(m.ip, f"{m.name}.{m.ns}.svc", f"/v2/models/{m.name}/infer",
                           v2_request(ROWS), cadata), timeout=120)
    assert answer.status == 200, answer.body
    label = next(o for o in answer.body["outputs"] if o["name"] == "predict")
    expected = local_predictions(IRIS_V1, ROWS)
    assert len(set(expected)) > 1
    assert [int(v) for v in label["data"]] == expected
    assert answer.serial == serial_of(m.bundle.cert)

    # A client trusting another CA refuses the server's certificate.
    other = tls.issue(["elsewhere.example"]).ca_cert.decode()
    with pytest.raises(ssl.SSLCertVerificationError):
        https_post(m.ip, f"{m.name}.{m.ns}.svc", f"/v2/models/{m.name}/infer",
                   v2_request(ROWS), other)

    # Plain HTTP to the TLS port gets the server's plain 400, never a prediction.
    status, body = post_json(m.ip, f"/v2/models/{m.name}/infer", v2_request(ROWS), port=443)
    assert status == 400 and "outputs" not in body, body
    assert "HTTPS" in body["error"], body


def test_tls_secret_rotation_is_served_without_a_restart(
        chart_operator: ChartOperator, tls_model: TLSModel) -> None:
    kube, m = chart_operator.kube, tls_model
    (before,) = live_pods(kube, m.name, m.ns)
    renewed = tls.renew(m.bundle, service_hosts(m.name, m.ns))
    new_serial = serial_of(renewed.cert)
    assert new_serial != serial_of(m.bundle.cert)
    kube.apply(tls_secret(f"{m.name}-cert", m.ns, renewed))
    cadata = m.bundle.ca_cert.decode()  # the same CA signed both

    def served() -> HttpsAnswer | None:
        answer = https_post(m.ip, f"{m.name}.{m.ns}.svc", f"/v2/models/{m.name}/infer",
                            v2_request(ROWS[:1]), cadata)
        assert answer.status == 200, answer.body
        return answer if answer.serial == new_serial else None

    # The kubelet swaps the volume within its sync period (~1 min), the server within 2 s.
    wait_for("the renewed certificate served to a new connection", served, timeout=180,
             interval=3)
    (after,) = live_pods(kube, m.name, m.ns)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    server = next(s for s in after["status"]["containerStatuses"] if s["name"] == "server")
    assert server["restartCount"] == 0, server


def test_mtls_model_refuses_clients_without_a_certificate(
        chart_operator: ChartOperator, model_store: dict[str, str], tmp_path: Path) -> None:
    kube, ns, name = chart_operator.kube, chart_operator.models_ns, "iris-mtls"
    server = tls.issue(service_hosts(name, ns))
    clients = tls.issue(["clients"])  # only its CA is used: it signs the client certificates
    kube.apply(tls_secret(f"{name}-cert", ns, server))
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": f"{name}-clients", "namespace": ns},
                "data": {"ca.crt": clients.ca_cert.decode()}})
    kube.apply(real_model(name, ns, IRIS_V1, model_store[IRIS_V1], replicas=1,
                          runtime={"tls": {"secretName": f"{name}-cert",
                                           "clientCA": {"configMapName": f"{name}-clients"}}}))
    try:
        ready(kube, name, ns)
        (pod,) = live_pods(kube, name, ns)
        container = next(c for c in pod["spec"]["containers"] if c["name"] == "server")
        probe = container["readinessProbe"]["httpGet"]
        # Ready through the plain health port: the kubelet has no client certificate.
        assert probe.get("scheme", "HTTP") == "HTTP" and probe["port"] in (8082, "health"), \
            probe
        ip, host = cluster_ip(kube, name, ns), f"{name}.{ns}.svc"
        cadata, path = server.ca_cert.decode(), f"/v2/models/{name}/infer"
        good = client_cert(clients, "good-client", tmp_path)

        answer: HttpsAnswer = wait_for(
            "an mTLS answer through the Service",
            lambda: https_post(ip, host, path, v2_request(ROWS), cadata, client=good),
            timeout=120)
        assert answer.status == 200, answer.body
        label = next(o for o in answer.body["outputs"] if o["name"] == "predict")
        assert [int(v) for v in label["data"]] == local_predictions(IRIS_V1, ROWS)

        # No client certificate: TLS 1.3 tells the client at its first read.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_post(ip, host, path, v2_request(ROWS), cadata)
        # A certificate of another CA is refused the same way.
        stranger = client_cert(tls.issue(["strangers"]), "stranger", tmp_path)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_post(ip, host, path, v2_request(ROWS), cadata, client=stranger)
    finally:
        delete(kube, ns, f"md/{name}", f"secret/{name}-cert", f"configmap/{name}-clients")


# --- LIME ------------------------------------------------------------------------------


def test_lime_explainer_sidecar_through_the_service(
        chart_operator: ChartOperator, model_store: dict[str, str]) -> None:
    from sklearn.datasets import load_breast_cancer

    kube, ns, name = chart_operator.kube, chart_operator.models_ns, "bc-lime"
    md = real_model(name, ns, f"{BC}/model.skops", model_store[f"{BC}/model.skops"],
                    replicas=1)
    md["spec"]["model"]["format"] = "sklearn"
    kube.apply(md)
    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"targetRef": {"name": name}, "method": "lime",
                         "lime": {"numSamples": 500},
                         "background": {"uri": f"{BC}/background.csv",
                                        "digest": model_store[f"{BC}/background.csv"],
                                        "maxSamples": 50}}})
    try:
        ready(kube, name, ns, timeout=600)

        def explainer_ready() -> bool:
            pods = live_pods(kube, name, ns)
            names = {c["name"] for p in pods for c in p["status"].get("containerStatuses") or []
                     if c.get("ready")}
            return len(pods) == 1 and {"server", "explainer"} <= names

        wait_for("server and explainer containers ready", explainer_ready, timeout=600,
                 interval=2)
        data = load_breast_cancer()
        x = data.data
        ip = cluster_ip(kube, name, ns)

        def explained() -> dict[str, Any] | None:
            status, body = post_json(ip, f"/v1/models/{name}:explain",
                                     {"instances": x[:2].tolist()}, timeout=60)
            return body if status == 200 else None

        try:
            body = wait_for(":explain through the Service", explained, timeout=300,
                            interval=2)
        except AssertionError as err:
            logs = kube.run("logs", "-n", ns, f"deploy/{name}", "-c", "explainer",
                            "--tail=30", check=False)
            raise AssertionError(f"{err}\nexplainer log:\n{logs.stdout}{logs.stderr}") from None
        assert body["method"] == "lime", {k: v for k, v in body.items() if k != "explanations"}
        assert body["output_kind"] == "probability"
        rows = body["explanations"]
        assert len(rows) == 2
        for row in rows:
            for out in row["outputs"]:
                weights = out["attributions"]
                assert len(weights) == x.shape[1]
                top = max(weights, key=lambda f: abs(weights[f]))
                assert top and abs(weights[top]) > 0, weights
                # The surrogate's output at the row approximates the model's probability.
                assert 0 <= out["output_value"] <= 1
        # The forest's classes answer with complementary weights: not a constant answer.
        first = rows[0]["outputs"]
        assert len(first) == 2
        feature = next(iter(first[0]["attributions"]))
        assert first[0]["attributions"][feature] == pytest.approx(
            -first[1]["attributions"][feature], abs=1e-6)
    finally:
        delete(kube, ns, f"md/{name}", f"explainerspec/{name}")


# --- MLflow ----------------------------------------------------------------------------


def test_mlflow_archive_served_from_the_store(chart_operator: ChartOperator,
                                              tmp_path: Path) -> None:
    """An MLmodel directory saved by MLflow (sklearn flavour, skops serialization: no
    pickle), tar.gz-ed, published to the store and deployed by its digest."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    cols = [n.replace(" (cm)", "").replace(" ", "_") for n in iris.feature_names]
    frame = pd.DataFrame(iris.data, columns=cols)
    lr = LogisticRegression(max_iter=1000, C=0.3).fit(frame, iris.target)
    mlflow.sklearn.save_model(lr, tmp_path / "model",
                              signature=infer_signature(frame, lr.predict(frame)))
    mlmodel = (tmp_path / "model" / "MLmodel").read_text()
    assert "serialization_format: skops" in mlmodel, mlmodel
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "model", arcname="model")
    blob = archive.read_bytes()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    uri = "s3://models/mlflow-iris/1/model.tar.gz"
    s3_client().put_object(Bucket="models", Key=uri.removeprefix("s3://models/"), Body=blob)

    kube, ns, name = chart_operator.kube, chart_operator.models_ns, "iris-mlflow"
    md = real_model(name, ns, uri, digest, replicas=1)
    md["spec"]["model"]["format"] = "mlflow"
    kube.apply(md)
    try:
        ready(kube, name, ns)
        ip = cluster_ip(kube, name, ns)
        rows = np.array(ROWS + iris.data[::17].tolist())
        expected = lr.predict(pd.DataFrame(rows, columns=cols))
        assert len(set(expected.tolist())) > 1
        status, body = answered(ip, f"/v2/models/{name}/infer", {
            "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.reshape(-1).tolist()}],
            "outputs": [{"name": "predict"}, {"name": "predict_proba"}]})
        assert status == 200, body
        out = {o["name"]: o for o in body["outputs"]}
        assert [int(v) for v in out["predict"]["data"]] == expected.tolist()
        proba = np.asarray(out["predict_proba"]["data"]).reshape(out["predict_proba"]["shape"])
        np.testing.assert_allclose(proba, lr.predict_proba(pd.DataFrame(rows, columns=cols)),
                                   atol=1e-6)
        conn = http.client.HTTPConnection(ip, 80, timeout=10)
        try:
            conn.request("GET", f"/v2/models/{name}")
            resp = conn.getresponse()
            meta = json.loads(resp.read())
        finally:
            conn.close()
        assert meta["platform"].startswith("mlflow/sklearn"), meta
    finally:
        delete(kube, ns, f"md/{name}")


# --- XGBoost and LightGBM ---------------------------------------------------------------


def _publish(tmp: Path, name: str, key: str) -> tuple[str, str]:
    """A model file put in the local store: its s3:// URI and sha256 digest."""
    blob = (tmp / name).read_bytes()
    s3_client().put_object(Bucket="models", Key=key, Body=blob)
    return f"s3://models/{key}", "sha256:" + hashlib.sha256(blob).hexdigest()


def test_xgboost_and_lightgbm_native_files_served_from_the_store(
        chart_operator: ChartOperator, tmp_path: Path) -> None:
    """A binary XGBoost classifier saved as UBJSON (.ubj) and a three-class LightGBM
    classifier saved as its text model (.txt), each trained here, published to the store
    and deployed by digest: the pods answer what the trained models answer locally."""
    import lightgbm
    import xgboost
    from sklearn.datasets import load_breast_cancer, load_iris

    bx, by = load_breast_cancer(return_X_y=True)
    xgb = xgboost.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1).fit(bx, by)
    xgb.get_booster().save_model(str(tmp_path / "model.ubj"))
    ix, iy = load_iris(return_X_y=True)
    lgb = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=7, n_jobs=1,
                                  verbose=-1).fit(ix, iy)
    lgb.booster_.save_model(str(tmp_path / "model.txt"))
    xgb_uri, xgb_digest = _publish(tmp_path, "model.ubj", "xgb-cancer/1/model.ubj")
    lgb_uri, lgb_digest = _publish(tmp_path, "model.txt", "lgb-iris/1/model.txt")

    kube, ns = chart_operator.kube, chart_operator.models_ns
    cases = [("cancer-xgb", "xgboost", xgb_uri, xgb_digest, xgb, bx[::23]),
             ("iris-lgbm", "lightgbm", lgb_uri, lgb_digest, lgb, ix[::13])]
    for name, fmt, uri, digest, _, _ in cases:
        md = real_model(name, ns, uri, digest, replicas=1)
        md["spec"]["model"]["format"] = fmt
        kube.apply(md)
    try:
        for name, fmt, _, _, model, rows in cases:
            ready(kube, name, ns)
            expected = model.predict(rows)
            assert len(set(expected.tolist())) > 1, f"{fmt}: the rows cover one class"
            status, body = answered(cluster_ip(kube, name, ns), f"/v2/models/{name}/infer", {
                "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                            "data": rows.reshape(-1).tolist()}],
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}]})
            assert status == 200, (fmt, body)
            out = {o["name"]: o for o in body["outputs"]}
            assert [int(v) for v in out["predict"]["data"]] == expected.tolist(), fmt
            proba = np.asarray(out["predict_proba"]["data"]).reshape(
                out["predict_proba"]["shape"])
            np.testing.assert_allclose(proba, model.predict_proba(rows), rtol=1e-5,
                                       atol=1e-6, err_msg=fmt)
    finally:
        delete(kube, ns, *(f"md/{c[0]}" for c in cases))


# --- Payload logging -------------------------------------------------------------------

# A CloudEvents sink: one JSON line per event on stdout (its ce-* headers), 200 answers on
# a kept-alive HTTP/1.1 connection (the sender pipelines its POSTs).
SINK = """
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        ce = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        print(json.dumps({**ce, "bytes": len(body)}), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
print("sink listening", flush=True)
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"""


def sink_manifests(name: str, ns: str, image: str) -> list[dict[str, Any]]:
    labels = {"app": name}
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                  "runAsNonRoot": True, "runAsUser": 65532,
                  "seccompProfile": {"type": "RuntimeDefault"}}
    return [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns,
                                                         "labels": labels},
         "spec": {"containers": [{
             "name": "sink", "image": image, "imagePullPolicy": "Never",
             "command": ["/opt/kustos/bin/python", "-u", "-c", SINK],
             "ports": [{"containerPort": 8080}],
             "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
             "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                           "limits": {"memory": "128Mi"}},
             "securityContext": restricted}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]


def test_payload_logging_to_an_in_cluster_sink(chart_operator: ChartOperator,
                                               model_store: dict[str, str]) -> None:
    kube, ns, name, sink = (chart_operator.kube, chart_operator.models_ns, "iris-logged",
                            "event-sink")
    image = chart_operator.pod()["spec"]["containers"][0]["image"]
    for doc in sink_manifests(sink, ns, image):
        kube.apply(doc)
    try:
        def sink_ready() -> bool:
            cond = kube.condition("pod", sink, ns, "Ready")
            return bool(cond and cond["status"] == "True")

        wait_for("the sink pod Ready", sink_ready, timeout=180, interval=1)
        # No cluster DNS here: the sink by its ClusterIP.
        sink_ip = cluster_ip(kube, sink, ns)
        kube.apply(real_model(name, ns, IRIS_V1, model_store[IRIS_V1], replicas=1,
                              logging={"sinks": [{"url": f"http://{sink_ip}:80/"}]}))
        ready(kube, name, ns)
        ip = cluster_ip(kube, name, ns)
        ids = []
        for i, row in enumerate(ROWS):
            status, body = (answered if i == 0 else post_json)(
                ip, f"/v2/models/{name}/infer", v2_request([row]))
            assert status == 200, body
            ids.append(body["id"])
        assert len(set(ids)) == len(ids)

        def events() -> dict[str, set[str]] | None:
            log = kube.run("logs", "-n", ns, sink, check=False).stdout
            seen: dict[str, set[str]] = {}
            for line in log.splitlines():
                if line.startswith("{"):
                    event = json.loads(line)
                    seen.setdefault(event.get("ce-id", ""), set()).add(event.get("ce-type"))
            want = {"org.kubeflow.serving.inference.request",
                    "org.kubeflow.serving.inference.response"}
            return seen if all(seen.get(i) == want for i in ids) else None

        try:
            wait_for("request and response events of every prediction at the sink", events,
                     timeout=120, interval=2)
        except AssertionError as err:
            log = kube.run("logs", "-n", ns, sink, "--tail=20", check=False).stdout
            raise AssertionError(f"{err}\nids {ids}\nsink log:\n{log}\n"
                                 f"{diagnose(kube, name, ns)}") from None
        log = kube.run("logs", "-n", ns, sink, check=False).stdout
        event = next(json.loads(line) for line in log.splitlines()
                     if line.startswith("{") and ids[0] in line)
        assert event["ce-specversion"] == "1.0"
        assert event["ce-inferenceservicename"] == name and event["ce-namespace"] == ns
        assert event["ce-source"].startswith(f"/kustos/{ns}/{name}/"), event
        assert event["bytes"] > 0
        # The events left through the pod's payload-log container (kustos payload-relay),
        # not the serving container: it counts them on its own /metrics.
        pod = live_pods(kube, name, ns)[0]
        assert [c["name"] for c in pod["spec"]["containers"]] == ["server", "payload-log"]
        conn = http.client.HTTPConnection(pod["status"]["podIP"], 8092, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        sent = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("kustos_payload_log_events_total{")
                   and 'outcome="sent"' in line)
        assert sent >= 2 * len(ids), text[-2000:]
    finally:
        delete(kube, ns, f"md/{name}", f"pod/{sink}", f"service/{sink}")
