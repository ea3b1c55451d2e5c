"""spec.canary.model.uri cannot be a models:/ registry URI: only spec.model.uri is resolved
in a registry (status.registry holds one resolution). The operator's own validation
refuses it, and the CRD carries a CEL rule that tells the API server's caller why and
what to use instead (spec.rollout with an alias). The live API server's answer is for
tests/integration; here, the rule as generated and the prefix it tests."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from kustos.api.crdgen import KINDS, crd
from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.common import URI_PATTERN
from kustos.api.v1alpha1.modeldeployment import CANARY_REGISTRY_MESSAGE, CANARY_REGISTRY_PREFIX
from kustos.registry.uri import MODELS_URI_PATTERN, is_registry_uri

REGISTRY = {"url": "https://mlflow.example"}


def spec(canary_uri: str, model: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"model": model or {"version": "1", "uri": "s3://m/iris/1/model.skops"},
            "replicas": 2,
            "canary": {"model": {"version": "2", "uri": canary_uri}, "trafficPercent": 10}}


@pytest.mark.parametrize("uri", ["models:/iris@challenger", "models:/iris/2"])
def test_the_operator_refuses_a_registry_uri_for_the_canary(uri: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ModelDeploymentSpec.model_validate(spec(uri))
    assert [e["loc"] for e in refused.value.errors()] == [("canary", "model", "uri")]
    # even when spec.model itself is a registry model
    registered = {"version": "1", "uri": "models:/iris@champion", "registry": REGISTRY}
    with pytest.raises(ValidationError):
        ModelDeploymentSpec.model_validate(spec(uri, registered))


def test_a_file_canary_beside_a_registry_model_is_fine() -> None:
    registered = {"version": "1", "uri": "models:/iris@champion", "registry": REGISTRY}
    md = ModelDeploymentSpec.model_validate(spec("s3://m/iris/2/model.skops", registered))
    assert md.canary is not None and md.canary.model.uri == "s3://m/iris/2/model.skops"


def canary_model_schema() -> dict[str, Any]:
    [md] = [k for k in KINDS if k.plural == "modeldeployments"]
    schema = crd(md)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node: dict[str, Any] = schema["properties"]["spec"]["properties"]["canary"]
    return dict(node["properties"]["model"])


def test_the_crd_says_why_at_the_field() -> None:
    rules = canary_model_schema()["x-kubernetes-validations"]
    [rule] = [r for r in rules if "models:/" in r["rule"]]
    assert rule == {"rule": "!self.uri.startsWith('models:/')",
                    "message": CANARY_REGISTRY_MESSAGE, "fieldPath": ".uri"}
    assert rule["message"].startswith("spec.canary.model.uri cannot be a models:/ registry URI")
    assert "spec.rollout" in rule["message"]  # what to do instead
    assert "\n" not in rule["message"]  # the API server refuses multi-line messages


@pytest.mark.parametrize("uri", ["models:/iris@champion", "models:/iris/7",
                                 "models:/credit risk@prod"])
def test_the_rule_refuses_every_registry_uri(uri: str) -> None:
    # what spec.model accepts as a registry URI is what the canary's rule refuses
    assert re.match(MODELS_URI_PATTERN, uri) and is_registry_uri(uri)
    assert uri.startswith(CANARY_REGISTRY_PREFIX)


@pytest.mark.parametrize("uri", ["s3://m/models:/x.skops", "file:///models/m.skops",
                                 "https://h/models:/m.onnx", "pvc://claim/m.skops"])
def test_the_rule_leaves_every_file_uri_alone(uri: str) -> None:
    assert re.match(URI_PATTERN, uri) and not uri.startswith(CANARY_REGISTRY_PREFIX)
    ModelDeploymentSpec.model_validate(spec(uri))
