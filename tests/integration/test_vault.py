"""Vault secrets of a ModelDeployment, against a real OpenBao server and the real operator.

OpenBao's Kubernetes auth method checks the operator's TokenRequest tokens with a real
TokenReview against the local control plane; nothing is mocked.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import OPERATOR_LOGS, Kube, Operator, wait_for
from openbao import OpenBao, reviewed_openbao

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "0123456789abcdef" * 4
CHECKSUM = "kustos.dev/vault-secrets-version"
INJECT = "vault.hashicorp.com/"


@pytest.fixture(scope="module")
def bao(kube: Kube) -> Iterator[OpenBao]:
    yield from reviewed_openbao(kube, "test")


def secret_value() -> str:
    return f"pw-{uuid.uuid4().hex}"


def model_deployment(name: str, namespace: str, vault: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"version": "1", "uri": "s3://models/iris/model.skops",
                               "digest": DIGEST},
                     "replicas": 1, "secrets": {"vault": vault}}}


def grant(bao: OpenBao, name: str, namespace: str, *kv_paths: str) -> str:
    """A policy reading ``kv_paths`` and a role bound to ServiceAccount ``name``."""
    role = f"{namespace}-{name}"
    bao.read_policy(role, *kv_paths)
    bao.role(role, name, namespace, role)
    return role


def condition(md: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((md or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def secrets_ready(kube: Kube, name: str, ns: str, status: str = "True",
                  reason: str | None = None, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = kube.get("md", name, ns)
        c = condition(md, "SecretsReady")
        if c.get("status") == status and (reason is None or c.get("reason") == reason):
            return md
        return None
    md: dict[str, Any] = wait_for(f"md/{name} SecretsReady={status} {reason or ''}", check,
                                  timeout=timeout)
    return md


def secret_files(kube: Kube, name: str, ns: str) -> dict[str, str]:
    secret = kube.get("secret", f"{name}-vault", ns)
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def pod_annotations(kube: Kube, name: str, ns: str) -> dict[str, str]:
    dep = kube.get("deployment", name, ns)
    assert dep is not None
    return dict(dep["spec"]["template"]["metadata"].get("annotations") or {})


def assert_nowhere(kube: Kube, ns: str, values: list[str]) -> None:
    """No secret value (nor its base64) in the operator's log, the Events, the
    ModelDeployment or any Deployment, Secret annotation or label of the namespace."""
    needles = values + [base64.b64encode(v.encode()).decode() for v in values]
    log = operator_log()
    texts = {"operator log": log,
             "events": json.dumps(kube.list("events", ns)),
             "modeldeployments": json.dumps(kube.list("modeldeployments", ns)),
             "deployments": json.dumps(kube.list("deployments", ns)),
             "secret metadata": json.dumps([s["metadata"] for s in kube.list("secrets", ns)])}
    for where, text in texts.items():
        for needle in needles:
            assert needle not in text, f"a secret value appears in the {where}"


def operator_log() -> str:
    path = OPERATOR_LOGS / "operator-test.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_sync_first_sync_then_rotation_rolls_pods(kube: Kube, operator: Operator, bao: OpenBao,
                                                  namespace: str) -> None:
    name = "credit"
    kv = f"ml/{namespace}/{name}"
    first, api_key = secret_value(), secret_value()
    assert bao.put(kv, {"db_password": first, "api_key": api_key}) == 1
    role = grant(bao, name, namespace, f"secret/data/{kv}")
    vault = {"mode": "sync", "address": bao.address, "role": role, "refreshInterval": "5s",
             "items": [{"path": f"secret/data/{kv}", "key": "db_password", "file": "db_password"},
                       {"path": f"secret/data/{kv}", "key": "api_key", "file": "api_key",
                        "env": "API_KEY"},
                       {"path": f"secret/data/{kv}", "file": "all.json"}]}
    kube.apply(model_deployment(name, namespace, vault))

    md = secrets_ready(kube, name, namespace)
    st = md["status"]["secrets"]
    assert st["versions"] == [{"path": f"secret/data/{kv}", "version": 1}]
    assert st["lastSync"] and st["secretName"] == f"{name}-vault"
    assert len(st["version"]) == 32
    # No kopf daemon/timer finalizer: deleting the model never waits for the operator.
    assert not md["metadata"].get("finalizers")
    files = secret_files(kube, name, namespace)
    assert files == {"db_password": first, "api_key": api_key,
                     "all.json": json.dumps({"api_key": api_key, "db_password": first},
                                            sort_keys=True)}
    secret = kube.get("secret", f"{name}-vault", namespace)
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    # Only the versions checksum: no spec-hash, which would be a hash over the values.
    assert secret["metadata"]["annotations"] == {CHECKSUM: st["version"]}

    wait_for("the pod template with the versions checksum",
             lambda: pod_annotations(kube, name, namespace).get(CHECKSUM) == st["version"])
    dep = kube.get("deployment", name, namespace)
    assert dep is not None
    pod = dep["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "vault-secrets")
    assert vol["secret"] == {"secretName": f"{name}-vault", "optional": False,
                             "defaultMode": 0o440}
    server = next(c for c in pod["containers"] if c["name"] == "server")
    assert {"name": "vault-secrets", "mountPath": "/var/run/secrets/kustos",
            "readOnly": True} in server["volumeMounts"]
    assert {"name": "API_KEY", "valueFrom": {"secretKeyRef": {
        "name": f"{name}-vault", "key": "api_key"}}} in server["env"]
    reasons = {e["reason"] for e in kube.events(namespace, name)}
    assert "SecretsSynced" in reasons

    # Unchanged versions: the refresh re-reads Vault but writes no Secret.
    secret_rv = secret["metadata"]["resourceVersion"]
    last_sync = st["lastSync"]
    wait_for("a second sync", lambda: (kube.get("md", name, namespace) or {})
             .get("status", {}).get("secrets", {}).get("lastSync") != last_sync, timeout=30)
    same = kube.get("secret", f"{name}-vault", namespace)
    assert same is not None and same["metadata"]["resourceVersion"] == secret_rv

    # Rotation: a new version reaches the Secret and rolls the pods within one interval.
    generation = dep["metadata"]["generation"]
    second = secret_value()
    assert bao.put(kv, {"db_password": second, "api_key": api_key}) == 2
    rotated_at = time.monotonic()
    wait_for("the rotated value in the Secret",
             lambda: secret_files(kube, name, namespace)["db_password"] == second,
             timeout=30, interval=0.25)
    wait_for("a new pod template", lambda: pod_annotations(kube, name, namespace)
             .get(CHECKSUM) not in (None, st["version"]), timeout=30, interval=0.25)
    elapsed = time.monotonic() - rotated_at
    print(f"rotation reached the pod template in {elapsed:.1f}s")
    assert elapsed < 5 + 4, f"rotation took {elapsed:.1f}s with a 5s refresh interval"
    md = kube.get("md", name, namespace)
    assert md is not None
    new = md["status"]["secrets"]
    assert new["versions"] == [{"path": f"secret/data/{kv}", "version": 2}]
    assert pod_annotations(kube, name, namespace)[CHECKSUM] == new["version"]
    dep = kube.get("deployment", name, namespace)
    assert dep is not None and dep["metadata"]["generation"] > generation
    rotated = [e for e in kube.events(namespace, name) if e["reason"] == "SecretRotated"]
    assert rotated and "v1 -> v2" in rotated[0]["message"]
    assert_nowhere(kube, namespace, [first, second, api_key])


def test_vault_down_keeps_secret_and_recovers(kube: Kube, operator: Operator, bao: OpenBao,
                                              namespace: str) -> None:
    name = "fraud"
    kv = f"ml/{namespace}/{name}"
    value = secret_value()
    bao.put(kv, {"token": value})
    role = grant(bao, name, namespace, f"secret/data/{kv}")
    vault = {"address": bao.address, "role": role, "refreshInterval": "5s",
             "items": [{"path": f"secret/data/{kv}", "key": "token", "file": "token"}]}
    kube.apply(model_deployment(name, namespace, vault))
    md = secrets_ready(kube, name, namespace)
    synced = md["status"]["secrets"]
    secret = kube.get("secret", f"{name}-vault", namespace)
    assert secret is not None

    bao.stop()
    try:
        md = secrets_ready(kube, name, namespace, "False", "VaultUnreachable", timeout=30)
        assert bao.address in condition(md, "SecretsReady")["message"]
        # The status keeps the last good sync; the Secret is untouched.
        assert md["status"]["secrets"] == synced
        kept = kube.get("secret", f"{name}-vault", namespace)
        assert kept is not None
        assert kept["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
        warnings = [e for e in kube.events(namespace, name) if e["reason"] == "VaultUnreachable"]
        assert warnings and warnings[0]["type"] == "Warning"
        # The ModelDeployment's own status writes keep SecretsReady: scale it, wait for the
        # reconcile's status, and the condition is still there.
        kube.run("patch", "md", name, "-n", namespace, "--type=merge",
                 "-p", '{"spec":{"replicas":2}}')
        md = wait_for("the reconcile's status", lambda: (lambda m: m if m and (
            m["status"].get("observedGeneration") == m["metadata"]["generation"]
            and m["status"].get("replicas") == 2) else None)(kube.get("md", name, namespace)),
            timeout=60)
        assert condition(md, "SecretsReady")["reason"] == "VaultUnreachable"
        assert md["status"]["secrets"]["version"] == synced["version"]
    finally:
        bao.start()
    md = secrets_ready(kube, name, namespace, "True", timeout=30)
    assert md["status"]["secrets"]["versions"] == synced["versions"]
    assert "SecretsRecovered" in {e["reason"] for e in kube.events(namespace, name)}
    assert secret_files(kube, name, namespace) == {"token": value}
    assert_nowhere(kube, namespace, [value])


def test_wrong_role_then_fixed(kube: Kube, operator: Operator, bao: OpenBao,
                               namespace: str) -> None:
    name = "churn"
    kv = f"ml/{namespace}/{name}"
    value = secret_value()
    bao.put(kv, {"key": value})
    role = f"{namespace}-{name}"
    vault = {"address": bao.address, "role": role, "refreshInterval": "5s",
             "items": [{"path": f"secret/data/{kv}", "key": "key", "file": "key"}]}
    kube.apply(model_deployment(name, namespace, vault))
    md = secrets_ready(kube, name, namespace, "False", "RoleNotFound")
    assert role in condition(md, "SecretsReady")["message"]
    degraded = wait_for("Degraded=RoleNotFound", lambda: condition(
        kube.get("md", name, namespace), "Degraded").get("reason") == "RoleNotFound")
    assert degraded
    # No pod may start without its Secret: nothing is rendered before the first sync.
    assert kube.get("deployment", name, namespace) is None
    assert kube.get("secret", f"{name}-vault", namespace) is None
    md = kube.get("md", name, namespace)
    assert condition(md, "Ready").get("status") == "False"
    assert condition(md, "Progressing").get("status") == "True"
    # One Warning for the failure, not one from the sync and one from Degraded.
    warnings = [e for e in kube.events(namespace, name) if e["reason"] == "RoleNotFound"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"

    # The role appears: the retries pick it up by themselves.
    grant(bao, name, namespace, f"secret/data/{kv}")
    md = secrets_ready(kube, name, namespace, timeout=60)
    wait_for("the Deployment with the Secret", lambda: pod_annotations(
        kube, name, namespace).get(CHECKSUM) == md["status"]["secrets"]["version"]
        if kube.get("deployment", name, namespace) else None, timeout=60)
    wait_for("Degraded cleared", lambda: condition(
        kube.get("md", name, namespace), "Degraded").get("status") == "False", timeout=60)
    assert secret_files(kube, name, namespace) == {"key": value}


def test_permission_denied_names_the_path(kube: Kube, operator: Operator, bao: OpenBao,
                                          namespace: str) -> None:
    name = "denied"
    kv = f"ml/{namespace}/{name}"
    bao.put(kv, {"key": secret_value()})
    role = grant(bao, name, namespace, f"secret/data/{kv}-other")
    vault = {"address": bao.address, "role": role, "refreshInterval": "5s",
             "items": [{"path": f"secret/data/{kv}", "key": "key", "file": "key"}]}
    kube.apply(model_deployment(name, namespace, vault))
    md = secrets_ready(kube, name, namespace, "False", "PermissionDenied")
    assert f"secret/data/{kv}" in condition(md, "SecretsReady")["message"]


def test_injector_annotations_on_the_real_api_server(kube: Kube, operator: Operator,
                                                     namespace: str) -> None:
    name = "injected"
    template = '{{- with secret "secret/data/ml/x" -}}{{ .Data.data.user }}{{- end }}'
    vault = {"mode": "injector", "role": "ml-reader", "authPath": "k8s-prod",
             "namespace": "team-a", "address": "https://vault.example:8200",
             "audience": "vault-prod", "prePopulateOnly": True,
             "items": [{"path": "secret/data/ml/x", "key": "db-password", "file": "db.txt"},
                       {"path": "secret/data/ml/x", "file": "user", "template": template},
                       {"path": "secret/data/ml/x", "file": "all.json"}]}
    kube.apply(model_deployment(name, namespace, vault))
    ann = wait_for("the Deployment", lambda: pod_annotations(kube, name, namespace)
                   if kube.get("deployment", name, namespace) else None)
    assert {k: v for k, v in ann.items() if k.startswith(INJECT)} == {
        f"{INJECT}agent-inject": "true",
        f"{INJECT}role": "ml-reader",
        f"{INJECT}auth-path": "auth/k8s-prod",
        f"{INJECT}namespace": "team-a",
        f"{INJECT}service": "https://vault.example:8200",
        f"{INJECT}agent-pre-populate-only": "true",
        f"{INJECT}secret-volume-path": "/var/run/secrets/kustos",
        f"{INJECT}agent-service-account-token-volume-name": "vault-token",
        f"{INJECT}agent-inject-secret-db.txt": "secret/data/ml/x",
        f"{INJECT}agent-inject-template-db.txt":
            '{{- with secret "secret/data/ml/x" -}}{{ index .Data.data "db-password" }}'
            '{{- end }}',
        f"{INJECT}agent-inject-secret-user": "secret/data/ml/x",
        f"{INJECT}agent-inject-template-user": template,
        f"{INJECT}agent-inject-secret-all.json": "secret/data/ml/x",
        f"{INJECT}agent-inject-template-all.json":
            '{{- with secret "secret/data/ml/x" -}}{{ .Data.data | toJSON }}{{- end }}',
    }
    dep = kube.get("deployment", name, namespace)
    assert dep is not None
    token = next(v for v in dep["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "vault-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "vault-prod"
    # The operator never talks to Vault in injector mode: no Secret, no SecretsReady.
    assert kube.get("secret", f"{name}-vault", namespace) is None
    assert condition(kube.get("md", name, namespace), "SecretsReady") == {}


@pytest.mark.parametrize(("vault", "field", "says"), [
    ({"mode": "injector", "items": [{"path": "secret/data/x", "file": "f" * 42}]},
     "spec.secrets.vault.items", "at most 41 characters"),
    ({"mode": "injector", "items": [{"path": "secret/data/x", "file": "f", "env": "F"}]},
     "spec.secrets.vault.items", "env is for sync mode only"),
    ({"mode": "sync", "items": [{"path": "secret/x", "file": "f"}]},
     "spec.secrets.vault.items", "MOUNT/data/PATH"),
    ({"mode": "sync", "items": [{"path": "secret/data/x", "file": "f", "template": "t"}]},
     "spec.secrets.vault.items", "templates are for injector and agent modes only"),
    ({"mode": "sync", "address": "vault:8200", "items": [{"path": "secret/data/x",
                                                           "file": "f"}]},
     "spec.secrets.vault.address", "should match"),
    ({"mode": "sync", "authPath": "../sys", "items": [{"path": "secret/data/x",
                                                        "file": "f"}]},
     "spec.secrets.vault.authPath", "should match"),
])
def test_invalid_vault_spec_refused(kube: Kube, namespace: str, vault: dict[str, Any],
                                    field: str, says: str) -> None:
    proc = kube.apply(model_deployment("bad", namespace, {"role": "r", **vault}), check=False)
    assert proc.returncode != 0
    assert field in proc.stderr and says in proc.stderr, proc.stderr


def test_leaving_sync_mode_removes_secret_and_status(kube: Kube, operator: Operator,
                                                     bao: OpenBao, namespace: str) -> None:
    name = "switch"
    kv = f"ml/{namespace}/{name}"
    bao.put(kv, {"key": secret_value()})
    role = grant(bao, name, namespace, f"secret/data/{kv}")
    items = [{"path": f"secret/data/{kv}", "key": "key", "file": "key"}]
    vault = {"address": bao.address, "role": role, "refreshInterval": "5s", "items": items}
    kube.apply(model_deployment(name, namespace, vault))
    secrets_ready(kube, name, namespace)
    assert kube.get("secret", f"{name}-vault", namespace) is not None

    kube.apply(model_deployment(name, namespace, {**vault, "mode": "injector"}))
    wait_for("the synced Secret deleted",
             lambda: kube.get("secret", f"{name}-vault", namespace) is None)
    # The Vault clean-up runs inside the reconcile, before its own status write: wait for
    # that write too (observedGeneration), and the Vault fields must still be gone.
    md = wait_for("status.secrets and SecretsReady gone after the reconcile", lambda: (
        lambda m: m if m and "secrets" not in m["status"]
        and not condition(m, "SecretsReady")
        and m["status"].get("observedGeneration") == m["metadata"]["generation"]
        else None)(kube.get("md", name, namespace)))
    assert md["status"]["observedGeneration"] == 2
    ann = wait_for("injector annotations", lambda: pod_annotations(kube, name, namespace)
                   .get(f"{INJECT}agent-inject") == "true")
    assert ann
    assert CHECKSUM not in pod_annotations(kube, name, namespace)


def test_restart_does_not_resync_before_due(kube: Kube, operator: Operator, bao: OpenBao,
                                            namespace: str) -> None:
    name = "steady"
    kv = f"ml/{namespace}/{name}"
    bao.put(kv, {"key": secret_value()})
    role = grant(bao, name, namespace, f"secret/data/{kv}")
    vault = {"address": bao.address, "role": role, "refreshInterval": "1h",
             "items": [{"path": f"secret/data/{kv}", "key": "key", "file": "key"}]}
    kube.apply(model_deployment(name, namespace, vault))
    secrets_ready(kube, name, namespace)
    wait_for("pods with the checksum", lambda: kube.get("deployment", name, namespace) and
             pod_annotations(kube, name, namespace).get(CHECKSUM))
    wait_for("Ready", lambda: condition(kube.get("md", name, namespace), "Ready")
             .get("status") == "True", timeout=90)
    time.sleep(2)  # let the status refreshes settle
    before = {kind: (kube.get(kind, obj, namespace) or {})["metadata"]["resourceVersion"]
              for kind, obj in (("md", name), ("secret", f"{name}-vault"),
                                ("deployment", name))}
    operator.restart()
    time.sleep(8)
    after = {kind: (kube.get(kind, obj, namespace) or {})["metadata"]["resourceVersion"]
             for kind, obj in (("md", name), ("secret", f"{name}-vault"),
                               ("deployment", name))}
    # Not due for an hour: no Vault read, no status, Secret or Deployment write.
    assert after == before
