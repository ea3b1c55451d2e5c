"""Vault agent mode of a ModelDeployment -> an OpenBao agent in its pods. Pure.

No mutating webhook is involved: Kustos renders the agent itself, visibly, into the
Deployment it owns:

- a ConfigMap ``{name}-vault-agent`` with two agent configurations (JSON, which the
  agent reads like HCL): ``init.json`` (exit_after_auth: log in, render every template
  once, exit) and ``agent.json`` (keep running, re-read the secrets every
  refreshInterval). It holds paths, role and templates, never a secret value;
- an init container ``vault-agent-init`` after the model fetch, so the model server starts
  with its files present, and fails the pod when the login or a template fails (a wrong
  role is reported on the ModelDeployment through the pods' status, not hidden in a
  retry loop);
- a sidecar ``vault-agent`` that rewrites a file when its secret changes in Vault
  (unless prePopulateOnly);
- an in-memory emptyDir for the files, written by the agents and mounted read-only into
  the server container at /var/run/secrets/kustos, as in the other modes;
- a projected ServiceAccount token (the pods mount none by default) with the audience the
  Vault role checks, for the agents only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kustos.api.v1alpha1.modeldeployment import VaultSpec

from .attachments import Attachments
from .meta import COMPONENT, child_meta
from .modeldeployment import security_context
from .sidecars import duration_seconds
from .vault import FILE_MODE, SECRET_MOUNT, TOKEN_VOLUME, VOLUME, default_template

INIT_CONTAINER = "vault-agent-init"
SIDECAR = "vault-agent"
CONFIG_VOLUME = "vault-agent-config"
CONFIG_DIR = "/etc/kustos/vault-agent"
TOKEN_DIR = "/var/run/secrets/kustos-vault"
TOKEN_PATH = f"{TOKEN_DIR}/token"
# On the pod template: a new agent configuration (items, role, address) rolls the pods.
CONFIG_CHECKSUM = "kustos.dev/vault-agent-config"
# The files live in memory only; a few secrets need little room.
VOLUME_SIZE = "8Mi"
TOKEN_SECONDS = 3600
MIN_REFRESH = 5


def config_name(name: str) -> str:
    """The ConfigMap of the agent configurations of ModelDeployment ``name``."""
    return f"{name}-vault-agent"


def refresh_seconds(vault: VaultSpec) -> int:
    """How often the sidecar re-reads the secrets (refreshInterval, at least 5 s)."""
    return max(MIN_REFRESH, int(duration_seconds(vault.refresh_interval)))


def agent_config(vault: VaultSpec, address: str, *, init: bool) -> dict[str, Any]:
    """One agent configuration. ``init``: log in, render once, exit, and exit non-zero on
    any login or template error (the kubelet retries the init container with backoff).
    The sidecar instead retries for ever: while Vault is away the model keeps serving the
    files it has."""
    method: dict[str, Any] = {
        "type": "kubernetes",
        "mount_path": f"auth/{vault.auth_path}",
        "config": {"role": vault.role, "token_path": TOKEN_PATH},
    }
    if init:
        method["exit_on_err"] = True
    templates = [{
        "destination": f"{SECRET_MOUNT}/{item.file}",
        "contents": item.template or default_template(item),
        "perms": f"{FILE_MODE:04o}",
        # A missing key is an error, not "<no value>" in the file.
        "error_on_missing_key": True,
    } for item in vault.items]
    server: dict[str, Any] = {"address": address.rstrip("/")}
    if vault.namespace:
        server["namespace"] = vault.namespace  # for the login and the reads
    return {
        "vault": server,
        "auto_auth": {"method": [method]},
        "template_config": {
            # KV secrets have no lease: the agent re-reads them this often.
            "static_secret_render_interval": f"{refresh_seconds(vault)}s",
            "exit_on_retry_failure": init,
        },
        "template": templates,
        "exit_after_auth": init,
    }


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def config_data(vault: VaultSpec, address: str) -> dict[str, str]:
    """The ConfigMap's data: init.json and agent.json."""
    return {"init.json": _dump(agent_config(vault, address, init=True)),
            "agent.json": _dump(agent_config(vault, address, init=False))}


def render_configmap(body: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_meta(body, config_name(name), {COMPONENT: "vault-agent"}),
        "data": dict(data),
    }


def _container(name: str, image: str, config_file: str, resources: Mapping[str, Any],
               ) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["agent", f"-config={CONFIG_DIR}/{config_file}"],
        "resources": dict(resources),
        "securityContext": security_context(),
        # The agent's last log line says why a login or a template failed (status/pods).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": VOLUME, "mountPath": SECRET_MOUNT},
        ],
    }


def agent_attachments(body: Mapping[str, Any], vault: VaultSpec, address: str, audience: str,
                      image: str, resources: Mapping[str, Any]) -> Attachments:
    """The agent's contribution to the pods: ConfigMap child, init container, sidecar,
    volumes, the read-only mount into the server, and a checksum of the configuration."""
    name = body["metadata"]["name"]
    data = config_data(vault, address)
    checksum = hashlib.sha256(_dump(data).encode()).hexdigest()[:32]
    init = _container(INIT_CONTAINER, image, "init.json", resources)
    sidecars = () if vault.pre_populate_only else \
        (_container(SIDECAR, image, "agent.json", resources),)
    volumes = (
        {"name": VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": VOLUME_SIZE}},
        {"name": CONFIG_VOLUME, "configMap": {"name": config_name(name)}},
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "path": "token", "audience": audience, "expirationSeconds": TOKEN_SECONDS}}]}},
    )
    return Attachments(
        init_containers=(init,),
        sidecars=sidecars,
        volumes=volumes,
        server_volume_mounts=({"name": VOLUME, "mountPath": SECRET_MOUNT, "readOnly": True},),
        pod_annotations={CONFIG_CHECKSUM: checksum},
        children=(render_configmap(body, data),),
    )
