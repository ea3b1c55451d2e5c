"""Why a ModelDeployment's pods do not start, read from the pods the kubelet reports.

A Deployment only says "not available"; the reason (a wrong digest in the fetch init
container, an image that cannot be pulled, a server that crashes) is in the pods'
container statuses. Pure: the controller lists the pods and passes them in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .conditions import Failure

FETCH_CONTAINER = "fetch-model"
# Vault agent mode's init container (render/vault_agent.py): login and first render.
VAULT_AGENT_INIT = "vault-agent-init"
# Kept short in status and Events; the pod's own status has the whole text.
MAX_MESSAGE = 400

# Waiting reasons the kubelet gives while it cannot get an image.
_IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
# Waiting reasons for a container whose configuration cannot be built.
_CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")

# The Degraded reasons this module derives; they clear when the pods recover.
REASONS = ("ModelFetchFailed", "VaultAgentFailed", "ImagePullFailed", "ContainerConfigError",
           "ContainerCrashing")


def _terminated(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The container's failed termination (now, or the last one before a restart)."""
    for key in ("state", "lastState"):
        term = (status.get(key) or {}).get("terminated")
        if term and int(term.get("exitCode", 0)) != 0:
            return term  # type: ignore[no-any-return]
    return None


def _clip(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # The fetcher prints progress first and its one-line error last.
    message = lines[-1] if lines else ""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _agent_error(text: str) -> str:
    """What Vault answered, from the agent's log: the agent prints Vault's error as a block
    of '| ' lines (URL, 'Code: 400. Errors:', '* invalid role name ...') and ends with
    'exitCode=1' and a hint, which say nothing."""
    lines = [ln.strip() for ln in text.splitlines()]
    block = [ln.lstrip("|").strip() for ln in lines if ln.startswith("|")]
    said = [ln.lstrip("* ") for ln in block if ln.startswith("*")]
    if said:
        where = next((ln for ln in block if ln.startswith("URL: ")), "")
        code = next((ln.split(".")[0] for ln in block if ln.startswith("Code: ")), "")
        head = ", ".join(x for x in (where.removeprefix("URL: "), code) if x)
        return _clip(f"{head}: {said[-1]}" if head else said[-1])
    errors = [ln for ln in lines if "[ERROR]" in ln]
    return _clip(errors[-1] if errors else text)


def _pod_problem(pod: Mapping[str, Any]) -> Failure | None:
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    for cs in status.get("initContainerStatuses") or []:
        term = _terminated(cs)
        if cs.get("name") == FETCH_CONTAINER and term is not None:
            detail = _clip(term.get("message") or "") or f"exit code {term.get('exitCode')}"
            return Failure("ModelFetchFailed", f"pod {name}: fetching the model failed: {detail}")
        if cs.get("name") == VAULT_AGENT_INIT and term is not None:
            detail = _agent_error(term.get("message") or "") or \
                f"exit code {term.get('exitCode')}"
            return Failure("VaultAgentFailed", f"pod {name}: the Vault agent could not log in "
                           f"or render the secrets: {detail}")
    statuses = [*(status.get("initContainerStatuses") or []),
                *(status.get("containerStatuses") or [])]
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        container = cs.get("name", "?")
        if reason in _IMAGE_REASONS:
            return Failure("ImagePullFailed", f"pod {name}, container {container}: {reason}: "
                           f"{_clip(waiting.get('message') or cs.get('image', ''))}")
        if reason in _CONFIG_REASONS:
            return Failure("ContainerConfigError", f"pod {name}, container {container}: "
                           f"{reason}: {_clip(waiting.get('message') or '')}")
        term = _terminated(cs)
        if reason == "CrashLoopBackOff" and term is not None:
            detail = _clip(term.get("message") or "") or f"exit code {term.get('exitCode')}"
            return Failure("ContainerCrashing", f"pod {name}, container {container} keeps "
                           f"exiting: {detail}")
    return None


def problem(pods: Iterable[Mapping[str, Any]]) -> Failure | None:
    """The first problem among ``pods`` (by name, so the answer is stable), if any."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        found = _pod_problem(pod)
        if found is not None:
            return found
    return None
