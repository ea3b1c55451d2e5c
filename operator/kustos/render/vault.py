"""Vault secrets of a ModelDeployment -> pod contributions and the synced Secret. Pure.

Two modes (spec.secrets.vault.mode):

- ``injector``: Vault Agent Injector annotations on the pod template; the agent in the pod
  logs in and writes the files. The operator never talks to Vault.
- ``sync``: the operator reads KV v2 and writes a Secret ``{name}-vault``; it is mounted
  as files into the server container (env only on request). The pod template carries a
  checksum over the item mapping and the KV versions, never over the values, so a new
  version rolls the pods and nothing derived from a value leaves the Secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kustos.api.v1alpha1.modeldeployment import ModelDeploymentSpec, VaultItem, VaultSpec

from .attachments import NONE, Attachments
from .meta import COMPONENT, child_meta

SECRET_MOUNT = "/var/run/secrets/kustos"
VOLUME = "vault-secrets"
TOKEN_VOLUME = "vault-token"
# On the pod template: rolls the pods when a synced version (or the item mapping) changes.
CHECKSUM = "kustos.dev/vault-secrets-version"
INJECT = "vault.hashicorp.com/"
# Group-readable: the pods run with fsGroup, the files belong to root:fsGroup.
FILE_MODE = 0o440


def secret_name(name: str) -> str:
    """The Secret sync mode writes for ModelDeployment ``name``."""
    return f"{name}-vault"


def vault_spec(spec: ModelDeploymentSpec) -> VaultSpec | None:
    return spec.secrets.vault if spec.secrets else None


def split_kv_path(path: str) -> tuple[str, str]:
    """secret/data/ml/x -> (mount "secret", path "ml/x"); mounts may contain slashes."""
    mount, sep, rest = path.strip("/").partition("/data/")
    if not sep or not mount or not rest:
        raise ValueError(f"{path!r} is not a KV v2 path (MOUNT/data/PATH)")
    return mount, rest


def paths(vault: VaultSpec) -> list[str]:
    """The distinct KV paths the items read, in order."""
    return list(dict.fromkeys(item.path for item in vault.items))


def checksum(vault: VaultSpec, versions: Mapping[str, int]) -> str:
    """A checksum over what the synced Secret is made of: which key of which path goes to
    which file or variable, and the KV version of each path. Values never enter it: a hash
    of a low-entropy value could be brute-forced from an annotation."""
    mapping = [[i.path, i.key, i.file, i.env] for i in vault.items]
    doc = {"items": mapping, "versions": sorted((p, int(v)) for p, v in versions.items())}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def synced_versions(status_secrets: Mapping[str, Any] | None) -> dict[str, int]:
    """status.secrets.versions as {path: version}."""
    return {str(v["path"]): int(v["version"])
            for v in (status_secrets or {}).get("versions") or []}


def in_sync(vault: VaultSpec, status_secrets: Mapping[str, Any] | None) -> bool:
    """Whether status.secrets describes a sync of the current items (else a sync is due
    before the pods can be rendered)."""
    if not status_secrets or not status_secrets.get("version"):
        return False
    versions = synced_versions(status_secrets)
    if set(versions) != set(paths(vault)):
        return False
    return bool(status_secrets["version"] == checksum(vault, versions))


class MissingKey(Exception):
    """An item's key is not in the secret read from Vault."""

    def __init__(self, path: str, key: str) -> None:
        super().__init__(f"key {key!r} not found in {path}")
        self.path = path
        self.key = key


def _text(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, sort_keys=True).encode()


def secret_data(vault: VaultSpec, secrets: Mapping[str, Mapping[str, Any]]) -> dict[str, bytes]:
    """The Secret's files from the KV data read per path: the key's value, or all keys as
    JSON when an item names no key."""
    out: dict[str, bytes] = {}
    for item in vault.items:
        data = secrets[item.path]
        if item.key is None:
            out[item.file] = json.dumps(dict(data), sort_keys=True).encode()
        elif item.key in data:
            out[item.file] = _text(data[item.key])
        else:
            raise MissingKey(item.path, item.key)
    return out


def render_secret(body: Mapping[str, Any], data: Mapping[str, bytes],
                  version: str) -> dict[str, Any]:
    """The synced Secret, owned by the ModelDeployment. Its only annotation is the version
    checksum: no spec-hash, which would be a hash over the values."""
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": child_meta(body, secret_name(name), {COMPONENT: "secrets"},
                               {CHECKSUM: version}),
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }


def sync_attachments(name: str, vault: VaultSpec,
                     status_secrets: Mapping[str, Any] | None) -> Attachments:
    """The synced Secret as files (and env on request) in the server container.

    The volume is not optional: before the first sync the operator renders no pods (see
    kustos.controllers.vault), and a pod of a Secret deleted by hand waits for the next
    sync instead of starting without its secrets."""
    secret = secret_name(name)
    env = tuple(
        {"name": i.env, "valueFrom": {"secretKeyRef": {"name": secret, "key": i.file}}}
        for i in vault.items if i.env)
    annotations = {}
    if status_secrets and status_secrets.get("version"):
        annotations[CHECKSUM] = str(status_secrets["version"])
    return Attachments(
        volumes=({"name": VOLUME, "secret": {"secretName": secret, "optional": False,
                                             "defaultMode": FILE_MODE}},),
        server_volume_mounts=({"name": VOLUME, "mountPath": SECRET_MOUNT, "readOnly": True},),
        server_env=env,
        pod_annotations=annotations,
    )


def _quote(text: str) -> str:
    return json.dumps(text)  # a Go template string literal is a JSON string


def default_template(item: VaultItem) -> str:
    """What the agent writes for an item without a template: the key's value, or all keys
    as JSON (as sync mode does). KV v2 keeps the values under .Data.data."""
    data = ".Data.data" if "/data/" in item.path else ".Data"
    value = f"index {data} {_quote(item.key)}" if item.key else f"{data} | toJSON"
    return f"{{{{- with secret {_quote(item.path)} -}}}}{{{{ {value} }}}}{{{{- end }}}}"


def injector_attachments(vault: VaultSpec, audience: str) -> Attachments:
    """Vault Agent Injector annotations. The pods mount no ServiceAccount token
    (automountServiceAccountToken: false), so the agent gets a projected token of its own
    with the audience the Vault role checks."""
    annotations = {
        f"{INJECT}agent-inject": "true",
        f"{INJECT}role": vault.role,
        f"{INJECT}auth-path": f"auth/{vault.auth_path}",
        f"{INJECT}secret-volume-path": SECRET_MOUNT,
        f"{INJECT}agent-service-account-token-volume-name": TOKEN_VOLUME,
        f"{INJECT}agent-pre-populate-only": "true" if vault.pre_populate_only else "false",
    }
    if vault.namespace:
        annotations[f"{INJECT}namespace"] = vault.namespace
    if vault.address:
        annotations[f"{INJECT}service"] = vault.address.rstrip("/")
    for item in vault.items:
        annotations[f"{INJECT}agent-inject-secret-{item.file}"] = item.path
        annotations[f"{INJECT}agent-inject-template-{item.file}"] = \
            item.template or default_template(item)
    token_volume = {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "path": "token", "audience": audience, "expirationSeconds": 3600}}]}}
    return Attachments(volumes=(token_volume,), pod_annotations=annotations)


def attachments(body: Mapping[str, Any], default_audience: str) -> Attachments:
    """What spec.secrets.vault contributes to the pods (nothing when unset)."""
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    vault = vault_spec(spec)
    if vault is None:
        return NONE
    if vault.mode == "injector":
        return injector_attachments(vault, vault.audience or default_audience)
    status_secrets = (body.get("status") or {}).get("secrets")
    return sync_attachments(body["metadata"]["name"], vault, status_secrets)
