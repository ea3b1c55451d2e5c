"""What the explainer and drift sidecars share: pure helpers, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from kustos.api.v1alpha1.common import duration_seconds as duration_seconds
from kustos.api.v1alpha1.modeldeployment import ModelSource

from .attachments import Attachments
from .aws_identity import web_identity_env, web_identity_mount
from .containers import sidecar_container as sidecar_container
from .modeldeployment import PVC_MOUNT

EXPLAIN_PORT = 8090
DRIFT_PORT = 8091
SCRATCH = "/tmp"

def target_name(resource: Mapping[str, Any]) -> str:
    return str(((resource.get("spec") or {}).get("targetRef") or {}).get("name", ""))


def active_for(target: str, candidates: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The one resource of a kind that is wired into ``target``: the oldest (by creation,
    then name) of those that target it and are not being deleted. The others conflict."""
    live = [c for c in candidates
            if target_name(c) == target and not c["metadata"].get("deletionTimestamp")]
    if not live:
        return None
    return min(live, key=lambda c: (c["metadata"].get("creationTimestamp") or "",
                                    c["metadata"]["name"]))


def data_source(uri: str, volume: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(URI the sidecar fetches, volumes, volume mounts): a pvc://CLAIM/PATH source is
    mounted read-only and read as a file; other schemes are fetched by the sidecar."""
    parsed = urlparse(uri)
    if parsed.scheme != "pvc":
        return uri, [], []
    claim = parsed.netloc
    mount = f"{PVC_MOUNT}/{claim}"
    return (f"file://{mount}{parsed.path}",
            [{"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            [{"name": volume, "mountPath": mount, "readOnly": True}])


def scratch_volume(name: str, size: str) -> dict[str, Any]:
    return {"name": name, "emptyDir": {"sizeLimit": size}}


def sidecar_attachments(container: dict[str, Any], model: ModelSource, data_uri: str,
                        volumes: Iterable[dict[str, Any]], annotations: Mapping[str, str],
                        drift_url: str | None = None,
                        explainer_url: str | None = None) -> Attachments:
    """One sidecar's contribution to its target's pods: the container (with the model's
    credentials when its data is on S3), the scratch and data volumes, the server flag and
    the pod annotations."""
    if model.credentials_secret_ref and data_uri.startswith("s3://"):
        # Data next to the model: the same credentials reach it.
        container["envFrom"] = [{"secretRef": {"name": model.credentials_secret_ref.name}}]
    if model.web_identity and data_uri.startswith("s3://"):
        # The pod's projected token (render/aws_identity.py) reaches the data as well.
        container["env"] = [*container.get("env", []),
                            *web_identity_env(model.web_identity, f"kustos-{container['name']}")]
        container["volumeMounts"] = [*container.get("volumeMounts", []), web_identity_mount()]
    return Attachments(sidecars=(container,), volumes=tuple(volumes), drift_url=drift_url,
                       explainer_url=explainer_url, pod_annotations=dict(annotations))


def number(value: float) -> str:
    """A float as a short argument: 0.05, 600 (not 600.0)."""
    return f"{value:g}"
