"""Registry credentials from Vault (issue 13): the registry client has no Vault login of
its own; the route is the Secret `<name>-vault` that Vault sync mode writes, named by
spec.model.registry.credentialsSecretRef (docs/registry.md, "Credentials" and "Limits").

A real MLflow server with its basic-auth app (`--app-name basic-auth`) and a read-only
user, a real OpenBao server holding that user's name and password at a KV v2 path, the
real operator process (`kustos run`, on this host, so it reaches both on loopback) and
kwok pods. OpenBao first holds a wrong password: the Secret is synced, the registry
refuses it (RegistryUnauthorized, nothing rendered). The password is rotated in OpenBao
only: the Vault refresh rewrites the Secret, the next registry poll resolves the alias,
and the ModelDeployment recovers. An alias move is then resolved with the same
credentials. Neither password shows in the status, the Events or the operator's log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Kube, Operator, wait_for, wait_ready
from openbao import OpenBao, reviewed_openbao
from test_registry_kwok import fetch_args, reasons, registry_status
from test_vault import assert_nowhere, grant, secret_files

from registry.mlflow_server import MlflowServer, mlflow_server, moto_s3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

NAME = "kwok-vault-iris"  # the registered model
MD = "guarded"  # the ModelDeployment; Vault sync writes Secret guarded-vault
READER = "kustos-reader"  # an MLflow user that may only read (default_permission READ)


@pytest.fixture(scope="module")
def mlflow() -> Iterator[MlflowServer]:
    with moto_s3() as s3, mlflow_server(s3, basic_auth=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def versions(mlflow: MlflowServer) -> list[dict[str, Any]]:
    """Two pickled versions with their kustos.dev/sha256 tags, alias champion -> v1
    (registered as MLflow's admin, whose password never leaves this process)."""
    pair: list[dict[str, Any]] = mlflow.register_champion_pair(NAME)
    return pair


@pytest.fixture(scope="module")
def reader_password(mlflow: MlflowServer) -> str:
    """The read-only user's password, set by the admin through MLflow's auth REST API."""
    password = f"mlflow-{uuid.uuid4().hex}"
    mlflow.rest("users/create", {"username": READER, "password": password})
    return password


@pytest.fixture(scope="module")
def bao(kube: Kube) -> Iterator[OpenBao]:
    yield from reviewed_openbao(kube, "registry")


def guarded_md(namespace: str, mlflow_url: str, bao: OpenBao, role: str,
               kv_path: str) -> dict[str, Any]:
    """models:/NAME@champion, polled every 10 s (the least allowed) with the credentials
    of the Secret the Vault sync (refreshed every 5 s, the least allowed) writes."""
    items = [{"path": kv_path, "key": key, "file": key} for key in ("username", "password")]
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": MD, "namespace": namespace},
            "spec": {"model": {"version": "0", "uri": f"models:/{NAME}@champion",
                               "format": "sklearn",
                               "registry": {"url": mlflow_url, "pollInterval": "10s",
                                            "credentialsSecretRef": {"name": f"{MD}-vault"}}},
                     "replicas": 1,
                     "secrets": {"vault": {"mode": "sync", "address": bao.address,
                                           "role": role, "refreshInterval": "5s",
                                           "items": items}}}}


def resolved_condition(kube: Kube, namespace: str, status: str,
                       reason: str | None = None) -> dict[str, Any]:
    """RegistryResolved once it has ``status`` (and ``reason``) for the current spec."""
    def check() -> dict[str, Any] | None:
        md = kube.get("md", MD, namespace) or {}
        for c in (md.get("status") or {}).get("conditions") or []:
            if c["type"] == "RegistryResolved" and c["status"] == status and \
                    (reason is None or c["reason"] == reason) and \
                    c.get("observedGeneration") == md["metadata"]["generation"]:
                return dict(c)
        return None
    found: dict[str, Any] = wait_for(f"RegistryResolved={status} {reason or ''}", check,
                                     timeout=180, interval=1)
    return found


def test_registry_credentials_synced_from_vault(kube: Kube, operator: Operator, bao: OpenBao,
                                                namespace: str, mlflow: MlflowServer,
                                                versions: list[dict[str, Any]],
                                                reader_password: str) -> None:
    ns = namespace
    v1, v2 = versions
    kv = f"ml/{ns}/mlflow"
    kv_path = f"secret/data/{kv}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    assert bao.put(kv, {"username": READER, "password": wrong}) == 1
    role = grant(bao, MD, ns, kv_path)
    kube.apply(guarded_md(ns, mlflow.url, bao, role, kv_path))

    # The sync writes the wrong password; the registry refuses it and nothing is rendered.
    wait_for("the synced Secret with the wrong password", lambda: (
        kube.get("secret", f"{MD}-vault", ns) is not None
        and secret_files(kube, MD, ns) == {"username": READER, "password": wrong}),
        timeout=120, interval=1)
    cond = resolved_condition(kube, ns, "False", "RegistryUnauthorized")
    assert "credentials rejected" in cond["message"]
    degraded = wait_for("Degraded RegistryUnauthorized", lambda: (
        (c := kube.condition("md", MD, ns, "Degraded")) and c["status"] == "True"
        and c["reason"] == "RegistryUnauthorized" and c), timeout=120, interval=1)
    assert degraded
    ready = kube.condition("md", MD, ns, "SecretsReady")
    assert ready is not None and ready["status"] == "True", "Vault itself answered"
    assert not registry_status(kube, MD, ns)
    assert kube.get("deployment", MD, ns) is None
    assert any(r.startswith("RegistryUnauthorized") for r in reasons(kube, ns, MD))

    # Rotated in OpenBao only: the refresh rewrites the Secret, the next poll resolves.
    assert bao.put(kv, {"username": READER, "password": reader_password}) == 2
    wait_for("the rotated password in the Secret and version 2 in status.secrets", lambda: (
        secret_files(kube, MD, ns)["password"] == reader_password
        and (kube.get("md", MD, ns) or {}).get("status", {}).get("secrets", {})
        .get("versions") == [{"path": kv_path, "version": 2}]), timeout=120, interval=1)
    md = wait_ready(kube, MD, ns, timeout=240)
    reg = md["status"]["registry"]
    assert (reg["name"], reg["alias"], reg["version"]) == (NAME, "champion", "1")
    assert reg["digest"] == f"sha256:{v1['sha256']}"
    assert fetch_args(kube, MD, ns)[1] == reg["source"]
    wait_for("Degraded cleared", lambda: (
        (c := kube.condition("md", MD, ns, "Degraded")) and c["status"] == "False"),
        timeout=120, interval=1)
    wait_for("RegistryRecovered and SecretRotated Events", lambda: (
        {"RegistryRecovered", "SecretRotated"}
        <= {r.split(":")[0] for r in reasons(kube, ns, MD)}), timeout=60, interval=1)

    # Every poll reads the Secret again: an alias move is resolved with the same route.
    mlflow.rest("registered-models/alias", {"name": NAME, "alias": "champion",
                                            "version": "2"})
    wait_for("status.registry at version 2",
             lambda: registry_status(kube, MD, ns).get("version") == "2",
             timeout=180, interval=1)
    assert registry_status(kube, MD, ns)["digest"] == f"sha256:{v2['sha256']}"
    resolved_condition(kube, ns, "True", "Resolved")

    # Neither password (nor its base64, nor the basic-auth header's pair) shows in the
    # operator's log, the Events, the ModelDeployment, its Deployment or Secret metadata.
    assert_nowhere(kube, ns, [wrong, reader_password, f"{READER}:{wrong}",
                              f"{READER}:{reader_password}"])
