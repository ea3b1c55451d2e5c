"""Governance on the real control plane: the operator's admission webhook, registered with
the real API server, judges real `kubectl apply`s; PolicyCompliant follows ExplainerSpecs
and DriftMonitors as they appear; the audit Events are posted.

This module runs its own operator (`kustos run --webhook ...`) watching only namespaces
named g<session prefix>*, which also carry a label unique to this session: the webhook
configuration (unique name, deleted afterwards) selects only those, so other test
sessions on the same cluster are never sent to this webhook.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import NS_PREFIX, Kube, Operator, free_port, wait_for

from kustos.governance.tls import self_signed

pytestmark = pytest.mark.integration

SESSION = uuid.uuid4().hex[:6]
GOV_PREFIX = f"g{NS_PREFIX}"
NS_LABEL = "kustos-gov-test"
WEBHOOK_CONFIG = f"kustos-gov-test-{SESSION}"
DIGEST = "sha256:" + "0123456789abcdef" * 4


class GovernanceOperator(Operator):
    """The real operator process with the admission webhook on a free port."""

    def __init__(self, kubeconfig: Path, tls_dir: Path) -> None:
        super().__init__(kubeconfig)
        self.webhook_port = free_port()
        self.log_path = self.log_path.with_name("operator-governance-test.log")
        # As an installation does: a certificate and key in files (--webhook-cert/-key).
        cert, key = self_signed(["127.0.0.1"])
        self.cert, self.key = tls_dir / "tls.crt", tls_dir / "tls.key"
        self.cert.write_bytes(cert)
        self.key.write_bytes(key)
        self.key.chmod(0o600)

    def start(self, namespaces: list[str] | None = None) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kustos.cli", "run", "--namespace", f"{GOV_PREFIX}*",
             "--metrics-bind", "127.0.0.1", "--metrics-port", str(self.metrics_port),
             "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
             "--webhook", "--webhook-bind", "127.0.0.1", "--webhook-host", "127.0.0.1",
             "--webhook-port", str(self.webhook_port),
             "--webhook-cert", str(self.cert), "--webhook-key", str(self.key),
             "--webhook-configuration", WEBHOOK_CONFIG,
             "--webhook-namespace-selector", f"{NS_LABEL}={SESSION}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for("operator liveness", self._live, timeout=60)


@pytest.fixture(scope="module")
def gov_operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[GovernanceOperator]:
    op = GovernanceOperator(kube.kubeconfig, tmp_path_factory.mktemp("webhook-tls"))
    try:
        op.start()
        yield op
    finally:
        op.stop()
        # failurePolicy Fail and a stopped webhook: the configuration must go with it.
        kube.run("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIG,
                 "--ignore-not-found", check=False)


def _namespace(kube: Kube, governed: bool) -> str:
    name = f"{GOV_PREFIX}{uuid.uuid4().hex[:6]}"
    kube.create_namespace(name)
    if governed:
        kube.run("label", "namespace", name, f"{NS_LABEL}={SESSION}")
    return name


@pytest.fixture
def gov_ns(kube: Kube) -> Iterator[str]:
    name = _namespace(kube, governed=True)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def policy(kube: Kube) -> Iterator[str]:
    """A Deny policy for this session's labelled namespaces."""
    name = f"strict-high-{SESSION}"
    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "GovernancePolicy",
                "metadata": {"name": name},
                "spec": {"namespaceSelector": {"matchLabels": {NS_LABEL: SESSION}},
                         "requireOwner": True,
                         "approvalRequiredFor": ["high"],
                         "digestRequiredFor": ["medium", "high"],
                         "explainerRequiredFor": ["high"],
                         "driftMonitorRequiredFor": ["high"],
                         "allowedRegistries": ["ghcr.io/kustos-dev"]}})
    yield name
    kube.run("delete", "governancepolicy", name, "--ignore-not-found", check=False)


def md(name: str, namespace: str, tier: str = "high", **governance: Any) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"version": "1", "uri": "s3://models/iris/model.skops",
                               "digest": DIGEST},
                     "governance": {"riskTier": tier, **governance}}}


APPROVAL = {"approvedBy": "jane.doe", "ticket": "RISK-1234"}


def compliant(kube: Kube, name: str, ns: str) -> dict[str, Any] | None:
    return kube.condition("md", name, ns, "PolicyCompliant")


def test_webhook_rejects_with_rule_and_field_and_admits_what_complies(
        kube: Kube, gov_operator: GovernanceOperator, gov_ns: str, policy: str) -> None:
    cfg = kube.get("validatingwebhookconfiguration", WEBHOOK_CONFIG, "")
    assert cfg is not None
    (hook,) = cfg["webhooks"]
    assert hook["clientConfig"]["url"] == (
        f"https://127.0.0.1:{gov_operator.webhook_port}/validate-modeldeployment")
    # The caBundle is the certificate the operator was given.
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == gov_operator.cert.read_bytes()
    assert (hook["failurePolicy"], hook["namespaceSelector"]) == (
        "Fail", {"matchLabels": {NS_LABEL: SESSION}})

    # The API server calls the webhook over TLS; the rejection names policy, rule, field.
    proc = kube.apply(md("credit", gov_ns, owner="risk"), check=False)
    assert proc.returncode != 0
    assert (f"GovernancePolicy {policy}, rule approvalRequiredFor: "
            "spec.governance.approval.ticket is required for riskTier high") in proc.stderr
    assert "spec.governance.approval.approvedBy is required" in proc.stderr
    assert kube.get("md", "credit", gov_ns) is None

    bad_image = md("credit", gov_ns, owner="risk", approval=APPROVAL)
    bad_image["spec"]["runtime"] = {"image": "docker.io/someone/server:1"}
    proc = kube.apply(bad_image, check=False)
    assert proc.returncode != 0
    assert (f"GovernancePolicy {policy}, rule allowedRegistries: spec.runtime.image "
            "'docker.io/someone/server:1' is not from an allowed registry") in proc.stderr
    proc = kube.apply(md("nobody", gov_ns, tier="low"), check=False)
    assert "rule requireOwner: spec.governance.owner is required" in proc.stderr

    # A dry run is judged too, but leaves no audit Event.
    proc = kube.run("apply", "--dry-run=server", "-f", "-", check=False,
                    input=_yaml(md("dry", gov_ns, owner="risk")))
    assert proc.returncode != 0 and "rule approvalRequiredFor" in proc.stderr

    # The rejections are in the audit trail, on the policy (the object was never stored).
    def rejections() -> list[dict[str, Any]]:
        items = kube.list("events", "default")
        found = [e for e in items if e["involvedObject"].get("name") == policy
                 and e["reason"] == "PolicyRejected"]
        return found if len(found) >= 3 else []
    events = wait_for("PolicyRejected events", rejections, timeout=20)
    messages = " | ".join(e["message"] for e in events)
    assert f"ModelDeployment {gov_ns}/credit" in messages
    assert "rule approvalRequiredFor: spec.governance.approval.ticket" in messages
    assert f"{gov_ns}/dry" not in messages
    assert all(e["type"] == "Warning" for e in events)

    # What complies is admitted; a later spec change that breaks a rule is not, while
    # changes that leave the spec alone (labels, kopf's annotations) still go through.
    ok = md("credit", gov_ns, owner="risk", approval=APPROVAL)
    kube.apply(ok)
    broken = md("credit", gov_ns, owner="risk")
    proc = kube.apply(broken, check=False)
    assert proc.returncode != 0 and "rule approvalRequiredFor" in proc.stderr
    kube.run("label", "md", "credit", "-n", gov_ns, "audited=yes")

    # A namespace the policy does not select is not judged at all.
    free = _namespace(kube, governed=False)
    try:
        kube.apply(md("anything", free, owner=""))
    finally:
        kube.run("delete", "namespace", free, "--wait=false", check=False)


def test_warn_enforcement_admits_with_a_warning(
        kube: Kube, gov_operator: GovernanceOperator, gov_ns: str) -> None:
    name = f"owners-warn-{SESSION}"
    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "GovernancePolicy",
                "metadata": {"name": name},
                "spec": {"namespaceSelector": {"matchLabels": {NS_LABEL: SESSION}},
                         "requireOwner": True, "enforcement": "Warn"}})
    try:
        proc = kube.apply(md("lowrisk", gov_ns, tier="low"))
        assert (f"Warning: GovernancePolicy {name}, rule requireOwner: "
                "spec.governance.owner is required") in proc.stderr
        # Admitted, and the operator reports it as not compliant.
        cond = wait_for("PolicyCompliant False", lambda: (
            c if (c := compliant(kube, "lowrisk", gov_ns)) and c["status"] == "False"
            else None), timeout=30)
        assert cond["reason"] == "MissingOwner"
        gp = wait_for("policy Ready", lambda: (
            p if (p := kube.get("governancepolicy", name, "")) and
            (p.get("status") or {}).get("observedGeneration") == 1 else None), timeout=20)
        ready = {c["type"]: c for c in gp["status"]["conditions"]}["Ready"]
        assert ready["status"] == "True"
    finally:
        kube.run("delete", "governancepolicy", name, "--ignore-not-found", check=False)
    # The policy is gone: the condition says no policy applies any more.
    cond = wait_for("NoPolicyApplies", lambda: (
        c if (c := compliant(kube, "lowrisk", gov_ns)) and c["reason"] == "NoPolicyApplies"
        else None), timeout=30)
    assert cond["status"] == "True"


def test_policy_compliant_follows_explainer_and_drift_monitor(
        kube: Kube, gov_operator: GovernanceOperator, gov_ns: str, policy: str) -> None:
    kube.apply(md("scorer", gov_ns, owner="risk", approval=APPROVAL,
                  modelCard={"intendedUse": "credit scoring",
                             "limitations": "not for mortgages"}))
    cond = wait_for("PolicyCompliant MissingExplainer", lambda: (
        c if (c := compliant(kube, "scorer", gov_ns)) and c["reason"] == "MissingExplainer"
        else None), timeout=30)
    assert cond["status"] == "False"
    assert f"GovernancePolicy {policy}, rule explainerRequiredFor" in cond["message"]
    assert "rule driftMonitorRequiredFor" in cond["message"]

    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
                "metadata": {"name": "scorer", "namespace": gov_ns},
                "spec": {"targetRef": {"name": "scorer"},
                         "background": {"uri": "s3://models/iris/background.csv"}}})
    wait_for("PolicyCompliant MissingDriftMonitor", lambda: (
        c if (c := compliant(kube, "scorer", gov_ns)) and c["reason"] == "MissingDriftMonitor"
        else None), timeout=30)
    kube.apply({"apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
                "metadata": {"name": "scorer", "namespace": gov_ns},
                "spec": {"targetRef": {"name": "scorer"},
                         "reference": {"uri": "s3://models/iris/reference.csv"}}})
    cond = wait_for("PolicyCompliant True", lambda: (
        c if (c := compliant(kube, "scorer", gov_ns)) and c["status"] == "True" else None),
        timeout=30)
    assert cond["reason"] == "Compliant"

    # The ModelDeployment's own status writes (a scale rolls out and rewrites the status)
    # keep the condition, and it follows the new generation.
    kube.run("scale", "md/scorer", "-n", gov_ns, "--replicas=2")

    def rolled() -> dict[str, Any] | None:
        obj = kube.get("md", "scorer", gov_ns)
        st = (obj or {}).get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions") or []}
        if st.get("observedGeneration") == 2 and st.get("readyReplicas") == 2 and \
                conds.get("PolicyCompliant", {}).get("observedGeneration") == 2:
            return conds
        return None
    conds = wait_for("scaled, status rewritten", rolled, timeout=60)
    assert conds["PolicyCompliant"]["status"] == "True"
    assert conds["Ready"]["status"] == "True"

    # Deleting the DriftMonitor makes it non-compliant again.
    kube.run("delete", "driftmonitor", "scorer", "-n", gov_ns)
    wait_for("PolicyCompliant back to MissingDriftMonitor", lambda: (
        c if (c := compliant(kube, "scorer", gov_ns)) and c["reason"] == "MissingDriftMonitor"
        else None), timeout=30)

    # Retargeting the ExplainerSpec elsewhere leaves this model without one.
    kube.run("patch", "explainerspec", "scorer", "-n", gov_ns, "--type=merge",
             "-p", '{"spec": {"targetRef": {"name": "another-model"}}}')
    wait_for("PolicyCompliant MissingExplainer after retargeting", lambda: (
        c if (c := compliant(kube, "scorer", gov_ns)) and c["reason"] == "MissingExplainer"
        else None), timeout=30)

    # Approval changes are audited (approver and ticket), and the model card is part of
    # what `kubectl describe` shows.
    changed = md("scorer", gov_ns, owner="risk",
                 approval={"approvedBy": "sam.roe", "ticket": "RISK-2000"},
                 modelCard={"intendedUse": "credit scoring", "limitations": "not for mortgages"})
    changed["spec"]["replicas"] = 2
    kube.apply(changed)

    def approvals() -> list[str]:
        found = [e["message"] for e in kube.events(gov_ns, "scorer")
                 if e["reason"] == "ApprovalChanged"]
        return found if len(found) >= 2 else []
    messages = wait_for("two ApprovalChanged events", approvals, timeout=30)
    assert "approved by jane.doe, ticket RISK-1234" in messages
    assert "approved by sam.roe, ticket RISK-2000 (was jane.doe, ticket RISK-1234)" in messages
    reasons = {e["reason"] for e in kube.events(gov_ns, "scorer")}
    assert {"PolicyViolation", "PolicyCompliant"} <= reasons
    described = kube.run("describe", "md", "scorer", "-n", gov_ns).stdout
    for text in ("Intended Use:", "credit scoring", "Limitations:", "not for mortgages",
                 "Owner:", "Risk Tier:", "PolicyCompliant"):
        assert text in described, text
    wide = kube.run("get", "md", "scorer", "-n", gov_ns, "-o", "wide").stdout
    header, row = (line.split() for line in wide.splitlines()[:2])
    at = header.index("RISK")
    assert header[at:at + 3] == ["RISK", "OWNER", "COMPLIANT"]
    assert row[at:at + 3] == ["high", "risk", "False"]


def _yaml(obj: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(obj)


def test_unreachable_webhook_fails_closed_for_spec_changes_only(kube: Kube, gov_ns: str,
                                                                 tmp_path: Path) -> None:
    """failurePolicy Fail with nobody listening: a spec change is refused, while updates
    that leave the spec alone (kopf's annotations, labels, deletion) skip the webhook
    through its matchConditions, so the operator never depends on it for those."""
    from kustos.render.webhook import parse_selector, render_configuration

    kube.apply(md("held", gov_ns, tier="low", owner="team-a"))
    kube.run("label", "namespace", gov_ns, f"kustos-gov-dead={SESSION}")
    cert, _ = self_signed(["127.0.0.1"])
    name = f"kustos-gov-dead-{SESSION}"
    dead = render_configuration(name, ca_bundle=cert, url=f"https://127.0.0.1:{free_port()}",
                                namespace_selector=parse_selector(f"kustos-gov-dead={SESSION}"),
                                timeout_seconds=2)
    try:
        kube.apply(dead)
        changed = md("held", gov_ns, tier="low", owner="team-b")

        def refused() -> str | None:
            proc = kube.apply(changed, check=False)
            return proc.stderr if proc.returncode != 0 else None
        stderr = wait_for("the dead webhook refusing", refused, timeout=20)
        assert "failed calling webhook" in stderr
        kube.run("label", "md", "held", "-n", gov_ns, "still=allowed")
        kube.run("annotate", "md", "held", "-n", gov_ns, "kustos.dev/test=allowed")
        kube.run("delete", "md", "held", "-n", gov_ns, "--wait=true", "--timeout=30s")
    finally:
        kube.run("delete", "validatingwebhookconfiguration", name, "--ignore-not-found",
                 check=False)
