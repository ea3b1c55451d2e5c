"""Operator configuration: images per runtime, defaults, cluster facts.

Loaded from a YAML file (``kustos run --config``, or ``KUSTOS_CONFIG``); every field has
a default so the operator runs without one. The Helm chart renders this file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_IMAGE = "ghcr.io/kustos-dev/kustos-runtime:0.1.0"


class Images(BaseModel):
    """Container image for each runtime kind and role."""

    model_config = ConfigDict(extra="forbid")

    kustos: str = DEFAULT_IMAGE
    seldon: str = "ghcr.io/kustos-dev/kustos-seldon:0.1.0"
    mlserver: str = "docker.io/seldonio/mlserver:1.7.1-sklearn"
    tfserving: str = "docker.io/tensorflow/serving:2.17.0"
    torchserve: str = "docker.io/pytorch/torchserve:0.12.0-cpu"
    fetch: str = DEFAULT_IMAGE


class OperatorConfig(BaseModel):
    """Everything the render functions need beyond the resource itself."""

    model_config = ConfigDict(extra="forbid")

    images: Images = Field(default_factory=Images)
    cluster_domain: str = "cluster.local"
    default_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        }
    )
    fetch_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    model_volume_size: str = "2Gi"
    history_limit: int = Field(default=10, ge=1, le=100)


def load(path: str | Path | None = None) -> OperatorConfig:
    """The config from ``path`` (or $KUSTOS_CONFIG); defaults when neither is set."""
    path = path or os.environ.get("KUSTOS_CONFIG")
    if not path:
        return OperatorConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return OperatorConfig.model_validate(data)
