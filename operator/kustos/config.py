"""Operator configuration: images per runtime, defaults, cluster facts.

Loaded from a YAML file (``kustos run --config``, or ``KUSTOS_CONFIG``); every field has
a default so the operator runs without one. The Helm chart renders this file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

# One image runs the operator, the fetch init container and the model server
# (images/kustos.Dockerfile); the explainer adds shap (images/explain.Dockerfile).
DEFAULT_IMAGE = "ghcr.io/kustos-dev/kustos:0.1.0"


class Images(BaseModel):
    """Container image for each runtime kind and role."""

    model_config = ConfigDict(extra="forbid")

    kustos: str = DEFAULT_IMAGE
    seldon: str = "ghcr.io/kustos-dev/kustos-seldon:0.1.0"
    mlserver: str = "docker.io/seldonio/mlserver:1.7.1-sklearn"
    tfserving: str = "docker.io/tensorflow/serving:2.17.0"
    torchserve: str = "docker.io/pytorch/torchserve:0.12.0-cpu"
    fetch: str = DEFAULT_IMAGE
    explain: str = "ghcr.io/kustos-dev/kustos-explain:0.1.0"
    # alibi-detect pins numpy<2: the drift sidecar has an image (environment) of its own.
    drift: str = "ghcr.io/kustos-dev/kustos-drift:0.1.0"
    # The OpenBao agent of spec.secrets.vault.mode agent (the bao binary only).
    vault_agent: str = "ghcr.io/kustos-dev/kustos-vault-agent:0.1.0"


class SidecarSettings(BaseModel):
    """The explainer and drift sidecars, how the operator collects their reports, and the
    payload-log relay of spec.logging."""

    model_config = ConfigDict(extra="forbid")

    # How often each ExplainerSpec / DriftMonitor polls its target's pods (seconds).
    collect_interval: float = Field(default=30.0, gt=0, le=3600)
    # Per-pod HTTP timeout of that poll (seconds); an unreachable pod is skipped.
    collect_timeout: float = Field(default=2.0, gt=0, le=60)
    explain_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        }
    )
    drift_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "50m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        }
    )
    # The payload-log relay (`kustos payload-relay`, container payload-log) of every pod of
    # a ModelDeployment with spec.logging: it redacts, encodes and sends the CloudEvents,
    # the CPU the model server no longer spends on them.
    payload_log_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    # Scratch space (/tmp) of each sidecar: fetched background / reference data.
    scratch_size: str = "512Mi"


class VaultSettings(BaseModel):
    """How the operator reaches Vault for ModelDeployments in secrets sync mode."""

    model_config = ConfigDict(extra="forbid")

    # Default address when spec.secrets.vault.address is unset.
    address: str | None = None
    # When set, spec.secrets.vault.address must be one of these (a ModelDeployment must not
    # make the operator send ServiceAccount tokens to any server it names).
    allowed_addresses: list[str] | None = None
    # Audience of the ServiceAccount tokens the operator requests for the login.
    audience: str = "vault"
    # CA bundle (PEM file) to verify Vault's certificate; the system's when unset.
    ca_cert: str | None = None
    # Seconds per Vault request.
    timeout: float = Field(default=10.0, gt=0, le=120)
    # Resources of each agent container (agent mode: the init container and the sidecar).
    agent_resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        }
    )


class NetworkPolicySettings(BaseModel):
    """The NetworkPolicy rendered for each ModelDeployment's pods (ingress only)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Namespaces (a LabelSelector) whose pods may call the serving port; None: every
    # namespace of the cluster. The model's own namespace is always allowed.
    serving_namespace_selector: dict[str, Any] | None = None
    # Namespaces that may scrape the metrics port and the sidecars' /metrics; None: none
    # beyond what may reach the serving port.
    monitoring_namespace_selector: dict[str, Any] | None = Field(
        default_factory=lambda: {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}})
    # The operator's namespace: the only one that may reach the sidecars' status ports.
    operator_namespace: str = "kustos-system"


# kustos serve's requests that count for spec.autoscaling.targetRequestsPerSecond:
# predictions and explanations (not probes, scrapes, metadata or feedback).
SERVED_ENDPOINTS = "v2_infer|v1_predict|seldon_predictions|v2_explain|v1_explain"
# The request rate of one track's pods, summed (KEDA divides by the pod count). The
# namespace/pod labels are those kubernetes_sd relabelling and prometheus-operator's
# PodMonitor give every target; endpoint is kustos serve's own label (the shipped
# PodMonitor honors it).
DEFAULT_REQUESTS_QUERY = (
    'sum(rate(kustos_requests_total{{namespace="{namespace}",pod=~"{pods}",'
    'endpoint=~"' + SERVED_ENDPOINTS + '"}}[{window}]))')


class AutoscalingSettings(BaseModel):
    """What serves spec.autoscaling.targetRequestsPerSecond in this cluster."""

    model_config = ConfigDict(extra="forbid")

    # custom-metrics: an HPA with the Pods metric kustos_requests_per_second, which a
    # custom-metrics adapter (prometheus-adapter) must serve. keda: a KEDA ScaledObject
    # with a Prometheus trigger instead of the HPA (KEDA creates and owns the HPA).
    requests_backend: Literal["custom-metrics", "keda"] = "custom-metrics"
    # The Prometheus KEDA queries (keda backend), e.g. http://prometheus.monitoring:9090.
    prometheus_address: str | None = Field(default=None, pattern=r"^https?://\S+$")
    # PromQL with the placeholders {namespace}, {pods} (a regex of one track's pod names)
    # and {window} (rate_window); its value is the total requests/s of those pods.
    requests_query: str = DEFAULT_REQUESTS_QUERY
    rate_window: str = Field(default="1m", pattern=r"^[0-9]+[smh]$")
    # How often KEDA runs the query (ScaledObject pollingInterval, seconds).
    polling_interval: int = Field(default=15, ge=1, le=3600)

    @model_validator(mode="after")
    def _keda_needs_prometheus(self) -> AutoscalingSettings:
        if self.requests_backend == "keda" and not self.prometheus_address:
            raise ValueError("autoscaling.requests_backend keda needs "
                             "autoscaling.prometheus_address")
        try:
            self.requests_query.format(namespace="ns", pods="p", window="1m")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"autoscaling.requests_query: only {{namespace}}, {{pods}} and "
                             f"{{window}} may be used, and literal braces doubled ({err})"
                             ) from None
        return self


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
    sidecars: SidecarSettings = Field(default_factory=SidecarSettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    network_policy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)


def load(path: str | Path | None = None) -> OperatorConfig:
    """The config from ``path`` (or $KUSTOS_CONFIG); defaults when neither is set."""
    path = path or os.environ.get("KUSTOS_CONFIG")
    if not path:
        return OperatorConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return OperatorConfig.model_validate(data)
