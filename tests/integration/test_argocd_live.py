"""Argo CD for real: the application-controller and repo-server of Argo CD (built from its Go
module by hack/argocd.sh) run against the local cluster, sync from a Git repository served by
`git daemon` on loopback, and judge Kustos' objects with the Lua health checks of
manifests/argocd/argocd-cm.yaml. What is asserted is what Argo CD itself writes into the
Application: `.status.health`, `.status.resources[].health` (the controller runs with
--persist-resource-health) and `.status.sync.status`, also across hard refreshes.

The test operator (conftest) serves the kwok models; those Applications' destinations are
this session's namespaces, and the chart and kustomize install run there with 0 operator
replicas, no webhook and without the CRDs. The whole chart, with its CRDs and the admission
webhook (the operator keeps its certificate, webhook.certificate: operator), is synced with
the settings of manifests/argocd/application.yaml into namespaces of its own, its operator a
pod of the locally built image on the real node (realpods.py); its Application is deleted
without cascading (the CRDs are the whole session's) and the test removes the rest.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO, cluster_dir
from conftest import MODEL_DIGEST, OPERATOR_LOGS, Kube, Operator, model_deployment, wait_for
from helm_cli import CHART, chart_crds
from realpods import IRIS_V1, IRIS_V2, RESTRICTED, real_model, require_real_node, store

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

ARGOCD_SH = REPO / "hack" / "argocd.sh"
# The Application we tell users to create: its sync options and ignoreDifferences are used.
SHIPPED_APPLICATION = REPO / "manifests" / "argocd" / "application.yaml"
TRACKING = "argocd.argoproj.io/tracking-id"
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

    def create(self, name: str, repo: LocalRepo, path: str, namespace: str, *,
               cascade: bool = True, sync_options: list[str] | None = None,
               ignore_differences: list[dict[str, Any]] | None = None,
               **source: Any) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": "argocd"}
        if cascade:
            # deleting the Application deletes what it synced (cluster roles too)
            meta["finalizers"] = ["resources-finalizer.argocd.argoproj.io"]
        spec: dict[str, Any] = {
            "project": "default",
            "source": {"repoURL": repo.url, "targetRevision": "main", "path": path, **source},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": namespace},
            "syncPolicy": {"automated": {"prune": True, "selfHeal": True}},
        }
        if sync_options:
            spec["syncPolicy"]["syncOptions"] = sync_options
        if ignore_differences:
            spec["ignoreDifferences"] = ignore_differences
        self.kube.apply({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                         "metadata": meta, "spec": spec})

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

    def status(self, name: str) -> tuple[str, str]:
        """(sync status, health status) of the Application."""
        st = self.get(name).get("status") or {}
        return (str((st.get("sync") or {}).get("status")),
                str((st.get("health") or {}).get("status")))

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


# --- the HPA owns the Deployment's replicas ------------------------------------------------


def test_the_hpa_owns_replicas_and_argocd_stays_synced_and_healthy(
        kube: Kube, operator: Operator, namespace: str, argocd: ArgoCD,
        repo: LocalRepo) -> None:
    """A ModelDeployment with spec.autoscaling in git: the Deployment (a child, not in git)
    is created without replicas, the real HPA controller raises it to minReplicas and later
    clamps a manual scale-up to maxReplicas; the ModelDeployment never goes OutOfSync, the
    operator never takes replicas back, and Argo CD ends Healthy with the HPA's count."""
    md = model_deployment("scaled", namespace, autoscaling={
        "minReplicas": 2, "maxReplicas": 3, "targetCPUUtilization": 70})
    del md["spec"]["replicas"]
    del md["metadata"]["namespace"]
    repo.write("models/scaled.yaml", [md])
    rev = repo.commit("an autoscaled model")
    app = namespace
    argocd.create(app, repo, "models", namespace)
    seen: list[tuple[str, str]] = []

    def sample() -> tuple[str, str]:
        status = argocd.status(app)
        seen.append(status)
        return status

    def deployment() -> dict[str, Any]:
        dep = kube.get("deployment", "scaled", namespace)
        assert dep is not None
        return dep

    def at(replicas: int) -> dict[str, Any] | None:
        """The Deployment at ``replicas`` (spec and ready), the ModelDeployment reporting
        them, Argo CD Healthy; every look also records Argo CD's verdict."""
        sample()
        dep = deployment()
        md_now = kube.get("md", "scaled", namespace) or {}
        if (dep["spec"]["replicas"] == replicas
                and dep.get("status", {}).get("readyReplicas") == replicas
                and (md_now.get("status") or {}).get("readyReplicas") == replicas
                and (argocd.resource_health(app, "ModelDeployment", "scaled") or {}).get(
                    "status") == "Healthy"
                and argocd.status(app) == ("Synced", "Healthy")):
            return dep
        return None

    try:
        argocd.wait_synced(app, rev)
        # Rendered without spec.replicas: the API server defaults it to 1, the HPA (no
        # metrics needed below minReplicas) raises it to 2.
        wait_for("the HPA's 2 replicas, Healthy in Argo CD", lambda: at(2), timeout=180,
                 interval=1)
        hpa = kube.get("hpa", "scaled", namespace)
        assert hpa is not None and hpa["spec"]["minReplicas"] == 2
        assert "kustos" not in _replicas_owners(kube, namespace), "the operator owns replicas"
        first = len(seen)
        # More than maxReplicas (as someone scaling by hand): the HPA takes it back to 3.
        kube.run("scale", "deployment", "scaled", "-n", namespace, "--replicas=6")
        wait_for("the HPA's clamp to 3 replicas, Healthy in Argo CD", lambda: at(3),
                 timeout=180, interval=1)
        events = [e for e in kube.events(namespace, "scaled")
                  if e["reason"] == "SuccessfulRescale"]
        assert any("above" in e["message"] for e in events), [e["message"] for e in events]
        assert any("below" in e["message"] for e in events), [e["message"] for e in events]
        # The operator reconciles after the HPA (status above), and leaves replicas alone.
        assert "kustos" not in _replicas_owners(kube, namespace)
        assert deployment()["spec"]["replicas"] == 3
        argocd.stays_synced(app)
        assert deployment()["spec"]["replicas"] == 3
        # Synced at every look, from the first Healthy on (the sync itself may be seen
        # before it completes); Healthy except while new pods start.
        assert {sync for sync, _ in seen[first - 1:]} == {"Synced"}, seen
        assert {health for _, health in seen[first - 1:]} <= {"Healthy", "Progressing"}, seen
    finally:
        argocd.delete(app)


def _replicas_owners(kube: Kube, namespace: str) -> list[str]:
    """The field managers of the Deployment's spec.replicas (the HPA's writes through the
    scale subresource are not recorded there: none, as long as the operator leaves it out)."""
    dep = json.loads(kube.run("get", "deployment", "scaled", "-n", namespace, "-o", "json",
                              "--show-managed-fields").stdout)
    return [m["manager"] for m in dep["metadata"]["managedFields"]
            if "f:replicas" in (m.get("fieldsV1", {}).get("f:spec") or {})]


# --- the whole chart: CRDs, the webhook with the operator's certificate, a real pod -----------


@dataclass
class ChartApp:
    app: str
    release: str
    system_ns: str
    models_ns: str
    repo: LocalRepo
    revision: str
    uid: str

    def webhook_answers(self, kube: Kube) -> bool:
        """The API server reaches the webhook through its Service and trusts its
        certificate (a server-side dry run in the checked namespace)."""
        probe = real_model("webhook-probe", self.models_ns, "s3://models/probe/model.skops",
                           "sha256:" + "0" * 64)
        proc = kube.run("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe),
                        check=False)
        if "failed calling webhook" in proc.stderr:
            return False
        assert proc.returncode == 0, proc.stderr
        return True

    def logs(self, kube: Kube) -> str:
        return kube.run("logs", "-n", self.system_ns, "-l",
                        f"app.kubernetes.io/instance={self.release}", "--tail=-1",
                        check=False).stdout


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = (_merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


@pytest.fixture(scope="module")
def argocd_chart(kube: Kube, argocd: ArgoCD) -> Iterator[ChartApp]:
    """The chart from Git, CRDs and webhook included, synced the way
    manifests/argocd/application.yaml says, with the locally built operator image on the
    real node, watching one namespace whose objects alone go through its webhook."""
    require_real_node(kube)
    uid = uuid.uuid4().hex[:6]
    release, system_ns, models_ns = f"kustos-a{uid}", f"a{uid}-system", f"a{uid}-models"
    label = f"kustos-argocd-{uid}"
    kube.create_namespace(system_ns, kwok=False, labels=RESTRICTED)
    kube.create_namespace(models_ns, kwok=False, labels={**RESTRICTED, label: "on"})
    repo = LocalRepo(f"chart-{uid}")
    repo.copy(CHART, "charts/kustos")
    rev = repo.commit("the chart")
    shipped = yaml.safe_load(SHIPPED_APPLICATION.read_text())["spec"]
    values = _merge(shipped["source"]["helm"].get("valuesObject") or {}, {
        "watchNamespaces": [models_ns],
        # The image is imported into the node, never pulled.
        "image": {"pullPolicy": "Never"},
        "webhook": {"namespaceSelector": {"matchLabels": {label: "on"}}},
    })
    app = f"chart-{uid}"
    chart = ChartApp(app, release, system_ns, models_ns, repo, rev, uid)
    # Not cascading: deleting the Application must not delete the session's CRDs.
    argocd.create(app, repo, "charts/kustos", system_ns, cascade=False,
                  sync_options=shipped["syncPolicy"].get("syncOptions"),
                  ignore_differences=shipped.get("ignoreDifferences"),
                  helm={"releaseName": shipped["source"]["helm"]["releaseName"].replace(
                      "kustos", release), "valuesObject": values})
    try:
        yield chart
    finally:
        OPERATOR_LOGS.mkdir(parents=True, exist_ok=True)
        (OPERATOR_LOGS / f"operator-{release}.log").write_text(chart.logs(kube))
        argocd.delete(app)
        kube.run("delete", "validatingwebhookconfiguration,clusterrolebinding,clusterrole",
                 "-l", f"app.kubernetes.io/instance={release}", "--ignore-not-found",
                 check=False)
        for ns in (models_ns, system_ns):
            kube.run("delete", "namespace", ns, "--wait=false", check=False)
        _release_crds(kube, app)
        repo.remove()


def _release_crds(kube: Kube, app: str) -> None:
    """The CRDs stay, but not what the gone Application left on them: its tracking mark and
    Argo CD's share of their fields (a field still owned by argocd-controller would survive
    its removal from the CRDs by the session's own server-side apply)."""
    for crd in chart_crds():
        proc = kube.run("get", "crd", crd, "-o", "json", "--show-managed-fields", check=False)
        if proc.returncode != 0:
            continue
        meta = json.loads(proc.stdout)["metadata"]
        mark = (meta.get("annotations") or {}).get(TRACKING, "")
        fields = meta.get("managedFields") or []
        kept = [m for m in fields if m.get("manager") != "argocd-controller"]
        patch: dict[str, Any] = {}
        if mark.startswith(f"{app}:"):
            patch["annotations"] = {TRACKING: None}
        if kept and len(kept) != len(fields):
            patch["managedFields"] = kept
        if patch:
            kube.run("patch", "crd", crd, "--type=merge", "-p",
                     json.dumps({"metadata": patch}), check=False)


def _ca_bundle(kube: Kube, release: str) -> str | None:
    vwc = json.loads(kube.run("get", "validatingwebhookconfiguration", f"{release}-webhook",
                              "-o", "json").stdout)
    value = vwc["webhooks"][0]["clientConfig"].get("caBundle")
    return str(value) if value else None


def test_the_whole_chart_with_the_webhook_syncs_and_stays_synced(
        kube: Kube, argocd: ArgoCD, argocd_chart: ChartApp) -> None:
    c = argocd_chart
    st = argocd.wait_synced(c.app, c.revision, timeout=300)
    kinds = {(r["kind"], r["name"]) for r in st.get("resources") or []}
    for want in (("CustomResourceDefinition", "modeldeployments.kustos.dev"),
                 ("CustomResourceDefinition", "governancepolicies.kustos.dev"),
                 ("ValidatingWebhookConfiguration", f"{c.release}-webhook"),
                 ("Service", f"{c.release}-webhook"), ("Deployment", c.release),
                 ("Role", f"{c.release}-webhook"), ("ClusterRole", f"{c.release}-webhook")):
        assert want in kinds, (want, sorted(kinds))
    # Nothing of the certificate is rendered: no Secret for Argo CD to see change.
    assert not [k for k in kinds if k[0] in ("Secret", "Certificate")], sorted(kinds)
    wait_for("application Healthy (the operator pod Ready on the real node)",
             lambda: argocd.status(c.app) == ("Synced", "Healthy"), timeout=300, interval=1)
    # Through the Service, with the certificate the operator made and the caBundle it set.
    wait_for("the webhook answering through its Service", lambda: c.webhook_answers(kube),
             timeout=120, interval=1)
    secret = kube.get("secret", f"{c.release}-webhook-cert", c.system_ns)
    assert secret is not None
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustos"
    assert TRACKING not in (secret["metadata"].get("annotations") or {})
    ca = secret["data"]["ca.crt"]
    assert _ca_bundle(kube, c.release) == ca

    # Three hard refreshes: a fresh `helm template` each time, compared with the live
    # objects (the CRDs, and the configuration whose caBundle the operator set).
    argocd.stays_synced(c.app)
    assert _ca_bundle(kube, c.release) == ca
    # The same without the shipped ignoreDifferences: Argo CD's diff leaves out the fields
    # the chart does not render, so the caBundle alone never makes it OutOfSync.
    shipped = argocd.get(c.app)["spec"].get("ignoreDifferences")
    assert shipped, "application.yaml's ignoreDifferences"
    kube.run("patch", "application", c.app, "-n", "argocd", "--type=json", "-p",
             '[{"op": "remove", "path": "/spec/ignoreDifferences"}]')
    argocd.stays_synced(c.app)
    kube.run("patch", "application", c.app, "-n", "argocd", "--type=merge", "-p",
             json.dumps({"spec": {"ignoreDifferences": shipped}}))

    # A change in Git: Argo CD applies the chart again (the webhook configuration without a
    # caBundle) and the operator pod restarts with the new config. The caBundle stays, the
    # new pod serves the certificate it finds, and everything stays Synced.
    values = c.repo.tree / "charts" / "kustos" / "values.yaml"
    text = values.read_text()
    assert "  history_limit: 10\n" in text
    values.write_text(text.replace("  history_limit: 10\n", "  history_limit: 4\n"))
    before = kube.get("deployment", c.release, c.system_ns)
    assert before is not None
    second = c.repo.commit("history_limit 4")
    argocd.refresh(c.app)
    argocd.wait_synced(c.app, second, timeout=180)

    def rolled() -> bool:
        dep = kube.get("deployment", c.release, c.system_ns) or {}
        st = dep.get("status") or {}
        return bool(dep["metadata"]["generation"] > before["metadata"]["generation"]
                    and st.get("observedGeneration") == dep["metadata"]["generation"]
                    and st.get("updatedReplicas") == st.get("availableReplicas") == 1
                    and not st.get("unavailableReplicas"))
    wait_for("the operator rolled to the new config", rolled, timeout=300, interval=1)
    wait_for("the webhook answering after the restart", lambda: c.webhook_answers(kube),
             timeout=120, interval=1)
    assert _ca_bundle(kube, c.release) == ca
    secret_after = kube.get("secret", f"{c.release}-webhook-cert", c.system_ns)
    assert secret_after is not None and secret_after["data"] == secret["data"]
    logs = c.logs(kube)
    assert f"webhook certificate from Secret {c.system_ns}/{c.release}-webhook-cert (read)" \
        in logs, logs[-3000:]
    # No key material in the operator's log.
    assert "PRIVATE KEY" not in logs
    for field in ("tls.key", "ca.key"):
        pem = base64.b64decode(secret["data"][field]).decode().splitlines()
        assert pem[1] not in logs and secret["data"][field][:40] not in logs
    wait_for("application Synced and Healthy", lambda: argocd.status(c.app) == (
        "Synced", "Healthy"), timeout=120, interval=1)
    argocd.stays_synced(c.app)


def test_a_wrong_digest_on_the_real_node_is_degraded_in_argocd(
        kube: Kube, argocd: ArgoCD, argocd_chart: ChartApp,
        model_store: dict[str, str]) -> None:
    """A ModelDeployment in Git whose model file does not match its digest: the real fetch
    init container refuses it on the real node, the operator reports ModelFetchFailed, and
    Argo CD shows the resource and the Application Degraded with that reason."""
    c = argocd_chart
    # The store's credentials are not in Git.
    kube.apply(store("secret", "-n", c.models_ns))
    # v1's file with v2's digest: a tampered or mixed-up artifact.
    md = real_model("tampered", c.models_ns, IRIS_V1, model_store[IRIS_V2], replicas=1)
    del md["metadata"]["namespace"]
    repo = LocalRepo(f"models-{c.uid}")
    repo.write("models/tampered.yaml", [md])
    rev = repo.commit("a model with a wrong digest")
    app = f"models-{c.uid}"
    argocd.create(app, repo, "models", c.models_ns)
    try:
        argocd.wait_synced(app, rev)
        health = argocd.wait_health(app, "ModelDeployment", "tampered", "Degraded",
                                    timeout=300, message="ModelFetchFailed")
        assert "digest" in health["message"].lower(), health
        assert model_store[IRIS_V2].removeprefix("sha256:")[:12] in health["message"], health
        wait_for("application Degraded", lambda: argocd.status(app) == ("Synced", "Degraded"),
                 timeout=60, interval=1)
        argocd.stays_synced(app)
    finally:
        argocd.delete(app)
        repo.remove()
