"""spec.autoscaling as a KEDA ScaledObject (operator config autoscaling.requests_backend:
keda). Pure: no I/O.

With a requests-per-second target, the plain HPA needs a custom-metrics adapter that
serves ``kustos_requests_per_second``. With KEDA, Kustos renders a ScaledObject instead:
a Prometheus trigger whose query sums the request rate of the stable track's pods, with
the per-pod target as its threshold (metric type AverageValue: KEDA's HPA divides the sum
by the pod count), plus a cpu trigger when a CPU target is set too. KEDA creates the HPA
(``keda-hpa-<name>``, owned by the ScaledObject) and serves the metric through its own
external metrics API; the operator owns the ScaledObject only, and leaves the Deployment's
``replicas`` out as it does for its own HPA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kustos.api.v1alpha1.modeldeployment import AutoscalingSpec
from kustos.config import OperatorConfig
from kustos.k8s.resources import MODEL_CHILD_KINDS

from .meta import child_meta
from .scaling import hpa_behavior

KIND = "ScaledObject"
API_VERSION = "keda.sh/v1alpha1"
PROMETHEUS_TRIGGER = "requests-per-second"


def uses_keda(autoscaling: AutoscalingSpec | None, config: OperatorConfig) -> bool:
    """Whether this ModelDeployment's autoscaling is rendered as a ScaledObject."""
    return (autoscaling is not None
            and autoscaling.target_requests_per_second is not None
            and config.autoscaling.requests_backend == "keda")


def model_child_kinds(config: OperatorConfig, gateway_api: bool = False) -> list[str]:
    """The child kinds of a ModelDeployment this operator manages (lists, deletes when no
    longer rendered): ScaledObjects only with the keda backend, HTTPRoutes only when the
    cluster serves the Gateway API (``gateway_api``): their CRDs may be missing
    elsewhere."""
    kinds = list(MODEL_CHILD_KINDS)
    if config.autoscaling.requests_backend == "keda":
        at = kinds.index("HorizontalPodAutoscaler") + 1
        kinds[at:at] = [KIND]
    if gateway_api:
        kinds.append("HTTPRoute")
    return kinds


def pods_regex(deployment: str) -> str:
    """The names of one Deployment's pods (<deployment>-<template hash>-<suffix>), as a
    PromQL regex (anchored): not those of `<deployment>-canary` nor of a Deployment whose
    name only starts the same."""
    return deployment.replace(".", "[.]") + "-[a-z0-9]+-[a-z0-9]+"


def requests_query(namespace: str, deployment: str, config: OperatorConfig) -> str:
    settings = config.autoscaling
    return settings.requests_query.format(namespace=namespace, pods=pods_regex(deployment),
                                          window=settings.rate_window)


def render_scaled_object(body: Mapping[str, Any], autoscaling: AutoscalingSpec,
                         config: OperatorConfig, min_replicas: int,
                         max_replicas: int) -> dict[str, Any]:
    """The ScaledObject of the stable Deployment (named after the model, like it)."""
    name = body["metadata"]["name"]
    settings = config.autoscaling
    assert settings.prometheus_address is not None  # AutoscalingSettings checks it
    assert autoscaling.target_requests_per_second is not None
    triggers: list[dict[str, Any]] = [{
        "type": "prometheus",
        "name": PROMETHEUS_TRIGGER,
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": settings.prometheus_address,
            "query": requests_query(body["metadata"]["namespace"], name, config),
            "threshold": str(autoscaling.target_requests_per_second),
        },
    }]
    if autoscaling.target_cpu_utilization is not None:
        triggers.append({"type": "cpu", "name": "cpu", "metricType": "Utilization",
                         "metadata": {"value": str(autoscaling.target_cpu_utilization)}})
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": child_meta(body, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "pollingInterval": settings.polling_interval,
            "triggers": triggers,
            # KEDA hands this to the HPA it creates
            **({"advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}}}
               if (behavior := hpa_behavior(autoscaling)) else {}),
        },
    }
