"""Signed models on the real node: the fetch init container of the image `make images`
built verifies an OpenSSF model-signing bundle before the server loads the model.

The iris model of the local store is copied under s3://models/signed/ with a bundle made
here by `kustos sign` (a key generated in the test); the public key is a ConfigMap."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import wait_for, wait_ready
from realpods import (
    IRIS_V1,
    ROWS,
    ChartOperator,
    answered,
    cluster_ip,
    live_pods,
    ready_endpoints,
    real_model,
    s3_client,
    v2_request,
    wait_degraded,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

SIGNED = "s3://models/signed/iris.skops"
TAMPERED = "s3://models/signed/tampered.skops"


@dataclass
class Published:
    fingerprint: str
    digest: str  # of the signed model
    tampered_digest: str


def _put(s3: Any, uri: str, blob: bytes) -> None:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=blob)


@pytest.fixture(scope="module")
def published(chart_operator: ChartOperator, model_store: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from kustos.runtime.signing import key_fingerprint

    d = tmp_path_factory.mktemp("signed")
    s3 = s3_client()
    bucket, key = IRIS_V1.removeprefix("s3://").split("/", 1)
    blob = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    (d / "iris.skops").write_bytes(blob)
    private = ec.generate_private_key(ec.SECP256R1())
    (d / "key.pem").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    proc = subprocess.run([sys.executable, "-m", "kustos.cli", "sign", str(d / "iris.skops"),
                           "--key", str(d / "key.pem")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    bundle = (d / "iris.skops.sig").read_bytes()
    _put(s3, SIGNED, blob)
    _put(s3, SIGNED + ".sig", bundle)
    tampered = bytearray(blob)
    tampered[len(tampered) // 2] ^= 0x01
    _put(s3, TAMPERED, bytes(tampered))
    _put(s3, TAMPERED + ".sig", bundle)  # the genuine bundle, for other bytes
    kube, ns = chart_operator.kube, chart_operator.models_ns
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "ml-signing", "namespace": ns},
                "data": {"key.pub": public.decode()}})
    yield Published(key_fingerprint(public), "sha256:" + hashlib.sha256(blob).hexdigest(),
                    "sha256:" + hashlib.sha256(tampered).hexdigest())
    kube.run("delete", "configmap", "ml-signing", "-n", ns, "--wait=false", check=False)


def signed_model(name: str, ns: str, uri: str, digest: str, fingerprint: str | None,
                 ) -> dict[str, Any]:
    md = real_model(name, ns, uri, digest, replicas=1)
    md["spec"]["model"]["signature"] = {"publicKey": {
        "name": "ml-signing", "key": "key.pub",
        **({"fingerprint": fingerprint} if fingerprint else {})}}
    return md


def fetch_message(kube: Any, name: str, ns: str) -> str:
    for pod in live_pods(kube, name, ns):
        for cs in pod["status"].get("initContainerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs["name"] == "fetch-model" and term.get("exitCode") == 0:
                return str(term.get("message") or "")
    return ""


def test_signed_model_serves_and_records_its_signer(chart_operator: ChartOperator,
                                                    published: Published) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    kube.apply(signed_model("signed", ns, SIGNED, published.digest, published.fingerprint))
    try:
        wait_ready(kube, "signed", ns, timeout=300)
        status, body = answered(cluster_ip(kube, "signed", ns),
                                "/v2/models/signed/infer", v2_request(ROWS[:1]))
        assert status == 200 and body["outputs"], body
        md = kube.get("md", "signed", ns)
        assert md is not None
        assert md["status"]["model"]["signer"] == f"key {published.fingerprint}"
        message = wait_for("the fetch's termination message",
                           lambda: fetch_message(kube, "signed", ns) or None, timeout=60)
        assert message.strip() == f"verified signer: key {published.fingerprint}"
    finally:
        kube.run("delete", "md", "signed", "-n", ns, "--wait=false", check=False)


@pytest.mark.parametrize(("name", "uri", "pin", "check"), [
    ("sig-tampered", TAMPERED, True, "tampered model"),
    ("sig-wrong-key", SIGNED, False, "wrong key"),
])
def test_refused_model_is_degraded_and_never_serves(
        chart_operator: ChartOperator, published: Published, name: str, uri: str,
        pin: bool, check: str) -> None:
    kube, ns = chart_operator.kube, chart_operator.models_ns
    digest = published.tampered_digest if uri == TAMPERED else published.digest
    # wrong key: the ConfigMap's key is pinned to another key's fingerprint.
    fingerprint = published.fingerprint if pin else "sha256:" + "0" * 64
    kube.apply(signed_model(name, ns, uri, digest, fingerprint))
    try:
        cond = wait_degraded(kube, name, ns, "ModelFetchFailed")
        assert f"signature verification failed ({check})" in cond["message"], cond
        assert ready_endpoints(kube, name, ns) == []
        md = kube.get("md", name, ns)
        assert md is not None and "signer" not in ((md.get("status") or {}).get("model") or {})
    finally:
        kube.run("delete", "md", name, "-n", ns, "--wait=false", check=False)

