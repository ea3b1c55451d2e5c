"""method lime in the ExplainerSpec API and the sidecar render: schema bounds, the CEL
rule, and flags the real `kustos explain` parser accepts."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kustos.api.crdgen import KINDS, crd
from kustos.api.v1alpha1 import ExplainerSpecSpec
from kustos.api.v1alpha1 import explainerspec as api
from kustos.config import OperatorConfig
from kustos.render import explainer
from kustos.runtime.explain import cli as sidecar_cli
from kustos.runtime.explain import lime_method

CFG = OperatorConfig.model_validate({"images": {"explain": "reg/explain:1"}})


def md() -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "md-uid"},
            "spec": {"model": {"version": "3", "uri": "s3://m/iris/model.skops"}}}


def es(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"targetRef": {"name": "iris"},
                            "background": {"uri": "https://data.example/bg.csv"}}
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
            "metadata": {"name": "iris-x", "namespace": "ml", "uid": "x-uid"}, "spec": body}


def args_of(body: dict[str, Any]) -> list[str]:
    args: list[str] = explainer.attachments(body, md(), CFG).sidecars[0]["args"]
    return args


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_lime_renders_method_and_samples_the_sidecar_accepts() -> None:
    args = args_of(es(method="lime", lime={"numSamples": 3000}))
    assert flag(args, "--method") == "lime" and flag(args, "--lime-samples") == "3000"
    parsed = sidecar_cli.build_parser().parse_args(args[1:])  # args[0] is the subcommand
    assert sidecar_cli._check(parsed) is None
    assert parsed.method == "lime" and parsed.lime_samples == 3000


def test_lime_without_settings_gets_the_default_and_shap_gets_no_lime_flag() -> None:
    assert flag(args_of(es(method="lime")), "--lime-samples") == "1000"
    assert "--lime-samples" not in args_of(es(method="shap-kernel"))


@pytest.mark.parametrize("samples", [99, 20001])
def test_num_samples_out_of_bounds_is_refused_naming_the_field(samples: int) -> None:
    body = es(method="lime", lime={"numSamples": samples})["spec"]
    with pytest.raises(ValidationError) as info:
        ExplainerSpecSpec.model_validate(body)
    assert info.value.errors()[0]["loc"] == ("lime", "numSamples")


def test_crd_schema_bounds_match_the_sidecar_and_lime_needs_method_lime() -> None:
    xs = next(k for k in KINDS if k.plural == "explainerspecs")
    spec = crd(xs)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "lime" in spec["properties"]["method"]["enum"]
    samples = spec["properties"]["lime"]["properties"]["numSamples"]
    assert (samples["minimum"], samples["default"], samples["maximum"]) == (
        lime_method.MIN_SAMPLES, lime_method.DEFAULT_SAMPLES, lime_method.MAX_SAMPLES)
    assert (api.LIME_MIN_SAMPLES, api.LIME_DEFAULT_SAMPLES, api.LIME_MAX_SAMPLES) == (
        lime_method.MIN_SAMPLES, lime_method.DEFAULT_SAMPLES, lime_method.MAX_SAMPLES)
    rules = {r["fieldPath"]: r for r in spec["x-kubernetes-validations"]}
    assert rules[".lime"]["rule"] == "!has(self.lime) || self.method == 'lime'"
    assert "method lime" in rules[".lime"]["message"]


@pytest.mark.parametrize(("value", "problem"), [
    ("99", "--lime-samples must be 100..20000"),
    ("20001", "--lime-samples must be 100..20000"),
])
def test_sidecar_refuses_lime_samples_out_of_bounds(value: str, problem: str) -> None:
    parsed = sidecar_cli.build_parser().parse_args(
        ["--model", "m", "--name", "n", "--background-uri", "x", "--lime-samples", value])
    assert sidecar_cli._check(parsed) == problem
