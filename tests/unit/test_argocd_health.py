"""The Argo CD health checks in manifests/argocd/ on recorded objects, run in Lua 5.1.

Argo CD runs health.lua in gopher-lua (Lua 5.1) with ``obj`` set to the live object; here
lupa's Lua 5.1 runs the same file in an environment that holds only ``obj``, ``ipairs``
and ``pairs``, so a script that needs more than Argo CD gives it fails. The testdata were
recorded from the real operator (tests/integration/test_record_status.py, RECORD=1).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Any

import lupa.lua51 as lua
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "manifests" / "argocd"
KIND_DIR = ARGOCD / "resource_customizations" / "kustos.dev"
KINDS = ("ModelDeployment", "ExplainerSpec", "DriftMonitor")
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def health(kind: str, obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    rt = lua.LuaRuntime(unpack_returned_tuples=True)
    source = script if script is not None else (KIND_DIR / kind / "health.lua").read_text()
    env = rt.eval("function(obj) return {obj = obj, ipairs = ipairs, pairs = pairs} end")(
        rt.table_from(obj, recursive=True))
    run = rt.eval("function(src, env) local f = assert(loadstring(src)); "
                  "setfenv(f, env); return f() end")
    result = run(source, env)
    return {"status": result["status"], "message": result["message"]}


def cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for kind in KINDS:
        spec = yaml.safe_load((KIND_DIR / kind / "health_test.yaml").read_text())
        out += [(kind, t) for t in spec["tests"]]
    return out


def load(kind: str, input_path: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((KIND_DIR / kind / input_path).read_text())
    return obj


def recorded() -> list[tuple[str, str, dict[str, Any]]]:
    return [(kind, t["inputPath"], load(kind, t["inputPath"])) for kind, t in cases()]


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return None


def with_condition(obj: dict[str, Any], type_: str, status: str, reason: str,
                   message: str = "") -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    conds = [c for c in obj["status"]["conditions"] if c["type"] != type_]
    conds.append({"type": type_, "status": status, "reason": reason, "message": message,
                  "observedGeneration": obj["metadata"]["generation"]})
    obj["status"]["conditions"] = conds
    return obj


@pytest.mark.parametrize(("kind", "test"), cases(),
                         ids=lambda v: v["inputPath"] if isinstance(v, dict) else v)
def test_health_test_yaml(kind: str, test: dict[str, Any]) -> None:
    """Every case of health_test.yaml, exactly as Argo CD's own test runner checks it."""
    got = health(kind, load(kind, test["inputPath"]))
    assert got == test["healthStatus"]


def test_every_kind_has_recorded_cases_of_each_state() -> None:
    for kind in KINDS:
        tests = yaml.safe_load((KIND_DIR / kind / "health_test.yaml").read_text())["tests"]
        statuses = {t["healthStatus"]["status"] for t in tests}
        assert {"Healthy", "Progressing", "Degraded"} <= statuses, kind
        assert statuses <= ARGO_STATUSES
        for t in tests:
            assert (KIND_DIR / kind / t["inputPath"]).is_file()
        files = {p.name for p in (KIND_DIR / kind / "testdata").glob("*.yaml")}
        assert files == {Path(t["inputPath"]).name for t in tests}, "unused testdata"
    md_states = {t["healthStatus"]["status"] for _, t in cases() if _ == "ModelDeployment"}
    assert "Suspended" in md_states


@pytest.mark.parametrize(("kind", "path", "obj"), recorded(), ids=lambda v: str(v)[:40])
def test_stale_generation_is_progressing_never_healthy(kind: str, path: str,
                                                       obj: dict[str, Any]) -> None:
    """A spec the operator has not observed yet: the conditions describe an older
    generation, whatever they say."""
    stale = copy.deepcopy(obj)
    stale["metadata"]["generation"] = stale["status"]["observedGeneration"] + 1
    got = health(kind, stale)
    assert got["status"] == "Progressing"
    assert str(stale["metadata"]["generation"]) in got["message"]
    missing = copy.deepcopy(obj)
    del missing["status"]["observedGeneration"]
    assert health(kind, missing)["status"] == "Progressing"


@pytest.mark.parametrize(("kind", "path", "obj"), recorded(), ids=lambda v: str(v)[:40])
def test_degraded_true_is_never_progressing(kind: str, path: str, obj: dict[str, Any]) -> None:
    if obj["status"]["observedGeneration"] != obj["metadata"]["generation"]:
        pytest.skip("stale: covered above")
    bad = with_condition(obj, "Degraded", "True", "ImagePullFailed", "no such image")
    bad = with_condition(bad, "Progressing", "True", "RollingOut", "0/2 replicas updated")
    assert health(kind, bad) == {"status": "Degraded",
                                 "message": "ImagePullFailed: no such image"}


@pytest.mark.parametrize(("kind", "path", "obj"), recorded(), ids=lambda v: str(v)[:40])
def test_current_and_ready_is_healthy(kind: str, path: str, obj: dict[str, Any]) -> None:
    """Never stuck on Progressing once the operator reports the current generation Ready."""
    if obj["status"]["observedGeneration"] != obj["metadata"]["generation"]:
        pytest.skip("stale: covered above")
    good = with_condition(obj, "Degraded", "False", "AsExpected")
    good = with_condition(good, "Ready", "True", "Available", "2/2 replicas ready")
    if cond(good, "Progressing") is not None:
        good = with_condition(good, "Progressing", "False", "RolloutComplete")
    if cond(good, "DriftDetected") is not None:
        good = with_condition(good, "DriftDetected", "False", "NoDrift")
    if cond(good, "SecretsReady") is not None:
        good = with_condition(good, "SecretsReady", "True", "Synced")
    assert health(kind, good) == {"status": "Healthy",
                                  "message": "Available: 2/2 replicas ready"}


@pytest.mark.parametrize("kind", KINDS)
def test_no_status_yet_is_progressing(kind: str) -> None:
    obj = {"apiVersion": "kustos.dev/v1alpha1", "kind": kind,
           "metadata": {"name": "x", "namespace": "ml", "generation": 1}, "spec": {}}
    assert health(kind, obj)["status"] == "Progressing"
    obj["status"] = {"observedGeneration": 1}
    assert health(kind, obj)["status"] == "Progressing"


def test_model_deployment_secrets_not_synced_is_degraded() -> None:
    obj = load("ModelDeployment", "testdata/ready.yaml")
    bad = with_condition(obj, "SecretsReady", "False", "VaultAuthFailed", "permission denied")
    assert health("ModelDeployment", bad) == {"status": "Degraded",
                                              "message": "VaultAuthFailed: permission denied"}


def test_argocd_cm_carries_the_same_scripts() -> None:
    """argocd-cm.yaml is the other way to install the checks; it must not drift from the
    health.lua files Argo CD's own layout holds."""
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    for kind in KINDS:
        key = f"resource.customizations.health.kustos.dev_{kind}"
        assert cm["data"][key] == (KIND_DIR / kind / "health.lua").read_text(), key


def test_generated_files_are_up_to_date() -> None:
    """The health.lua files and argocd-cm.yaml are generated from src/ by gen-argocd-cm.py;
    a hand edit or a forgotten regeneration fails here."""
    spec = importlib.util.spec_from_file_location("gen_argocd_cm", ARGOCD / "gen-argocd-cm.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    files = gen.render()
    assert set(files) == {KIND_DIR / k / "health.lua" for k in KINDS} | {ARGOCD / "argocd-cm.yaml"}
    for path, text in files.items():
        assert path.read_text() == text, (
            f"{path.relative_to(REPO)} is stale: run manifests/argocd/gen-argocd-cm.py")
        if path.name == "health.lua":
            assert text.startswith("-- Generated by ") and "do not edit" in text.splitlines()[1]
            assert "--#include" not in text


def _helm() -> Path | None:
    out = subprocess.run(["bash", "-c", '. "$1" && printf %s "$KUSTOS_BIN"', "-",
                          str(REPO / "hack" / "versions.sh")],
                         capture_output=True, text=True, check=False).stdout
    path = Path(out) / "helm"
    return path if out and path.is_file() else None


def test_application_renders_the_chart_with_its_values(tmp_path: Path) -> None:
    """The example Application's source is this repository's chart, and the chart renders
    with the values the Application sets (as Argo CD does, with helm template)."""
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    source = app["spec"]["source"]
    assert (REPO / source["path"] / "Chart.yaml").is_file()
    helm = _helm()
    if helm is None:
        pytest.skip("helm is not built (hack/build-tools.sh helm)")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    env = {**os.environ, **{f"HELM_{k}_HOME": str(tmp_path / k.lower())
                            for k in ("CACHE", "CONFIG", "DATA")}}
    proc = subprocess.run(
        [str(helm), "template", source["helm"]["releaseName"], str(REPO / source["path"]),
         "--namespace", app["spec"]["destination"]["namespace"], "-f", str(values)],
        capture_output=True, text=True, env=env, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ValidatingWebhookConfiguration"} <= kinds, kinds
    # The operator keeps the webhook certificate: nothing of it rendered, so every render
    # (every Argo CD refresh) is the same.
    assert not {"Secret", "Certificate"} & kinds, kinds
    again = subprocess.run(proc.args, capture_output=True, text=True, env=env, check=True,
                           timeout=120)
    assert again.stdout == proc.stdout
    # What ignoreDifferences leaves out is the one field the operator sets.
    (ignored,) = app["spec"]["ignoreDifferences"]
    assert (ignored["group"], ignored["kind"]) == ("admissionregistration.k8s.io",
                                                   "ValidatingWebhookConfiguration")
    assert ignored["jsonPointers"] == ["/webhooks/0/clientConfig/caBundle"]
    (vwc,) = [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    assert len(vwc["webhooks"]) == 1 and "caBundle" not in vwc["webhooks"][0]["clientConfig"]
