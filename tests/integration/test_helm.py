"""The Helm chart installed into the real control plane, and the operator run as its identity.

kwok fakes pods, so the operator Deployment the chart creates never runs a container. The
test runs the same operator (`python -m kustos.cli run` with the Deployment's own args and
the chart's ConfigMap) on this machine, logged in with a token of the chart's
ServiceAccount: whatever the chart's RBAC does not grant fails here as it would in a pod.

The Kustos CRDs are shared with every other test session: they are installed only when
missing (`--skip-crds` otherwise) and never deleted. The chart's webhook configuration is
scoped to a namespace label no other test uses, and goes away with `helm uninstall`. Its
certificate is the operator's (the chart's default `webhook.certificate: operator`): the
operator processes create the Secret, set the caBundle and serve with it, as the chart's
ServiceAccount.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO
from conftest import OPERATOR_LOGS, Kube, free_port, wait_for
from helm_cli import CHART, Helm, chart_crds

pytestmark = pytest.mark.integration

SAMPLE = REPO / "manifests" / "samples" / "modeldeployment.yaml"
# Not the session prefix: the `operator` fixture of a concurrent test module must not act in
# the namespace this test's own operator watches.
UID = uuid.uuid4().hex[:6]
RELEASE = f"kustos-h{UID}"
RELEASE_NS = f"kh-{UID}-system"
WATCH_NS = f"kh-{UID}-models"
WEBHOOK_LABEL = f"kustos-helm-test-{UID}"


def values() -> list[str]:
    return [
        "--set", f"watchNamespaces={{{WATCH_NS}}}",
        "--set", "peering.enabled=true",
        # The webhook points at a ClusterIP nothing routes to here: only namespaces with this
        # label (one throwaway namespace below) are sent to it.
        "--set", f"webhook.namespaceSelector.matchLabels.{WEBHOOK_LABEL}=on",
        "--set", "webhook.timeoutSeconds=3",
    ]


@pytest.fixture(scope="module")
def helm(kubeconfig: Path) -> Helm:
    return Helm(kubeconfig)


@pytest.fixture(scope="module")
def release(helm: Helm, kube: Kube) -> Iterator[str]:
    """The chart installed as RELEASE in RELEASE_NS, watching WATCH_NS."""
    kube.create_namespace(WATCH_NS)
    # The sample names the model store's credentials (kwok pods never use them).
    kube.apply({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "model-store", "namespace": WATCH_NS},
                "stringData": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}})
    # The chart's operator pod stays on the kwok node: the test runs the operator process.
    kube.create_namespace(RELEASE_NS)
    missing = [n for n in chart_crds()
               if kube.run("get", "crd", n, check=False).returncode != 0]
    args = ["install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace",
            "--wait", "--timeout", "180s", *values()]
    if not missing:
        args.append("--skip-crds")
    helm.run(*args)
    try:
        yield RELEASE
    finally:
        helm.run("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait", check=False)
        for ns in (WATCH_NS, RELEASE_NS):
            kube.run("delete", "namespace", ns, "--wait=false", check=False)


def service_account_kubeconfig(kube: Kube, admin: Path, ns: str, sa: str, out: Path) -> Path:
    """A kubeconfig that logs in as ServiceAccount ns/sa with a TokenRequest token."""
    token = kube.run("create", "token", sa, "-n", ns, "--duration", "1h").stdout.strip()
    cfg = yaml.safe_load(admin.read_text())
    cluster = cfg["clusters"][0]
    out.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
        "current-context": sa,
    }))
    out.chmod(0o600)
    return out


def local_args(deployment: dict[str, Any], config: Path, metrics: int, health: int,
               webhook: int, tls: Path) -> list[str]:
    """The Deployment's operator args, with what only makes sense in a pod replaced: files
    under ``tls`` for the mounted Secret, loopback ports."""
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    out = []
    for arg in args:
        if arg.startswith("--config="):
            arg = f"--config={config}"
        elif arg.startswith("--metrics-port="):
            out.append("--metrics-bind=127.0.0.1")
            arg = f"--metrics-port={metrics}"
        elif arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{health}/healthz"
        elif arg.startswith("--webhook-port="):
            out.append("--webhook-bind=127.0.0.1")
            arg = f"--webhook-port={webhook}"
        elif arg.startswith(("--webhook-cert=", "--webhook-key=")):
            flag, _, path = arg.partition("=")
            arg = f"{flag}={tls / Path(path).name}"
        out.append(arg)
    return out


def test_helm_install_then_the_operator_as_its_service_account_serves_a_sample(
        helm: Helm, kube: Kube, kubeconfig: Path, release: str) -> None:
    status = json.loads(helm.run("status", release, "-n", RELEASE_NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    dep = kube.get("deployment", release, RELEASE_NS)
    assert dep is not None
    # kwok runs no container, but the Deployment's pod was scheduled and counts as ready.
    assert dep["status"].get("availableReplicas") == 1
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    assert kube.get("rolebinding", release, WATCH_NS) is not None
    assert kube.get("kopfpeering", "kustos", WATCH_NS) is not None

    who = f"system:serviceaccount:{RELEASE_NS}:{sa}"

    def can(*what: str) -> bool:
        proc = kube.run("auth", "can-i", *what, f"--as={who}", check=False)
        return proc.stdout.strip() == "yes"

    assert can("patch", "modeldeployments.kustos.dev/status", "-n", WATCH_NS)
    assert can("create", "deployments.apps", "-n", WATCH_NS)
    assert not can("create", "deployments.apps", "-n", "default")
    assert not can("get", "secrets", "-n", "kube-system")
    # The webhook certificate: its one Secret in the release namespace (create: any name,
    # there only), its one webhook configuration's caBundle.
    secret = f"{release}-webhook-cert"
    assert can("get", f"secrets/{secret}", "-n", RELEASE_NS)
    assert can("patch", f"secrets/{secret}", "-n", RELEASE_NS)
    assert can("create", "secrets", "-n", RELEASE_NS)
    assert not can("get", "secrets/other", "-n", RELEASE_NS)
    assert not can("list", "secrets", "-n", RELEASE_NS)
    assert not can("create", "secrets", "-n", "default")
    assert can("patch", f"validatingwebhookconfigurations/{release}-webhook")
    assert not can("patch", "validatingwebhookconfigurations/other")
    assert not can("create", "validatingwebhookconfigurations")

    with chart_operators(kube, kubeconfig, release, "one") as ops:
        op = ops[0]
        proc, health, log_path = op.proc, op.health, op.log
        assert isinstance(proc.args, list) and "--peering=kustos" in proc.args
        _serve_sample(kube, proc, health, log_path)
        _webhook_answers_with_the_chart_certificate(kube, release, op.webhook)
    text = log_path.read_text()
    assert "Forbidden" not in text and " 403" not in text, \
        f"the chart's RBAC refused the operator something; see {log_path}"


@dataclasses.dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    health: int
    webhook: int
    log: Path


@contextlib.contextmanager
def chart_operators(kube: Kube, kubeconfig: Path, release: str, tag: str,
                    replicas: int = 1) -> Iterator[list[Replica]]:
    """``replicas`` operator processes run as the chart's Deployment would run them: its
    args, its ConfigMap, its ServiceAccount's identity."""
    dep = kube.get("deployment", release, RELEASE_NS)
    cm = kube.get("configmap", f"{release}-config", RELEASE_NS)
    assert dep is not None and cm is not None
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    procs: list[Replica] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(cm["data"]["config.yaml"])
        sa_kubeconfig = service_account_kubeconfig(kube, kubeconfig, RELEASE_NS, sa,
                                                   Path(tmp) / "kubeconfig")
        OPERATOR_LOGS.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(replicas):
                health, webhook = free_port(), free_port()
                args = local_args(dep, config, free_port(), health, webhook, Path(tmp))
                assert f"--namespace={WATCH_NS}" in args
                log_path = OPERATOR_LOGS / f"operator-helm-{UID}-{tag}{i}.log"
                with log_path.open("ab") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "kustos.cli", *args],
                        env={**os.environ, "KUBECONFIG": str(sa_kubeconfig)},
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                procs.append(Replica(proc, health, webhook, log_path))
            yield procs
        finally:
            for r in procs:
                r.proc.terminate()
            for r in procs:
                try:
                    r.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait(timeout=10)


def _serve_sample(kube: Kube, proc: subprocess.Popen[bytes], health: int,
                  log_path: Path) -> None:
    import urllib.request

    def live() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_for("operator liveness", live, timeout=60)
    sample = yaml.safe_load(SAMPLE.read_text())
    sample["metadata"]["namespace"] = WATCH_NS
    kube.apply(sample)

    def ready() -> dict[str, Any] | None:
        assert proc.poll() is None, f"operator exited; see {log_path}"
        md = kube.get("md", "iris", WATCH_NS)
        conds = {c["type"]: c["status"] for c in ((md or {}).get("status") or {})
                 .get("conditions") or []}
        return md if conds.get("Ready") == "True" else None

    md = wait_for("sample iris Ready under the chart's RBAC", ready, timeout=180)
    assert md["status"]["readyReplicas"] == 2
    dep = json.loads(kube.run("get", "deployment", "iris", "-n", WATCH_NS, "-o", "json",
                              "--show-managed-fields").stdout)
    managers = {m["manager"] for m in dep["metadata"]["managedFields"]}
    assert "kustos" in managers
    # Peering: this operator announced itself in the chart's KopfPeering.
    peering = kube.get("kopfpeering", "kustos", WATCH_NS)
    assert peering is not None and peering.get("status"), "no peer in the KopfPeering"


def _operator_ca(kube: Kube, release: str) -> str:
    """The caBundle the operator set in the chart's configuration, once it equals the CA in
    the Secret it keeps."""
    def current() -> str | None:
        secret = kube.get("secret", f"{release}-webhook-cert", RELEASE_NS)
        vwc = json.loads(kube.run("get", "validatingwebhookconfiguration",
                                  f"{release}-webhook", "-o", "json").stdout)
        ca = vwc["webhooks"][0]["clientConfig"].get("caBundle")
        if secret is None or ca != secret["data"]["ca.crt"]:
            return None
        return base64.b64decode(ca).decode()
    ca: str = wait_for("the operator's caBundle in the webhook configuration", current,
                       timeout=60)
    return ca


def _webhook_answers_with_the_chart_certificate(kube: Kube, release: str, port: int) -> None:
    """An AdmissionReview over TLS, verified against the caBundle for the Service's name:
    what the API server would do through the Service (which nothing routes to here)."""
    ca = _operator_ca(kube, release)
    vwc = json.loads(kube.run("get", "validatingwebhookconfiguration", f"{release}-webhook",
                              "-o", "json").stdout)
    hook = vwc["webhooks"][0]
    service = hook["clientConfig"]["service"]
    server_name = f"{service['name']}.{service['namespace']}.svc"
    sample = yaml.safe_load(SAMPLE.read_text())
    sample["metadata"]["namespace"] = WATCH_NS
    uid = str(uuid.uuid4())
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "kustos.dev", "version": "v1alpha1",
                             "kind": "ModelDeployment"},
        "resource": {"group": "kustos.dev", "version": "v1alpha1",
                     "resource": "modeldeployments"},
        "name": "iris", "namespace": WATCH_NS, "operation": "CREATE",
        "userInfo": {"username": "helm-test"}, "object": sample, "oldObject": None,
        "dryRun": True}}
    context = ssl.create_default_context(cadata=ca)

    def answer() -> dict[str, Any] | None:
        body = json.dumps(review).encode()
        request = (f"POST {service['path']} HTTP/1.1\r\nHost: {server_name}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode() + body
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(request)
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        except ConnectionRefusedError:
            return None
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        result: dict[str, Any] = json.loads(payload)
        return result

    response = wait_for("the operator's webhook on its port", answer, timeout=30)
    assert response["response"]["uid"] == uid
    assert isinstance(response["response"]["allowed"], bool)


def test_the_chart_webhook_is_registered_and_scoped(kube: Kube, release: str) -> None:
    vwc = kube.run("get", "validatingwebhookconfiguration", f"{release}-webhook", "-o",
                   "json")
    hook = json.loads(vwc.stdout)["webhooks"][0]
    assert hook["namespaceSelector"]["matchLabels"] == {WEBHOOK_LABEL: "on"}
    assert hook["clientConfig"]["service"]["path"] == "/validate-modeldeployment"
    # The chart renders no certificate; the caBundle is the operator's (first test).
    assert kube.get("secret", f"{release}-webhook-tls", RELEASE_NS) is None
    # In a labelled namespace the API server really consults it (and, unreachable here,
    # refuses: failurePolicy Fail). Other namespaces are not affected.
    ns = f"kh-{UID}-hooked"
    kube.create_namespace(ns)
    try:
        kube.run("label", "namespace", ns, f"{WEBHOOK_LABEL}=on")
        sample = yaml.safe_load(SAMPLE.read_text())
        sample["metadata"]["namespace"] = ns

        def refused() -> str | None:
            proc = kube.apply(sample, check=False)
            assert proc.returncode != 0, "the webhook was not called"
            return proc.stderr if "modeldeployments.validate.kustos.dev" in proc.stderr \
                else None

        message = wait_for("a call to the chart's webhook", refused, timeout=30)
        assert "failed calling webhook" in message
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def test_upgrade_keeps_the_webhook_certificate_and_rolls_on_config(
        helm: Helm, kube: Kube, release: str) -> None:
    """The operator's Secret is not Helm's, and Helm's three-way merge leaves the caBundle
    the operator set (the chart renders none)."""
    def secret() -> dict[str, str]:
        s = kube.get("secret", f"{release}-webhook-cert", RELEASE_NS)
        assert s is not None, "no webhook certificate: the operator of the first test makes it"
        data: dict[str, str] = s["data"]
        return data

    def ca_bundle() -> str:
        vwc = json.loads(kube.run("get", "validatingwebhookconfiguration",
                                  f"{release}-webhook", "-o", "json").stdout)
        value: str = vwc["webhooks"][0]["clientConfig"].get("caBundle", "")
        return value

    def checksum() -> str:
        d = kube.get("deployment", release, RELEASE_NS)
        assert d is not None
        value: str = d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    before, sum_before, ca_before = secret(), checksum(), ca_bundle()
    assert ca_before == before["ca.crt"]
    helm.run("upgrade", release, str(CHART), "--namespace", RELEASE_NS, "--skip-crds",
             *values(), "--set", "config.history_limit=4", "--wait", "--timeout", "180s")
    assert secret() == before, "helm upgrade changed the webhook certificate"
    assert ca_bundle() == ca_before, "helm upgrade removed the operator's caBundle"
    assert checksum() != sum_before
    cm = kube.get("configmap", f"{release}-config", RELEASE_NS)
    assert cm is not None and yaml.safe_load(cm["data"]["config.yaml"])["history_limit"] == 4
    assert base64.b64decode(before["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")


def test_two_peered_replicas_one_acts(kube: Kube, kubeconfig: Path, release: str) -> None:
    """replicaCount > 1: the peers see each other in the chart's KopfPeering with distinct
    (random) priorities; exactly one, the highest, reconciles, the other stays paused. Both
    start without a webhook certificate: they race to create it, and serve the same one."""
    sample = yaml.safe_load(SAMPLE.read_text())
    sample["metadata"].update(name="iris-peered", namespace=WATCH_NS)
    kube.run("delete", "secret", f"{release}-webhook-cert", "-n", RELEASE_NS,
             "--ignore-not-found")
    with chart_operators(kube, kubeconfig, release, "peer", replicas=2) as ops:
        for r in ops:
            _webhook_answers_with_the_chart_certificate(kube, release, r.webhook)
        outcomes = [ln for r in ops for ln in r.log.read_text().splitlines()
                    if "webhook certificate from Secret" in ln]
        assert len(outcomes) == 2, outcomes
        assert sum("(created)" in ln for ln in outcomes) == 1, outcomes
        assert sum("(adopted)" in ln or "(read)" in ln for ln in outcomes) == 1, outcomes

        def peers() -> dict[str, Any] | None:
            p = kube.get("kopfpeering", "kustos", WATCH_NS)
            status = (p or {}).get("status") or {}
            live = {k: v for k, v in status.items() if v and v.get("lifetime", 0) > 0}
            return live if len(live) >= 2 else None

        live = wait_for("both replicas in the KopfPeering", peers, timeout=60)
        assert len({v["priority"] for v in live.values()}) == len(live), \
            f"peers with equal priority pause each other: {live}"
        kube.apply(sample)

        def ready() -> bool:
            md = kube.get("md", "iris-peered", WATCH_NS)
            return any(c["type"] == "Ready" and c["status"] == "True"
                       for c in ((md or {}).get("status") or {}).get("conditions") or [])

        wait_for("iris-peered Ready with two peered replicas", ready, timeout=90)
        # Kopf starts each peer paused. A peer alone for a moment resumes, then pauses again
        # when it sees a higher priority: what counts is each one's latest transition.
        def last_transition(log: Path) -> str:
            lines = [ln for ln in log.read_text().splitlines()
                     if "Pausing operations" in ln or "Resuming operations" in ln]
            return lines[-1] if lines else "paused from the start"

        active = [r.log for r in ops if "Resuming operations" in last_transition(r.log)]
        assert len(active) == 1, f"{len(active)} replicas are active"


def test_uninstall_removes_the_release_but_keeps_the_crds(
        helm: Helm, kube: Kube, release: str) -> None:
    helm.run("uninstall", release, "--namespace", RELEASE_NS, "--wait")
    assert kube.get("deployment", release, RELEASE_NS) is None
    for kind, name in (("clusterrole", release), ("clusterrolebinding", release),
                       ("validatingwebhookconfiguration", f"{release}-webhook")):
        proc = kube.run("get", kind, name, check=False)
        assert proc.returncode != 0 and "NotFound" in proc.stderr, f"{kind}/{name} left behind"
    for crd in chart_crds():
        assert kube.run("get", "crd", crd, check=False).returncode == 0, f"CRD {crd} deleted"
    # The ModelDeployment the operator served is still there: uninstalling stops the operator,
    # it does not delete users' models.
    assert kube.get("md", "iris", WATCH_NS) is not None


def test_the_kustomize_install_passes_server_side_dry_run(kube: Kube) -> None:
    """manifests/install (the operator's webhook certificate: no cert-manager kinds) and
    manifests/install/without-webhook in a throwaway namespace."""
    ns = f"kh-{UID}-kustomize"
    kube.create_namespace(ns)
    try:
        for sub, skip in (("manifests/install", set[str]()),
                          ("manifests/install/without-webhook", set())):
            built = kube.run("kustomize", str(REPO / sub)).stdout
            docs = []
            for d in yaml.safe_load_all(built):
                if not d or d["kind"] in skip | {"Namespace"}:
                    continue
                if d["metadata"].get("namespace") == "kustos-system":
                    d["metadata"]["namespace"] = ns
                docs.append(d)
            proc = kube.run("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                            "--field-manager=kustos-install-test", "-f", "-",
                            input=yaml.safe_dump_all(docs), check=False)
            assert proc.returncode == 0, f"{sub}: {proc.stderr}"
            assert proc.stdout.count("(server dry run)") == len(docs)
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize("case", ["chart-default", "chart-minimal"])
def test_golden_values_pass_server_side_dry_run(helm: Helm, kube: Kube, case: str) -> None:
    """What the chart renders for the golden values is what the API server accepts."""
    ns = f"kh-{UID}-{case.removeprefix('chart-')}"
    values_file = REPO / "tests" / "unit" / "golden" / f"{case}.values.yaml"
    rendered = helm.run("template", "kustos", str(CHART), "--namespace", ns,
                        "--values", str(values_file)).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kube.create_namespace(ns)
    try:
        proc = kube.run("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                        "--field-manager=kustos-chart-test", "-f", "-",
                        input=yaml.safe_dump_all(docs), check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("(server dry run)") == len(docs)
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
