"""Encrypted models on the real node: the fetch init container (the kustos image) logs in
to a real OpenBao with the model's own projected ServiceAccount token (a real TokenReview),
unwraps the data key with Transit and decrypts the model into an in-memory volume; a role
without decrypt on the key leaves the ModelDeployment Degraded, never serving.

The iris model of the local store is encrypted here with `kustos encrypt` and published
under s3://models/encrypted/. Secrets come through sync mode (the session's operator
reads KV; no agent image needed); the same role also allows transit/decrypt/KEY.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NS_PREFIX, OPERATOR_LOGS, Kube, Operator, wait_ready
from openbao import OpenBao, reviewed_openbao
from realpods import (
    BRIDGE_ADDR,
    IRIS_V1,
    RESTRICTED,
    ROWS,
    answered,
    cluster_ip,
    live_pods,
    ready_endpoints,
    real_model,
    require_real_node,
    s3_client,
    store,
    v2_request,
    wait_degraded,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

KEY = "models"
ENCRYPTED = "s3://models/encrypted/iris.skops"


@pytest.fixture(scope="module")
def bao(kube: Kube) -> Iterator[OpenBao]:
    for server in reviewed_openbao(kube, "transit", host=BRIDGE_ADDR):
        c = server.client()
        c.sys.enable_secrets_engine("transit", path="transit")
        c.secrets.transit.create_key(KEY)
        yield server


@pytest.fixture(scope="module")
def real_ns(kube: Kube, operator: Operator, model_store: dict[str, str]) -> Iterator[str]:
    require_real_node(kube)
    name = f"{NS_PREFIX}enc-{uuid.uuid4().hex[:4]}"
    kube.create_namespace(name, kwok=False, labels=RESTRICTED)
    kube.apply(store("secret", "-n", name))
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def published(bao: OpenBao, model_store: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The iris model (plaintext, for the expected predictions), its envelope in the
    store; the root token file is deleted right after encrypting."""
    d = tmp_path_factory.mktemp("encrypted")
    s3 = s3_client()
    bucket, key = IRIS_V1.removeprefix("s3://").split("/", 1)
    (d / "iris.skops").write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    token = d / "root.token"
    token.write_text(str(bao.root_token))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kustos.cli", "encrypt", str(d / "iris.skops"),
             "-o", str(d / "iris.skops.enc"), "--transit-key", KEY,
             "--vault-address", bao.address, "--vault-token-file", str(token)],
            capture_output=True, text=True, timeout=120)
    finally:
        token.unlink()
    assert proc.returncode == 0, proc.stderr
    bucket, key = ENCRYPTED.removeprefix("s3://").split("/", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=(d / "iris.skops.enc").read_bytes())
    yield d / "iris.skops"


def grant(bao: OpenBao, name: str, ns: str, kv: str, decrypt: bool) -> str:
    role = f"{ns}-{name}"
    rules = f'path "secret/data/{kv}" {{ capabilities = ["read"] }}\n'
    if decrypt:
        rules += f'path "transit/decrypt/{KEY}" {{ capabilities = ["update"] }}\n'
    bao.client().sys.create_or_update_policy(role, rules)
    bao.role(role, name, ns, role)
    return role


def encrypted_model(bao: OpenBao, name: str, ns: str, digest: str, kv: str,
                    role: str) -> dict[str, Any]:
    md = real_model(name, ns, ENCRYPTED, digest, replicas=1, secrets={"vault": {
        "mode": "sync", "address": bao.address, "role": role,
        "items": [{"path": f"secret/data/{kv}", "key": "k", "file": "k"}]}})
    md["spec"]["model"]["encryption"] = {"transit": {"keyName": KEY}}
    return md


def test_encrypted_model_decrypts_into_memory_and_serves(
        kube: Kube, bao: OpenBao, real_ns: str, model_store: dict[str, str],
        published: Path) -> None:
    import skops.io as sio

    ns, name = real_ns, "encrypted"
    kv = f"ml/{ns}/{name}"
    bao.put(kv, {"k": "v"})
    role = grant(bao, name, ns, kv, decrypt=True)
    kube.apply(encrypted_model(bao, name, ns, model_store[IRIS_V1], kv, role))
    try:
        wait_ready(kube, name, ns, timeout=300)
        pod = live_pods(kube, name, ns)[0]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["model"]["emptyDir"]["medium"] == "Memory"
        mounts = kube.run("exec", "-n", ns, pod["metadata"]["name"], "-c", "server", "--",
                          "cat", "/proc/mounts").stdout
        assert any(line.split()[1:3] == ["/mnt/models", "tmpfs"]
                   for line in mounts.splitlines()), mounts
        est = sio.load(published, trusted=sio.get_untrusted_types(file=published))
        status, body = answered(cluster_ip(kube, name, ns), f"/v2/models/{name}/infer",
                                v2_request(ROWS))
        assert status == 200, body
        assert body["outputs"][0]["data"] == est.predict(np.array(ROWS)).tolist()
        # No data key (nor token) anywhere a reader of the namespace could look.
        h = _header(published.with_name("iris.skops.enc"))
        plain = bao.client().secrets.transit.decrypt_data(KEY, h)["data"]["plaintext"]
        needles = [plain, base64.b64decode(plain).hex(), str(bao.root_token)]
        log_path = OPERATOR_LOGS / "operator-test.log"
        texts = [log_path.read_text(errors="replace") if log_path.exists() else "",
                 *(json.dumps(kube.list(kind, ns)) for kind in
                   ("events", "modeldeployments", "deployments", "pods"))]
        texts.append(kube.run("logs", "-n", ns, pod["metadata"]["name"], "-c", "fetch-model",
                              check=False).stdout)
        for text in texts:
            for needle in needles:
                assert needle not in text
    finally:
        kube.run("delete", "md", name, "-n", ns, "--wait=false", check=False)


def _header(path: Path) -> str:
    from kustos.runtime import envelope

    with path.open("rb") as fh:
        return envelope.read_header(fh).wrapped_key


def test_role_without_decrypt_is_degraded_and_never_serves(
        kube: Kube, bao: OpenBao, real_ns: str, model_store: dict[str, str],
        published: Path) -> None:
    ns, name = real_ns, "nodecrypt"
    kv = f"ml/{ns}/{name}"
    bao.put(kv, {"k": "v"})
    role = grant(bao, name, ns, kv, decrypt=False)
    kube.apply(encrypted_model(bao, name, ns, model_store[IRIS_V1], kv, role))
    try:
        cond = wait_degraded(kube, name, ns, "ModelFetchFailed")
        assert "cannot unwrap the data key: PermissionDenied" in cond["message"], cond
        assert ready_endpoints(kube, name, ns) == []
    finally:
        kube.run("delete", "md", name, "-n", ns, "--wait=false", check=False)
