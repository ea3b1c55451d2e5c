"""An alias move in MLflow rolls out (issue 13): a ModelDeployment with
spec.model.uri models:/NAME@champion and spec.rollout, on the real control plane with the
operator process from this tree and a real MLflow server on loopback. When the alias
moves from version 1 to 2, the registry controller records the new resolution in
status.registry, the rollout controller takes it as the candidate (version 1's resolution
stays the stable one) and the render runs both tracks. kwok pods serve nothing, so the
gates stay inconclusive: what is shown is that the move starts the gated rollout, and an
abort then records the rolled-back version in status.history."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Kube, Operator, wait_for

from registry.mlflow_server import MlflowServer, mlflow_server, moto_s3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

NAME = "kwok-rollout-iris"
MD = "champ"


@pytest.fixture(scope="module")
def mlflow() -> Iterator[MlflowServer]:
    with moto_s3() as s3, mlflow_server(s3) as srv:
        yield srv


@pytest.fixture(scope="module")
def versions(mlflow: MlflowServer) -> list[dict[str, Any]]:
    """Two pickled versions with their kustos.dev/sha256 tags, alias champion -> v1."""
    return mlflow.register_champion_pair(NAME)


def rolled_md(namespace: str, url: str) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": MD, "namespace": namespace},
            "spec": {"model": {"version": "0", "uri": f"models:/{NAME}@champion",
                               "format": "sklearn",
                               "registry": {"url": url, "pollInterval": "10s"}},
                     "replicas": 2,
                     "rollout": {
                         "shadow": {"duration": "1h", "samplePercent": 50},
                         "steps": [{"weight": 20, "duration": "1h"},
                                   {"weight": 100, "duration": "1h"}],
                         "analysis": {"interval": "5s", "minSamples": 10,
                                      "thresholds": {"maxErrorRateIncrease": 0.01}}}}}


def status_of(kube: Kube, namespace: str) -> dict[str, Any]:
    return dict(((kube.get("md", MD, namespace) or {}).get("status")) or {})


def fetched(kube: Kube, name: str, namespace: str) -> tuple[str, str] | None:
    """(model file URI, digest) the Deployment's fetch-model init container reads."""
    deployment = kube.get("deployment", name, namespace)
    if deployment is None:
        return None
    init = deployment["spec"]["template"]["spec"]["initContainers"]
    args: list[str] = next(c for c in init if c["name"] == "fetch-model")["args"]
    return args[1], args[args.index("--digest") + 1]


def test_an_alias_move_starts_a_gated_rollout(kube: Kube, operator: Operator,
                                              namespace: str, mlflow: MlflowServer,
                                              versions: list[dict[str, Any]]) -> None:
    ns = namespace
    v1, v2 = versions
    kube.apply(rolled_md(ns, mlflow.url))

    # Version 1's resolution is the first model: the stable one, nothing rolling out.
    st = wait_for("status.rollout Idle with version 1 stable", lambda: (
        (s := status_of(kube, ns)).get("rollout", {}).get("phase") == "Idle"
        and s.get("registry", {}).get("version") == "1" and s), timeout=180, interval=1)
    reg1 = st["registry"]
    assert reg1["digest"] == f"sha256:{v1['sha256']}"
    stable = st["rollout"]["stable"]
    assert (stable["uri"], stable["version"], stable["digest"]) == \
        (reg1["source"], "1", reg1["digest"])
    assert fetched(kube, MD, ns) == (reg1["source"], reg1["digest"])
    assert kube.get("deployment", f"{MD}-canary", ns) is None

    # The alias moves: the next poll resolves version 2, which becomes the candidate.
    mlflow.rest("registered-models/alias", {"name": NAME, "alias": "champion",
                                            "version": "2"})
    st = wait_for("status.rollout Shadow with version 2 the candidate", lambda: (
        (s := status_of(kube, ns)).get("rollout", {}).get("phase") == "Shadow"
        and s["rollout"].get("candidate", {}).get("version") == "2" and s),
        timeout=120, interval=1)
    reg2 = st["registry"]
    assert reg2["version"] == "2" and reg2["digest"] == f"sha256:{v2['sha256']}"
    assert reg2["source"] != reg1["source"]
    rollout = st["rollout"]
    assert (rollout["candidate"]["uri"], rollout["candidate"]["digest"]) == \
        (reg2["source"], reg2["digest"])
    assert rollout["stable"] == stable, "the stable track stays version 1's resolution"
    assert rollout["weight"] == 0

    # The render: stable pods fetch version 1's file, the candidate's pods version 2's.
    wait_for("stable on version 1, candidate on version 2", lambda: (
        fetched(kube, MD, ns) == (reg1["source"], reg1["digest"])
        and fetched(kube, f"{MD}-canary", ns) == (reg2["source"], reg2["digest"])),
        timeout=60)
    candidate_svc = kube.get("service", f"{MD}-candidate", ns)
    assert candidate_svc is not None
    assert candidate_svc["spec"]["selector"].get("kustos.dev/track") == "canary"
    wait_for("Progressing says shadow of version 2", lambda: (c := kube.condition(
        "md", MD, ns, "Progressing")) and c["status"] == "True"
        and c["message"] == "rolling out version 2: shadow", timeout=60)
    # version 1 is still what every caller gets: status.model did not move
    assert status_of(kube, ns)["model"]["version"] == "1"
    events: list[dict[str, Any]] = kube.events(ns, MD)
    assert any(e["reason"] == "RolloutStarted" for e in events)

    # An abort rolls version 2 back: a status.history entry `kustos rollback` skips.
    kube.run("annotate", "md", MD, "-n", ns, "--overwrite",
             "kustos.dev/rollout-action=abort")
    history = wait_for("a RolledBack history entry", lambda: (
        h := status_of(kube, ns).get("history") or []) and h[0].get("event") == "RolledBack"
        and h, timeout=90, interval=1)
    entry = history[0]
    assert (entry["version"], entry["uri"], entry["digest"]) == \
        ("2", reg2["source"], reg2["digest"])
    assert entry["message"].startswith("aborted by kustos.dev/rollout-action")
    assert entry["rolledBackAt"]
    wait_for("the candidate removed, version 1 alone", lambda: (
        kube.get("deployment", f"{MD}-canary", ns) is None
        and fetched(kube, MD, ns) == (reg1["source"], reg1["digest"])), timeout=60)
