"""Argo CD for real: the application-controller and repo-server of Argo CD (built from its Go
module by hack/argocd.sh) run against the local cluster, sync from a Git repository served by
`git daemon` on loopback, and judge Kustos' objects with the Lua health checks of
manifests/argocd/argocd-cm.yaml. What is asserted is what Argo CD itself writes into the
Application: `.status.health`, `.status.resources[].health` (the controller runs with
--persist-resource-health) and `.status.sync.status`, also across hard refreshes.

The test operator (conftest) serves the models; the Applications' destinations are this
session's namespaces, and the chart and kustomize install run there with 0 operator replicas,
no webhook and without the CRDs (the cluster-wide ones belong to the whole test session).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO, cluster_dir
from conftest import MODEL_DIGEST, Kube, Operator, model_deployment, wait_for

ARGOCD_SH = REPO / "hack" / "argocd.sh"
GIT_PORT = int(os.environ.get("ARGOCD_GIT_PORT", "17418"))
GIT_ROOT = cluster_dir() / "argocd" / "git"
REFRESH = "argocd.argoproj.io/refresh"


class LocalRepo:
    """A bare repository under the git daemon's base path, written through a work tree."""

    def __init__(self, name: str) -> None:
        self.bare = GIT_ROOT / f"{name}.git"
        self.url = f"git://127.0.0.1:{GIT_PORT}/{name}.git"
        self.tree = Path(tempfile.mkdtemp(prefix=f"argocd-{name}-"))
        self._git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=GIT_ROOT)
        self._git("init", "-q", "-b", "main")

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run(
            ["git", "-c", "user.name=kustos-test", "-c", "user.email=test@localhost", *args],
            cwd=cwd or self.tree, capture_output=True, text=True, check=True)
        return proc.stdout.strip()

    def write(self, path: str, docs: list[dict[str, Any]] | str) -> None:
        target = self.tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(docs if isinstance(docs, str) else yaml.safe_dump_all(docs))

    def copy(self, src: Path, dest: str) -> None:
        shutil.copytree(src, self.tree / dest, dirs_exist_ok=True)

    def commit(self, message: str) -> str:
        self._git("add", "-A")
        self._git("commit", "-q", "-m", message)
        self._git("push", "-q", "--force", str(self.bare), "main")
        return self._git("rev-parse", "HEAD")

    def remove(self) -> None:
        shutil.rmtree(self.tree, ignore_errors=True)
        shutil.rmtree(self.bare, ignore_errors=True)


class ArgoCD:
    """Applications in namespace argocd, read the way Argo CD reports them."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def create(self, name: str, repo: LocalRepo, path: str, namespace: str,
               **source: Any) -> None:
        app = {
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": name, "namespace": "argocd",
                         # deleting the Application deletes what it synced (cluster roles too)
                         "finalizers": ["resources-finalizer.argocd.argoproj.io"]},
            "spec": {
                "project": "default",
                "source": {"repoURL": repo.url, "targetRevision": "main", "path": path, **source},
                "destination": {"server": "https://kubernetes.default.svc",
                                "namespace": namespace},
                "syncPolicy": {"automated": {"prune": True, "selfHeal": True}},
            },
        }
        self.kube.apply(app)

    def get(self, name: str) -> dict[str, Any]:
        app = self.kube.get("application", name, "argocd")
        assert app is not None, f"application {name} is gone"
        return app

    def delete(self, name: str) -> None:
        self.kube.run("delete", "application", name, "-n", "argocd", "--wait=false",
                      check=False)
        wait_for(f"application {name} deleted (its resources pruned)",
                 lambda: self.kube.get("application", name, "argocd") is None,
                 timeout=120, interval=1)

    def refresh(self, name: str, kind: str = "normal") -> dict[str, Any]:
        """Ask for a refresh and wait until the controller has done it: it removes the
        annotation after writing the status of that reconciliation. The Application then."""
        self.kube.run("annotate", "application", name, "-n", "argocd", "--overwrite",
                      f"{REFRESH}={kind}")

        def done() -> dict[str, Any] | None:
            app = self.get(name)
            return None if REFRESH in (app["metadata"].get("annotations") or {}) else app
        result: dict[str, Any] = wait_for(f"{kind} refresh of {name}", done, timeout=120)
        return result

    def resource_health(self, name: str, kind: str, obj: str) -> dict[str, Any] | None:
        for res in self.get(name).get("status", {}).get("resources") or []:
            if res.get("kind") == kind and res.get("name") == obj:
                health: dict[str, Any] | None = res.get("health")
                return health
        return None

    def wait_health(self, name: str, kind: str, obj: str, status: str,
                    timeout: float = 180, message: str = "") -> dict[str, Any]:
        """Until Argo CD reports ``status`` for the resource, with a message that starts
        with ``message`` (the condition reason our Lua check puts first)."""
        def check() -> dict[str, Any] | None:
            health = self.resource_health(name, kind, obj)
            if (health and health.get("status") == status
                    and str(health.get("message", "")).startswith(message)):
                return health
            return None
        try:
            result: dict[str, Any] = wait_for(f"Argo CD: {kind}/{obj} {status} {message}", check,
                                              timeout=timeout, interval=1)
        except AssertionError as err:
            raise AssertionError(f"{err}\napplication status: "
                                 f"{json.dumps(self.get(name).get('status'), indent=1)}"
                                 ) from None
        return result

    def wait_synced(self, name: str, revision: str, timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.get(name).get("status") or {}
            sync = st.get("sync") or {}
            if sync.get("status") == "Synced" and sync.get("revision") == revision:
                return st
            return None
        try:
            result: dict[str, Any] = wait_for(f"Argo CD: {name} synced at {revision[:8]}",
                                              check, timeout=timeout, interval=1)
        except AssertionError as err:
            raise AssertionError(f"{err}\napplication status: "
                                 f"{json.dumps(self.get(name).get('status'), indent=1)}"
                                 ) from None
        return result

    def stays_synced(self, name: str, refreshes: int = 3) -> None:
        """No perpetual OutOfSync: Synced after each of several hard refreshes (a fresh
        manifest generation and diff against the live objects every time)."""
        for i in range(refreshes):
            app = self.refresh(name, "hard")
            st = app.get("status") or {}
            out_of_sync = [f"{r.get('kind')}/{r.get('name')}" for r in st.get("resources") or []
                           if r.get("status") != "Synced"]
            assert st.get("sync", {}).get("status") == "Synced" and not out_of_sync, (
                f"hard refresh {i + 1}: {st.get('sync')}, out of sync: {out_of_sync}")


@pytest.fixture(scope="module")
def argocd(kubeconfig: Path, kube: Kube) -> Iterator[ArgoCD]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    pid = cluster_dir() / "argocd" / "run" / "application-controller.pid"
    was_running = pid.exists()
    subprocess.run(["bash", str(ARGOCD_SH), "start"], env=env, check=True)
    yield ArgoCD(kube)
    if not was_running:
        subprocess.run(["bash", str(ARGOCD_SH), "stop"], env=env, check=False)


@pytest.fixture
def repo(namespace: str) -> Iterator[LocalRepo]:
    r = LocalRepo(namespace)
    yield r
    r.remove()


def test_model_deployment_health_as_argocd_reports_it(
        kube: Kube, operator: Operator, namespace: str, argocd: ArgoCD,
        repo: LocalRepo) -> None:
    # Ready, Degraded (credentials Secret missing) and scaled to zero, in one directory app.
    iris = model_deployment("iris", namespace)
    creds = model_deployment("creds", namespace, model={
        "version": "1", "uri": "s3://models/iris/1/model.skops", "digest": MODEL_DIGEST,
        "credentialsSecretRef": {"name": "s3-creds"}})
    idle = model_deployment("idle", namespace, replicas=0)
    for md in (iris, creds, idle):
        del md["metadata"]["namespace"]  # the Application's destination namespace
    repo.write("models/iris.yaml", [iris])
    repo.write("models/creds.yaml", [creds])
    repo.write("models/idle.yaml", [idle])
    first = repo.commit("three models")
    app = namespace
    argocd.create(app, repo, "models", namespace)
    try:
        argocd.wait_synced(app, first)
        healthy = argocd.wait_health(app, "ModelDeployment", "iris", "Healthy")
        argocd.wait_health(app, "ModelDeployment", "creds", "Degraded",
                           message="CredentialsNotFound")
        suspended = argocd.wait_health(app, "ModelDeployment", "idle", "Suspended")
        assert "ScaledToZero" in suspended.get("message", ""), suspended
        assert healthy.get("status") == "Healthy"
        # the worst of its resources is the Application's own health
        wait_for("application Degraded", lambda: argocd.get(app)["status"]["health"][
            "status"] == "Degraded", timeout=60)
        argocd.stays_synced(app)

        # A new version whose pods cannot be scheduled: Argo CD syncs it and shows the
        # rollout in progress (the old pods keep serving). The broken model removed: pruned.
        iris["spec"]["model"] = {"version": "2", "uri": "s3://models/iris/2/model.skops",
                                 "digest": MODEL_DIGEST}
        iris["spec"]["runtime"] = {"resources": {"requests": {"cpu": "1000"}}}
        repo.write("models/iris.yaml", [iris])
        (repo.tree / "models" / "creds.yaml").unlink()
        second = repo.commit("iris v2, creds removed")
        argocd.refresh(app)
        argocd.wait_synced(app, second)
        # (first, briefly, "Waiting for the Kustos operator to observe generation 2")
        argocd.wait_health(app, "ModelDeployment", "iris", "Progressing", message="RollingOut")
        wait_for("creds pruned", lambda: kube.get("md", "creds", namespace) is None,
                 timeout=60)
        wait_for("application Progressing", lambda: argocd.get(app)["status"]["health"][
            "status"] == "Progressing", timeout=60)
        argocd.stays_synced(app)

        # Back to a version that fits: Healthy again.
        del iris["spec"]["runtime"]
        repo.write("models/iris.yaml", [iris])
        third = repo.commit("iris v2 schedulable")
        argocd.refresh(app)
        argocd.wait_synced(app, third)
        argocd.wait_health(app, "ModelDeployment", "iris", "Healthy")
        # Healthy and Suspended: Suspended is the worse of the two
        wait_for("application Suspended", lambda: argocd.get(app)["status"]["health"][
            "status"] == "Suspended", timeout=60)
        argocd.stays_synced(app)
    finally:
        argocd.delete(app)


def test_chart_syncs_and_stays_synced(kube: Kube, operator: Operator, namespace: str,
                                      argocd: ArgoCD, repo: LocalRepo) -> None:
    repo.copy(REPO / "charts" / "kustos", "charts/kustos")
    rev = repo.commit("the chart")
    app = namespace
    release = f"k{namespace}"
    # In the test namespace: no operator pod (the test operator serves), no webhook (a
    # Fail-policy webhook without a pod behind it would refuse every model), and the CRDs
    # are the session's.
    values = {"replicaCount": 0, "webhook": {"enabled": False},
              "watchNamespaces": [namespace]}
    argocd.create(app, repo, "charts/kustos", namespace,
                  helm={"releaseName": release, "skipCrds": True, "valuesObject": values})
    try:
        st = argocd.wait_synced(app, rev)
        kinds = {(r["kind"], r["name"]) for r in st.get("resources") or []}
        assert ("Deployment", f"{release}-kustos") in kinds, kinds
        assert ("ClusterRole", f"{release}-kustos") in kinds, kinds
        wait_for("application Healthy", lambda: argocd.get(app)["status"]["health"][
            "status"] == "Healthy", timeout=120)
        deployment = kube.get("deployment", f"{release}-kustos", namespace)
        assert deployment is not None and deployment["spec"]["replicas"] == 0
        argocd.stays_synced(app)
    finally:
        argocd.delete(app)
    assert kube.get("clusterrole", f"{release}-kustos", "") is None


# overlay/: the sample and its store Secret, and operator/: the install, renamed so that its
# cluster roles are this test's own (kustomize's load restrictions: files inside the overlay,
# other kustomizations by directory).
OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {namespace}
resources:
- operator
- modeldeployment.yaml
- model-store.yaml
"""

OPERATOR_OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: {prefix}
resources:
- ../../manifests/install/without-webhook
patches:
# the session's CRDs and namespaces stay as they are
- target: {{kind: CustomResourceDefinition}}
  patch: |
    $patch: delete
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {{name: any}}
- target: {{kind: Namespace}}
  patch: |
    $patch: delete
    apiVersion: v1
    kind: Namespace
    metadata: {{name: any}}
# the test operator serves the models
- target: {{kind: Deployment}}
  patch: |
    - op: replace
      path: /spec/replicas
      value: 0
"""


def test_kustomize_install_and_sample_sync(kube: Kube, operator: Operator, namespace: str,
                                           argocd: ArgoCD, repo: LocalRepo) -> None:
    repo.copy(REPO / "manifests" / "install", "manifests/install")
    prefix = f"{namespace}-"
    repo.write("overlay/kustomization.yaml", OVERLAY.format(namespace=namespace))
    repo.write("overlay/operator/kustomization.yaml", OPERATOR_OVERLAY.format(prefix=prefix))
    shutil.copy(REPO / "manifests" / "samples" / "modeldeployment.yaml",
                repo.tree / "overlay" / "modeldeployment.yaml")
    repo.write("overlay/model-store.yaml", [{
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "model-store"},
        "stringData": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}}])
    rev = repo.commit("the kustomize install and a sample")
    app = namespace
    argocd.create(app, repo, "overlay", namespace)
    try:
        st = argocd.wait_synced(app, rev)
        kinds = {r["kind"] for r in st.get("resources") or []}
        assert {"ClusterRole", "Deployment", "ModelDeployment", "Secret"} <= kinds, kinds
        assert "CustomResourceDefinition" not in kinds
        assert ("ClusterRole", f"{prefix}kustos") in {
            (r["kind"], r["name"]) for r in st.get("resources") or []}
        argocd.wait_health(app, "ModelDeployment", "iris", "Healthy", timeout=240)
        wait_for("application Healthy", lambda: argocd.get(app)["status"]["health"][
            "status"] == "Healthy", timeout=120)
        argocd.stays_synced(app)
    finally:
        argocd.delete(app)
    assert kube.get("clusterrole", f"{prefix}kustos", "") is None
