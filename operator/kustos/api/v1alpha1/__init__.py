"""kustos.dev/v1alpha1: the API types, the single source of truth for the CRDs."""

from .batchinference import BatchInference, BatchInferenceSpec, BatchInferenceStatus
from .common import API_VERSION, GROUP, VERSION, Condition
from .driftmonitor import DriftMonitor, DriftMonitorSpec, DriftMonitorStatus
from .explainerspec import ExplainerSpec, ExplainerSpecSpec, ExplainerSpecStatus
from .governancepolicy import GovernancePolicy, GovernancePolicySpec, GovernancePolicyStatus
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus

__all__ = [
    "API_VERSION", "GROUP", "VERSION", "BatchInference", "BatchInferenceSpec",
    "BatchInferenceStatus", "Condition", "DriftMonitor", "DriftMonitorSpec",
    "DriftMonitorStatus", "ExplainerSpec", "ExplainerSpecSpec", "ExplainerSpecStatus",
    "GovernancePolicy", "GovernancePolicySpec", "GovernancePolicyStatus",
    "ModelDeployment", "ModelDeploymentSpec", "ModelDeploymentStatus",
]
