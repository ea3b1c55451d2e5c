"""Invalid ModelDeployments are refused by the API server, with the field in the message.

Every case is applied with kubectl against the real API server (schema and CEL rules from
the generated CRD); nothing is created, and the error names what to fix.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from conftest import Kube

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "a" * 64
VALID: dict[str, Any] = {
    "apiVersion": "kustos.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "bad"},
    "spec": {"model": {"version": "1", "uri": "s3://models/m/model.skops", "digest": DIGEST},
             "replicas": 2},
}


def variant(path: str, value: Any) -> dict[str, Any]:
    """VALID with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    obj = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return obj


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("replicas not a number", variant("spec.replicas", "two"),
     ["spec.replicas", "integer"]),
    ("negative replicas", variant("spec.replicas", -1),
     ["spec.replicas", "greater than or equal to 0"]),
    ("min above max", variant("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
     ["spec.autoscaling.minReplicas", "minReplicas must not exceed maxReplicas"]),
    ("maxReplicas missing", variant("spec.autoscaling", {"minReplicas": 1}),
     ["spec.autoscaling.maxReplicas", "Required value"]),
    ("cpu target above 100", variant("spec.autoscaling",
                                     {"maxReplicas": 3, "targetCPUUtilization": 150}),
     ["spec.autoscaling.targetCPUUtilization", "less than or equal to 100"]),
    ("bad digest", variant("spec.model.digest", "md5:abc"),
     ["spec.model.digest", "sha256"]),
    ("short digest", variant("spec.model.digest", "sha256:abc123"),
     ["spec.model.digest"]),
    ("unknown runtime", variant("spec.runtime", {"kind": "triton"}),
     ["spec.runtime.kind", "Unsupported value", "triton"]),
    ("bad uri scheme", variant("spec.model.uri", "ftp://host/model.skops"),
     ["spec.model.uri", "should match"]),
    ("plain http to a remote host", variant("spec.model.uri", "http://example.com/m.skops"),
     ["spec.model.uri"]),
    ("missing model", variant("spec.model", ...), ["spec.model", "Required value"]),
    ("missing version", variant("spec.model.version", ...),
     ["spec.model.version", "Required value"]),
    ("unknown format", variant("spec.model.format", "pytorch"),
     ["spec.model.format", "Unsupported value"]),
    ("onnx format with a skops file", variant("spec.model.format", "onnx"),
     ["spec.model.uri", "format onnx needs a .onnx file"]),
    ("pickle without digest", {**variant("spec.model", {
        "version": "1", "uri": "s3://models/m/model.joblib"})},
     ["spec.model.digest", "unpickling runs code"]),
    ("canary share out of range", variant("spec.canary", {
        "model": {"version": "2", "uri": "s3://m/model.skops"}, "trafficPercent": 100}),
     ["spec.canary.trafficPercent", "less than or equal to 99"]),
    ("canary share zero", variant("spec.canary", {
        "model": {"version": "2", "uri": "s3://m/model.skops"}, "trafficPercent": 0}),
     ["spec.canary.trafficPercent", "greater than or equal to 1"]),
    ("registry URI for the canary", variant("spec.canary", {
        "model": {"version": "2", "uri": "models:/iris@challenger"}, "trafficPercent": 10}),
     ["spec.canary.model.uri", "cannot be a models:/ registry URI"]),
    ("custom runtime without image", variant("spec.runtime", {"kind": "custom", "port": 9000}),
     ["spec.runtime.kind", "runtime kind custom needs image and port"]),
    ("bad risk tier", variant("spec.governance", {"riskTier": "extreme"}),
     ["spec.governance.riskTier", "Unsupported value"]),
    ("high risk without digest", {**variant("spec.model", {
        "version": "1", "uri": "s3://models/m/model.skops"}),
        "spec": {"model": {"version": "1", "uri": "s3://models/m/model.skops"},
                 "governance": {"riskTier": "high"}}},
     ["spec.model.digest", "riskTier high needs a pinned model digest"]),
    ("bad resource quantity", variant("spec.runtime", {"resources": {"requests": {
        "cpu": "lots"}}}), ["spec.runtime.resources.requests.cpu", "should match"]),
    ("vault without items", variant("spec.secrets", {"vault": {"role": "r", "items": []}}),
     ["spec.secrets.vault.items", "at least 1 items"]),
    ("vault duplicate files", variant("spec.secrets", {"vault": {"role": "r", "items": [
        {"path": "secret/data/a", "file": "x"}, {"path": "secret/data/b", "file": "x"}]}}),
     ["spec.secrets.vault.items", "each item needs its own file name"]),
    ("bad refresh interval", variant("spec.secrets", {"vault": {
        "role": "r", "refreshInterval": "soon", "items": [{"path": "p", "file": "f"}]}}),
     ["spec.secrets.vault.refreshInterval", "should match"]),
    ("unknown field is rejected strictly", variant("spec.replicaz", 3),
     ["spec.replicaz", "unknown field"]),
    ("tls on another runtime", variant("spec.runtime", {
        "kind": "mlserver", "tls": {"secretName": "iris-tls"}}),
     ["spec.runtime.tls", "tls is served by runtime kind kustos only"]),
    ("tls without a secret", variant("spec.runtime", {"tls": {}}),
     ["spec.runtime.tls.secretName", "Required value"]),
    ("client CA from two places", variant("spec.runtime", {"tls": {
        "secretName": "iris-tls", "clientCA": {"secretName": "ca", "configMapName": "ca"}}}),
     ["spec.runtime.tls.clientCA",
      "clientCA needs exactly one of secretName and configMapName"]),
]


@pytest.mark.parametrize(("manifest", "expected"), [(m, e) for _, m, e in CASES],
                         ids=[c[0] for c in CASES])
def test_invalid_model_deployment_is_refused(kube: Kube, namespace: str,
                                             manifest: dict[str, Any],
                                             expected: list[str]) -> None:
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["namespace"] = namespace
    proc = kube.run("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(manifest),
                    check=False)
    assert proc.returncode != 0, f"accepted: {manifest['spec']}"
    for text in expected:
        assert text in proc.stderr, f"{text!r} not in: {proc.stderr}"
    assert kube.get("md", "bad", namespace) is None


def test_the_valid_base_is_accepted(kube: Kube, namespace: str) -> None:
    manifest = copy.deepcopy(VALID)
    manifest["metadata"]["namespace"] = namespace
    kube.run("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(manifest))


def test_cases_are_many_and_distinct() -> None:
    assert len(CASES) >= 15
    assert len({c[0] for c in CASES}) == len(CASES)
