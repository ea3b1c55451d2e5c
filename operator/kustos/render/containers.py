"""What every sidecar of a serving pod shares: the restricted securityContext and the
container shape of a `kustos` sidecar. Pure; imports nothing from the other render
modules, so modeldeployment.py and the sidecar modules can both use it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def security_context() -> dict[str, Any]:
    """Pod Security Standards `restricted`, plus a read-only root file system."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def sidecar_container(name: str, image: str, args: list[str], port: int, port_name: str,
                      resources: Mapping[str, Any],
                      mounts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A sidecar with the server's restricted securityContext. Readiness is the liveness
    endpoint: a broken background or reference is reported in the sidecar's status and
    must never take the pod out of the Service."""
    probe = {"httpGet": {"path": "/v2/health/live", "port": port_name},
             "periodSeconds": 10, "timeoutSeconds": 2}
    return {
        "name": name,
        "image": image,
        "command": ["kustos"],
        "args": args,
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
        "resources": dict(resources),
        "securityContext": security_context(),
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": 6},
        "volumeMounts": [dict(m) for m in mounts],
    }
