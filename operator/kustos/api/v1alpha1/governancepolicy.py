"""GovernancePolicy: cluster-wide rules a ModelDeployment must follow (cluster-scoped).

The admission webhook served by the operator refuses a ModelDeployment that breaks a
static rule (owner, approval, pinned digest, model signature, image
registry); the rules that depend on
other objects (an ExplainerSpec, a DriftMonitor targeting the model, one that monitors
fairness) are reported by the
operator as the ModelDeployment's PolicyCompliant condition, because objects may be
applied in any order.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from .common import KModel, ResourceStatus, validations
from .modeldeployment import RiskTier

LABEL_KEY_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A registry host (registry.example.com, localhost:5000), optionally with a path prefix.
REGISTRY_PATTERN = (r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?"
                    r"(/[a-z0-9]([-._a-z0-9/]*[a-z0-9])?)?$")
Registry = Annotated[str, Field(pattern=REGISTRY_PATTERN, max_length=512)]


class LabelSelectorRequirement(KModel):
    """One requirement of a label selector, as in Kubernetes."""

    model_config = validations(
        ("self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
         "In and NotIn need values; Exists and DoesNotExist take none", ".values"),
    )

    key: str = Field(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN)
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """In, NotIn, Exists or DoesNotExist."""
    values: list[str] = Field(default_factory=list, max_length=256)
    """Values for In and NotIn."""


class LabelSelector(KModel):
    """A label selector, as in Kubernetes; empty selects everything."""

    match_labels: dict[str, str] | None = None
    """Labels that must all be present with these values."""
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None,
                                                                     max_length=64)
    """Requirements that must all hold."""


class GovernancePolicySpec(KModel):
    """Which namespaces the policy governs and what it requires there."""

    namespace_selector: LabelSelector | None = None
    """Namespaces the policy applies to, by their labels; all namespaces when unset."""
    require_owner: bool = False
    """Every ModelDeployment must set spec.governance.owner."""
    approval_required_for: list[RiskTier] = Field(default_factory=list, max_length=3)
    """Risk tiers that need spec.governance.approval (approvedBy and ticket)."""
    digest_required_for: list[RiskTier] = Field(default_factory=list, max_length=3)
    """Risk tiers that need a pinned spec.model.digest (and spec.canary.model.digest)."""
    signature_required_for: list[RiskTier] = Field(default_factory=list, max_length=3)
    """Risk tiers that need spec.model.signature (a bundle verified by the fetch init
    container with a public key, a certificate chain or a Sigstore identity and issuer)."""
    explainer_required_for: list[RiskTier] = Field(default_factory=list, max_length=3)
    """Risk tiers that need an ExplainerSpec targeting the model (PolicyCompliant stays
    False with reason MissingExplainer until one exists)."""
    drift_monitor_required_for: list[RiskTier] = Field(default_factory=list, max_length=3)
    """Risk tiers that need a DriftMonitor targeting the model (PolicyCompliant stays
    False with reason MissingDriftMonitor until one exists)."""
    require_fairness_monitoring: list[RiskTier] = Field(default_factory=list, max_length=3)
    """Risk tiers that need fairness monitoring: a DriftMonitor targeting the model with
    spec.groundTruth.fairness.sensitiveFeatures (PolicyCompliant stays False with reason
    MissingFairnessMonitoring until one exists)."""
    allowed_registries: list[Registry] | None = Field(default=None, max_length=64)
    """Registries (ghcr.io) or registry path prefixes (ghcr.io/acme) that a user-set
    spec.runtime.image may come from; any registry when unset. The operator's own
    configured default images are not checked."""
    enforcement: Literal["Deny", "Warn"] = "Deny"
    """Deny: the admission webhook refuses a ModelDeployment that breaks a rule. Warn: it
    is admitted with a warning. Either way PolicyCompliant reports it."""


class GovernancePolicyStatus(ResourceStatus):
    """Observed state of a GovernancePolicy. Conditions: Ready."""


class GovernancePolicy(KModel):
    """Cluster-wide governance rules for ModelDeployments, enforced at admission."""

    api_version: Literal["kustos.dev/v1alpha1"] = "kustos.dev/v1alpha1"
    kind: Literal["GovernancePolicy"] = "GovernancePolicy"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: GovernancePolicySpec
    status: GovernancePolicyStatus | None = None
