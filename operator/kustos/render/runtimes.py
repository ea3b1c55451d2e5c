"""The serving container for each runtime kind: pure, no I/O.

`ServingSpec` is everything a runtime needs, extracted from a ModelDeployment and the
operator config by the Deployment renderer; `runtime_container` turns it into the main
container of the pod (image, command/args, env, ports, probes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Where the fetch init container writes the model inside every serving pod.
MODEL_DIR = "/mnt/models"
HTTP_PORT_NAME = "http"
METRICS_PORT_NAME = "metrics"


@dataclass(frozen=True)
class ServingSpec:
    """What the serving container needs to know, independent of the runtime kind."""

    kind: str  # kustos | seldon | mlserver | tfserving | torchserve | custom
    image: str
    model_name: str
    model_version: str
    model_file: str  # file name inside MODEL_DIR, e.g. "model.skops"
    model_format: str  # sklearn | onnx
    digest: str | None = None
    protocol: str = "v2"
    workers: int = 1
    env: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    drift_url: str | None = None
    explainer_url: str | None = None
    # custom runtime only: the user's command/args/port.
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    port: int | None = None

    @property
    def model_path(self) -> str:
        return f"{MODEL_DIR}/{self.model_file}"


def kustos_serve_args(spec: ServingSpec, host: str = "0.0.0.0", port: int = 8080) -> list[str]:
    """The exact `kustos serve` arguments the operator renders (and tests run)."""
    args = [
        "serve",
        "--model", spec.model_path,
        "--name", spec.model_name,
        "--model-version", spec.model_version,
        "--format", spec.model_format,
        "--host", host,
        "--port", str(port),
        "--workers", str(spec.workers),
    ]
    if spec.digest:
        args += ["--digest", spec.digest]
    if spec.drift_url:
        args += ["--drift-url", spec.drift_url]
    if spec.explainer_url:
        args += ["--explainer-url", spec.explainer_url]
    return args


def runtime_container(spec: ServingSpec) -> dict[str, Any]:
    """The main serving container for ``spec.kind``."""
    if spec.kind != "kustos":
        raise NotImplementedError(f"runtime kind {spec.kind!r} is not rendered yet")
    port = 8080
    probe_base = {"httpGet": {"port": HTTP_PORT_NAME}, "periodSeconds": 10, "timeoutSeconds": 2}
    return {
        "name": "server",
        "image": spec.image,
        "args": kustos_serve_args(spec, port=port),
        "env": list(spec.env),
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {**probe_base, "httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT_NAME}},
        "livenessProbe": {**probe_base, "httpGet": {"path": "/v2/health/live", "port": HTTP_PORT_NAME},
                          "failureThreshold": 6},
        "resources": dict(spec.resources),
    }
