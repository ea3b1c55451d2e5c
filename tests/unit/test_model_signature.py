"""spec.model.signature end to end on the operator's side: the schema, the render of the
fetch init container (whose flags runtime/signing.py's tests run for real), the signer in
status, and the GovernancePolicy rule signatureRequiredFor at admission."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.config import OperatorConfig
from kustos.governance.policy import Policy, evaluate, summary
from kustos.governance.webhook import admission_check
from kustos.render.modeldeployment import render
from kustos.render.signature import MOUNT, SIGNER_ANNOTATION, TERMINATION_LOG
from kustos.runtime.fetch import build_parser
from kustos.status.modeldeployment import compute

DIGEST = "sha256:" + "ab" * 32
KEY = {"publicKey": {"name": "ml-signing", "key": "key.pub"}}
CERT = {"certificate": {"caChain": {"kind": "Secret", "name": "acme-ca", "key": "ca.pem"},
                        "identity": "ml-publisher@acme.example"}}
SIGSTORE = {"sigstore": {"identity": "https://github.com/acme/models/.github/workflows/"
                                     "release.yml@refs/heads/main",
                         "issuer": "https://token.actions.githubusercontent.com",
                         "trustRoot": {"name": "sigstore-root", "key": "trusted_root.json"}}}


def body(signature: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"version": "3", "uri": "s3://m/iris/model.skops",
                             "digest": DIGEST}
    if signature is not None:
        model["signature"] = signature
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": {"model": model, **spec}}


def deployments(b: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in render(b, OperatorConfig()) if o["kind"] == "Deployment"]


def fetch_of(deployment: dict[str, Any]) -> dict[str, Any]:
    init = deployment["spec"]["template"]["spec"]["initContainers"]
    return next(c for c in init if c["name"] == "fetch-model")


def parsed(container: dict[str, Any]) -> argparse.Namespace:
    """The rendered arguments as `kustos fetch` itself parses them."""
    assert container["args"][0] == "fetch"
    return build_parser().parse_args(container["args"][1:])


# ------------------------------------------------------------------------ schema


def test_exactly_one_method_is_a_cel_rule_naming_the_field() -> None:
    from kustos.api.v1alpha1.modeldeployment import ModelSignature

    rules = ModelSignature.model_json_schema()["x-kubernetes-validations"]
    message = "spec.model.signature needs exactly one of publicKey, certificate or sigstore"
    assert any(r["message"] == message for r in rules)
    spec_rules = ModelDeploymentSpec.model_json_schema()["x-kubernetes-validations"]
    assert any(r.get("fieldPath") == ".canary.model.signatureUri" for r in spec_rules)


def test_schema_refuses_bad_references_and_issuers() -> None:
    ModelDeploymentSpec.model_validate(body(SIGSTORE)["spec"])
    bad = {"sigstore": {**SIGSTORE["sigstore"], "issuer": "http://insecure.example"}}
    with pytest.raises(pydantic.ValidationError, match="issuer"):
        ModelDeploymentSpec.model_validate(body(bad)["spec"])
    with pytest.raises(pydantic.ValidationError, match="kind"):
        ModelDeploymentSpec.model_validate(body(
            {"publicKey": {"kind": "Pod", "name": "x", "key": "k"}})["spec"])
    with pytest.raises(pydantic.ValidationError, match="uri"):
        ModelDeploymentSpec.model_validate(body({**KEY, "uri": "pvc://claim/m.sig"})["spec"])


# ------------------------------------------------------------------------ render


def test_unsigned_model_renders_as_before() -> None:
    (dep,) = deployments(body())
    assert not any(a.startswith("--signature") for a in fetch_of(dep)["args"])
    assert SIGNER_ANNOTATION not in dep["spec"]["template"]["metadata"]["annotations"]
    assert not any(v["name"] == "model-signature"
                   for v in dep["spec"]["template"]["spec"]["volumes"])


def test_key_signature_mounts_the_key_into_the_fetch_only() -> None:
    (dep,) = deployments(body(KEY))
    fetch = fetch_of(dep)
    args = parsed(fetch)
    assert args.signature_method == "key"
    assert args.signature == "s3://m/iris/model.skops.sig"
    assert args.signature_key == f"{MOUNT}/key.pub"
    assert args.signer_file == TERMINATION_LOG
    assert args.digest == DIGEST  # both checks: the digest and the signature
    assert {"name": "model-signature", "mountPath": MOUNT, "readOnly": True} in \
        fetch["volumeMounts"]
    pod = dep["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model-signature")
    assert volume["projected"]["sources"] == [
        {"configMap": {"name": "ml-signing", "items": [{"key": "key.pub", "path": "key.pub"}]}}]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    assert not any(m["name"] == "model-signature" for m in server["volumeMounts"])
    assert dep["spec"]["template"]["metadata"]["annotations"][SIGNER_ANNOTATION] == \
        "key in ConfigMap ml-signing/key.pub"


def test_pinned_key_fingerprint_is_passed_and_is_the_signer() -> None:
    pinned = "sha256:" + "12" * 32
    (dep,) = deployments(body({"publicKey": {**KEY["publicKey"], "fingerprint": pinned}}))
    assert parsed(fetch_of(dep)).signature_key_fingerprint == pinned
    assert dep["spec"]["template"]["metadata"]["annotations"][SIGNER_ANNOTATION] == \
        f"key {pinned}"
    with pytest.raises(pydantic.ValidationError, match="fingerprint"):
        ModelDeploymentSpec.model_validate(body(
            {"publicKey": {**KEY["publicKey"], "fingerprint": "md5:00"}})["spec"])


def test_certificate_and_sigstore_flags() -> None:
    (dep,) = deployments(body({**CERT, "uri": "https://models.example/iris/3.sig"}))
    args = parsed(fetch_of(dep))
    assert (args.signature_method, args.signature, args.signature_ca_chain,
            args.signature_identity) == ("certificate", "https://models.example/iris/3.sig",
                                         f"{MOUNT}/ca-chain.pem", "ml-publisher@acme.example")
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "model-signature")
    assert volume["projected"]["sources"][0]["secret"]["name"] == "acme-ca"
    (dep,) = deployments(body(SIGSTORE))
    args = parsed(fetch_of(dep))
    assert args.signature_method == "sigstore"
    assert args.signature_issuer == "https://token.actions.githubusercontent.com"
    assert args.signature_identity == SIGSTORE["sigstore"]["identity"]
    assert args.signature_trust_root == f"{MOUNT}/trust-root.json"


def test_canary_is_verified_with_its_own_bundle() -> None:
    b = body(KEY, replicas=4, canary={"trafficPercent": 25, "model": {
        "version": "4", "uri": "s3://m/iris/v4.skops", "digest": "sha256:" + "cd" * 32}})
    stable, canary = deployments(b)
    assert parsed(fetch_of(stable)).signature == "s3://m/iris/model.skops.sig"
    args = parsed(fetch_of(canary))
    assert args.signature == "s3://m/iris/v4.skops.sig"
    assert args.signature_method == "key" and args.signature_key == f"{MOUNT}/key.pub"
    b["spec"]["canary"]["model"]["signatureUri"] = "s3://sigs/iris-v4.sig"
    assert parsed(fetch_of(deployments(b)[1])).signature == "s3://sigs/iris-v4.sig"


def test_pvc_bundle_is_read_from_the_mounted_claim() -> None:
    b = body(KEY)
    b["spec"]["model"]["uri"] = "pvc://models/iris/model.skops"
    args = parsed(fetch_of(deployments(b)[0]))
    assert args.uri == "/mnt/pvc/models/iris/model.skops"
    assert args.signature == "/mnt/pvc/models/iris/model.skops.sig"


# ------------------------------------------------------------------------ status


def test_status_records_the_signer_once_the_signed_template_rolled_out() -> None:
    b = body(CERT, replicas=1)
    (dep,) = deployments(b)
    live = {"metadata": {"name": "iris", "generation": 1},
            "spec": {"replicas": 1, "template": dep["spec"]["template"]},
            "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                       "updatedReplicas": 1, "availableReplicas": 1,
                       "conditions": [{"type": "Available", "status": "True"}]}}
    now = datetime(2026, 12, 6, tzinfo=UTC)
    status, _ = compute(b, {"iris": live}, OperatorConfig(), now)
    assert status["model"]["signer"] == "certificate ml-publisher@acme.example"
    # A template rendered without the signature (older spec) is not this rollout.
    unsigned = dict(live, spec={"replicas": 1, "template": deployments(body(
        replicas=1))[0]["spec"]["template"]})
    status, _ = compute(b, {"iris": unsigned}, OperatorConfig(), now)
    assert "model" not in status


# -------------------------------------------------------------------- governance

POLICY = Policy("signed-high", {"signatureRequiredFor": ["high"]})


def governed(signature: dict[str, Any] | None, tier: str = "high") -> dict[str, Any]:
    spec: dict[str, Any] = body(signature)["spec"]
    spec["governance"] = {"riskTier": tier}
    return spec


def test_signature_required_for_a_risk_tier() -> None:
    (v,) = evaluate(governed(None), [POLICY])
    assert (v.rule, v.field, v.reason) == ("signatureRequiredFor", "spec.model.signature",
                                           "SignatureMissing")
    assert "GovernancePolicy signed-high, rule signatureRequiredFor: spec.model.signature " \
        "must name how the model's signature bundle is verified" in summary([v])
    assert "riskTier high" in str(v)
    assert evaluate(governed(None, tier="medium"), [POLICY]) == []
    for sig in (KEY, CERT, SIGSTORE):
        assert evaluate(governed(sig), [POLICY]) == []
    # Judged outside the API server's schema too: an identity-less Sigstore entry.
    (v,) = evaluate(governed({"sigstore": {"issuer": "https://x.example",
                                           "trustRoot": {"name": "r", "key": "k"}}}),
                    [POLICY])
    assert v.field == "spec.model.signature.sigstore.identity"
    # A certificate without an identity trusts anyone the CA certified.
    (v,) = evaluate(governed({"certificate": {"caChain": CERT["certificate"]["caChain"]}}),
                    [POLICY])
    assert v.field == "spec.model.signature.certificate.identity"
    assert "must name the signing certificate's identity for riskTier high" in str(v)


def test_admission_refuses_an_unsigned_high_risk_model() -> None:
    deny, warn = admission_check("CREATE", governed(None), None, False, [POLICY])
    assert warn == []
    assert len(deny) == 1 and "spec.model.signature" in str(deny[0])
    assert admission_check("CREATE", governed(KEY), None, False, [POLICY]) == ([], [])
