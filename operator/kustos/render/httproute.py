"""spec.gateway -> an HTTPRoute (Gateway API), and the per-track Services it routes to.
Pure: no I/O.

Without a Gateway, a canary's share of the requests is the share of its pods behind the
one Service (render/modeldeployment.split_tracks): as exact as the replica count allows.
With spec.gateway, and when the cluster serves the HTTPRoute CRD (the operator looks once
at start-up: controllers/gateway.py), the route sends the model's host names and path
prefix to two backends weighted 100 - trafficPercent and trafficPercent: the stable
track's Service ``<name>-stable`` and the canary's ``<name>-canary``, each selecting one
track's pods. The Gateway's data plane picks the backend per request, so the split is the
weight whatever the pod counts (and both tracks may scale on their own). Without a canary
the route's one backend is the model's Service. The model's own Service keeps selecting
both tracks: in-cluster clients calling it still get the replica ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from kustos.api.v1alpha1 import ModelDeploymentSpec

from .meta import COMPONENT, INSTANCE, TRACK, child_meta

KIND = "HTTPRoute"
API_VERSION = "gateway.networking.k8s.io/v1"
SERVICE_PORT = 80
TrafficSplit = Literal["gateway", "replicas"]


def routed(spec: ModelDeploymentSpec, gateway_api: bool) -> bool:
    """Whether the model gets an HTTPRoute: it asks for one and the cluster serves the
    kind."""
    return spec.gateway is not None and gateway_api


def traffic_split(spec: ModelDeploymentSpec, gateway_api: bool) -> TrafficSplit | None:
    """What decides the canary's share: the route's weights or the pod ratio (None
    without a canary)."""
    if spec.canary is None:
        return None
    return "gateway" if routed(spec, gateway_api) else "replicas"


def track_service_name(name: str, track: str) -> str:
    return f"{name}-{track}"


def render_track_service(body: Mapping[str, Any], track: str) -> dict[str, Any]:
    """A Service over one track's pods (port 80 -> http): a backend of the route."""
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(body, track_service_name(name, track),
                               {COMPONENT: "predictor", TRACK: track}),
        "spec": {
            "type": "ClusterIP",
            "selector": {INSTANCE: name, COMPONENT: "predictor", TRACK: track},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }


def _backend(service: str, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": service,
                           "port": SERVICE_PORT}
    if weight is not None:
        ref["weight"] = weight
    return ref


def render_httproute(body: Mapping[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The model's HTTPRoute: the path prefix on the host names, to the stable track and
    the canary by their weights (or to the model's Service without a canary)."""
    assert spec.gateway is not None
    name = body["metadata"]["name"]
    gateway = spec.gateway
    parents: list[dict[str, Any]] = []
    for ref in gateway.parent_refs:
        parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                  "name": ref.name}
        if ref.namespace:
            parent["namespace"] = ref.namespace
        if ref.section_name:
            parent["sectionName"] = ref.section_name
        parents.append(parent)
    if spec.canary is None:
        backends = [_backend(name)]
    else:
        weight = spec.canary.traffic_percent
        backends = [_backend(track_service_name(name, "stable"), 100 - weight),
                    _backend(track_service_name(name, "canary"), weight)]
    route_spec: dict[str, Any] = {
        "parentRefs": parents,
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": gateway.path_prefix}}],
            "backendRefs": backends,
        }],
    }
    if gateway.hostnames:
        route_spec["hostnames"] = list(gateway.hostnames)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": child_meta(body, name, {COMPONENT: "predictor"}),
        "spec": route_spec,
    }


def render_route(body: Mapping[str, Any], spec: ModelDeploymentSpec,
                 gateway_api: bool) -> list[dict[str, Any]]:
    """The route and, with a canary, the two track Services it needs; nothing when the
    model is not routed."""
    if not routed(spec, gateway_api):
        return []
    services = [] if spec.canary is None else [
        render_track_service(body, "stable"), render_track_service(body, "canary")]
    return [*services, render_httproute(body, spec)]
