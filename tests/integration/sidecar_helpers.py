"""Shared by the ExplainerSpec and DriftMonitor integration tests: a fast collection
interval for the test operator, a model trained on iris, ExplainerSpec / DriftMonitor
manifests on it, and the real sidecar processes started on a pod's (loopback) IP with
exactly the arguments the operator rendered.

A test module takes the fixtures ``iris``, ``fast`` and ``sidecars`` with
``pytest_plugins = ["sidecar_helpers"]``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO
from conftest import OPERATOR_LOGS, Kube, Operator, stop_process, wait_for

COLLECT_INTERVAL = 1.0
WINDOW = 30  # the DriftMonitors' window size


def fast_collection(operator: Operator, tmp: Path) -> None:
    """Make sure the test operator polls the sidecars every second: add that to whatever
    config file it runs with ($KUSTOS_CONFIG, kept for later restarts) and restart it
    when the setting was not there yet."""
    current = os.environ.get("KUSTOS_CONFIG")
    data: dict[str, Any] = {}
    if current and Path(current).exists():
        data = yaml.safe_load(Path(current).read_text()) or {}
    sidecars = data.setdefault("sidecars", {})
    if sidecars.get("collect_interval") == COLLECT_INTERVAL and operator.proc is not None:
        return
    sidecars.update({"collect_interval": COLLECT_INTERVAL, "collect_timeout": 1.0})
    cfg = tmp / "operator-config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    os.environ["KUSTOS_CONFIG"] = str(cfg)
    operator.restart()


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def train_iris(tmp: Path) -> dict[str, Any]:
    """A RandomForest on iris (joblib, pinned digest), its training data as background /
    reference CSV, and the feature names."""
    import joblib
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
    model.fit(data.data, data.target)
    path = tmp / "model.joblib"
    joblib.dump(model, path)
    csv = tmp / "iris.csv"
    rows = [",".join(names)] + [",".join(f"{v:g}" for v in row) for row in data.data]
    csv.write_text("\n".join(rows) + "\n")
    return {"model": path, "digest": sha256(path), "csv": csv, "csv_digest": sha256(csv),
            "names": names, "x": np.asarray(data.data, dtype=float)}


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return train_iris(tmp_path_factory.mktemp("iris"))


@pytest.fixture(scope="module")
def fast(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Operator:
    """The test operator, collecting every second."""
    fast_collection(operator, tmp_path_factory.mktemp("operator-config"))
    return operator


@pytest.fixture
def sidecars() -> Iterator[Sidecars]:
    """Sidecar processes a test starts, all stopped at its end."""
    s = Sidecars()
    try:
        yield s
    finally:
        s.stop()


def explainer_spec(name: str, namespace: str, target: str, iris: dict[str, Any],
                   max_samples: int = 40, **spec: Any) -> dict[str, Any]:
    """A shap-tree ExplainerSpec with iris' training data as background."""
    body: dict[str, Any] = {"targetRef": {"name": target}, "method": "shap-tree",
                            "background": {"uri": f"file://{iris['csv']}",
                                           "digest": iris["csv_digest"],
                                           "maxSamples": max_samples},
                            "featureNames": iris["names"]}
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def drift_monitor(name: str, namespace: str, target: str, iris: dict[str, Any],
                  digest: str | None = None, **spec: Any) -> dict[str, Any]:
    """A KS DriftMonitor with iris' training data as reference (``digest`` overrides its
    digest)."""
    body: dict[str, Any] = {
        "targetRef": {"name": target}, "detector": "ks",
        "reference": {"uri": f"file://{iris['csv']}", "digest": digest or iris["csv_digest"],
                      "maxSamples": 150},
        "featureNames": iris["names"], "window": {"size": WINDOW, "maxAge": "1h"},
        "pValue": 0.05,
    }
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def model_deployment(name: str, namespace: str, iris: dict[str, Any], replicas: int = 1,
                     **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"version": "1", "uri": f"file://{iris['model']}",
                                      "digest": iris["digest"]}, "replicas": replicas}
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def pod_template(kube: Kube, md: str, ns: str) -> dict[str, Any]:
    dep = kube.get("deployment", md, ns)
    assert dep is not None
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def containers(kube: Kube, md: str, ns: str) -> dict[str, dict[str, Any]]:
    dep = kube.get("deployment", md, ns)
    if dep is None:
        return {}
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


def ready_pods_with(kube: Kube, md: str, ns: str, container: str,
                    count: int = 1, also: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The target's Ready pods that run ``container`` (and ``also``), once there are
    ``count`` of them and no pod of an older template is left."""
    wanted = {container, *also}
    def check() -> list[dict[str, Any]] | None:
        # The model's serving pods only: a ground-truth monitor's or a retraining Job's
        # pods carry the same instance label.
        pods = [p for p in kube.list("pods", ns, f"app.kubernetes.io/instance={md},"
                                                 "app.kubernetes.io/component=predictor")
                if not p["metadata"].get("deletionTimestamp")]
        with_it = [p for p in pods
                   if wanted <= {c["name"] for c in p["spec"]["containers"]}
                   and p.get("status", {}).get("podIP")
                   and any(c["type"] == "Ready" and c["status"] == "True"
                           for c in p["status"].get("conditions") or [])]
        return with_it if len(with_it) == count and len(pods) == count else None
    result: list[dict[str, Any]] = wait_for(f"{count} Ready pod(s) of {md} with {container}",
                                            check, timeout=60)
    return result


def condition(kube: Kube, kind: str, name: str, ns: str, type_: str) -> dict[str, Any] | None:
    return kube.condition(kind, name, ns, type_)


def wait_condition(kube: Kube, kind: str, name: str, ns: str, type_: str, status: str,
                   reason: str | None = None, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        c = kube.condition(kind, name, ns, type_)
        if c and c["status"] == status and (reason is None or c["reason"] == reason):
            return c
        return None
    result: dict[str, Any] = wait_for(f"{kind}/{name} {type_}={status} {reason or ''}",
                                      check, timeout=timeout)
    return result


_DRIFT_PYTHON: list[str] = []


def _drift_python() -> str:
    """The drift sidecar's own environment (alibi-detect pins numpy<2), built or found by
    hack/drift-env.sh (cached; the first build takes minutes)."""
    if not _DRIFT_PYTHON:
        venv = subprocess.run(["bash", str(REPO / "hack" / "drift-env.sh"), str(REPO)],
                              check=True, capture_output=True, text=True, timeout=1800)
        _DRIFT_PYTHON.append(str(Path(venv.stdout.strip().splitlines()[-1]) / "bin" / "python"))
    return _DRIFT_PYTHON[0]


def _env(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet resolves it (values and pod annotations)."""
    out: dict[str, str] = {}
    annotations = pod["metadata"].get("annotations") or {}
    for e in container.get("env") or []:
        if "value" in e:
            out[e["name"]] = e["value"]
        path = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
        m = re.fullmatch(r"metadata\.annotations\['(.+)'\]", path)
        if m:
            out[e["name"]] = annotations.get(m.group(1), "")
    return out


def _expand(arg: str, env: dict[str, str]) -> str:
    """$(VAR) in args, as the kubelet expands it."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)),
                  arg)


class Sidecar:
    """A real `kustos explain` / `kustos drift` process bound to a pod's IP."""

    def __init__(self, container: dict[str, Any], pod: dict[str, Any] | str,
                 iris: dict[str, Any], tmp: Path) -> None:
        if isinstance(pod, str):  # only the pod IP: the model's digest is iris'
            pod = {"metadata": {"annotations": {"kustos.dev/model-digest": iris["digest"]}},
                   "status": {"podIP": pod}}
        pod_ip = pod["status"]["podIP"]
        args = [_expand(a, _env(container, pod)) for a in container["args"]]
        # What the pod would see: the model the fetch init container wrote to /mnt/models.
        args = [str(iris["model"]) if a.startswith("/mnt/models/") else a for a in args]
        args[args.index("--host") + 1] = pod_ip
        # The server reaches its sidecars on the pod's own address (127.0.0.1 in a pod).
        for flag in ("--drift-url", "--explainer-url"):
            if flag in args:
                i = args.index(flag) + 1
                args[i] = args[i].replace("http://127.0.0.1:", f"http://{pod_ip}:")
        self.port = int(args[args.index("--port") + 1])
        self.ip = pod_ip
        self.name = container["name"]
        python = _drift_python() if args[0] == "drift" else sys.executable
        OPERATOR_LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = OPERATOR_LOGS / f"sidecar-{self.name}-{pod_ip}.log"
        log = self.log_path.open("ab")
        env = {**os.environ, "TMPDIR": str(tmp)}
        self.proc = subprocess.Popen([python, "-m", "kustos.cli", *args], cwd=tmp, env=env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_for(f"{self.name} sidecar on {pod_ip}:{self.port}", self._live, timeout=60)

    def url(self, path: str) -> str:
        return f"http://{self.ip}:{self.port}{path}"

    def _live(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} sidecar exited with {self.proc.returncode}; "
                               f"see {self.log_path}")
        try:
            with urllib.request.urlopen(self.url("/v2/health/live"), timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url(path), timeout=5) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(self.url(path), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def stop(self) -> None:
        stop_process(self.proc, timeout=10, kill_timeout=5)


class Sidecars:
    """Started sidecars, all stopped at the end of the test."""

    def __init__(self) -> None:
        self.started: list[Sidecar] = []

    def start(self, container: dict[str, Any], pod: dict[str, Any] | str,
              iris: dict[str, Any], tmp: Path) -> Sidecar:
        s = Sidecar(container, pod, iris, tmp)
        self.started.append(s)
        return s

    def stop(self) -> None:
        for s in self.started:
            s.stop()

