"""MLflow Model Registry: spec.model.registry (where a models:/ URI is resolved) and
status.registry (what it resolved to). The resolution itself is kustos.registry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from kustos.registry.uri import MODELS_URI_PATTERN

from .common import URI_PATTERN, Duration, KModel, LocalObjectReference

# spec.model.uri: a model file's URI, or a registry model (models:/NAME@ALIAS | /VERSION).
MODEL_URI_PATTERN = f"({URI_PATTERN})|({MODELS_URI_PATTERN})"
ModelUri = Annotated[str, Field(pattern=MODEL_URI_PATTERN, max_length=2048)]


class ModelRegistry(KModel):
    """The MLflow Model Registry a models:/ URI is resolved against (its REST API; the
    operator polls it and records the answer in status.registry)."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^\s/?#@]+(/\S*)?$")
    """The tracking server's URL, e.g. https://mlflow.example or
    http://mlflow.mlops.svc:5000 (the operator calls URL/api/2.0/mlflow/...)."""
    credentials_secret_ref: LocalObjectReference | None = None
    """A Secret in the namespace with key token (a bearer token), or keys username and
    password (HTTP basic, as MLflow's basic-auth app); anonymous when unset."""
    poll_interval: Duration = "60s"
    """How often the operator asks the registry where the alias points (at least 10s)."""


class RegistryStatus(KModel):
    """What spec.model.uri resolved to, as last seen in the registry."""

    name: str | None = None
    """Registered model name."""
    alias: str | None = None
    """The alias resolved (unset for a models:/NAME/VERSION URI)."""
    version: str | None = None
    """The model version it resolved to (what the pods serve)."""
    run_id: str | None = None
    """The MLflow run that produced the version, when the registry records one."""
    source: str | None = None
    """The model file the fetch downloads: the version's artifact location plus the
    kustos.dev/file tag (or MLflow's file name for the format)."""
    digest: str | None = None
    """The version's kustos.dev/sha256 tag (sha256:<hex>), verified by the fetch; unset
    when the version has no such tag."""
    resolved_at: datetime | None = None
    """When the registry last gave a different answer (the resolution changed)."""
