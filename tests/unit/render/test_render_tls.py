"""spec.runtime.tls rendered: the Secret mounted read-only, the flags `kustos serve`
parses, probes that the kubelet can pass, the Service on https, the scrape port."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.config import OperatorConfig
from kustos.render.modeldeployment import render
from kustos.render.runtimes import CLIENT_CA_DIR, KUSTOS_HEALTH_PORT, TLS_DIR
from kustos.runtime.server.cli import _check, build_parser
from kustos.status.modeldeployment import compute

DIGEST = "sha256:" + "ab" * 32


def body(tls: dict[str, Any] | None, **runtime: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"version": "3", "uri": "s3://m/iris/model.skops",
                                      "digest": DIGEST}, "replicas": 1,
                            "runtime": {**runtime, **({"tls": tls} if tls else {})}}
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": spec}


def children(tls: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in render(body(tls), OperatorConfig())}


def server_of(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    server: dict[str, Any] = next(c for c in pod["containers"] if c["name"] == "server")
    return server


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_plain_http_is_unchanged() -> None:
    objs = children(None)
    server = server_of(objs)
    assert "--tls-cert" not in server["args"]
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert objs["Service"]["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP",
         "appProtocol": "kubernetes.io/h2c"}]
    assert all(v["name"] != "tls" for v in
               objs["Deployment"]["spec"]["template"]["spec"]["volumes"])


def test_tls_mounts_the_secret_and_probes_https() -> None:
    objs = children({"secretName": "iris-tls"})
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    server = server_of(objs)
    args = server["args"]
    assert flag(args, "--tls-cert") == f"{TLS_DIR}/tls.crt"
    assert flag(args, "--tls-key") == f"{TLS_DIR}/tls.key"
    assert "--tls-client-ca" not in args and "--health-port" not in args
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "iris-tls"
    assert volume["secret"]["defaultMode"] == 0o440  # group-readable via fsGroup only
    assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in server["volumeMounts"]
    assert all("subPath" not in m for m in server["volumeMounts"])  # subPath never updates
    assert [p["name"] for p in server["ports"]] == ["https", "grpc"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"]["scheme"] == "HTTPS"
        assert server[probe]["httpGet"]["port"] == "https"
    annotations = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"
    assert objs["Service"]["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP",
         "appProtocol": "https"},
        # gRPC serves the same certificate; not h2c (cleartext) any more.
        {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP"}]
    assert flag(args, "--grpc-port") == "8081"
    # The NetworkPolicy admits the same container ports as without TLS (HTTP and gRPC).
    plain_np = children(None)["NetworkPolicy"]["spec"]
    assert objs["NetworkPolicy"]["spec"]["ingress"] == plain_np["ingress"]


@pytest.mark.parametrize("source", [{"configMapName": "clients-ca"},
                                    {"secretName": "clients-ca", "key": "bundle.pem"}])
def test_mtls_probes_and_scrapes_the_plain_health_port(source: dict[str, str]) -> None:
    objs = children({"secretName": "iris-tls", "clientCA": source})
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    server = server_of(objs)
    args = server["args"]
    assert flag(args, "--tls-client-ca") == f"{CLIENT_CA_DIR}/ca.crt"
    assert flag(args, "--health-port") == str(KUSTOS_HEALTH_PORT)
    volume = next(v for v in pod["volumes"] if v["name"] == "client-ca")
    if "configMapName" in source:
        assert volume["configMap"]["name"] == "clients-ca"
        assert volume["configMap"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    else:
        assert volume["secret"]["secretName"] == "clients-ca"
        assert volume["secret"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"https": 8080, "health": KUSTOS_HEALTH_PORT, "grpc": 8081}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"]["port"] == "health"
        assert "scheme" not in server[probe]["httpGet"]  # plain HTTP: no client cert needed
    annotations = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(KUSTOS_HEALTH_PORT)
    assert "prometheus.io/scheme" not in annotations
    ingress_ports = {p["port"] for rule in objs["NetworkPolicy"]["spec"]["ingress"]
                     for p in rule.get("ports", [])}
    assert {8080, KUSTOS_HEALTH_PORT} <= ingress_ports  # clients; Prometheus on health


def test_health_port_collides_with_no_other_port_of_the_pod() -> None:
    from kustos.render.runtimes import KUSTOS_HTTP_PORT
    from kustos.render.sidecars import DRIFT_PORT, EXPLAIN_PORT

    objs = children({"secretName": "t", "clientCA": {"secretName": "c"}})
    server_ports = [p["containerPort"] for p in server_of(objs)["ports"]]
    assert len(server_ports) == len(set(server_ports))
    assert KUSTOS_HEALTH_PORT not in (KUSTOS_HTTP_PORT, EXPLAIN_PORT, DRIFT_PORT)


def test_rendered_flags_parse_and_check() -> None:
    """What the operator renders is what `kustos serve` accepts (files aside)."""
    args = server_of(children({"secretName": "t", "clientCA": {"secretName": "c"}}))["args"]
    parsed = build_parser().parse_args(args[1:])
    assert parsed.tls_cert == f"{TLS_DIR}/tls.crt" and parsed.health_port == KUSTOS_HEALTH_PORT
    assert _check(parsed) == f"--tls-cert: no such file {TLS_DIR}/tls.crt"


def test_status_url_says_https() -> None:
    from datetime import UTC, datetime

    for tls, scheme in ((None, "http://"), ({"secretName": "iris-tls"}, "https://")):
        status, _ = compute(body(tls), {}, OperatorConfig(), datetime.now(UTC))
        assert status["url"].startswith(f"{scheme}iris.ml.svc.")


def test_schema_refuses_bad_tls() -> None:
    with pytest.raises(ValidationError):
        ModelDeploymentSpec.model_validate(body({"clientCA": {"secretName": "c"}})["spec"])
    spec = ModelDeploymentSpec.model_validate(
        body({"secretName": "t", "clientCA": {"configMapName": "c"}})["spec"])
    assert spec.runtime.tls is not None and spec.runtime.tls.client_ca is not None
    assert spec.runtime.tls.client_ca.key == "ca.crt"
    wire = spec.wire()["runtime"]["tls"]
    assert wire == {"secretName": "t", "clientCA": {"configMapName": "c", "key": "ca.crt"}}
