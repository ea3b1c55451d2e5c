"""spec.rollout on the real control plane (kwok pods, the operator process from this tree):
the API server's CEL rules, and the rollout controller's phases, children, conditions,
Events and manual actions. The pods are kwok's (no model runs), so no analysis passes:
the gates' figures are tested with real model servers in test_rollout_live.py."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from typing import Any

import pytest
import yaml
from conftest import MODEL_DIGEST, Kube, Operator, model_deployment, wait_for

pytestmark = pytest.mark.integration

V2_DIGEST = "sha256:" + "fedcba9876543210" * 4
ROLLOUT = {"shadow": {"duration": "1h", "samplePercent": 40},
           "steps": [{"weight": 20, "duration": "1h"}, {"weight": 100, "duration": "1h"}],
           "analysis": {"interval": "5s", "minSamples": 10,
                        "thresholds": {"maxErrorRateIncrease": 0.01}}}


def rolled(name: str, namespace: str, **rollout: Any) -> dict[str, Any]:
    md = model_deployment(name, namespace, rollout={**copy.deepcopy(ROLLOUT), **rollout})
    return md


def refused(kube: Kube, manifest: dict[str, Any]) -> str:
    proc = kube.run("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(manifest),
                    check=False)
    assert proc.returncode != 0, "the API server accepted it"
    return proc.stderr


def test_the_api_server_refuses_bad_rollouts(kube: Kube, namespace: str) -> None:
    base = rolled("bad", namespace)
    kube.run("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(base))
    both = copy.deepcopy(base)
    both["spec"]["canary"] = {"model": {"version": "2", "uri": "s3://models/iris/2.skops"},
                              "trafficPercent": 10}
    err = refused(kube, both)
    assert "spec.rollout" in err and "mutually exclusive" in err
    down = copy.deepcopy(base)
    down["spec"]["rollout"]["steps"] = [{"weight": 50}, {"weight": 20}]
    err = refused(kube, down)
    assert "spec.rollout.steps" in err and "strictly increasing" in err
    twice = copy.deepcopy(base)
    twice["spec"]["rollout"]["steps"] = [{"weight": 50}, {"weight": 50}]
    assert "strictly increasing" in refused(kube, twice)
    zero = copy.deepcopy(base)
    zero["spec"]["rollout"]["steps"] = [{"weight": 0}]
    assert "spec.rollout.steps[0].weight" in refused(kube, zero)


def rollout_of(kube: Kube, name: str, ns: str) -> dict[str, Any]:
    md = kube.get("md", name, ns) or {}
    return dict((md.get("status") or {}).get("rollout") or {})


def wait_phase(kube: Kube, name: str, ns: str, phase: str,
               timeout: float = 90) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        f"md/{name} rollout phase {phase}",
        lambda: (st := rollout_of(kube, name, ns)).get("phase") == phase and st,
        timeout=timeout)
    return result


def new_version(kube: Kube, name: str, ns: str) -> None:
    kube.run("patch", "md", name, "-n", ns, "--type", "merge", "-p", yaml.safe_dump(
        {"spec": {"model": {"version": "2", "uri": "s3://models/iris/2/model.skops",
                            "digest": V2_DIGEST}}}))


def kustos(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    """The `kustos` command with the test cluster's kubeconfig."""
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "kustos.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def annotate(kube: Kube, name: str, ns: str, action: str) -> None:
    kube.run("annotate", "md", name, "-n", ns, "--overwrite",
             f"kustos.dev/rollout-action={action}")


def test_shadow_pause_abort_on_the_control_plane(kube: Kube, operator: Operator,
                                                 namespace: str) -> None:
    ns = namespace
    kube.apply(rolled("iris", ns, shadow={"duration": "1h", "samplePercent": 40}))
    st = wait_phase(kube, "iris", ns, "Idle")
    assert st["stable"] == {"uri": "s3://models/iris/model.skops", "digest": MODEL_DIGEST,
                            "version": "1", "format": "sklearn"}
    new_version(kube, "iris", ns)
    st = wait_phase(kube, "iris", ns, "Shadow")
    assert st["candidate"]["version"] == "2" and st["weight"] == 0

    def shadow_children() -> bool:
        canary = kube.get("deployment", "iris-canary", ns)
        stable = kube.get("deployment", "iris", ns)
        svc = kube.get("service", "iris-candidate", ns)
        main = kube.get("service", "iris", ns)
        if not (canary and stable and svc and main):
            return False
        args = stable["spec"]["template"]["spec"]["containers"][0]["args"]
        notes = canary["spec"]["template"]["metadata"]["annotations"]
        return ("--shadow-url" in args and notes["kustos.dev/model-version"] == "2"
                and stable["spec"]["template"]["metadata"]["annotations"][
                    "kustos.dev/model-version"] == "1"
                and main["spec"]["selector"].get("kustos.dev/track") == "stable"
                and svc["spec"]["selector"].get("kustos.dev/track") == "canary")
    wait_for("the shadow's children", shadow_children, timeout=60)
    wait_for("Progressing says shadow", lambda: (c := kube.condition(
        "md", "iris", ns, "Progressing")) and c["status"] == "True"
        and c["message"] == "rolling out version 2: shadow", timeout=60)

    shown = kustos(kube, "rollout", "status", "iris", "-n", ns)
    assert shown.returncode == 0, shown.stderr
    assert "phase:     Shadow" in shown.stdout and "candidate: version 2" in shown.stdout
    paused = kustos(kube, "rollout", "pause", "iris", "-n", ns)  # the command, this time
    assert paused.returncode == 0, paused.stderr
    st = wait_phase(kube, "iris", ns, "Paused")
    assert st["pausedFrom"] == "Shadow" and st["lastAction"] == "pause"
    wait_for("the action annotation consumed", lambda: "kustos.dev/rollout-action" not in (
        (kube.get("md", "iris", ns) or {})["metadata"].get("annotations") or {}), timeout=30)

    missing = kustos(kube, "rollout", "abort", "nobody", "-n", ns)
    assert missing.returncode == 1 and "not found" in missing.stderr
    annotate(kube, "iris", ns, "abort")
    st = wait_phase(kube, "iris", ns, "RolledBack")
    assert st["weight"] == 0 and st["stable"]["version"] == "1"
    wait_for("Degraded RolledBack", lambda: (c := kube.condition(
        "md", "iris", ns, "Degraded")) and c["status"] == "True"
        and c["reason"] == "RolledBack", timeout=60)
    wait_for("the candidate removed", lambda: kube.get("deployment", "iris-canary", ns)
             is None and kube.get("service", "iris-candidate", ns) is None, timeout=60)
    events = {e["reason"]: e for e in kube.events(ns, "iris")}
    assert events["RolloutAborted"]["type"] == "Warning"
    assert {"RolloutStarted", "RolloutPaused"} <= set(events)
    # the reconcile's status records the rolled-back candidate in status.history
    history = wait_for("a RolledBack history entry", lambda: (
        h := ((kube.get("md", "iris", ns) or {}).get("status") or {}).get("history") or [])
        and h[0].get("event") == "RolledBack" and h, timeout=60)
    assert (history[0]["version"], history[0]["digest"]) == ("2", V2_DIGEST)
    assert history[0]["message"].startswith("aborted by kustos.dev/rollout-action")
    assert not any(h.get("event") for h in history[1:])


def test_an_action_without_a_rollout_is_refused_and_removed(kube: Kube, operator: Operator,
                                                           namespace: str) -> None:
    # kubectl annotate needs no spec.rollout (the kustos command refuses): the annotation
    # must not stay to act on a rollout added later
    kube.apply(model_deployment("plain", namespace))
    wait_for("md/plain Ready", lambda: (c := kube.condition("md", "plain", namespace, "Ready"))
             and c["status"] == "True", timeout=90)
    annotate(kube, "plain", namespace, "promote")
    warning = wait_for("a RolloutActionIgnored Event", lambda: [
        e for e in kube.events(namespace, "plain") if e["reason"] == "RolloutActionIgnored"],
        timeout=60)
    assert warning[0]["type"] == "Warning"
    assert warning[0]["message"] == ("kustos.dev/rollout-action: 'promote' ignored: "
                                     "spec.rollout is not set; removed")
    wait_for("the action annotation removed", lambda: "kustos.dev/rollout-action" not in (
        (kube.get("md", "plain", namespace) or {})["metadata"].get("annotations") or {}),
        timeout=30)
    assert not rollout_of(kube, "plain", namespace)


def test_manual_promotion_serves_the_candidate_and_records_history(
        kube: Kube, operator: Operator, namespace: str) -> None:
    ns = namespace
    kube.apply(rolled("iris", ns))
    wait_phase(kube, "iris", ns, "Idle")
    wait_for("v1 served", lambda: ((kube.get("md", "iris", ns) or {}).get("status") or {})
             .get("model", {}).get("version") == "1", timeout=90)
    new_version(kube, "iris", ns)
    wait_phase(kube, "iris", ns, "Shadow")
    annotate(kube, "iris", ns, "promote")
    st = wait_phase(kube, "iris", ns, "Promoted")
    assert st["stable"]["version"] == "2" and st["lastAction"] == "promote"

    def served() -> dict[str, Any] | None:
        md = kube.get("md", "iris", ns) or {}
        status = md.get("status") or {}
        ok = (status.get("model") or {}).get("version") == "2" and \
            kube.get("deployment", "iris-canary", ns) is None
        return status if ok else None
    status = wait_for("v2 served by the one Deployment", served, timeout=120)
    assert status["history"][0]["version"] == "1"
