"""kustos.registry's pure parts: models:/ URI parsing (and the CRD pattern agreeing with
it), artifact locations, the model file and digest tags, credentials that never show,
what status.registry and RegistryResolved become after a poll, the render of a resolved
models:/ URI, and the contributor that holds the render back until it is resolved."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.registry import MODEL_URI_PATTERN
from kustos.config import OperatorConfig
from kustos.controllers.attachments import AttachmentPending, AttachmentProblem
from kustos.controllers.registry import due, registry_attachments
from kustos.registry import status as rs
from kustos.registry.client import Credentials, RegistryClient, RegistryError
from kustos.registry.resolution import (
    Resolution,
    ResolutionError,
    artifact_location,
    digest_of,
    model_file,
    served_spec,
)
from kustos.registry.uri import InvalidModelUri, ModelRef, parse
from kustos.render.attachments import NONE
from kustos.render.modeldeployment import render

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SHA = "ab" * 32
REG = "http://127.0.0.1:5000"
NO_LOOKUP: Any = None  # the registry contributor reads no index
SOURCE = f"{REG}/api/2.0/mlflow-artifacts/artifacts/0/models/m-1/artifacts/model.pkl"


@pytest.mark.parametrize(("uri", "ref"), [
    ("models:/iris@champion", ModelRef("iris", alias="champion")),
    ("models:/credit-risk.v2/12", ModelRef("credit-risk.v2", version="12")),
    ("models:/Fraud Model@_latest-ok", ModelRef("Fraud Model", alias="_latest-ok")),
])
def test_parse(uri: str, ref: ModelRef) -> None:
    assert parse(uri) == ref
    assert str(ref) == uri
    assert re.fullmatch(MODEL_URI_PATTERN, uri)


@pytest.mark.parametrize(("uri", "hint"), [
    ("models:/", "model name is missing"),
    ("models:/iris", "name an alias"),
    ("models:/iris@", "missing"),
    ("models:/iris/", "missing"),
    ("models:/iris/0", "positive integer"),
    ("models:/iris/latest", "positive integer"),
    ("models://host/iris@a", "one slash"),
    ("models:/iris@1st", "alias starts with a letter"),
    ("s3://bucket/model.pkl", "not a registry URI"),
])
def test_parse_refuses_with_a_hint(uri: str, hint: str) -> None:
    with pytest.raises(InvalidModelUri, match=re.escape(hint)):
        parse(uri)
    if uri.startswith("models:"):
        assert not re.fullmatch(MODEL_URI_PATTERN, uri)  # the CRD refuses it too


def test_spec_takes_models_uris_and_still_refuses_others() -> None:
    ok = ModelDeploymentSpec.model_validate(
        {"model": {"version": "1", "uri": "models:/iris@champion",
                   "registry": {"url": REG, "pollInterval": "30s",
                                "credentialsSecretRef": {"name": "mlflow"}}}})
    assert ok.model.registry is not None and ok.model.registry.poll_interval == "30s"
    for bad in ("models:/iris", "ftp://x/model.onnx", "models:/iris/x"):
        with pytest.raises(pydantic.ValidationError):
            ModelDeploymentSpec.model_validate({"model": {"version": "1", "uri": bad}})
    with pytest.raises(pydantic.ValidationError, match="url"):
        ModelDeploymentSpec.model_validate(
            {"model": {"version": "1", "uri": "models:/iris@a",
                       "registry": {"url": "http://user:pw@mlflow:5000"}}})


@pytest.mark.parametrize(("given", "fetched"), [
    ("mlflow-artifacts:/0/models/m-1/artifacts",
     f"{REG}/api/2.0/mlflow-artifacts/artifacts/0/models/m-1/artifacts"),
    ("mlflow-artifacts://other:5000/1/abc/artifacts/model",
     f"{REG}/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model"),
    ("s3://bucket/1/abc/artifacts/model", "s3://bucket/1/abc/artifacts/model"),
    ("/mnt/mlruns/1/abc/artifacts/model", "file:///mnt/mlruns/1/abc/artifacts/model"),
    ("file:///mnt/mlruns/1/model", "file:///mnt/mlruns/1/model"),
])
def test_artifact_location(given: str, fetched: str) -> None:
    assert artifact_location(given, REG + "/") == fetched


@pytest.mark.parametrize("given", ["gs://b/model", "dbfs:/models/x", "runs:/abc/model"])
def test_artifact_location_the_fetch_cannot_read(given: str) -> None:
    with pytest.raises(ResolutionError, match=given.partition(":")[0] + ":"):
        artifact_location(given, REG)


def test_model_file_and_digest_tags() -> None:
    assert model_file({}, "sklearn") == "model.skops"  # MLflow 3's default; unlisted store
    assert model_file({}, "sklearn", ["MLmodel", "model.pkl"]) == "model.pkl"
    assert model_file({}, "sklearn", ["model.pkl", "model.skops"]) == "model.skops"
    with pytest.raises(ResolutionError, match=r"they hold MLmodel, conda\.yaml"):
        model_file({}, "sklearn", ["conda.yaml", "MLmodel"])
    assert model_file({}, "onnx") == "model.onnx"
    assert model_file({"kustos.dev/file": "/model.skops"}, "sklearn") == "model.skops"
    assert model_file({"kustos.dev/file": "."}, "xgboost") is None
    with pytest.raises(ResolutionError, match=r"kustos\.dev/file"):
        model_file({}, "lightgbm")
    with pytest.raises(ResolutionError, match="leaves"):
        model_file({"kustos.dev/file": "../../secret.txt"}, "lightgbm")
    assert digest_of({}) is None
    assert digest_of({"kustos.dev/sha256": SHA.upper()}) == f"sha256:{SHA}"
    assert digest_of({"kustos.dev/sha256": f"sha256:{SHA}"}) == f"sha256:{SHA}"
    with pytest.raises(ResolutionError, match="sha256"):
        digest_of({"kustos.dev/sha256": "md5:abc"})


def test_credentials_never_show() -> None:
    token = Credentials(token="s3cr3t-token")
    basic = Credentials.from_secret_data({"username": "ci", "password": "hunter2-pw"})
    assert token.header() == {"Authorization": "Bearer s3cr3t-token"}
    assert basic.header() == {"Authorization": "Basic Y2k6aHVudGVyMi1wdw=="}
    client = RegistryClient(REG, token)
    for text in (repr(token), repr(basic), repr(client), str(client.__dict__.get("url"))):
        assert "s3cr3t" not in text and "hunter2" not in text
    with pytest.raises(RegistryError) as err:
        Credentials.from_secret_data({"user": "x"})
    assert err.value.reason == "RegistryCredentialsInvalid"
    with pytest.raises(RegistryError, match="credentialsSecretRef") as url_err:
        RegistryClient("https://ci:hunter2-pw@mlflow.example")
    assert "hunter2" not in str(url_err.value)


def resolution(version: str = "1", digest: str | None = f"sha256:{SHA}") -> Resolution:
    return Resolution("iris", "champion", version, "run1", SOURCE.replace("m-1", f"m-{version}"),
                      digest)


def md(status: dict[str, Any] | None = None, uri: str = "models:/iris@champion",
       generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u1",
                         "generation": generation},
            "spec": {"model": {"version": "0", "uri": uri, "registry": {"url": REG}}},
            "status": status or {}}


def test_status_after_a_failure_keeps_the_last_resolution() -> None:
    part, notices = rs.resolved(md(), resolution("1"), NOW)
    assert part["registry"] == {"name": "iris", "alias": "champion", "version": "1",
                                "runId": "run1", "source": SOURCE, "digest": f"sha256:{SHA}",
                                "resolvedAt": "2026-12-06T12:00:00Z"}
    assert part["conditions"][0]["status"] == "True"
    good = md(part)
    failure = rs.Failure("RegistryUnreachable", "registry http://127.0.0.1:5000 unreachable")
    down, notices = rs.failed(good, failure, NOW)
    assert down["registry"] == part["registry"]
    cond = down["conditions"][0]
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == \
        ("False", "RegistryUnreachable", 1)
    assert [(n.reason, n.warning) for n in notices] == [("RegistryUnreachable", True)]
    assert "still serving version 1" in notices[0].message
    # The same failure again: no second Warning; another reason: one.
    assert rs.failed(md(down), failure, NOW)[1] == []
    assert len(rs.failed(md(down), rs.Failure("RegistryUnauthorized", "401"), NOW)[1]) == 1
    assert rs.problem(md(down)) == failure
    assert rs.problem(md(down, generation=2)) is None  # a newer spec: the next poll says
    back, notices = rs.resolved(md(down), resolution("1"), NOW)
    assert back["registry"] == part["registry"]
    assert [n.reason for n in notices] == ["RegistryRecovered"]


def test_served_spec_uses_the_resolution_only_when_it_is_for_the_spec_uri() -> None:
    part, _ = rs.resolved(md(), resolution("3"), NOW)
    spec = served_spec(md(part))
    assert (spec.model.uri, spec.model.version, spec.model.digest) == \
        (part["registry"]["source"], "3", f"sha256:{SHA}")
    assert served_spec(md(part, uri="models:/iris@challenger")).model.uri == \
        "models:/iris@challenger"
    assert served_spec(md(part, uri="models:/iris/3")).model.uri == "models:/iris/3"
    assert served_spec(md()).model.uri == "models:/iris@champion"


def test_render_fetches_the_resolved_file_with_its_digest() -> None:
    part, _ = rs.resolved(md(), resolution("3"), NOW)
    manifests = render(md(part), OperatorConfig())
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    fetch = next(c for c in deployment["spec"]["template"]["spec"]["initContainers"]
                 if c["name"] == "fetch-model")
    source = part["registry"]["source"]
    assert fetch["args"][1] == source
    assert fetch["args"][fetch["args"].index("--digest") + 1] == f"sha256:{SHA}"
    assert "models:/" not in str(deployment)


def test_contributor_holds_the_render_until_resolved() -> None:
    with pytest.raises(AttachmentPending, match="models:/iris@champion"):
        registry_attachments(md(), NO_LOOKUP)
    part, _ = rs.resolved(md(), resolution("1"), NOW)
    assert registry_attachments(md(part), NO_LOOKUP) is NONE
    down, _ = rs.failed(md(part), rs.Failure("ModelVersionNotFound", "alias gone"), NOW)
    with pytest.raises(AttachmentProblem) as err:
        registry_attachments(md(down), NO_LOOKUP)
    assert err.value.reason == "ModelVersionNotFound"
    plain = md(uri="s3://b/model.onnx")
    assert registry_attachments(plain, NO_LOOKUP) is NONE


def test_due() -> None:
    part, _ = rs.resolved(md(), resolution("1"), NOW)
    body = md(part)
    assert due(body, None, 100.0)  # never polled by this process
    assert not due(body, 100.0, 159.0)
    assert due(body, 100.0, 160.0)  # default pollInterval 60s
    body["metadata"]["generation"] = 2  # a spec change: at once
    assert due(body, 100.0, 101.0)
    fast = md(part)
    fast["spec"]["model"]["registry"]["pollInterval"] = "1s"  # at least 10s
    assert not due(fast, 100.0, 105.0) and due(fast, 100.0, 110.0)


def test_track_keeps_only_live_models_with_a_registry_uri() -> None:
    """The registry polls are a WorkLoop fed by the ModelDeployment events (no kopf timer,
    whose finalizer would block deletion): a models:/ model is added, due at once after a
    spec change, and dropped when deleted or when its URI is no models:/ URI any more."""
    from types import SimpleNamespace

    from kustos.controllers.registry import WorkLoop, track

    memo = SimpleNamespace(kustos_registry=WorkLoop(lambda key: None, workers=1, name="t"),
                           kustos_registry_polls={"u1": 1.0})
    body: dict = {"metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": 1},
                  "spec": {"model": {"uri": "models:/iris@champion"}}}
    track(memo, body, "ADDED")
    key = ("ns", "m", "u1")
    assert memo.kustos_registry.entries[key].due == 0.0
    memo.kustos_registry.entries[key].due = 99.0
    track(memo, body, "MODIFIED")  # same generation: the schedule stands
    assert memo.kustos_registry.entries[key].due == 99.0
    track(memo, {**body, "metadata": {**body["metadata"], "generation": 2}}, "MODIFIED")
    assert memo.kustos_registry.entries[key].due == 0.0
    plain = {**body, "spec": {"model": {"uri": "s3://models/iris/1/model.skops"}}}
    track(memo, plain, "MODIFIED")
    assert key not in memo.kustos_registry.entries and "u1" not in memo.kustos_registry_polls
    track(memo, body, "MODIFIED")
    track(memo, body, "DELETED")
    assert key not in memo.kustos_registry.entries
