"""Formats xgboost and lightgbm: what the API accepts, what the kustos runtime renders (and
the real `kustos serve` parser takes), and the runtimes that cannot serve them."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from kustos.api.v1alpha1.modeldeployment import ModelSource
from kustos.render.runtimes import (
    RuntimeRenderError,
    ServingSpec,
    kustos_serve_args,
    runtime_container,
)
from kustos.runtime.server.cli import build_parser

BASE = ServingSpec(kind="kustos", image="ghcr.io/kustos/kustos:0.1.0", model_name="iris",
                   model_version="7", model_file="model.ubj", model_format="xgboost",
                   digest="sha256:" + "ab" * 32)


def spec(kind: str, **changes: str) -> ServingSpec:
    return dataclasses.replace(BASE, kind=kind, image=f"{kind}:1", **changes)

CASES = [("xgboost", "iris.ubj"), ("xgboost", "iris.json"), ("lightgbm", "cancer.txt")]


@pytest.mark.parametrize(("fmt", "file"), CASES)
def test_the_api_takes_the_format(fmt: str, file: str) -> None:
    src = ModelSource.model_validate({"version": "1", "uri": f"s3://models/{file}",
                                      "format": fmt})
    assert src.format == fmt


@pytest.mark.parametrize(("fmt", "file"), CASES)
def test_kustos_serve_is_rendered_with_the_format(fmt: str, file: str) -> None:
    s: ServingSpec = dataclasses.replace(BASE, model_file=file, model_format=fmt)
    container = runtime_container(s)
    args = build_parser().parse_args(kustos_serve_args(s, port=8080)[1:])  # after "serve"
    assert args.format == fmt and args.model.endswith("/" + file)
    assert container["args"] == kustos_serve_args(s, port=8080)


@pytest.mark.parametrize("kind", ["seldon", "mlserver"])
@pytest.mark.parametrize(("fmt", "file"), CASES)
def test_sklearn_only_runtimes_refuse_boosters(kind: str, fmt: str, file: str) -> None:
    with pytest.raises(RuntimeRenderError, match="sklearn"):
        runtime_container(spec(kind, model_format=fmt, model_file=file))


def test_the_crd_ties_each_format_to_its_extensions() -> None:
    from pathlib import Path

    crd = yaml.safe_load((Path(__file__).resolve().parents[3]
                          / "crds/kustos.dev_modeldeployments.yaml").read_text())
    model = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["model"]
    assert model["properties"]["format"]["enum"] == ["sklearn", "onnx", "xgboost", "lightgbm",
                                                     "mlflow"]
    rules = {r["message"]: r["rule"] for r in model["x-kubernetes-validations"]}
    assert "'.ubj'" in rules["format xgboost needs a native .ubj or .json file"]
    assert "'.txt'" in rules["format lightgbm needs a native text model (.txt) file"]
