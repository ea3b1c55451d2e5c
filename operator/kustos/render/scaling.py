"""What the HPA and KEDA's ScaledObject share of spec.autoscaling. Pure: no I/O."""

from __future__ import annotations

from typing import Any

from kustos.api.v1alpha1.modeldeployment import AutoscalingSpec


def hpa_behavior(auto: AutoscalingSpec) -> dict[str, Any]:
    """The HPA's `behavior` from the fields the spec sets; empty means Kubernetes' defaults
    (scale-down after a 300 s stabilization window)."""
    if auto.scale_down_stabilization_seconds is None:
        return {}
    return {"scaleDown": {"stabilizationWindowSeconds": auto.scale_down_stabilization_seconds}}
