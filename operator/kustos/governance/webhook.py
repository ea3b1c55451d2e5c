"""The validating admission webhook for ModelDeployments (kopf admission handlers).

Imported by `kustos run` only with ``--webhook``: kopf refuses to start when admission
handlers exist but no webhook server is configured. The API server calls
``POST https://<operator>:9443/validate-modeldeployment`` (see render/webhook.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kustos.api.v1alpha1 import GROUP, VERSION
from kustos.k8s import client, events
from kustos.k8s.client import ApiError
from kustos.render.webhook import WEBHOOK_ID

from .namespace_policies import policies_for
from .policy import Policy, Violation, evaluate, summary

log = logging.getLogger(__name__)


class _QuietRejections(logging.Filter):
    """kopf logs every refused request as a handler failure at ERROR; a refusal is the
    webhook working (it is logged at INFO below and audited as an Event)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(f"Webhook {WEBHOOK_ID!r} failed permanently")


logging.getLogger("kopf.objects").addFilter(_QuietRejections())


def admission_check(operation: str, spec: Mapping[str, Any] | None,
                    old_spec: Mapping[str, Any] | None, deleting: bool,
                    policies: list[Policy]) -> tuple[list[Violation], list[Violation]]:
    """(violations that deny, violations that only warn) of a request, given the policies
    that apply to its namespace. An UPDATE that leaves the spec alone (kopf's annotations,
    finalizers, labels) and an object being deleted are always admitted, so an object
    created before a policy can still be cleaned up."""
    if spec is None or deleting or (operation == "UPDATE" and old_spec == spec):
        return [], []
    deny: list[Violation] = []
    warn: list[Violation] = []
    for policy in policies:
        found = evaluate(spec, [policy])
        (warn if policy.enforcement == "Warn" else deny).extend(found)
    return deny, warn


def _post_rejections(violations: list[Violation], namespace: str, name: str,
                     operation: str, user: str) -> None:
    """The object was never stored, so the audit Event goes on the policy instead."""
    by_policy: dict[str, list[Violation]] = {}
    for v in violations:
        by_policy.setdefault(v.policy, []).append(v)
    for policy_name, found in by_policy.items():
        policy = client.get("GovernancePolicy", policy_name)
        if policy is None:
            continue
        rules = "; ".join(f"rule {v.rule}: {v.field} {v.message}" for v in found)
        events.post(policy, "PolicyRejected",
                    f"rejected {operation} of ModelDeployment {namespace}/{name} by {user}: "
                    f"{rules}", warning=True)


@kopf.on.validate(GROUP, VERSION, "modeldeployments", id=WEBHOOK_ID,
                  operations=["CREATE", "UPDATE"])
def validate_model_deployment(body: kopf.Body, dryrun: bool, userinfo: Mapping[str, Any],
                              warnings: list[str], **kwargs: Any) -> None:
    old: Mapping[str, Any] | None = kwargs.get("old")
    operation = str(kwargs.get("operation") or "")
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    name = meta.get("name") or meta.get("generateName") or ""
    try:
        policies = policies_for(namespace)
    except ApiError as err:
        # Fail closed, like failurePolicy Fail: an unreadable policy must not admit.
        raise kopf.AdmissionError(f"kustos cannot read the GovernancePolicies: {err.message}",
                                  code=503) from err
    spec = body.get("spec")
    old_spec = old.get("spec") if old else None
    deny, warn = admission_check(operation, spec, old_spec,
                                 bool(meta.get("deletionTimestamp")), policies)
    for v in warn:
        warnings.append(str(v))
    if not deny:
        return
    if not dryrun:
        _post_rejections(deny, namespace, name, operation, str(userinfo.get("username", "?")))
    log.info("rejected %s of ModelDeployment %s/%s: %s", operation, namespace, name,
             summary(deny))
    raise kopf.AdmissionError(summary(deny), code=403)
