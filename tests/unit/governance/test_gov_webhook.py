"""The webhook's pieces without a cluster: the configuration it is registered with, its
self-signed certificate (served by a real TLS socket), and the admission decision."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509

from kustos.governance.policy import Policy
from kustos.governance.tls import self_signed, write_self_signed
from kustos.governance.webhook import admission_check
from kustos.render.webhook import WEBHOOK_PATH, parse_selector, render_configuration
from tlsprobe import handshake

SPEC = {"model": {"version": "1", "uri": "s3://m/model.skops"},
        "governance": {"riskTier": "high"}}
DENY = Policy("strict", {"approvalRequiredFor": ["high"]})
WARN = Policy("soft", {"requireOwner": True, "enforcement": "Warn"})


def test_configuration_by_url_and_by_service() -> None:
    cfg = render_configuration("kustos-test", ca_bundle=b"PEM",
                               url="https://127.0.0.1:9443/",
                               namespace_selector=parse_selector("gov=abc, team=x"))
    (hook,) = cfg["webhooks"]
    assert cfg["kind"] == "ValidatingWebhookConfiguration"
    assert cfg["metadata"]["name"] == "kustos-test"
    assert hook["clientConfig"] == {"caBundle": base64.b64encode(b"PEM").decode(),
                                    "url": "https://127.0.0.1:9443/validate-modeldeployment"}
    assert hook["namespaceSelector"] == {"matchLabels": {"gov": "abc", "team": "x"}}
    assert hook["rules"] == [{"apiGroups": ["kustos.dev"], "apiVersions": ["v1alpha1"],
                              "resources": ["modeldeployments"],
                              "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}]
    assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"]) == (
        "Fail", "NoneOnDryRun", 10)
    assert hook["matchConditions"] == [{
        "name": "spec-changed",
        "expression": "request.operation != 'UPDATE' || object.spec != oldObject.spec"}]
    svc = render_configuration("kustos", ca_bundle=b"PEM", service=("kustos-system", "kustos"))
    (hook,) = svc["webhooks"]
    assert hook["clientConfig"]["service"] == {"namespace": "kustos-system", "name": "kustos",
                                               "path": WEBHOOK_PATH, "port": 443}
    # By default every namespace but the system ones.
    assert hook["namespaceSelector"]["matchExpressions"][0]["operator"] == "NotIn"
    with pytest.raises(ValueError):
        render_configuration("x", ca_bundle=b"", url="https://a", service=("a", "b"))
    with pytest.raises(ValueError):
        parse_selector("novalue")


def test_self_signed_certificate_serves_tls_for_its_hosts(tmp_path: Path) -> None:
    cert_pem, _ = self_signed(["127.0.0.1", "kustos.kustos-system.svc"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["kustos.kustos-system.svc"]

    certfile, keyfile = write_self_signed(["127.0.0.1"])
    assert keyfile.stat().st_mode & 0o077 == 0, "the key is private to its user"
    # A client that trusts only the certificate itself (what caBundle does) verifies it.
    assert handshake(certfile, keyfile, certfile.read_text(), "127.0.0.1") == b"ok"


def test_admission_decision() -> None:
    deny, warn = admission_check("CREATE", SPEC, None, False, [DENY, WARN])
    assert [v.field for v in deny] == ["spec.governance.approval.approvedBy",
                                       "spec.governance.approval.ticket"]
    assert [v.rule for v in warn] == ["requireOwner"]
    # kopf's own annotation/finalizer updates leave the spec alone: always admitted.
    assert admission_check("UPDATE", SPEC, dict(SPEC), False, [DENY]) == ([], [])
    # A spec change is judged; so is an object being created in a governed namespace.
    changed = {**SPEC, "replicas": 3}
    assert admission_check("UPDATE", changed, SPEC, False, [DENY])[0]
    assert admission_check("UPDATE", changed, SPEC, True, [DENY]) == ([], [])
    assert admission_check("CREATE", SPEC, None, False, []) == ([], [])


def test_run_refuses_a_certificate_without_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    from kustos.controllers import run

    assert run.main(["--webhook", "--webhook-cert", "/nonexistent.crt",
                     "--metrics-port", "0"]) == 1
    assert "--webhook-cert and --webhook-key go together" in capsys.readouterr().err
