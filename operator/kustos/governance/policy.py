"""Pure evaluation of a ModelDeployment against the GovernancePolicies (no I/O).

Each broken rule is a ``Violation`` that names the policy, the rule (the policy's spec
field that asks for it) and the ModelDeployment field to fix, so that a rejection reads
``GovernancePolicy strict-high, rule approvalRequiredFor: spec.governance.approval.ticket
is required for riskTier high``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Rules the admission webhook can judge from the object alone.
STATIC_RULES = ("requireOwner", "approvalRequiredFor", "digestRequiredFor",
                "signatureRequiredFor", "allowedRegistries")
# Rules about other objects; only the PolicyCompliant condition reports them.
EXISTENCE_RULES = ("explainerRequiredFor", "driftMonitorRequiredFor",
                   "requireFairnessMonitoring")

# Condition reason for each rule (the first violation's reason becomes the condition's).
REASONS = {
    "requireOwner": "MissingOwner",
    "approvalRequiredFor": "MissingApproval",
    "digestRequiredFor": "DigestNotPinned",
    "signatureRequiredFor": "SignatureMissing",
    "allowedRegistries": "RegistryNotAllowed",
    "explainerRequiredFor": "MissingExplainer",
    "driftMonitorRequiredFor": "MissingDriftMonitor",
    "requireFairnessMonitoring": "MissingFairnessMonitoring",
}


@dataclass(frozen=True)
class Violation:
    """One broken rule of one policy."""

    policy: str
    rule: str
    field: str
    message: str

    @property
    def reason(self) -> str:
        return REASONS[self.rule]

    def __str__(self) -> str:
        return f"GovernancePolicy {self.policy}, rule {self.rule}: {self.field} {self.message}"


@dataclass(frozen=True)
class Policy:
    """A GovernancePolicy as evaluated: its name and spec (wire form, camelCase)."""

    name: str
    spec: Mapping[str, Any]

    @property
    def enforcement(self) -> str:
        return str(self.spec.get("enforcement") or "Deny")


def policies_from(objects: Iterable[Mapping[str, Any]]) -> list[Policy]:
    """GovernancePolicy objects as listed from the API, skipping ones being deleted."""
    return sorted((Policy(o["metadata"]["name"], o.get("spec") or {}) for o in objects
                   if not o["metadata"].get("deletionTimestamp")), key=lambda p: p.name)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a Kubernetes label selector (unset/empty: everything)."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), req.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False  # an unknown operator selects nothing rather than everything
    return True


def applicable(policies: Iterable[Policy], namespace_labels: Mapping[str, str]) -> list[Policy]:
    """The policies whose namespaceSelector selects a namespace with these labels."""
    return [p for p in policies if selector_matches(p.spec.get("namespaceSelector"),
                                                    namespace_labels)]


def risk_tier(spec: Mapping[str, Any]) -> str:
    return str((spec.get("governance") or {}).get("riskTier") or "low")


def image_reference(image: str) -> str:
    """``image`` with its registry and path spelled out: nginx -> docker.io/library/nginx,
    so a policy can name docker.io. Tag and digest are dropped."""
    name = image.split("@", 1)[0]
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{_untagged(name)}"
    if "." in first or ":" in first or first == "localhost":
        return f"{first}/{_untagged(rest)}"
    return f"docker.io/{_untagged(name)}"


def _untagged(path: str) -> str:
    # A tag follows the last colon after the last slash.
    head, _, last = path.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def registry_allowed(image: str, allowed: Iterable[str]) -> bool:
    ref = image_reference(image)
    return any(ref == a.rstrip("/") or ref.startswith(a.rstrip("/") + "/") for a in allowed)


def signature_problems(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each part of spec.model.signature a signature rule misses.

    The schema already asks for exactly one method with its fields; this holds for objects
    judged outside the API server too. The canary is verified with the same settings
    (against its own bundle), so spec.model.signature covers it."""
    sig = model.get("signature")
    field = "spec.model.signature"
    if not sig:
        return [(field, "must name how the model's signature bundle is verified (publicKey, "
                        "certificate or sigstore)")]
    if sig.get("publicKey"):
        return [] if (sig["publicKey"].get("name") and sig["publicKey"].get("key")) else \
            [(f"{field}.publicKey", "must name the ConfigMap/Secret and key")]
    if sig.get("certificate"):
        # Without an identity any certificate under the CA chain would do: a policy asks
        # for the signer to be named, as it is for a key or a Sigstore identity.
        ca = sig["certificate"].get("caChain") or {}
        out = [] if (ca.get("name") and ca.get("key")) else \
            [(f"{field}.certificate.caChain", "must name the CA chain")]
        if not str(sig["certificate"].get("identity") or "").strip():
            out.append((f"{field}.certificate.identity",
                        "must name the signing certificate's identity"))
        return out
    if sig.get("sigstore"):
        store = sig["sigstore"]
        return [(f"{field}.sigstore.{k}", "is required") for k in
                ("identity", "issuer", "trustRoot") if not store.get(k)]
    return [(field, "must set publicKey, certificate or sigstore")]


def monitors_fairness(drift_monitor_spec: Mapping[str, Any]) -> bool:
    """Whether a DriftMonitor's spec (wire form) slices its ground truth by at least one
    sensitive feature: what requireFairnessMonitoring asks for."""
    ground_truth = drift_monitor_spec.get("groundTruth") or {}
    return bool((ground_truth.get("fairness") or {}).get("sensitiveFeatures"))


def evaluate(spec: Mapping[str, Any], policies: Iterable[Policy], *,
             has_explainer: bool | None = None,
             has_drift_monitor: bool | None = None,
             has_fairness_monitor: bool | None = None) -> list[Violation]:
    """Every rule of ``policies`` that the ModelDeployment ``spec`` breaks.

    ``has_explainer`` / ``has_drift_monitor`` say whether an ExplainerSpec / DriftMonitor
    targets the model, ``has_fairness_monitor`` whether one of those DriftMonitors
    monitors fairness (monitors_fairness); None (the webhook's case) skips those rules.
    """
    out: list[Violation] = []
    tier = risk_tier(spec)
    governance = spec.get("governance") or {}
    model = spec.get("model") or {}
    for policy in policies:
        rules = policy.spec

        def broken(rule: str, field: str, message: str, policy: Policy = policy) -> None:
            out.append(Violation(policy.name, rule, field, message))

        if rules.get("requireOwner") and not str(governance.get("owner") or "").strip():
            broken("requireOwner", "spec.governance.owner", "is required")
        if tier in (rules.get("approvalRequiredFor") or []):
            approval = governance.get("approval") or {}
            for key in ("approvedBy", "ticket"):
                if not str(approval.get(key) or "").strip():
                    broken("approvalRequiredFor", f"spec.governance.approval.{key}",
                           f"is required for riskTier {tier}")
        if tier in (rules.get("digestRequiredFor") or []):
            if not model.get("digest"):
                broken("digestRequiredFor", "spec.model.digest",
                       f"must pin the model's sha256 for riskTier {tier}")
            canary = (spec.get("canary") or {}).get("model")
            if canary and not canary.get("digest"):
                broken("digestRequiredFor", "spec.canary.model.digest",
                       f"must pin the canary model's sha256 for riskTier {tier}")
        if tier in (rules.get("signatureRequiredFor") or []):
            for field, message in signature_problems(model):
                broken("signatureRequiredFor", field, f"{message} for riskTier {tier}")
        allowed = rules.get("allowedRegistries")
        image = (spec.get("runtime") or {}).get("image")
        if allowed is not None and image and not registry_allowed(image, allowed):
            broken("allowedRegistries", "spec.runtime.image",
                   f"{image!r} is not from an allowed registry ({', '.join(allowed) or 'none'})")
        if has_explainer is False and tier in (rules.get("explainerRequiredFor") or []):
            broken("explainerRequiredFor", "ExplainerSpec",
                   f"targeting this model is required for riskTier {tier}")
        if has_drift_monitor is False and tier in (rules.get("driftMonitorRequiredFor") or []):
            broken("driftMonitorRequiredFor", "DriftMonitor",
                   f"targeting this model is required for riskTier {tier}")
        if has_fairness_monitor is False and tier in (rules.get("requireFairnessMonitoring")
                                                      or []):
            broken("requireFairnessMonitoring", "DriftMonitor",
                   "targeting this model with spec.groundTruth.fairness.sensitiveFeatures "
                   f"is required for riskTier {tier}")
    return out


def summary(violations: Iterable[Violation], limit: int = 10) -> str:
    """One message for several violations (the API server shows it to the user)."""
    items = list(violations)
    text = "; ".join(str(v) for v in items[:limit])
    if len(items) > limit:
        text += f"; and {len(items) - limit} more"
    return text
