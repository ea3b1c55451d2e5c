"""spec.model.encryption: the fetch init container decrypts into an in-memory model volume,
logging in to Vault as the model's own ServiceAccount; the role's policy allows
transit/decrypt/KEY only."""

from __future__ import annotations

from typing import Any

import pytest

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.modeldeployment import ModelEncryption
from kustos.config import OperatorConfig
from kustos.render import encryption
from kustos.render.modeldeployment import render
from kustos.runtime.fetch import build_parser

VAULT = {"mode": "agent", "address": "https://vault.example:8200", "role": "iris",
         "authPath": "k8s-prod", "namespace": "ml-team",
         "items": [{"path": "secret/data/ml/iris", "key": "db", "file": "db"}]}
ENCRYPTION = {"transit": {"keyName": "models"}}


def body(encryption: dict[str, Any] | None = ENCRYPTION, vault: dict[str, Any] | None = VAULT,
         **spec: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"version": "3", "uri": "s3://m/iris/model.skops",
                             "digest": "sha256:" + "ab" * 32}
    if encryption is not None:
        model["encryption"] = encryption
    s: dict[str, Any] = {"model": model, "replicas": 2, **spec}
    if vault is not None:
        s["secrets"] = {"vault": vault}
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": s}


def pods(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in [*pod["initContainers"], *pod["containers"]] if c["name"] == name)


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod["volumes"] if v["name"] == name)


def flags(args: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else "--"
            out[a] = True if nxt.startswith("--") else nxt
    return out


def test_encrypted_model_decrypts_into_memory_with_the_models_own_login() -> None:
    config = OperatorConfig()
    (pod,) = pods(render(body(), config))
    assert volume(pod, "model") == {"name": "model", "emptyDir": {
        "medium": "Memory", "sizeLimit": config.model_volume_size}}
    assert volume(pod, encryption.STAGING_VOLUME) == {
        "name": encryption.STAGING_VOLUME, "emptyDir": {"sizeLimit": config.model_volume_size}}
    assert volume(pod, encryption.TOKEN_VOLUME)["projected"]["sources"] == [
        {"serviceAccountToken": {"path": "token", "audience": "vault",
                                 "expirationSeconds": 600}}]
    assert pod["serviceAccountName"] == "iris"
    fetch = container(pod, "fetch-model")
    f = flags(fetch["args"])
    assert f == {"--digest": "sha256:" + "ab" * 32, "--transit-key": "models",
                 "--transit-mount": "transit", "--vault-address": "https://vault.example:8200",
                 "--vault-role": "iris", "--vault-auth-path": "k8s-prod",
                 "--vault-jwt-file": encryption.TOKEN_FILE, "--vault-namespace": "ml-team",
                 "--staging-dir": encryption.STAGING_DIR, "--require-memory": True}
    mounts = {m["name"]: m for m in fetch["volumeMounts"]}
    assert mounts[encryption.TOKEN_VOLUME]["readOnly"] is True
    assert encryption.TOKEN_FILE.startswith(mounts[encryption.TOKEN_VOLUME]["mountPath"] + "/")
    assert mounts[encryption.STAGING_VOLUME]["mountPath"] == encryption.STAGING_DIR
    # The model server sees the decrypted model read-only, never the token or the envelope.
    server = container(pod, "server")
    names = {m["name"]: m for m in server["volumeMounts"]}
    assert names["model"]["readOnly"] is True
    assert encryption.TOKEN_VOLUME not in names and encryption.STAGING_VOLUME not in names
    # What the operator renders is what `kustos fetch` accepts.
    args = build_parser().parse_args(fetch["args"][1:])
    assert args.transit_key == "models" and args.require_memory


def test_role_size_mount_and_defaults_from_the_operator_config() -> None:
    config = OperatorConfig.model_validate({"vault": {"address": "https://bao.internal:8200",
                                                      "audience": "openbao"}})
    vault = {k: v for k, v in VAULT.items() if k not in ("address", "namespace")}
    enc = {"transit": {"mount": "kms/transit", "keyName": "iris-key"}, "role": "iris-decrypt",
           "sizeLimit": "3Gi"}
    (pod,) = pods(render(body(enc, vault), config))
    assert volume(pod, "model")["emptyDir"] == {"medium": "Memory", "sizeLimit": "3Gi"}
    assert volume(pod, encryption.TOKEN_VOLUME)["projected"]["sources"][0][
        "serviceAccountToken"]["audience"] == "openbao"
    f = flags(container(pod, "fetch-model")["args"])
    assert (f["--vault-address"], f["--vault-role"], f["--transit-mount"],
            f["--transit-key"]) == ("https://bao.internal:8200", "iris-decrypt", "kms/transit",
                                    "iris-key")
    assert "--vault-namespace" not in f


def test_canary_is_decrypted_with_the_same_key() -> None:
    canary = {"model": {"version": "4", "uri": "s3://m/iris/4/model.skops"},
              "trafficPercent": 50}
    stable, second = pods(render(body(canary=canary), OperatorConfig()))
    for pod in (stable, second):
        assert volume(pod, "model")["emptyDir"]["medium"] == "Memory"
        assert flags(container(pod, "fetch-model")["args"])["--transit-key"] == "models"
    assert container(second, "fetch-model")["args"][1] == "s3://m/iris/4/model.skops"


def test_without_encryption_nothing_changes() -> None:
    (pod,) = pods(render(body(None), OperatorConfig()))
    assert "medium" not in volume(pod, "model")["emptyDir"]
    assert all(v["name"] not in (encryption.STAGING_VOLUME, encryption.TOKEN_VOLUME)
               for v in pod["volumes"])
    assert "--transit-key" not in container(pod, "fetch-model")["args"]


def test_policy_allows_decrypt_with_the_one_key_only() -> None:
    enc = ModelEncryption.model_validate({"transit": {"mount": "kms/transit",
                                                      "keyName": "iris-key"}})
    assert encryption.decrypt_policy(enc) == (
        'path "kms/transit/decrypt/iris-key" {\n  capabilities = ["update"]\n}\n')


def test_cel_rules_name_the_field() -> None:
    """The rules the API server enforces (pydantic does not run CEL)."""
    rules = ModelDeploymentSpec.model_json_schema()["x-kubernetes-validations"]
    by_field = {r.get("fieldPath"): r for r in rules}
    needs_vault = by_field[".model.encryption"]
    assert needs_vault["rule"] == ("!has(self.model.encryption) || (has(self.secrets) && "
                                   "has(self.secrets.vault))")
    assert "spec.model.encryption needs spec.secrets.vault" in needs_vault["message"]
    injector = by_field[".secrets.vault.address"]
    assert "self.secrets.vault.mode != 'injector' || has(self.secrets.vault.address)" in \
        injector["rule"]
    assert "spec.secrets.vault.address" in injector["message"]


@pytest.mark.parametrize("enc,fragment", [
    ({"transit": {"keyName": "bad key"}}, "transit.keyName"),
    ({"transit": {"keyName": "k", "mount": "/transit"}}, "transit.mount"),
    ({"transit": {"keyName": "k"}, "sizeLimit": "lots"}, "sizeLimit"),
    ({"transit": {}}, "transit.keyName"),
])
def test_schema_refuses_bad_fields(enc: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ModelDeploymentSpec.model_validate(body(enc)["spec"])


def test_injector_mode_spec_address_must_be_allowed() -> None:
    """In injector mode Kustos renders no login of its own, except the fetch's for an
    encrypted model: its address obeys vault.allowedAddresses as in sync and agent mode."""
    from kustos.config import VaultSettings
    from kustos.controllers import context
    from kustos.controllers.attachments import AttachmentProblem
    from kustos.controllers.vault import vault_attachments

    injector = {**VAULT, "mode": "injector", "address": "http://elsewhere:8200"}
    saved = context.config()
    try:
        context.set_config(OperatorConfig(vault=VaultSettings(
            address="https://vault.example:8200",
            allowed_addresses=["https://vault.example:8200"])))
        with pytest.raises(AttachmentProblem) as err:
            vault_attachments(body(vault=injector))
        assert err.value.reason == "AddressNotAllowed"
        # Without encryption the injector's annotations are all Kustos renders: no check.
        assert vault_attachments(body(None, vault=injector)).pod_annotations
        allowed = {**injector, "address": "https://vault.example:8200"}
        assert vault_attachments(body(vault=allowed)).pod_annotations
    finally:
        context.set_config(saved)
