"""ExplainerSpec end to end: the real operator wires the explainer into its target's pods,
and reports what the real `kustos explain` sidecar (bound on the pod's IP) computes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Kube, Operator, wait_for
from sidecar_helpers import (
    Sidecars,
    containers,
    explainer_spec,
    model_deployment,
    ready_pods_with,
    wait_condition,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["sidecar_helpers"]  # fixtures iris, fast, sidecars


def server_args(kube: Kube, md: str, ns: str) -> list[str]:
    args: list[str] = containers(kube, md, ns)["server"]["args"]
    return args


def test_explainer_follows_the_explainerspec(kube: Kube, fast: Operator, namespace: str,
                                             iris: dict[str, Any]) -> None:
    kube.apply(model_deployment("iris", namespace, iris))
    wait_for("Deployment", lambda: "server" in containers(kube, "iris", namespace))
    assert "explainer" not in containers(kube, "iris", namespace)
    kube.apply(explainer_spec("iris-x", namespace, "iris", iris))
    side = wait_for("explainer sidecar", lambda: containers(kube, "iris", namespace).get(
        "explainer"))
    args = server_args(kube, "iris", namespace)
    assert args[args.index("--explainer-url") + 1] == "http://127.0.0.1:8090"
    assert side["args"][:2] == ["explain", "--model"]
    assert side["readinessProbe"]["httpGet"]["path"] == "/v2/health/live"
    es = wait_for("endpoint", lambda: (o := kube.get("explainerspec", "iris-x", namespace))
                  and (o.get("status") or {}).get("endpoint") and o)
    assert es["status"]["endpoint"] == \
        f"http://iris.{namespace}.svc.cluster.local/v1/models/iris:explain"
    # No sidecar process answers yet: not Ready, and never Degraded for it.
    ready = wait_condition(kube, "explainerspec", "iris-x", namespace, "Ready", "False",
                           "SidecarUnreachable")
    assert "no answer from" in ready["message"]
    assert kube.condition("explainerspec", "iris-x", namespace, "Degraded")["status"] == "False"  # type: ignore[index]
    # Polls that find nothing new write nothing (the collection runs every second here).
    before = [kube.get(k, n, namespace)["metadata"]["resourceVersion"]  # type: ignore[index]
              for k, n in (("explainerspec", "iris-x"), ("deployment", "iris"))]
    time.sleep(3.5)
    assert before == [kube.get(k, n, namespace)["metadata"]["resourceVersion"]  # type: ignore[index]
                      for k, n in (("explainerspec", "iris-x"), ("deployment", "iris"))]
    # An operator restart resumes both objects and re-renders nothing.
    generation = kube.get("deployment", "iris", namespace)["metadata"]["generation"]  # type: ignore[index]
    fast.restart()
    time.sleep(3)
    assert kube.get("deployment", "iris", namespace)["metadata"]["generation"] == generation  # type: ignore[index]
    assert "explainer" in containers(kube, "iris", namespace)
    # The ModelDeployment object itself was never edited.
    md = kube.get("md", "iris", namespace)
    assert md is not None and md["metadata"]["generation"] == 1
    # A spec change re-renders the pods; deleting the ExplainerSpec removes the sidecar.
    kube.apply(explainer_spec("iris-x", namespace, "iris", iris, method="shap-permutation"))
    wait_for("method changed", lambda: "shap-permutation" in containers(
        kube, "iris", namespace)["explainer"]["args"])
    kube.run("delete", "explainerspec/iris-x", "-n", namespace)
    wait_for("sidecar removed", lambda: "explainer" not in containers(kube, "iris", namespace))
    assert "--explainer-url" not in server_args(kube, "iris", namespace)


def test_target_not_found_resolves_when_the_model_appears(
        kube: Kube, fast: Operator, namespace: str, iris: dict[str, Any]) -> None:
    kube.apply(explainer_spec("later", namespace, "later", iris))
    cond = wait_condition(kube, "explainerspec", "later", namespace, "Ready", "False",
                          "TargetNotFound")
    assert "ModelDeployment later does not exist" in cond["message"]
    kube.apply(model_deployment("later", namespace, iris))
    wait_for("explainer in the first render",
             lambda: "explainer" in containers(kube, "later", namespace))
    wait_for("TargetNotFound resolved", lambda: (
        c := kube.condition("explainerspec", "later", namespace, "Ready"))
        and c["reason"] != "TargetNotFound")


def test_conflict_and_unsupported_runtime(kube: Kube, fast: Operator, namespace: str,
                                          iris: dict[str, Any]) -> None:
    kube.apply(model_deployment("iris", namespace, iris))
    kube.apply(explainer_spec("first", namespace, "iris", iris))
    wait_for("first wired", lambda: "explainer" in containers(kube, "iris", namespace))
    kube.apply(explainer_spec("second", namespace, "iris", iris, method="shap-kernel"))
    cond = wait_condition(kube, "explainerspec", "second", namespace, "Degraded", "True",
                          "Conflict")
    assert "first" in cond["message"] and "delete this one" in cond["message"]
    assert "shap-tree" in containers(kube, "iris", namespace)["explainer"]["args"]
    assert any(e["reason"] == "Conflict" and e["type"] == "Warning"
               for e in kube.events(namespace, "second"))
    # The first goes away: the second takes over (its spec is rendered) and recovers.
    kube.run("delete", "explainerspec/first", "-n", namespace)
    wait_for("second rendered", lambda: "shap-kernel" in containers(
        kube, "iris", namespace)["explainer"]["args"])
    wait_condition(kube, "explainerspec", "second", namespace, "Degraded", "False")
    # A runtime that cannot forward :explain.
    kube.apply(model_deployment("ml", namespace, iris, runtime={"kind": "mlserver"}))
    kube.apply(explainer_spec("ml-x", namespace, "ml", iris))
    cond = wait_condition(kube, "explainerspec", "ml-x", namespace, "Degraded", "True",
                          "RuntimeUnsupported")
    assert "runtime.kind: kustos" in cond["message"]
    wait_for("ml Deployment", lambda: "server" in containers(kube, "ml", namespace))
    assert "explainer" not in containers(kube, "ml", namespace)


def test_real_explainer_reports_global_importance(
        kube: Kube, fast: Operator, namespace: str, iris: dict[str, Any], sidecars: Sidecars,
        tmp_path: Path) -> None:
    kube.apply(model_deployment("iris", namespace, iris))
    kube.apply(explainer_spec("iris", namespace, "iris", iris,
                              **{"global": {"interval": "5s", "topK": 3}}))
    pod = ready_pods_with(kube, "iris", namespace, "explainer")[0]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "explainer")
    explainer = sidecars.start(container, pod, iris, tmp_path)
    es = wait_for("globalImportance", lambda: (
        o := kube.get("explainerspec", "iris", namespace))
        and (o.get("status") or {}).get("globalImportance") and o, timeout=90)
    top = es["status"]["globalImportance"]
    assert 1 <= len(top) <= 3
    assert {t["feature"] for t in top} <= set(iris["names"])
    assert [t["value"] for t in top] == sorted((t["value"] for t in top), reverse=True)
    # Petal measurements separate the iris classes: a tree model leans on them.
    assert top[0]["feature"].startswith("petal")
    assert es["status"]["lastComputed"]
    assert es["status"]["reportConfigMap"] == "iris-explanations"
    ready = wait_condition(kube, "explainerspec", "iris", namespace, "Ready", "True", "Serving")
    assert "1/1 pods" in ready["message"]
    cm = kube.get("configmap", "iris-explanations", namespace)
    assert cm is not None
    assert cm["metadata"]["ownerReferences"][0]["uid"] == es["metadata"]["uid"]
    report = json.loads(cm["data"]["report.json"])
    # The full report (all features, not only the top-k) of the same computation.
    assert set(report["meanAbsShap"]) == set(iris["names"])
    assert report["model"] == "iris" and report["method"] == "shap-tree"
    assert "permutationImportance" in report and "partialDependence" in report
    assert explainer.get("/v1/explainer/status")["ready"] is True
    # The next scheduled run finds the same importances: status.lastComputed moves, the
    # ConfigMap is not rewritten.
    first = es["status"]["lastComputed"]
    wait_for("a later global run", lambda: (
        o := kube.get("explainerspec", "iris", namespace))
        and o["status"].get("lastComputed") != first, timeout=30)
    again = kube.get("configmap", "iris-explanations", namespace)
    assert again is not None
    assert again["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]
    # Local explanations through the model server as rendered: kustos serve forwards
    # :explain to the explainer (--explainer-url), on the same pod IP.
    server = sidecars.start(next(c for c in pod["spec"]["containers"] if c["name"] == "server"),
                            pod, iris, tmp_path)
    status, body = server.post("/v1/models/iris:explain", {"instances": iris["x"][:2].tolist()})
    assert status == 200, body
    assert body == explainer.post("/v1/models/iris:explain",
                                  {"instances": iris["x"][:2].tolist()})[1]


def test_background_with_wrong_columns_is_degraded(
        kube: Kube, fast: Operator, namespace: str, iris: dict[str, Any], sidecars: Sidecars,
        tmp_path: Path) -> None:
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("a,b,c\n" + "\n".join(
        ",".join(f"{v:g}" for v in row[:3]) for row in iris["x"][:20]) + "\n")
    kube.apply(model_deployment("narrow", namespace, iris))
    kube.apply(explainer_spec("narrow", namespace, "narrow", iris, featureNames=None,
                              background={"uri": f"file://{narrow}"}))
    pod = ready_pods_with(kube, "narrow", namespace, "explainer")[0]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "explainer")
    sidecars.start(container, pod, iris, tmp_path)
    cond = wait_condition(kube, "explainerspec", "narrow", namespace, "Degraded", "True",
                          "BackgroundInvalid")
    assert "3" in cond["message"] and "4" in cond["message"], cond["message"]
    assert pod["metadata"]["name"] in cond["message"]
    assert kube.condition("explainerspec", "narrow", namespace, "Ready")["status"] == "False"  # type: ignore[index]
    warnings = wait_for("Warning Event", lambda: [
        e for e in kube.events(namespace, "narrow") if e["reason"] == "BackgroundInvalid"])
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
