"""ExplainerSpec: SHAP explanations for a ModelDeployment."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from .common import DataSource, Duration, KModel, LocalObjectReference, ResourceStatus

ExplainMethod = Literal["shap-tree", "shap-linear", "shap-kernel", "shap-permutation"]


class GlobalImportanceSpec(KModel):
    """Scheduled global interpretability."""

    interval: Duration = "1h"
    """How often mean |SHAP|, permutation importance and partial dependence are computed."""
    top_k: int = Field(default=10, ge=1, le=100)
    """How many features go into status.globalImportance."""


class ExplainerSpecSpec(KModel):
    """Desired state of an ExplainerSpec."""

    target_ref: LocalObjectReference
    """The ModelDeployment to explain (same namespace)."""
    method: ExplainMethod = "shap-tree"
    """shap-tree | shap-linear | shap-kernel | shap-permutation."""
    background: DataSource
    """Background data for the explainer (CSV or .npy, features in model order)."""
    feature_names: list[str] | None = Field(default=None, max_length=10000)
    """Names of the model's input features, in order."""
    global_: GlobalImportanceSpec | None = Field(default=None, alias="global")
    """Global feature importance on a schedule; off when unset."""


class FeatureImportance(KModel):
    """One feature's global importance."""

    feature: str
    """Feature name."""
    value: float
    """Mean |SHAP| value."""


class ExplainerSpecStatus(ResourceStatus):
    """Observed state of an ExplainerSpec. Conditions: Ready, Degraded."""

    endpoint: str | None = None
    """Where explanations are served."""
    global_importance: list[FeatureImportance] | None = None
    """Top-k features by mean |SHAP|."""
    last_computed: datetime | None = None
    """When global importance was last computed."""
    report_config_map: str | None = None
    """The ConfigMap (same namespace) holding the full global report (report.json)."""


class ExplainerSpec(KModel):
    """SHAP explanations served next to a ModelDeployment."""

    api_version: Literal["kustos.dev/v1alpha1"] = "kustos.dev/v1alpha1"
    kind: Literal["ExplainerSpec"] = "ExplainerSpec"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ExplainerSpecSpec
    status: ExplainerSpecStatus | None = None
