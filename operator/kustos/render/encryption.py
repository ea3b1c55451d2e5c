"""spec.model.encryption -> the fetch init container's decryption and the pod's volumes.
Pure: no I/O.

With an encrypted model (an envelope written by `kustos encrypt`):

- the model volume is an in-memory emptyDir (medium: Memory, tmpfs): the plaintext model
  never reaches the node's disk; its size counts against the pod's memory;
- the envelope is downloaded into a disk-backed staging emptyDir (it is ciphertext) that
  only the fetch container mounts, and removed after decryption;
- the fetch container gets a projected token of the model's own ServiceAccount (audience:
  the Vault role's) and the flags to log in to Vault with it and unwrap the data key with
  transit/decrypt (runtime/decrypt.py); ``--require-memory`` makes it refuse a model
  directory that is not tmpfs.

The role's policy needs one capability only (:func:`decrypt_policy`); the operator does not
write Vault policies, docs/vault.md shows where it goes.
"""

from __future__ import annotations

from typing import Any

from kustos.api.v1alpha1.modeldeployment import ModelEncryption, ModelSource, VaultSpec
from kustos.config import OperatorConfig

STAGING_VOLUME = "model-staging"
STAGING_DIR = "/var/run/kustos/model-staging"
TOKEN_VOLUME = "model-decrypt-token"
TOKEN_DIR = "/var/run/secrets/kustos-transit"
TOKEN_FILE = f"{TOKEN_DIR}/token"
# Only for the login: the fetch runs once, within minutes.
TOKEN_SECONDS = 600


def decrypt_policy(encryption: ModelEncryption) -> str:
    """The Vault policy (HCL) the model's role needs: unwrap with this one key, nothing
    else (no datakey, encrypt, rewrap or key reads)."""
    t = encryption.transit
    return f'path "{t.mount}/decrypt/{t.key_name}" {{\n  capabilities = ["update"]\n}}\n'


def model_volume(encryption: ModelEncryption, config: OperatorConfig) -> dict[str, Any]:
    size = encryption.size_limit or config.model_volume_size
    return {"name": "model", "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def fetch_args(encryption: ModelEncryption, vault: VaultSpec, address: str) -> list[str]:
    """`kustos fetch` flags: the key, the Vault login, staging and the memory check."""
    args = ["--transit-key", encryption.transit.key_name,
            "--transit-mount", encryption.transit.mount,
            "--vault-address", address.rstrip("/"),
            "--vault-role", encryption.role or vault.role,
            "--vault-auth-path", vault.auth_path,
            "--vault-jwt-file", TOKEN_FILE,
            "--staging-dir", STAGING_DIR,
            "--require-memory"]
    if vault.namespace:
        args += ["--vault-namespace", vault.namespace]
    return args


def apply(fetch: dict[str, Any], volumes: list[dict[str, Any]], model: ModelSource,
          vault: VaultSpec | None, config: OperatorConfig) -> list[dict[str, Any]]:
    """Add the decryption to the fetch container (in place) and return the pod's volumes
    with the model volume in memory, the staging volume and the token volume."""
    encryption = model.encryption
    if encryption is None:
        return volumes
    if vault is None:  # the schema requires spec.secrets.vault with encryption
        raise ValueError("spec.model.encryption needs spec.secrets.vault")
    address = vault.address or config.vault.address
    if not address:  # injector mode needs an address (schema); the others check it first
        raise ValueError("spec.model.encryption needs a Vault address")
    audience = vault.audience or config.vault.audience
    fetch["args"] = [*fetch["args"], *fetch_args(encryption, vault, address)]
    fetch["volumeMounts"] = [
        *fetch["volumeMounts"],
        {"name": STAGING_VOLUME, "mountPath": STAGING_DIR},
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
    ]
    others = [v for v in volumes if v["name"] != "model"]
    return [
        model_volume(encryption, config),
        *others,
        {"name": STAGING_VOLUME, "emptyDir": {"sizeLimit": config.model_volume_size}},
        {"name": TOKEN_VOLUME, "projected": {"defaultMode": 0o444, "sources": [
            {"serviceAccountToken": {"path": "token", "audience": audience,
                                     "expirationSeconds": TOKEN_SECONDS}}]}},
    ]
