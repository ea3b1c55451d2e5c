"""ExplainerSpec: SHAP or LIME explanations for a ModelDeployment."""

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

ExplainMethod = Literal["shap-tree", "shap-linear", "shap-kernel", "shap-permutation", "lime"]

# The sidecar's --lime-samples bounds (kustos.runtime.explain.lime_method); a unit test
# keeps them equal.
LIME_DEFAULT_SAMPLES = 1000
LIME_MIN_SAMPLES = 100
LIME_MAX_SAMPLES = 20000


class GlobalImportanceSpec(KModel):
    """Scheduled global interpretability."""

    interval: Duration = "1h"
    """How often mean |attribution|, permutation importance and partial dependence run."""
    top_k: int = Field(default=10, ge=1, le=100)
    """How many features go into status.globalImportance."""


class LimeSpec(KModel):
    """Settings of method lime (LIME tabular, quartile bins of the background)."""

    num_samples: int = Field(default=LIME_DEFAULT_SAMPLES, ge=LIME_MIN_SAMPLES,
                             le=LIME_MAX_SAMPLES)
    """Perturbed rows the model predicts per explained row (cost grows linearly)."""


class ExplainerSpecSpec(KModel):
    """Desired state of an ExplainerSpec."""

    model_config = validations(
        ("!has(self.lime) || self.method == 'lime'",
         "lime settings are only for method lime", ".lime"),
    )

    target_ref: LocalObjectReference
    """The ModelDeployment to explain (same namespace)."""
    method: ExplainMethod = "shap-tree"
    """shap-tree | shap-linear | shap-kernel | shap-permutation | lime."""
    lime: LimeSpec | None = None
    """method lime only: its settings (defaults when unset)."""
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
    """Mean |SHAP| value (mean |LIME weight| for method lime)."""


class ExplainerSpecStatus(ResourceStatus):
    """Observed state of an ExplainerSpec. Conditions: Ready, Degraded."""

    endpoint: str | None = None
    """Where explanations are served."""
    global_importance: list[FeatureImportance] | None = None
    """Top-k features by mean |attribution|."""
    last_computed: datetime | None = None
    """When global importance was last computed."""
    report_config_map: str | None = None
    """The ConfigMap (same namespace) holding the full global report (report.json)."""


class ExplainerSpec(KModel):
    """SHAP or LIME explanations served next to a ModelDeployment."""

    api_version: Literal["kustos.dev/v1alpha1"] = "kustos.dev/v1alpha1"
    kind: Literal["ExplainerSpec"] = "ExplainerSpec"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ExplainerSpecSpec
    status: ExplainerSpecStatus | None = None
