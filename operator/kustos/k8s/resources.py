"""Where each kind lives in the API: the few kinds Kustos reads and writes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def collection(self, namespace: str | None = None) -> str:
        """URL path of the collection (in ``namespace`` for namespaced kinds)."""
        group = f"/api/{self.api_version}" if "/" not in self.api_version \
            else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{group}/namespaces/{namespace}/{self.plural}"
        return f"{group}/{self.plural}"

    def path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection(namespace)}/{name}"


_ALL = [
    Resource("v1", "ServiceAccount", "serviceaccounts"),
    Resource("v1", "Service", "services"),
    Resource("v1", "Secret", "secrets"),
    Resource("v1", "ConfigMap", "configmaps"),
    Resource("v1", "Event", "events"),
    Resource("v1", "Pod", "pods"),
    # the ground-truth monitor's store (kustos.render.truth), when storage.size is set
    Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    Resource("v1", "Namespace", "namespaces", namespaced=False),
    Resource("apps/v1", "Deployment", "deployments"),
    Resource("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    Resource("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    # with the operator config autoscaling.requests_backend keda (kustos.render.keda)
    Resource("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
    Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    # with spec.gateway, when the cluster serves the Gateway API (kustos.render.httproute)
    Resource("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
    Resource("batch/v1", "Job", "jobs"),
    Resource("kustos.dev/v1alpha1", "ModelDeployment", "modeldeployments"),
    Resource("kustos.dev/v1alpha1", "ExplainerSpec", "explainerspecs"),
    Resource("kustos.dev/v1alpha1", "DriftMonitor", "driftmonitors"),
    Resource("kustos.dev/v1alpha1", "BatchInference", "batchinferences"),
    Resource("kustos.dev/v1alpha1", "GovernancePolicy", "governancepolicies", namespaced=False),
    Resource("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration",
             "validatingwebhookconfigurations", namespaced=False),
    Resource("authentication.k8s.io/v1", "SelfSubjectReview", "selfsubjectreviews",
             namespaced=False),
    Resource("kopf.dev/v1", "KopfPeering", "kopfpeerings"),
    Resource("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False),
]
BY_KIND: dict[str, Resource] = {r.kind: r for r in _ALL}

# The kinds a ModelDeployment's children can have, in the order they are applied.
MODEL_CHILD_KINDS = ["ServiceAccount", "ConfigMap", "Deployment", "Service",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"]


def resource(kind: str) -> Resource:
    try:
        return BY_KIND[kind]
    except KeyError:
        raise ValueError(f"kustos does not manage kind {kind!r}") from None
