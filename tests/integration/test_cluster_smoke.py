"""The local control plane does what the rest of the test suite relies on.

Real etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on 127.0.0.1,
started by hack/cluster.sh through cluster.ensure_cluster(). Nothing here is mocked: pods
are bound by the scheduler, Deployments made Available by the controller-manager, tokens
signed and reviewed by the apiserver, owner references collected by the garbage collector.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cluster import ensure_cluster, kubectl, namespace_manifest

pytestmark = pytest.mark.integration

NODE = "kwok-node-0"

RESTRICTED_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}


# Own fixtures (not conftest's kubeconfig/namespace): the smoke test needs no CRDs and
# must fail only for the control plane's sake.
@pytest.fixture(scope="module")
def kubeconfig_smoke() -> Path:
    return ensure_cluster()


@pytest.fixture
def restricted_ns(kubeconfig_smoke: Path) -> Iterator[str]:
    """A fresh namespace enforcing the restricted Pod Security Standard."""
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    kubectl("create", "-f", "-", kubeconfig=kubeconfig_smoke,
            input=json.dumps(namespace_manifest(name)))
    kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        kubeconfig=kubeconfig_smoke,
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", kubeconfig=kubeconfig_smoke, check=False)


def apply(kubeconfig: Path, *manifests: dict, check: bool = True):
    doc = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    return kubectl("apply", "-f", "-", kubeconfig=kubeconfig, input=json.dumps(doc), check=check)


def get_json(kubeconfig: Path, *args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json", kubeconfig=kubeconfig).stdout)


def pod(name: str, namespace: str, security: dict, container_security: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "securityContext": security,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "securityContext": container_security,
                }
            ],
        },
    }


def test_node_is_ready_with_room_for_dozens_of_pods(kubeconfig_smoke: Path) -> None:
    node = get_json(kubeconfig_smoke, "node", NODE)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert int(node["status"]["allocatable"]["pods"]) >= 50
    # Only the kwok taint: pods come here from namespaces that tolerate it (cluster.py).
    taints = [t for t in node["spec"].get("taints", [])
              if t["effect"] in ("NoSchedule", "NoExecute")]
    assert [t["key"] for t in taints] == ["kwok.x-k8s.io/node"]


def test_deployment_becomes_available(kubeconfig_smoke: Path, restricted_ns: str) -> None:
    labels = {"app": "smoke"}
    container = {
        "name": "main",
        "image": "registry.k8s.io/pause:3.10",
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
    }
    init = {k: v for k, v in container.items() if k != "readinessProbe"} | {"name": "fetch"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "smoke", "namespace": restricted_ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": RESTRICTED_POD_SECURITY,
                    "initContainers": [init],
                    "containers": [container],
                },
            },
        },
    }
    start = time.monotonic()
    apply(kubeconfig_smoke, deployment)
    kubectl(
        "-n",
        restricted_ns,
        "wait",
        "--for=condition=Available",
        "deployment/smoke",
        "--timeout=60s",
        kubeconfig=kubeconfig_smoke,
        timeout=90,
    )
    assert time.monotonic() - start < 60

    status = get_json(kubeconfig_smoke, "-n", restricted_ns, "deployment", "smoke")["status"]
    assert status["availableReplicas"] == 2
    pods = get_json(kubeconfig_smoke, "-n", restricted_ns, "pods", "-l", "app=smoke")["items"]
    assert len(pods) == 2
    for p in pods:
        assert p["spec"]["nodeName"] == NODE  # bound by kube-scheduler
        assert p["status"]["phase"] == "Running"
        assert p["status"].get("podIP")
        conditions = {c["type"]: c["status"] for c in p["status"]["conditions"]}
        assert conditions["Ready"] == "True"
        (init,) = p["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["reason"] == "Completed"
        # the ServiceAccount admission plugin projected a token volume
        assert any(v.get("projected") for v in p["spec"]["volumes"])


def test_service_account_token_passes_token_review(
    kubeconfig_smoke: Path, restricted_ns: str
) -> None:
    kubectl(
        "-n", restricted_ns, "create", "serviceaccount", "reviewer", kubeconfig=kubeconfig_smoke
    )
    for audience in (None, "openbao"):
        extra = ["--audience", audience] if audience else []
        token = kubectl(
            "-n",
            restricted_ns,
            "create",
            "token",
            "reviewer",
            "--duration=10m",
            *extra,
            kubeconfig=kubeconfig_smoke,
        ).stdout.strip()
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        if audience:
            review["spec"]["audiences"] = [audience]
        out = kubectl(
            "create", "-f", "-", "-o", "json", kubeconfig=kubeconfig_smoke, input=json.dumps(review)
        )
        status = json.loads(out.stdout)["status"]
        assert status.get("authenticated") is True, status
        assert status["user"]["username"] == f"system:serviceaccount:{restricted_ns}:reviewer"
        if audience:
            assert status["audiences"] == [audience]

    bogus = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "not-a-token"},
    }
    out = kubectl(
        "create", "-f", "-", "-o", "json", kubeconfig=kubeconfig_smoke, input=json.dumps(bogus)
    )
    assert not json.loads(out.stdout)["status"].get("authenticated")


def test_rbac_applies_to_service_accounts(kubeconfig_smoke: Path, restricted_ns: str) -> None:
    kubectl("-n", restricted_ns, "create", "serviceaccount", "nobody", kubeconfig=kubeconfig_smoke)
    who = f"system:serviceaccount:{restricted_ns}:nobody"
    def can_list_pods() -> str:
        return kubectl("auth", "can-i", "list", "pods", "-n", restricted_ns, f"--as={who}",
                       kubeconfig=kubeconfig_smoke, check=False).stdout.strip()

    assert can_list_pods() == "no"
    kubectl(
        "-n",
        restricted_ns,
        "create",
        "role",
        "pod-reader",
        "--verb=list",
        "--resource=pods",
        kubeconfig=kubeconfig_smoke,
    )
    kubectl(
        "-n",
        restricted_ns,
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={restricted_ns}:nobody",
        kubeconfig=kubeconfig_smoke,
    )
    assert can_list_pods() == "yes"


def test_pod_security_restricted_is_enforced(kubeconfig_smoke: Path, restricted_ns: str) -> None:
    privileged = pod("privileged", restricted_ns, {}, {"privileged": True})
    rejected = apply(kubeconfig_smoke, privileged, check=False)
    assert rejected.returncode != 0
    assert "violates PodSecurity" in rejected.stderr and "restricted" in rejected.stderr, (
        rejected.stderr
    )

    restricted = pod(
        "restricted", restricted_ns, RESTRICTED_POD_SECURITY, RESTRICTED_CONTAINER_SECURITY
    )
    apply(kubeconfig_smoke, restricted)
    kubectl(
        "-n",
        restricted_ns,
        "wait",
        "--for=condition=Ready",
        "pod/restricted",
        "--timeout=60s",
        kubeconfig=kubeconfig_smoke,
        timeout=90,
    )


def test_garbage_collector_deletes_dependents(kubeconfig_smoke: Path, restricted_ns: str) -> None:
    apply(
        kubeconfig_smoke,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owner", "namespace": restricted_ns},
        },
    )
    uid = get_json(kubeconfig_smoke, "-n", restricted_ns, "configmap", "owner")["metadata"]["uid"]
    apply(
        kubeconfig_smoke,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "namespace": restricted_ns,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
                ],
            },
        },
    )
    kubectl("-n", restricted_ns, "delete", "configmap", "owner", kubeconfig=kubeconfig_smoke)
    kubectl(
        "-n",
        restricted_ns,
        "wait",
        "--for=delete",
        "configmap/dependent",
        "--timeout=60s",
        kubeconfig=kubeconfig_smoke,
        timeout=90,
    )


class _DenyHandler(BaseHTTPRequestHandler):
    """A validating webhook that denies ConfigMaps named deny-me."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        allowed = request["name"] != "deny-me"
        response = {"uid": request["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": "smoke webhook says no"}
        body = json.dumps({**review, "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _webhook_tls(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a serving certificate for 127.0.0.1 (the apiserver requires a SAN)."""
    ca_key, ca, key, csr, crt = (
        tmp / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt")
    )
    ext = tmp / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    for cmd in (
        ["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=smoke-webhook-ca"],
        ["req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
         "-extfile", ext, "-out", crt],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, crt, key


def test_validating_webhook_on_loopback_is_called(
    kubeconfig_smoke: Path, restricted_ns: str, tmp_path: Path
) -> None:
    ca, crt, key = _webhook_tls(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyHandler)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    name = f"{restricted_ns}-webhook"
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "smoke.kustos.dev",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{server.server_address[1]}/validate",
                    "caBundle": base64.b64encode(ca.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": restricted_ns}
                },
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }
        ],
    }
    try:
        apply(kubeconfig_smoke, webhook)

        def configmap(name: str) -> dict:
            return {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": restricted_ns},
            }

        # the apiserver picks up a new webhook configuration asynchronously
        deadline = time.monotonic() + 30
        while True:
            denied = apply(kubeconfig_smoke, configmap("deny-me"), check=False)
            if denied.returncode != 0 or time.monotonic() > deadline:
                break
            kubectl(
                "-n", restricted_ns, "delete", "configmap", "deny-me", kubeconfig=kubeconfig_smoke
            )
            time.sleep(0.5)
        assert denied.returncode != 0, "webhook was never called"
        assert "smoke webhook says no" in denied.stderr, denied.stderr
        apply(kubeconfig_smoke, configmap("allow-me"))
    finally:
        kubectl(
            "delete",
            "validatingwebhookconfiguration",
            name,
            kubeconfig=kubeconfig_smoke,
            check=False,
        )
        server.shutdown()
