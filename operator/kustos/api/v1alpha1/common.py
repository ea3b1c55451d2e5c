"""Types shared by every Kustos resource: conditions, references, data sources."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kustos.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DIGEST_PATTERN = r"^sha256:[a-f0-9]{64}$"
# file://, https://, s3://BUCKET/KEY, pvc://CLAIM/PATH (http:// only for loopback dev).
URI_PATTERN = r"^(file:///|https://|s3://|pvc://|http://(127\.0\.0\.1|localhost)[:/])\S+$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

Digest = Annotated[str, Field(pattern=DIGEST_PATTERN, max_length=71)]
Uri = Annotated[str, Field(pattern=URI_PATTERN, max_length=2048)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """A Duration ("1h30m", "10m", "500ms") in seconds (the schema checked its form)."""
    return sum(float(n) * _UNITS[u]
               for n, u in re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text))


class KModel(BaseModel):
    """Base for every API object: camelCase on the wire, field docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(KModel):
    """A condition as the Kubernetes API conventions define it."""

    type: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)
    """Type of the condition, in CamelCase: Ready, Progressing, Degraded, ..."""
    status: Literal["True", "False", "Unknown"]
    """Status of the condition: True, False or Unknown."""
    reason: str = Field(default="", pattern=r"^([A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?)?$",
                        max_length=1024)
    """A machine-readable CamelCase reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """A human-readable explanation of the last transition."""
    last_transition_time: datetime | None = None
    """When the condition last changed status."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the condition was computed from."""


class ResourceStatus(KModel):
    """What the status of every Kustos resource starts with."""

    observed_generation: int | None = None
    """The metadata.generation last reconciled."""
    conditions: list[Condition] | None = Field(
        default=None, max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]})
    """Conditions by the Kubernetes API conventions (types listed per kind in the docs). A
    map keyed by type: each writer owns its own types (server-side apply)."""


class LocalObjectReference(KModel):
    """A reference to an object in the same namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the referenced object."""


class DataSource(KModel):
    """A data file (reference or background data) fetched and verified by `kustos fetch`."""

    uri: Uri
    """Where the data lives: file://, https://, s3:// or pvc://CLAIM/PATH. CSV or .npy."""
    digest: Digest | None = None
    """sha256 of the file (sha256:<64 hex>); verified before the data is parsed."""
    max_samples: int = Field(default=100, ge=1, le=100000)
    """At most this many rows are used (summarised or sampled when the file has more)."""



def validations(*rules: tuple[str, str, str | None]) -> ConfigDict:
    """KModel's config plus CEL rules (rule, message, fieldPath) for the CRD schema."""
    items: list[dict[str, Any]] = []
    for rule, message, field_path in rules:
        item: dict[str, Any] = {"rule": rule, "message": message}
        if field_path:
            item["fieldPath"] = field_path
        items.append(item)
    extra: dict[str, Any] = {"x-kubernetes-validations": items}
    return ConfigDict(**{**KModel.model_config, "json_schema_extra": extra})
