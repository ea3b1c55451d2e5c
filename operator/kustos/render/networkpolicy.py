"""The NetworkPolicy of a ModelDeployment's pods: ingress only where it is meant. Pure.

Selected: every serving pod of the model (stable and canary). Allowed in:

- the serving ports (the Service's targets: http, and grpc for kustos serve): from every
  source by default, or from the namespaces of ``network_policy.serving_namespace_selector``
  plus the model's own;
- the metrics port, the sidecars' ports and the payload-log relay's port 8092 (their
  /metrics): from the monitoring namespaces (``network_policy.monitoring_namespace_selector``);
- the sidecars' ports (explainer 8090, drift 8091): from the operator's namespace, which
  reads their status endpoints.

Nothing else: another runtime's gRPC port or a management port (TorchServe can register models on
it) and the sidecars are closed to everyone else; inside the pod, the model server
reaches its sidecars over loopback (the relay over a Unix socket), which no NetworkPolicy
filters. Egress is not restricted (the model fetch goes to S3 or https sources that are not
known in advance, and the relay sends spec.logging's events to any sink it names).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kustos.config import OperatorConfig

from .meta import COMPONENT, INSTANCE, child_meta
from .runtimes import RuntimePorts

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _ports(numbers: Iterable[int]) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": n} for n in sorted(set(numbers))]


def sidecar_ports(sidecars: Iterable[Mapping[str, Any]]) -> list[int]:
    """The TCP ports the sidecar containers declare."""
    return sorted({int(p["containerPort"]) for c in sidecars for p in c.get("ports") or []
                   if p.get("protocol", "TCP") == "TCP"})


def render_network_policy(body: Mapping[str, Any], config: OperatorConfig, ports: RuntimePorts,
                          sidecars: Sequence[Mapping[str, Any]] = (),
                          scraped_only: Sequence[int] = ()) -> dict[str, Any] | None:
    """The ModelDeployment's NetworkPolicy, or None when the config turns it off.
    ``scraped_only``: ports of the pods' own sidecars (the payload-log relay's) that only
    the monitoring namespaces reach; the operator reads no status from them."""
    settings = config.network_policy
    if not settings.enabled:
        return None
    name = body["metadata"]["name"]
    ingress: list[dict[str, Any]] = []
    serving: dict[str, Any] = {"ports": _ports(
        [ports.http] + ([ports.grpc] if ports.grpc is not None else []))}
    if settings.serving_namespace_selector is not None:
        # Same-namespace pods, and pods in the selected namespaces.
        serving["from"] = [{"podSelector": {}},
                           {"namespaceSelector": dict(settings.serving_namespace_selector)}]
    ingress.append(serving)
    side = sidecar_ports(sidecars)
    scraped = ([ports.metrics] if ports.metrics is not None else []) + side + [*scraped_only]
    if settings.monitoring_namespace_selector is not None and scraped:
        ingress.append({"from": [{"namespaceSelector":
                                  dict(settings.monitoring_namespace_selector)}],
                        "ports": _ports(scraped)})
    if side:
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {
                            NAMESPACE_NAME_LABEL: settings.operator_namespace}}}],
                        "ports": _ports(side)})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_meta(body, name, {COMPONENT: "predictor"}),
        "spec": {
            "podSelector": {"matchLabels": {INSTANCE: name, COMPONENT: "predictor"}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
