"""Real statuses for the Argo CD health checks' testdata.

Each case drives a real object on the local control plane into one state with the real
operator: a ModelDeployment Ready, rolling out, Degraded, scaled to zero, or a generation
the operator has not seen, its Vault sync failing before and after a first sync (real OpenBao); an
ExplainerSpec and a DriftMonitor served by their real
sidecar processes (bound on the pod's IP), waiting for a sidecar, without a target, in
conflict, with drift, with a bad reference digest. With RECORD=1 the objects are written
to manifests/argocd/resource_customizations/kustos.dev/<Kind>/testdata/; otherwise the
test checks that the recorded files still have the shape the operator writes now
(condition types, statuses and reasons, status keys) and that health.lua judges the live
object as health_test.yaml says.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lupa.lua51 as lua
import pytest
import yaml
from cluster import REPO
from conftest import Kube, Operator, wait_for
from openbao import OpenBao, reviewed_openbao
from sidecar_helpers import (
    Sidecars,
    containers,
    drift_monitor,
    explainer_spec,
    ready_pods_with,
    wait_condition,
)
from sidecar_helpers import model_deployment as iris_deployment

pytestmark = pytest.mark.integration
pytest_plugins = ["sidecar_helpers"]  # fixtures iris, fast, sidecars

KIND_DIR = REPO / "manifests" / "argocd" / "resource_customizations" / "kustos.dev"
RECORD = os.environ.get("RECORD") == "1"
DIGEST = "sha256:" + "5d41402abc4b2a76" * 4
# Recorded objects get this namespace instead of the test's random one, so re-recording
# only changes what really changed.
RECORDED_NAMESPACE = "ml"


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """health.lua of ``kind`` on ``obj`` in Lua 5.1 (Argo CD runs gopher-lua, a 5.1)."""
    rt = lua.LuaRuntime(unpack_returned_tuples=True)
    script = (KIND_DIR / kind / "health.lua").read_text()
    env = rt.eval("function(obj) return {obj = obj, ipairs = ipairs, pairs = pairs} end")(
        rt.table_from(obj, recursive=True))
    chunk = rt.eval("function(src, env) local f = assert(loadstring(src)); "
                    "setfenv(f, env); return f() end")
    result = chunk(script, env)
    return {"status": result["status"], "message": result["message"]}


def model_deployment(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"version": "1", "uri": "s3://models/iris/1/model.skops",
                                      "digest": DIGEST}, "replicas": 2,
                            "governance": {"owner": "data-science", "riskTier": "medium"}}
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def wait_status(kube: Kube, name: str, ns: str, what: str,
                check: Callable[[dict[str, Any], dict[str, dict[str, Any]]], bool],
                timeout: float = 180) -> dict[str, Any]:
    def poll() -> dict[str, Any] | None:
        md = kube.get("md", name, ns)
        if md is None or not md.get("status"):
            return None
        return md if check(md, conditions(md)) else None
    result: dict[str, Any] = wait_for(f"md/{name}: {what}", poll, timeout=timeout)
    return result


def current(md: dict[str, Any]) -> bool:
    return bool(md["status"].get("observedGeneration") == md["metadata"]["generation"])


def is_(conds: dict[str, dict[str, Any]], type_: str, status: str,
        reason: str | None = None) -> bool:
    c = conds.get(type_)
    return c is not None and c["status"] == status and (reason is None or c["reason"] == reason)


def sanitized(obj: dict[str, Any], namespace: str,
              paths: dict[str, str] | None = None) -> dict[str, Any]:
    """The object as Argo CD sees it, less the server's bookkeeping (and with the test's
    random namespace and temporary paths replaced by fixed ones)."""
    text = json.dumps(obj).replace(namespace, RECORDED_NAMESPACE)
    for old, new in (paths or {}).items():
        text = text.replace(old, new)
    obj = json.loads(text)
    meta = obj["metadata"]
    for key in ("managedFields", "resourceVersion", "uid", "annotations"):
        meta.pop(key, None)
    return obj


def shape(obj: dict[str, Any]) -> dict[str, Any]:
    """What must match between a recorded object and a live one."""
    st = obj.get("status") or {}
    return {
        "status_keys": sorted(st),
        "conditions": {c["type"]: (c["status"], c["reason"]) for c in st.get("conditions") or []},
        "stale": st.get("observedGeneration") != obj["metadata"].get("generation"),
    }


def expected_health(kind_dir: Path, case: str) -> dict[str, str]:
    tests = yaml.safe_load((kind_dir / "health_test.yaml").read_text())["tests"]
    for t in tests:
        if t["inputPath"] == f"testdata/{case}.yaml":
            return dict(t["healthStatus"])
    raise AssertionError(f"{case} is not in health_test.yaml")


def record_or_check(case: str, obj: dict[str, Any], namespace: str,
                    paths: dict[str, str] | None = None) -> None:
    kind = obj["kind"]
    obj = sanitized(obj, namespace, paths)
    path = KIND_DIR / kind / "testdata" / f"{case}.yaml"
    if RECORD:
        header = ("# Recorded from the real operator by tests/integration/test_record_status.py"
                  " (RECORD=1).\n")
        path.write_text(header + yaml.safe_dump(obj, sort_keys=False, width=100))
        return
    recorded = yaml.safe_load(path.read_text())
    assert shape(obj) == shape(recorded), f"{path} is stale: rerun with RECORD=1"
    want = expected_health(KIND_DIR / kind, case)
    got = health(kind, obj)
    assert got["status"] == want["status"]
    assert got["message"].split(":")[0] == want["message"].split(":")[0]


def test_ready_rolling_out_and_stale(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(model_deployment("iris", namespace))
    md = wait_status(kube, "iris", namespace, "Ready", lambda md, c: current(md) and is_(
        c, "Ready", "True") and is_(c, "Progressing", "False"))
    record_or_check("ready", md, namespace)

    # A new version whose pods cannot be scheduled (more CPU than the node has): the old
    # pods keep serving, the rollout stays in progress.
    kube.run("patch", "md/iris", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {
        "model": {"version": "2", "uri": "s3://models/iris/2/model.skops"},
        "runtime": {"resources": {"requests": {"cpu": "1000"}}}}}))
    md = wait_status(kube, "iris", namespace, "rolling out", lambda md, c: current(md) and is_(
        c, "Progressing", "True", "RollingOut") and is_(c, "Ready", "True"))
    record_or_check("rolling-out", md, namespace)

    # The operator is down while the spec changes: the status is a generation behind.
    operator.stop()
    try:
        kube.run("patch", "md/iris", "-n", namespace, "--type=json", "-p", json.dumps([
            {"op": "remove", "path": "/spec/runtime/resources"}]))
        md = kube.get("md", "iris", namespace)
        assert md is not None and not current(md)
        record_or_check("stale-generation", md, namespace)
    finally:
        operator.start()
    wait_status(kube, "iris", namespace, "Ready again", lambda md, c: current(md) and is_(
        c, "Ready", "True") and is_(c, "Progressing", "False"))


def test_degraded_and_scaled_to_zero(kube: Kube, operator: Operator, namespace: str) -> None:
    kube.apply(model_deployment("creds", namespace, model={
        "version": "1", "uri": "s3://models/iris/1/model.skops", "digest": DIGEST,
        "credentialsSecretRef": {"name": "s3-creds"}}))
    md = wait_status(kube, "creds", namespace, "Degraded", lambda md, c: current(md) and is_(
        c, "Degraded", "True", "CredentialsNotFound"))
    record_or_check("degraded-credentials", md, namespace)

    kube.apply(model_deployment("idle", namespace))
    wait_status(kube, "idle", namespace, "Ready", lambda md, c: current(md) and is_(
        c, "Ready", "True") and is_(c, "Progressing", "False"))
    kube.run("scale", "md/idle", "-n", namespace, "--replicas=0")
    md = wait_status(kube, "idle", namespace, "scaled to zero", lambda md, c: current(md) and is_(
        c, "Ready", "False", "ScaledToZero") and is_(c, "Progressing", "False"))
    record_or_check("scaled-to-zero", md, namespace)


def data_paths(iris: dict[str, Any]) -> dict[str, str]:
    return {str(Path(iris["csv"]).parent): "/data/iris"}


def get(kube: Kube, kind: str, name: str, ns: str) -> dict[str, Any]:
    obj = kube.get(kind, name, ns)
    assert obj is not None
    return obj


def start_sidecar(kube: Kube, sidecars: Sidecars, md: str, ns: str, container: str,
                  iris: dict[str, Any], tmp: Path) -> Any:
    pod = ready_pods_with(kube, md, ns, container)[0]
    spec = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    return sidecars.start(spec, pod["status"]["podIP"], iris, tmp)


def test_explainerspec_states(kube: Kube, fast: Operator, namespace: str,
                              iris: dict[str, Any], sidecars: Sidecars, tmp_path: Path) -> None:
    paths = data_paths(iris)
    kube.apply(explainer_spec("later", namespace, "later", iris))
    wait_condition(kube, "explainerspec", "later", namespace, "Ready", "False", "TargetNotFound")
    record_or_check("target-not-found", get(kube, "explainerspec", "later", namespace),
                    namespace, paths)

    kube.apply(iris_deployment("iris", namespace, iris))
    kube.apply(explainer_spec("iris", namespace, "iris", iris))
    wait_condition(kube, "explainerspec", "iris", namespace, "Ready", "False",
                   "SidecarUnreachable")
    record_or_check("sidecar-unreachable", get(kube, "explainerspec", "iris", namespace),
                    namespace, paths)

    kube.apply(explainer_spec("second", namespace, "iris", iris))
    wait_condition(kube, "explainerspec", "second", namespace, "Degraded", "True", "Conflict")
    record_or_check("degraded-conflict", get(kube, "explainerspec", "second", namespace),
                    namespace, paths)

    start_sidecar(kube, sidecars, "iris", namespace, "explainer", iris, tmp_path)
    wait_condition(kube, "explainerspec", "iris", namespace, "Ready", "True", "Serving",
                   timeout=180)
    record_or_check("ready", get(kube, "explainerspec", "iris", namespace), namespace, paths)


def test_driftmonitor_states(kube: Kube, fast: Operator, namespace: str, iris: dict[str, Any],
                             sidecars: Sidecars, tmp_path: Path) -> None:
    paths = data_paths(iris)
    kube.apply(iris_deployment("iris", namespace, iris))
    kube.apply(drift_monitor("iris", namespace, "iris", iris))
    wait_for("drift sidecar rendered", lambda: "drift" in containers(kube, "iris", namespace))
    wait_condition(kube, "driftmonitor", "iris", namespace, "Ready", "False",
                   "SidecarUnreachable")
    record_or_check("sidecar-unreachable", get(kube, "driftmonitor", "iris", namespace),
                    namespace, paths)

    drift = start_sidecar(kube, sidecars, "iris", namespace, "drift", iris, tmp_path)
    wait_condition(kube, "driftmonitor", "iris", namespace, "Ready", "True", "Monitoring",
                   timeout=180)
    record_or_check("ready", get(kube, "driftmonitor", "iris", namespace), namespace, paths)

    # A window with petal_length shifted by 3 cm: drift, and still a Healthy monitor.
    rows = [[r[0], r[1], r[2] + 3.0, r[3]] for r in iris["x"][::5].tolist()]
    status, body = drift.post("/v1/inputs", {
        "model_name": "iris", "model_version": "1",
        "inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64",
                    "data": [v for row in rows for v in row]}],
        "parameters": {"requests": 1}})
    assert status == 202, body
    wait_condition(kube, "driftmonitor", "iris", namespace, "DriftDetected", "True")
    record_or_check("drift-detected", get(kube, "driftmonitor", "iris", namespace), namespace,
                    paths)

    kube.apply(iris_deployment("bad", namespace, iris))
    kube.apply(drift_monitor("bad", namespace, "bad", iris, digest="sha256:" + "0" * 64))
    start_sidecar(kube, sidecars, "bad", namespace, "drift", iris, tmp_path)
    wait_condition(kube, "driftmonitor", "bad", namespace, "Degraded", "True",
                   "DigestMismatch", timeout=180)
    record_or_check("degraded-digest-mismatch", get(kube, "driftmonitor", "bad", namespace),
                    namespace, paths)


@pytest.fixture(scope="module")
def bao(kube: Kube) -> Iterator[OpenBao]:
    yield from reviewed_openbao(kube, "record")


def test_vault_sync_failing(kube: Kube, operator: Operator, bao: OpenBao,
                            namespace: str) -> None:
    paths = {bao.address: "http://openbao.vault.svc:8200"}
    kv = f"ml/{namespace}/fraud"
    bao.put(kv, {"token": f"pw-{uuid.uuid4().hex}"})
    role = f"{namespace}-fraud"
    bao.read_policy(role, f"secret/data/{kv}")
    bao.role(role, "fraud", namespace, role)
    vault = {"address": bao.address, "role": role, "refreshInterval": "5s",
             "items": [{"path": f"secret/data/{kv}", "key": "token", "file": "token"}]}
    kube.apply(model_deployment("fraud", namespace, secrets={"vault": vault}))
    wait_status(kube, "fraud", namespace, "Ready with secrets", lambda md, c: current(md) and is_(
        c, "Ready", "True") and is_(c, "SecretsReady", "True") and is_(c, "Progressing", "False"))

    # Vault goes away after the first sync: the pods keep serving the last good Secret,
    # SecretsReady turns False, nothing else changes.
    bao.stop()
    try:
        md = wait_status(kube, "fraud", namespace, "refresh failing", lambda md, c: current(
            md) and is_(c, "SecretsReady", "False", "VaultUnreachable") and is_(c, "Ready", "True"))
        record_or_check("secrets-refresh-failing", md, namespace, paths)
        # A new ModelDeployment whose first sync cannot reach Vault: no pods, Degraded.
        kube.apply(model_deployment("fresh", namespace, secrets={"vault": {
            **vault, "role": f"{namespace}-fresh"}}))
        md = wait_status(kube, "fresh", namespace, "Degraded", lambda md, c: current(md) and is_(
            c, "Degraded", "True", "VaultUnreachable"))
        record_or_check("degraded-vault-unreachable", md, namespace, paths)
    finally:
        bao.start()
