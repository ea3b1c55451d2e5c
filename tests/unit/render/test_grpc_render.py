"""kustos serve's gRPC port in what the operator renders: container, Service, NetworkPolicy.

Always on, on 8081 (KServe's and MLServer's gRPC port): every kustos model answers the
Open Inference Protocol over gRPC as well as REST, with nothing to switch on.
"""

from __future__ import annotations

from typing import Any

from kustos.config import NetworkPolicySettings, OperatorConfig
from kustos.render.modeldeployment import render
from kustos.render.runtimes import (
    KUSTOS_GRPC_PORT,
    ServingSpec,
    kustos_serve_args,
    runtime_container,
    runtime_ports,
)
from kustos.runtime.server.cli import build_parser

DIGEST = "sha256:" + "ab" * 32


def body(runtime: str = "kustos", uri: str = "s3://m/iris/model.skops") -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"version": "1", "uri": uri, "digest": DIGEST}}
    if runtime != "kustos":
        spec["runtime"] = {"kind": runtime}
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": spec}


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


def config() -> OperatorConfig:
    return OperatorConfig(network_policy=NetworkPolicySettings(operator_namespace="ops"))


def spec(kind: str = "kustos") -> ServingSpec:
    return ServingSpec(kind=kind, image="kustos:dev", model_name="iris", model_version="1",
                       model_file="model.skops", model_format="sklearn")


def test_kustos_serve_is_told_to_serve_grpc_on_8081() -> None:
    assert KUSTOS_GRPC_PORT == 8081
    args = build_parser().parse_args(kustos_serve_args(spec())[1:])
    assert args.grpc_port == 8081 and args.port == 8080


def test_the_container_declares_a_grpc_port() -> None:
    container = runtime_container(spec())
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert runtime_ports(spec()).grpc == 8081


def test_service_and_network_policy_carry_grpc_beside_http() -> None:
    objs = render(body(), config())
    service = one(objs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP",
         "appProtocol": "kubernetes.io/h2c"}]
    deployment = one(objs, "Deployment")
    (server,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "server"]
    assert "grpc" in {p["name"] for p in server["ports"]}  # the Service's targetPort exists
    serving = one(objs, "NetworkPolicy")["spec"]["ingress"][0]
    assert [p["port"] for p in serving["ports"]] == [8080, 8081]


def test_other_runtimes_get_no_grpc_service_port() -> None:
    # MLServer serves gRPC too, but its port stays pod-internal as before (not rendered
    # as a serving port): only kustos serve's gRPC is part of the model's API.
    objs = render(body("mlserver", "s3://m/iris/model.joblib"), config())
    assert [p["name"] for p in one(objs, "Service")["spec"]["ports"]] == ["http"]
    assert runtime_ports(spec("mlserver")).grpc is None
