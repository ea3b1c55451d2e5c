"""The GovernancePolicies that apply in one namespace, read from the API server.

The admission webhook judges a ModelDeployment with them and a BatchInference's gate its
model; both read the policies and the namespace's labels when they are asked (no cache),
so a policy or label change counts from the next request on.
"""

from __future__ import annotations

from kustos.k8s import client

from .policy import Policy, applicable, policies_from

# A namespace always carries its own name as a label (set by the API server); added here
# too so that a selector on it works even if the Namespace cannot be read.
NAME_LABEL = "kubernetes.io/metadata.name"


def policies_for(namespace: str) -> list[Policy]:
    """The policies whose namespaceSelector selects ``namespace``, every enforcement,
    sorted by name. Raises client.ApiError when the API cannot be read."""
    policies = policies_from(client.list_objects("GovernancePolicy"))
    if not policies:
        return []
    ns = client.get("Namespace", namespace)
    labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
    return applicable(policies, {NAME_LABEL: namespace, **labels})
