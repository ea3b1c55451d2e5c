"""Chaos: the operator SIGKILLed 20 times at random moments while 200 ModelDeployments are
created, scaled and rolled to a new version; then kube-apiserver and etcd restarted while
the rollout is still going. Afterwards every object converges, with one Deployment and one
active ReplicaSet each, no orphan children, and no Event or history entry recorded twice.

Repeatable: the moments come from a seeded random generator (KUSTOS_CHAOS_SEED, printed);
KUSTOS_CHAOS_MODELS and KUSTOS_CHAOS_KILLS scale it down for a quick local run. Pods are
kwok's (no container runs). The wait for convergence is bounded by progress: it fails only
when nothing converges for STALL seconds.
"""

from __future__ import annotations

import collections
import os
import random
import time
from typing import Any

import pytest
import yaml
from cluster import restart_component
from conftest import MODEL_DIGEST, Kube, Operator, kwok_room, model_deployment

MODELS = int(os.environ.get("KUSTOS_CHAOS_MODELS", "200"))
KILLS = int(os.environ.get("KUSTOS_CHAOS_KILLS", "20"))
SEED = int(os.environ.get("KUSTOS_CHAOS_SEED", str(random.SystemRandom().randrange(10**6))))
STALL = 300.0  # seconds without one more object converging: a failure, not slowness
V2_DIGEST = "sha256:" + "2" * 64
MANAGED = "app.kubernetes.io/managed-by=kustos"


def manifests(ns: str, version: str, scaled: set[str]) -> str:
    docs = []
    for i in range(MODELS):
        name = f"c{i:03d}"
        body = model_deployment(name, ns, replicas=2 if name in scaled else 1)
        if version == "2":
            body["spec"]["model"].update(version="2", digest=V2_DIGEST)
        docs.append(body)
    return yaml.safe_dump_all(docs)


def kill(operator: Operator, rng: random.Random, kills: list[float]) -> None:
    """Wait a random moment, SIGKILL the operator, start it again."""
    time.sleep(rng.uniform(0.3, 2.5))
    assert operator.proc is not None
    operator.proc.kill()
    operator.proc.wait(30)
    kills.append(time.monotonic())
    operator.start()


def converged(md: dict[str, Any]) -> bool:
    status = md.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    return (ready.get("status") == "True"
            and status.get("observedGeneration") == md["metadata"]["generation"]
            and (status.get("model") or {}).get("version") == "2"
            and status.get("readyReplicas") == md["spec"]["replicas"])


@pytest.mark.slow
@pytest.mark.disruptive
def test_operator_kills_and_control_plane_restarts_converge_without_duplicates(
        kube: Kube, operator: Operator, namespace: str) -> None:
    rng = random.Random(SEED)
    print(f"chaos seed {SEED}: {MODELS} models, {KILLS} operator kills")
    scaled = {f"c{i:03d}" for i in rng.sample(range(MODELS), MODELS // 4)}
    kills: list[float] = []
    # Room for every pod, with a surge pod per rolling Deployment.
    with kwok_room(kube, 3 * MODELS):
        started = time.monotonic()
        kube.run("apply", "-f", "-", input=manifests(namespace, "1", set()))
        for _ in range(KILLS * 7 // 20):
            kill(operator, rng, kills)
        kube.run("apply", "-f", "-", input=manifests(namespace, "1", scaled))
        for _ in range(KILLS * 6 // 20):
            kill(operator, rng, kills)
        kube.run("apply", "-f", "-", input=manifests(namespace, "2", scaled))
        while len(kills) < KILLS:
            kill(operator, rng, kills)
        restart_component("kube-apiserver")
        restart_component("etcd")
        disrupted = time.monotonic()
        last, progress_at, done = -1, time.monotonic(), 0
        while True:
            mds = kube.list("md", namespace)
            done = sum(1 for md in mds if converged(md))
            if done == MODELS:
                break
            if done > last:
                last, progress_at = done, time.monotonic()
            if time.monotonic() - progress_at > STALL:
                stuck = [md for md in mds if not converged(md)][:3]
                pytest.fail(f"{done}/{MODELS} converged, none more for {STALL:.0f} s "
                            f"(seed {SEED}); e.g. {[m.get('status') for m in stuck]}")
            time.sleep(2)
        converge_s = time.monotonic() - disrupted
        print(f"chaos: {KILLS} kills, apiserver and etcd restarted; all {MODELS} converged "
              f"{converge_s:.1f} s after the last disruption, {time.monotonic() - started:.1f} "
              "s in all")
        _check_children(kube, namespace, mds, scaled)


def _check_children(kube: Kube, ns: str, mds: list[dict[str, Any]], scaled: set[str]) -> None:
    uids = {md["metadata"]["uid"]: md["metadata"]["name"] for md in mds}
    # One of each child per model, owned by it; nothing Kustos labelled without a live owner.
    for kind in ("deployments", "services", "networkpolicies"):
        per_owner: collections.Counter[str] = collections.Counter()
        for obj in kube.list(kind, ns, MANAGED):
            owners = [r for r in obj["metadata"].get("ownerReferences") or []
                      if r.get("controller")]
            assert len(owners) == 1 and owners[0]["uid"] in uids, \
                f"orphan {kind} {obj['metadata']['name']}: {owners}"
            assert obj["metadata"]["name"] == uids[owners[0]["uid"]]
            per_owner[owners[0]["uid"]] += 1
        assert per_owner == {uid: 1 for uid in uids}, kind
    # (no ServiceAccounts: these models do not log in to Vault)
    assert kube.list("serviceaccounts", ns, MANAGED) == []
    deployments = {d["metadata"]["name"]: d for d in kube.list("deployments", ns, MANAGED)}
    for md in mds:
        name = md["metadata"]["name"]
        want = 2 if name in scaled else 1
        assert deployments[name]["spec"]["replicas"] == want
        notes = deployments[name]["spec"]["template"]["metadata"]["annotations"]
        assert notes["kustos.dev/model-version"] == "2"
    # One active ReplicaSet per Deployment (the version-1 one, if it was made, scaled to 0).
    active: collections.Counter[str] = collections.Counter()
    for rs in kube.list("replicasets", ns):
        owner = (rs["metadata"].get("ownerReferences") or [{}])[0].get("name")
        assert owner in deployments, f"ReplicaSet {rs['metadata']['name']} of {owner}"
        if rs["spec"].get("replicas", 0) > 0:
            active[owner] += 1
    assert active == {name: 1 for name in deployments}
    # Events and history recorded once: a write that lands once posts once; a kill between
    # the write and the post loses an Event, never doubles it.
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for event in kube.list("events", ns):
        if event["involvedObject"].get("kind") == "ModelDeployment":
            counts[(event["involvedObject"].get("name", ""), event["reason"])] += \
                int(event.get("count") or 1)
    for md in mds:
        name = md["metadata"]["name"]
        assert counts[(name, "ModelVersionChanged")] <= 1, (name, counts)
        history = md["status"].get("history") or []
        assert len(history) <= 1, (name, history)
        assert all(h["version"] == "1" and h["digest"] == MODEL_DIGEST for h in history)
