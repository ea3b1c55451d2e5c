"""spec.model.webIdentity: projected ServiceAccount token + AWS_* on the fetch init
container, and the model's own ServiceAccount (the identity the role's trust names)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.config import OperatorConfig
from kustos.render.aws_identity import TOKEN_FILE, session_name
from kustos.render.modeldeployment import render

ROLE = "arn:aws:iam::123456789012:role/iris-models"


def body(web: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"version": "3", "uri": "s3://m/iris/model.skops",
                         "digest": "sha256:" + "ab" * 32, **model}
    if web is not None:
        m["webIdentity"] = web
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": {"model": m, "replicas": 1}}


def kinds(objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def fetch_container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["initContainers"] if c["name"] == "fetch-model")


def test_web_identity_renders_token_volume_env_and_service_account() -> None:
    objs = kinds(render(body({"roleArn": ROLE, "region": "eu-west-1"}), OperatorConfig()))
    assert [sa["metadata"]["name"] for sa in objs["ServiceAccount"]] == ["iris"]
    pod = objs["Deployment"][0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "iris"
    assert pod["automountServiceAccountToken"] is False  # only the audience-bound token
    volume = next(v for v in pod["volumes"] if v["name"] == "aws-web-identity")
    assert volume["projected"]["sources"] == [{"serviceAccountToken": {
        "audience": "sts.amazonaws.com", "expirationSeconds": 3600, "path": "token"}}]
    fetch = fetch_container(pod)
    env = {e["name"]: e["value"] for e in fetch["env"]}
    assert env == {"AWS_ROLE_ARN": ROLE, "AWS_WEB_IDENTITY_TOKEN_FILE": TOKEN_FILE,
                   "AWS_ROLE_SESSION_NAME": "kustos.ml.iris",
                   "AWS_STS_REGIONAL_ENDPOINTS": "regional", "AWS_REGION": "eu-west-1"}
    mount = next(m for m in fetch["volumeMounts"] if m["name"] == "aws-web-identity")
    assert TOKEN_FILE.startswith(mount["mountPath"] + "/") and mount["readOnly"] is True
    # The server container never sees the token.
    server = next(c for c in pod["containers"] if c["name"] == "server")
    assert all(m["name"] != "aws-web-identity" for m in server["volumeMounts"])
    assert all(e["name"] != "AWS_ROLE_ARN" for e in server.get("env", []))


def test_audience_endpoint_and_lifetime_pass_through() -> None:
    web = {"roleArn": ROLE, "audience": "minio", "stsEndpoint": "https://sts.vpce.example",
           "tokenExpirationSeconds": 900}
    pod = kinds(render(body(web), OperatorConfig()))["Deployment"][0]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "aws-web-identity")
    token = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert (token["audience"], token["expirationSeconds"]) == ("minio", 900)
    env = {e["name"]: e["value"] for e in fetch_container(pod)["env"]}
    assert env["AWS_ENDPOINT_URL_STS"] == "https://sts.vpce.example" and "AWS_REGION" not in env


def test_canary_track_gets_the_same_identity() -> None:
    b = body({"roleArn": ROLE})
    b["spec"]["canary"] = {"model": {"version": "4", "uri": "s3://m/iris/v4.skops"},
                           "trafficPercent": 10}
    b["spec"]["replicas"] = 2
    deployments = kinds(render(b, OperatorConfig()))["Deployment"]
    assert len(deployments) == 2
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "iris"
        assert any(v["name"] == "aws-web-identity" for v in pod["volumes"])
        assert any(e["name"] == "AWS_ROLE_ARN" for e in fetch_container(pod)["env"])


def test_without_web_identity_nothing_changes() -> None:
    objs = kinds(render(body(), OperatorConfig()))
    assert "ServiceAccount" not in objs
    pod = objs["Deployment"][0]["spec"]["template"]["spec"]
    assert all(v["name"] != "aws-web-identity" for v in pod["volumes"])
    assert "env" not in fetch_container(pod)


@pytest.mark.parametrize("web, field", [
    ({"roleArn": "iris-models"}, "role_arn"),
    ({"roleArn": "arn:aws:iam::12345:role/x"}, "role_arn"),
    ({"roleArn": ROLE, "stsEndpoint": "http://sts.example"}, "sts_endpoint"),
    ({"roleArn": ROLE, "tokenExpirationSeconds": 60}, "token_expiration_seconds"),
    ({"roleArn": ROLE, "region": "Europe"}, "region"),
])
def test_bad_fields_are_refused(web: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ModelDeploymentSpec.model_validate(body(web)["spec"])
    assert field in str(err.value) or field.replace("_", "") in str(err.value).lower()


def test_schema_keeps_web_identity_to_s3() -> None:
    """The CEL rule the API server enforces (pydantic does not run CEL)."""
    schema = ModelDeploymentSpec.model_json_schema(by_alias=True)
    rules = str(schema)
    assert "!has(self.webIdentity) || self.uri.startsWith('s3://')" in rules
    assert "webIdentity is for s3:// models" in rules


def test_session_name_fits_sts() -> None:
    name = session_name("a" * 63, "b" * 63)
    assert len(name) == 64 and name.startswith("kustos.")


def test_sidecars_reading_s3_data_get_the_identity_too() -> None:
    from kustos.render import drift, explainer

    cfg = OperatorConfig.model_validate(
        {"images": {"explain": "reg/explain:1", "drift": "reg/drift:1"}})
    md = body({"roleArn": ROLE})
    monitor = {"apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
               "metadata": {"name": "iris-drift", "namespace": "ml", "uid": "dm-uid"},
               "spec": {"targetRef": {"name": "iris"}, "detector": "chisquare",
                        "reference": {"uri": "s3://data/iris/ref.npy",
                                      "digest": "sha256:" + "cd" * 32}}}
    spec = kinds(render(md, cfg, drift.attachments(monitor, md, cfg)))["Deployment"][0]
    pod = spec["spec"]["template"]["spec"]
    side = next(c for c in pod["containers"] if c["name"] == "drift")
    env = {e["name"]: e.get("value") for e in side["env"]}
    assert env["AWS_ROLE_ARN"] == ROLE and env["AWS_WEB_IDENTITY_TOKEN_FILE"] == TOKEN_FILE
    assert any(m["name"] == "aws-web-identity" for m in side["volumeMounts"])
    assert any(v["name"] == "aws-web-identity" for v in pod["volumes"])
    # Data elsewhere (https): no token for the sidecar.
    explainer_spec = {"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
                      "metadata": {"name": "iris-x", "namespace": "ml", "uid": "x-uid",
                                   "creationTimestamp": "2026-11-23T10:00:00Z"},
                      "spec": {"targetRef": {"name": "iris"}, "method": "shap-kernel",
                               "background": {"uri": "https://data.example/bg.csv",
                                              "digest": "sha256:" + "ab" * 32},
                               "featureNames": ["a", "b", "c", "d"]}}
    pod = kinds(render(md, cfg, explainer.attachments(explainer_spec, md, cfg)))[
        "Deployment"][0]["spec"]["template"]["spec"]
    side = next(c for c in pod["containers"] if c["name"] == "explainer")
    assert all(e["name"] != "AWS_ROLE_ARN" for e in side.get("env", []))
    assert all(m["name"] != "aws-web-identity" for m in side["volumeMounts"])
