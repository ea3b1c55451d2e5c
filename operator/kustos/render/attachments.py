"""What other resources add to a ModelDeployment's pods: pure data, no I/O.

An ExplainerSpec or DriftMonitor that targets a ModelDeployment, and the ModelDeployment's
own Vault settings, each contribute sidecars, volumes, server flags or pod annotations.
The controller gathers the contributions (kustos.controllers.attachments) and the pure
render applies them, so the ModelDeployment object itself is never edited by them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Attachments:
    """Contributions to the pods (both tracks) and children of one ModelDeployment."""

    # Extra containers next to the model server (explainer, drift detector).
    sidecars: tuple[dict[str, Any], ...] = ()
    # Extra init containers, run after the model fetch (e.g. fetch background data).
    init_containers: tuple[dict[str, Any], ...] = ()
    volumes: tuple[dict[str, Any], ...] = ()
    # Mounted into the model server container.
    server_volume_mounts: tuple[dict[str, Any], ...] = ()
    server_env: tuple[dict[str, Any], ...] = ()
    # Where `kustos serve` sends request inputs / forwards :explain (kustos runtime only).
    drift_url: str | None = None
    explainer_url: str | None = None
    # Where `kustos serve` sends payload CloudEvents and forwards labels (ground truth).
    truth_url: str | None = None
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    # Extra children of the ModelDeployment (their kinds must be in MODEL_CHILD_KINDS).
    children: tuple[dict[str, Any], ...] = ()

    def __add__(self, other: Attachments) -> Attachments:
        return Attachments(
            sidecars=self.sidecars + other.sidecars,
            init_containers=self.init_containers + other.init_containers,
            volumes=self.volumes + other.volumes,
            server_volume_mounts=self.server_volume_mounts + other.server_volume_mounts,
            server_env=self.server_env + other.server_env,
            drift_url=other.drift_url or self.drift_url,
            explainer_url=other.explainer_url or self.explainer_url,
            truth_url=other.truth_url or self.truth_url,
            pod_annotations={**self.pod_annotations, **other.pod_annotations},
            children=self.children + other.children,
        )


NONE = Attachments()
