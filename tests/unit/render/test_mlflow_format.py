"""Format mlflow: what the API accepts (an archive of an MLmodel directory, which `kustos
fetch` downloads as one digest-checked file), what the kustos runtime renders, and the
runtimes that cannot serve it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kustos.api.v1alpha1.modeldeployment import ModelSource
from kustos.render.runtimes import (
    RuntimeRenderError,
    ServingSpec,
    kustos_serve_args,
    runtime_container,
)
from kustos.runtime.server.cli import build_parser

BASE = ServingSpec(kind="kustos", image="ghcr.io/kustos/kustos:0.1.0", model_name="iris",
                   model_version="7", model_file="model.tar.gz", model_format="mlflow",
                   digest="sha256:" + "ab" * 32)
ARCHIVES = ["model.tar.gz", "model.tgz", "model.tar", "model.zip"]


@pytest.mark.parametrize("file", ARCHIVES)
def test_the_api_takes_an_archive(file: str) -> None:
    src = ModelSource.model_validate({"version": "1", "uri": f"s3://models/{file}",
                                      "format": "mlflow"})
    assert src.format == "mlflow"


def test_the_crd_wants_an_archive_for_mlflow() -> None:
    crd = yaml.safe_load((Path(__file__).resolve().parents[3]
                          / "crds/kustos.dev_modeldeployments.yaml").read_text())
    model = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["model"]
    assert "mlflow" in model["properties"]["format"]["enum"]
    rules = {r["message"]: r for r in model["x-kubernetes-validations"]}
    rule = rules["format mlflow needs a .tar.gz, .tgz, .tar or .zip archive of an MLmodel "
                 "directory"]
    assert rule["fieldPath"] == ".uri"
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        assert f"'{suffix}'" in rule["rule"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValidationError, match="format"):
        ModelSource.model_validate({"version": "1", "uri": "s3://m/model.tgz",
                                    "format": "pyfunc"})


def test_kustos_serve_is_rendered_with_the_format() -> None:
    container = runtime_container(BASE)
    args = kustos_serve_args(BASE, port=8080)
    assert container["args"] == args
    assert args[args.index("--format") + 1] == "mlflow"
    assert args[args.index("--model") + 1].endswith("/model.tar.gz")


def test_the_serve_parser_takes_the_rendered_args() -> None:
    args = build_parser().parse_args(kustos_serve_args(BASE, port=8080)[1:])
    assert args.format == "mlflow"


@pytest.mark.parametrize("kind", ["seldon", "mlserver"])
def test_sklearn_only_runtimes_refuse_mlflow(kind: str) -> None:
    with pytest.raises(RuntimeRenderError, match="sklearn"):
        runtime_container(dataclasses.replace(BASE, kind=kind, image=f"{kind}:1"))
