"""models:/ URIs end to end on the real control plane: the real operator process (`kustos
run`, on this host, so it reaches a real MLflow server on loopback) resolves an alias,
renders the fetch of the resolved file with its digest (kwok pods: nothing is fetched),
follows an alias move, holds the render back for an alias that does not exist, and keeps
the last good resolution while the alias is gone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from conftest import Kube, Operator, wait_for, wait_ready

from registry.mlflow_server import MlflowServer, mlflow_server, moto_s3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

NAME = "kwok-iris"


@pytest.fixture(scope="module")
def mlflow() -> Iterator[MlflowServer]:
    with moto_s3() as s3, mlflow_server(s3) as srv:
        yield srv


@pytest.fixture(scope="module")
def versions(mlflow: MlflowServer) -> list[dict[str, Any]]:
    """Two pickled versions with their kustos.dev/sha256 tags, alias champion -> v1."""
    return mlflow.register_champion_pair(NAME)


def registry_md(name: str, namespace: str, uri: str, url: str) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"version": "0", "uri": uri, "format": "sklearn",
                               "registry": {"url": url, "pollInterval": "10s"}},
                     "replicas": 2}}


def fetch_args(kube: Kube, name: str, namespace: str) -> list[str]:
    deployment = kube.get("deployment", name, namespace)
    assert deployment is not None
    init = deployment["spec"]["template"]["spec"]["initContainers"]
    args: list[str] = next(c for c in init if c["name"] == "fetch-model")["args"]
    return args


def registry_status(kube: Kube, name: str, namespace: str) -> dict[str, Any]:
    md = kube.get("md", name, namespace) or {}
    found: dict[str, Any] = (md.get("status") or {}).get("registry") or {}
    return found


def reasons(kube: Kube, namespace: str, name: str) -> list[str]:
    events: list[dict[str, Any]] = kube.events(namespace, name)
    return [f"{e['reason']}: {e.get('message', '')}" for e in events]


def test_alias_resolved_moved_gone_and_back(kube: Kube, operator: Operator, namespace: str,
                                            mlflow: MlflowServer,
                                            versions: list[dict[str, Any]]) -> None:
    v1, v2 = versions
    kube.apply(registry_md("reg", namespace, f"models:/{NAME}@champion", mlflow.url))
    md = wait_ready(kube, "reg", namespace, timeout=180)
    reg = md["status"]["registry"]
    assert (reg["name"], reg["alias"], reg["version"]) == (NAME, "champion", "1")
    assert reg["digest"] == f"sha256:{v1['sha256']}" and reg["runId"] == v1["runId"]
    assert reg["source"].startswith(f"{mlflow.url}/api/2.0/mlflow-artifacts/artifacts/")
    assert reg["source"].endswith("/model.pkl")
    args = fetch_args(kube, "reg", namespace)
    assert args[1] == reg["source"]
    assert args[args.index("--digest") + 1] == reg["digest"]
    assert (md["status"]["model"]["version"], md["status"]["model"]["uri"]) == \
        ("1", reg["source"])
    wait_for("a ModelResolved Event",
             lambda: any(r.startswith("ModelResolved") for r in reasons(kube, namespace, "reg")))

    # The alias moves: the next poll (10 s) resolves v2 and the pods roll to its file.
    mlflow.rest("registered-models/alias", {"name": NAME, "alias": "champion",
                                            "version": "2"})
    wait_for("status.registry at version 2",
             lambda: registry_status(kube, "reg", namespace).get("version") == "2",
             timeout=120, interval=1)
    reg2 = registry_status(kube, "reg", namespace)
    assert reg2["digest"] == f"sha256:{v2['sha256']}" and reg2["source"] != reg["source"]
    wait_for("the Deployment fetching version 2",
             lambda: fetch_args(kube, "reg", namespace)[1] == reg2["source"], timeout=60)
    wait_for("status.model at version 2", lambda: (
        (kube.get("md", "reg", namespace) or {}).get("status", {}).get("model", {})
        .get("version") == "2"), timeout=120)
    wait_for("a ModelAliasMoved Event", lambda: any(
        r == f"ModelAliasMoved: models:/{NAME}@champion moved from version 1 to 2"
        for r in reasons(kube, namespace, "reg")))

    # The alias is deleted: Degraded with the reason, the last resolution still served.
    mlflow.rest("registered-models/alias", {"name": NAME, "alias": "champion"}, "DELETE")
    cond = wait_for("Degraded ModelVersionNotFound", lambda: (
        (c := kube.condition("md", "reg", namespace, "Degraded")) and c["status"] == "True"
        and c["reason"] == "ModelVersionNotFound" and c), timeout=120, interval=1)
    assert "champion" in cond["message"]
    assert registry_status(kube, "reg", namespace)["version"] == "2"
    assert fetch_args(kube, "reg", namespace)[1] == reg2["source"]
    resolved = kube.condition("md", "reg", namespace, "RegistryResolved")
    assert resolved is not None and resolved["status"] == "False"

    # Back to v1: Degraded clears, version 1 is served again.
    mlflow.rest("registered-models/alias", {"name": NAME, "alias": "champion",
                                            "version": "1"})
    wait_for("Degraded cleared", lambda: (
        (c := kube.condition("md", "reg", namespace, "Degraded")) and c["status"] == "False"),
        timeout=120, interval=1)
    wait_for("the Deployment fetching version 1 again",
             lambda: fetch_args(kube, "reg", namespace)[1] == reg["source"], timeout=60)


def test_an_alias_that_does_not_exist_creates_no_pods(kube: Kube, operator: Operator,
                                                     namespace: str, mlflow: MlflowServer,
                                                     versions: list[dict[str, Any]]) -> None:
    kube.apply(registry_md("nobody", namespace, f"models:/{NAME}@nobody", mlflow.url))
    wait_for("Degraded ModelVersionNotFound", lambda: (
        (c := kube.condition("md", "nobody", namespace, "Degraded")) and c["status"] == "True"
        and c["reason"] == "ModelVersionNotFound"), timeout=120, interval=1)
    assert kube.get("deployment", "nobody", namespace) is None
    assert not registry_status(kube, "nobody", namespace)
    # Pointing the spec at an alias that exists resolves it and creates the pods.
    kube.apply(registry_md("nobody", namespace, f"models:/{NAME}/1", mlflow.url))
    md = wait_ready(kube, "nobody", namespace, timeout=180)
    assert md["status"]["registry"]["version"] == "1"
    assert "alias" not in md["status"]["registry"]


def test_the_api_server_checks_registry_uris(kube: Kube, namespace: str) -> None:
    """The CRD's pattern and CEL rules, by a server-side dry run (no operator needed)."""
    def dry_run(model: dict[str, Any]) -> str:
        md = {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
              "metadata": {"name": "check", "namespace": namespace},
              "spec": {"model": {"version": "1", **model}}}
        proc = kube.run("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(md),
                        check=False)
        return proc.stderr if proc.returncode else ""

    registry = {"url": "http://127.0.0.1:5000"}
    assert "a models:/ URI needs spec.model.registry" in dry_run(
        {"uri": "models:/iris@champion"})
    assert "spec.model.registry is for models:/ URIs" in dry_run(
        {"uri": "s3://models/iris/model.onnx", "format": "onnx", "registry": registry})
    assert "spec.model.uri" in dry_run({"uri": "models:/iris", "registry": registry})
    assert "registry.url" in dry_run({"uri": "models:/iris@a",
                                      "registry": {"url": "http://u:p@mlflow:5000"}})
    # The file checks of a format wait for the resolution: no extension to check here.
    assert dry_run({"uri": "models:/iris@champion", "format": "onnx",
                    "registry": registry}) == ""
    assert dry_run({"uri": "models:/iris/3", "format": "sklearn", "registry": registry}) == ""
