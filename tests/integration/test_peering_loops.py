"""Two real operator replicas in one kopf peering: the sidecar collection loop (a thread
outside kopf's handlers) polls only on the active replica, stops on a replica that a
higher-priority one displaces, and resumes there when the higher one stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from cluster import REPO
from conftest import OPERATOR_LOGS, Kube, Operator, wait_for
from sidecar_helpers import (
    COLLECT_INTERVAL,
    Sidecars,
    containers,
    explainer_spec,
    model_deployment,
    ready_pods_with,
    train_iris,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["sidecar_helpers"]  # fixture sidecars

PEERING_CRDS = REPO / "charts" / "kustos" / "crds" / "kopf.dev_peerings.yaml"
POLLS = "kustos_operator_sidecar_polls_total"
ACTIVE = "kustos_operator_peering_active"


class Peer(Operator):
    """`kustos run --peering NAME --priority P` on one namespace, with its own log."""

    def __init__(self, kubeconfig: Path, peering: str, priority: int, namespace: str,
                 config: Path) -> None:
        super().__init__(kubeconfig)
        self.peering, self.priority, self.namespace, self.config = \
            peering, priority, namespace, config
        self.log_path = OPERATOR_LOGS / f"operator-peer-{peering}-{priority}.log"

    def start(self, namespaces: list[str] | None = None) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
               "KUSTOS_CONFIG": str(self.config)}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            # A glob (matching only this namespace): peering.py resolves it as kopf does.
            [sys.executable, "-m", "kustos.cli", "run", "--namespace", f"{self.namespace}*",
             "--peering", self.peering, "--priority", str(self.priority),
             "--metrics-bind", "127.0.0.1", "--metrics-port", str(self.metrics_port),
             "--liveness", f"http://127.0.0.1:{self.health_port}/healthz"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(f"operator priority {self.priority} liveness", self._live, timeout=60)

    def polls(self) -> float:
        return self.metric(POLLS)

    def active(self) -> bool:
        return self.metric(ACTIVE) == 1


def transition(peer: Peer, state: str) -> str:
    """When (log timestamp) ``peer`` last turned ``state`` in its peering."""
    marker = f"peering {peer.peering}: this replica (priority {peer.priority}) is {state}:"
    times = [line[:23] for line in peer.log_path.read_text().splitlines() if marker in line]
    assert times, f"{peer.log_path} never says {marker!r}"
    return times[-1]


def ensure_peering_crds(kube: Kube) -> None:
    """Kopf's peering CRDs are cluster-scoped and shared: applied when missing, kept."""
    if kube.run("get", "crd", "kopfpeerings.kopf.dev", check=False).returncode != 0:
        kube.run("apply", "--server-side", "--field-manager=kustos-crds", "-f",
                 str(PEERING_CRDS))
        kube.run("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev",
                 "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")


def test_only_the_active_peer_polls_and_the_standby_takes_over(
        kube: Kube, kubeconfig: Path, namespace: str, tmp_path: Path,
        sidecars: Sidecars) -> None:
    ensure_peering_crds(kube)
    name = f"kustos-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                "metadata": {"name": name, "namespace": namespace}})
    config = tmp_path / "operator-config.yaml"
    config.write_text(yaml.safe_dump({"sidecars": {"collect_interval": COLLECT_INTERVAL,
                                                   "collect_timeout": 1.0}}))
    iris = train_iris(tmp_path)
    low = Peer(kubeconfig, name, 100, namespace, config)
    high = Peer(kubeconfig, name, 200, namespace, config)
    try:
        # The low-priority replica alone: it acts, learns the ExplainerSpec and polls.
        low.start()
        wait_for("low replica active", low.active, timeout=30)
        kube.apply(model_deployment("iris", namespace, iris))
        kube.apply(explainer_spec("iris-x", namespace, "iris", iris, max_samples=20))
        side = wait_for("explainer sidecar rendered",
                        lambda: containers(kube, "iris", namespace).get("explainer"))
        pod = ready_pods_with(kube, "iris", namespace, "explainer")[0]
        sidecars.start(side, pod, iris, tmp_path)
        wait_for("low replica polls the sidecar",
                 lambda: low.metric(f'{POLLS}{{result="ok"}}') >= 2, timeout=30)

        # A higher-priority replica joins: the low one becomes standby; its collection
        # thread still knows the ExplainerSpec but must stop polling.
        high.start()
        wait_for("high replica active, low standby",
                 lambda: high.active() and not low.active(), timeout=30)
        wait_for("high replica polls", lambda: high.polls() >= 1, timeout=30)
        low_before, high_before = low.polls(), high.polls()
        time.sleep(5)
        assert low.polls() == low_before, "the standby replica kept polling"
        assert high.polls() >= high_before + 3, "the active replica did not poll every second"
        # No overlap: the low replica stepped down before the high one started acting.
        assert transition(low, "standby") <= transition(high, "active")

        # The active replica stops (it removes its keep-alive): the standby takes over.
        high.stop()
        wait_for("low replica polls again",
                 lambda: low.polls() >= low_before + 2, timeout=30)
        assert low.active()
        peers = (kube.get("kopfpeering", name, namespace) or {}).get("status") or {}
        assert [p["priority"] for p in peers.values()] == [100]
    finally:
        high.stop()
        low.stop()
        kube.run("delete", "kopfpeering", name, "-n", namespace, "--wait=false", check=False)
