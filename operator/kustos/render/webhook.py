"""The ValidatingWebhookConfiguration for the operator's admission webhook (pure).

The operator serves the webhook over HTTPS on port 9443 at ``WEBHOOK_PATH``; this
function renders the configuration that tells the API server to call it, either through
a Service (what an installation uses) or a URL (the local control plane, or when the
operator registers itself with ``kustos run --webhook-configuration``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

from kustos.api.v1alpha1 import GROUP, VERSION

WEBHOOK_ID = "validate-modeldeployment"
# kopf routes POST /{handler id} to that handler; any other path admits without checking.
WEBHOOK_PATH = f"/{WEBHOOK_ID}"
WEBHOOK_PORT = 9443
# The name of the one webhook inside the configuration (shown in denial messages).
WEBHOOK_NAME = "modeldeployments.validate.kustos.dev"
# Namespaces whose objects must never wait for the operator (it could not start otherwise).
EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
SPEC_CHANGED = "request.operation != 'UPDATE' || object.spec != oldObject.spec"


def render_configuration(
    name: str,
    *,
    ca_bundle: bytes,
    url: str | None = None,
    service: tuple[str, str] | None = None,
    service_port: int = 443,
    namespace_selector: Mapping[str, Any] | None = None,
    failure_policy: Literal["Fail", "Ignore"] = "Fail",
    timeout_seconds: int = 10,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ValidatingWebhookConfiguration ``name`` for ModelDeployment CREATE and UPDATE.

    Exactly one of ``url`` (https://HOST:PORT, the path is appended) or ``service``
    (namespace, name) says where the operator is; ``ca_bundle`` is the PEM that signed
    its serving certificate. ``namespace_selector`` defaults to every namespace but the
    system ones. Status writes (the status subresource) are not sent to the webhook.
    """
    if (url is None) == (service is None):
        raise ValueError("give exactly one of url or service")
    client: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode("ascii")}
    if url is not None:
        client["url"] = url.rstrip("/") + WEBHOOK_PATH
    else:
        assert service is not None
        client["service"] = {"namespace": service[0], "name": service[1],
                             "path": WEBHOOK_PATH, "port": service_port}
    selector = dict(namespace_selector) if namespace_selector is not None else {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                              "values": list(EXCLUDED_NAMESPACES)}]}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name,
                     "labels": {"app.kubernetes.io/name": "kustos",
                                "app.kubernetes.io/part-of": "kustos", **(labels or {})}},
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "admissionReviewVersions": ["v1"],
            "clientConfig": client,
            "rules": [{
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "resources": ["modeldeployments"],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": selector,
            # Updates that leave the spec alone (kopf's annotations and finalizers, labels,
            # deletion) never reach the webhook, so they do not depend on it being up.
            "matchConditions": [{"name": "spec-changed", "expression": SPEC_CHANGED}],
            "failurePolicy": failure_policy,
            "matchPolicy": "Equivalent",
            # A rejection posts an Event (not on dry runs): that is a side effect.
            "sideEffects": "NoneOnDryRun",
            "timeoutSeconds": timeout_seconds,
        }],
    }


def parse_selector(text: str) -> dict[str, Any]:
    """``key=value,key2=value2`` (equality only) as a label selector's matchLabels."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"{part!r} is not key=value")
        labels[key.strip()] = value.strip()
    return {"matchLabels": labels}
