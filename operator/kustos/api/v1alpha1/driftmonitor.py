"""DriftMonitor: alibi-detect drift detection on a ModelDeployment's inputs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from .common import (
    DataSource,
    Duration,
    KModel,
    LocalObjectReference,
    ResourceStatus,
    validations,
)

Detector = Literal["ks", "chisquare", "tabular", "mmd", "cvm-online"]


class WindowSpec(KModel):
    """Which served inputs are tested together."""

    size: int = Field(default=500, ge=10, le=100000)
    """Rows per window."""
    max_age: Duration = "10m"
    """A window that is not full after this long is tested anyway (if it has enough rows)."""


class RetrainJobSpec(KModel):
    """A batch/v1 Job created once per drift episode."""

    cooldown: Duration = "24h"
    """Minimum time between two retraining Jobs."""
    template: dict[str, Any] = Field(
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """A batch/v1 JobTemplateSpec (metadata and spec)."""


class OnDriftSpec(KModel):
    """What happens when drift is detected."""

    event: bool = True
    """Post an Event when drift starts and ends."""
    retrain_job: RetrainJobSpec | None = None
    """Create a retraining Job."""


class DriftMonitorSpec(KModel):
    """Desired state of a DriftMonitor."""

    model_config = validations(
        ("self.detector != 'tabular' || has(self.categoricalFeatures)",
         "detector tabular needs categoricalFeatures", ".categoricalFeatures"),
    )

    target_ref: LocalObjectReference
    """The ModelDeployment whose inputs are monitored (same namespace)."""
    detector: Detector = "ks"
    """ks | chisquare | tabular | mmd | cvm-online."""
    reference: DataSource
    """Reference data (CSV or .npy, features in model order)."""
    feature_names: list[str] | None = Field(default=None, max_length=10000)
    """Names of the model's input features, in order."""
    categorical_features: list[int] | None = Field(default=None, max_length=10000)
    """Indices of categorical features (chisquare / tabular)."""
    window: WindowSpec = Field(default_factory=WindowSpec)
    """Test window."""
    p_value: float = Field(default=0.05, gt=0, lt=1)
    """Threshold below which a feature (or the window) counts as drifted."""
    on_drift: OnDriftSpec = Field(default_factory=OnDriftSpec)
    """Actions on drift."""


class FeaturePValue(KModel):
    """One feature's latest test result."""

    feature: str
    """Feature name."""
    p_value: float | None = None
    """p-value of the latest window."""
    distance: float | None = None
    """Test statistic / distance of the latest window."""


class LastDrift(KModel):
    """The latest drift episode."""

    at: datetime | None = None
    """When drift was detected."""
    features: list[str] | None = None
    """The drifting features."""
    job: str | None = None
    """The retraining Job created for it."""


class DriftMonitorStatus(ResourceStatus):
    """Observed state of a DriftMonitor. Conditions: Ready, DriftDetected, Degraded."""

    last_check: datetime | None = None
    """When the latest window was tested."""
    windows_evaluated: int | None = None
    """Windows tested so far."""
    feature_p_values: list[FeaturePValue] | None = None
    """Per-feature results of the latest window."""
    last_drift: LastDrift | None = None
    """The latest drift episode."""


class DriftMonitor(KModel):
    """Drift detection on the inputs a ModelDeployment serves."""

    api_version: Literal["kustos.dev/v1alpha1"] = "kustos.dev/v1alpha1"
    kind: Literal["DriftMonitor"] = "DriftMonitor"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: DriftMonitorSpec
    status: DriftMonitorStatus | None = None
