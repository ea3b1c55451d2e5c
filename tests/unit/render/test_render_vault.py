"""Vault render (injector annotations, synced Secret, pod contributions): pure, no cluster.

Named test_render_vault (not test_vault): tests/integration/test_vault.py has that basename.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kustos.api.v1alpha1.modeldeployment import VaultSpec
from kustos.config import OperatorConfig, VaultSettings
from kustos.controllers import context
from kustos.controllers.attachments import AttachmentPending, AttachmentProblem
from kustos.controllers.vault import _login, refresh_seconds, seconds, vault_attachments
from kustos.render import vault as rv
from kustos.render.meta import SPEC_HASH
from kustos.render.modeldeployment import render
from kustos.status.modeldeployment import ROLLOUT, compute
from kustos.vault.client import VaultError

DIGEST = "sha256:" + "ab" * 32
PATH = "secret/data/ml/credit"


def vault(**kw: Any) -> VaultSpec:
    base: dict[str, Any] = {"role": "credit", "items": [
        {"path": PATH, "key": "db_password", "file": "db_password"},
        {"path": PATH, "key": "api_key", "file": "api_key", "env": "API_KEY"}]}
    base.update(kw)
    return VaultSpec.model_validate(base)


def body(vault_spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "credit", "namespace": "ml", "uid": "uid-1", "generation": 2},
        "spec": {"model": {"version": "1", "uri": "s3://m/model.skops", "digest": DIGEST},
                 "secrets": {"vault": vault_spec}}}
    if status is not None:
        obj["status"] = status
    return obj


def test_checksum_covers_versions_and_mapping_never_values() -> None:
    v = vault()
    one = rv.checksum(v, {PATH: 1})
    assert one == rv.checksum(v, {PATH: 1})
    assert one != rv.checksum(v, {PATH: 2})
    remapped = vault(items=[{"path": PATH, "key": "db_password", "file": "other"}])
    assert rv.checksum(remapped, {PATH: 1}) != one
    # The values are not an input at all: the same versions give the same checksum
    # whatever Vault returned.
    assert len(one) == 32


def test_secret_data_keys_json_and_missing_key() -> None:
    v = vault(items=[{"path": PATH, "key": "pw", "file": "pw"},
                     {"path": PATH, "key": "port", "file": "port"},
                     {"path": PATH, "file": "all.json"}])
    data = rv.secret_data(v, {PATH: {"pw": "s3cret", "port": 5432}})
    assert data == {"pw": b"s3cret", "port": b"5432",
                    "all.json": json.dumps({"port": 5432, "pw": "s3cret"},
                                           sort_keys=True).encode()}
    with pytest.raises(rv.MissingKey) as err:
        rv.secret_data(v, {PATH: {"port": 1}})
    assert "pw" in str(err.value) and "s3cret" not in str(err.value)


def test_synced_secret_carries_only_the_version_checksum() -> None:
    b = body(vault().wire())
    secret = rv.render_secret(b, {"db_password": b"s3cret"}, "abc123")
    assert secret["metadata"]["name"] == "credit-vault"
    assert secret["metadata"]["annotations"] == {rv.CHECKSUM: "abc123"}
    assert SPEC_HASH not in secret["metadata"]["annotations"]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert base64.b64decode(secret["data"]["db_password"]) == b"s3cret"


def test_sync_mode_mounts_files_env_on_request_and_checksum() -> None:
    v = vault()
    status = {"version": "c0ffee", "versions": [{"path": PATH, "version": 4}]}
    att = rv.sync_attachments("credit", v, status)
    assert att.volumes == ({"name": "vault-secrets", "secret": {
        "secretName": "credit-vault", "optional": False, "defaultMode": 0o440}},)
    assert att.server_volume_mounts == ({"name": "vault-secrets",
                                         "mountPath": "/var/run/secrets/kustos",
                                         "readOnly": True},)
    assert att.server_env == ({"name": "API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "credit-vault", "key": "api_key"}}},)
    assert att.pod_annotations == {rv.CHECKSUM: "c0ffee"}
    assert rv.sync_attachments("credit", v, None).pod_annotations == {}


def test_in_sync_only_when_status_matches_the_items() -> None:
    v = vault()
    good = {"version": rv.checksum(v, {PATH: 3}), "versions": [{"path": PATH, "version": 3}]}
    assert rv.in_sync(v, good)
    assert not rv.in_sync(v, None)
    assert not rv.in_sync(v, {**good, "version": "stale"})
    other = vault(items=[{"path": "secret/data/ml/other", "key": "k", "file": "k"}])
    assert not rv.in_sync(other, good)


def test_split_kv_path() -> None:
    assert rv.split_kv_path("secret/data/ml/credit") == ("secret", "ml/credit")
    assert rv.split_kv_path("teams/a/data/x") == ("teams/a", "x")
    with pytest.raises(ValueError):
        rv.split_kv_path("secret/ml/credit")


def test_injector_annotations_and_token_volume() -> None:
    v = vault(mode="injector", namespace="team-a", auth_path="k8s", pre_populate_only=True,
              items=[{"path": PATH, "key": "db-password", "file": "db.txt"},
                     {"path": PATH, "file": "all.json"},
                     {"path": "kv1/ml/x", "key": "user", "file": "user"},
                     {"path": PATH, "file": "t", "template": "{{ .Data.data.x }}"}])
    att = rv.injector_attachments(v, "vault")
    a = att.pod_annotations
    assert a["vault.hashicorp.com/agent-inject"] == "true"
    assert a["vault.hashicorp.com/role"] == "credit"
    assert a["vault.hashicorp.com/auth-path"] == "auth/k8s"
    assert a["vault.hashicorp.com/namespace"] == "team-a"
    assert a["vault.hashicorp.com/agent-pre-populate-only"] == "true"
    assert "vault.hashicorp.com/service" not in a
    assert a["vault.hashicorp.com/agent-inject-secret-db.txt"] == PATH
    assert a["vault.hashicorp.com/agent-inject-template-db.txt"] == \
        '{{- with secret "secret/data/ml/credit" -}}{{ index .Data.data "db-password" }}' \
        '{{- end }}'
    assert a["vault.hashicorp.com/agent-inject-template-all.json"] == \
        '{{- with secret "secret/data/ml/credit" -}}{{ .Data.data | toJSON }}{{- end }}'
    # KV v1 keeps the values directly under .Data.
    assert a["vault.hashicorp.com/agent-inject-template-user"] == \
        '{{- with secret "kv1/ml/x" -}}{{ index .Data "user" }}{{- end }}'
    assert a["vault.hashicorp.com/agent-inject-template-t"] == "{{ .Data.data.x }}"
    assert a["vault.hashicorp.com/agent-service-account-token-volume-name"] == "vault-token"
    source = att.volumes[0]["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == "vault"
    assert not att.server_env and not att.children


def test_render_applies_sync_contribution_to_the_deployment() -> None:
    v = vault().wire()
    status = {"secrets": {"version": "c0ffee"}}
    b = body(v, status)
    objs = render(b, OperatorConfig(), rv.attachments(b, "vault"))
    dep = next(o for o in objs if o["kind"] == "Deployment")
    tpl = dep["spec"]["template"]
    assert tpl["metadata"]["annotations"][rv.CHECKSUM] == "c0ffee"
    assert any(vol["name"] == "vault-secrets" for vol in tpl["spec"]["volumes"])
    # The synced Secret is never a hashed child of the render.
    assert not [o for o in objs if o["kind"] == "Secret"]


def test_no_vault_contributes_nothing() -> None:
    b = body(vault().wire())
    del b["spec"]["secrets"]
    assert rv.attachments(b, "vault") == rv.NONE


def test_rollout_status_leaves_secrets_to_the_vault_sync() -> None:
    """The rollout's part of the status says nothing of what the Vault sync owns (it is
    applied under another field manager, so it cannot drop it either)."""
    ready = {"type": "SecretsReady", "status": "False", "reason": "VaultUnreachable",
             "message": "cannot reach Vault", "lastTransitionTime": "2026-01-01T00:00:00Z",
             "observedGeneration": 2}
    secrets = {"version": "c0ffee", "versions": [{"path": PATH, "version": 3}],
               "lastSync": "2026-01-01T00:00:00Z"}
    b = body(vault().wire(), {"conditions": [ready], "secrets": secrets})
    status, _ = compute(b, {}, OperatorConfig(), datetime.now(UTC))
    assert "SecretsReady" not in {c["type"] for c in status["conditions"]}
    assert "secrets" not in status
    ROLLOUT.normalise(status)


def test_the_render_waits_for_the_first_sync_and_never_syncs_itself() -> None:
    """The contributor only reads status.secrets (the Vault loop syncs): no Secret yet
    means wait, a failed first sync means Degraded with its reason, and a sync of the
    current items means the pods mount it."""
    with pytest.raises(AttachmentPending):
        vault_attachments(body(vault().wire()))
    failed = {"type": "SecretsReady", "status": "False", "reason": "PermissionDenied",
              "message": "403 on secret/data/ml/credit"}
    with pytest.raises(AttachmentProblem) as err:
        vault_attachments(body(vault().wire(), {"conditions": [failed]}))
    assert (err.value.reason, err.value.message) == ("PermissionDenied", failed["message"])
    v = vault()
    synced = {"version": rv.checksum(v, {PATH: 3}), "versions": [{"path": PATH, "version": 3}],
              "secretName": "credit-vault", "lastSync": "2026-12-01T00:00:00Z"}
    got = vault_attachments(body(v.wire(), {"secrets": synced, "conditions": [failed]}))
    assert got != rv.NONE  # Vault down after a sync: the pods keep the synced Secret


@pytest.mark.parametrize(("text", "value"), [
    ("5s", 5.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5m", 90.0)])
def test_durations(text: str, value: float) -> None:
    assert seconds(text) == value


def test_refresh_has_a_floor() -> None:
    assert refresh_seconds(vault(refresh_interval="100ms")) == 5.0
    assert refresh_seconds(vault(refresh_interval="10m")) == 600.0


def test_vault_address_from_spec_or_config_and_allow_list() -> None:
    saved = context.config()
    try:
        context.set_config(OperatorConfig())
        with pytest.raises(VaultError) as err:
            _login(vault())
        assert err.value.reason == "NoVaultAddress"
        context.set_config(OperatorConfig(vault=VaultSettings(address="https://v.ns:8200")))
        assert _login(vault()).address == "https://v.ns:8200"
        assert _login(vault(address="https://other:8200")).address == "https://other:8200"
        context.set_config(OperatorConfig(vault=VaultSettings(
            address="https://v.ns:8200", allowed_addresses=["https://v.ns:8200/"])))
        assert _login(vault(address="https://v.ns:8200")).role == "credit"
        with pytest.raises(VaultError) as err:
            _login(vault(address="https://v.ns:8200.evil.example"))
        assert err.value.reason == "AddressNotAllowed"
    finally:
        context.set_config(saved)
