"""The serving container of every runtime kind: command, env, ports and probes.

tests/runtimes/ runs the seldon and mlserver containers for real; these pin the rendered
shape of all six kinds, including the ones no test here can run (tfserving, torchserve).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kustos.render.runtimes import (
    MODEL_DIR,
    RUNTIME_KINDS,
    RuntimePorts,
    RuntimeRenderError,
    ServingSpec,
    kustos_serve_args,
    runtime_container,
    runtime_ports,
)

BASE = ServingSpec(kind="kustos", image="ghcr.io/kustos/kustos:0.1.0", model_name="iris",
                   model_version="7", model_file="model.skops", model_format="sklearn",
                   digest="sha256:" + "ab" * 32, resources={"limits": {"cpu": "1"}})


def spec(kind: str, **changes: Any) -> ServingSpec:
    defaults: dict[str, Any] = {
        "seldon": {"image": "kustos-seldon:0.1.0"},
        "mlserver": {"image": "seldonio/mlserver:1.7.1", "model_file": "model.joblib"},
        "tfserving": {"image": "tensorflow/serving:2.17.0", "model_file": "saved",
                      "model_format": "tensorflow"},
        "torchserve": {"image": "pytorch/torchserve:0.12.0-cpu", "model_file": "iris.mar",
                       "model_format": "pytorch"},
        "custom": {"image": "example.com/my-server:1", "command": ("/srv/run",),
                   "args": ("--listen", ":7070"), "port": 7070},
    }.get(kind, {})
    return dataclasses.replace(BASE, kind=kind, **{**defaults, **changes})


def env_of(container: dict[str, Any]) -> dict[str, str]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e["value"] for e in container["env"]}


def ports_of(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def http_probe(container: dict[str, Any], probe: str) -> tuple[str, int]:
    """(path, port number) of an httpGet probe, resolving a named port."""
    get = container[probe]["httpGet"]
    port = get["port"]
    return get["path"], ports_of(container)[port] if isinstance(port, str) else port


def tcp_probe_port(container: dict[str, Any], probe: str) -> int:
    port = container[probe]["tcpSocket"]["port"]
    return ports_of(container)[port] if isinstance(port, str) else int(port)


# --- what every kind shares ---------------------------------------------------------------


@pytest.mark.parametrize("kind", RUNTIME_KINDS)
def test_every_kind_renders_a_complete_container(kind: str) -> None:
    s = spec(kind)
    c = runtime_container(s)
    assert c["name"] == "server"
    assert c["image"] == s.image
    assert c["resources"] == {"limits": {"cpu": "1"}}
    assert c["resources"] is not s.resources  # a copy, never the spec's own dict
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in c
        assert c[probe]["periodSeconds"] > 0 and c[probe]["timeoutSeconds"] > 0
    # The Service targets the port named "http"; runtime_ports must agree with it.
    ports = runtime_ports(s)
    assert ports_of(c)["http"] == ports.http
    if ports.metrics is not None:
        assert ports.metrics in ports_of(c).values()
    assert sorted(ports_of(c).values()) == sorted(set(ports_of(c).values()))
    assert all(len(name) <= 15 for name in ports_of(c))  # IANA_SVC_NAME limit
    env_of(c)


@pytest.mark.parametrize("kind", RUNTIME_KINDS)
def test_user_env_replaces_rendered_env_of_the_same_name(kind: str) -> None:
    user = ({"name": "EXTRA", "value": "1"},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})
    c = runtime_container(spec(kind, env=user))
    assert {"name": "EXTRA", "value": "1"} in c["env"]
    assert {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in c["env"]
    rendered = [e["name"] for e in c["env"] if "value" in e and e["name"] != "EXTRA"]
    if rendered:
        name = rendered[0]
        c = runtime_container(spec(kind, env=({"name": name, "value": "mine"},)))
        assert [e for e in c["env"] if e["name"] == name] == [{"name": name, "value": "mine"}]


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(RuntimeRenderError, match="unknown runtime kind 'triton'"):
        runtime_container(spec("triton"))
    with pytest.raises(RuntimeRenderError):
        runtime_ports(spec("triton"))


# --- kustos ----------------------------------------------------------------------------


def test_kustos_runs_kustos_serve_on_8080_with_v2_probes() -> None:
    s = spec("kustos", workers=3, drift_url="http://127.0.0.1:8091")
    c = runtime_container(s)
    assert c["command"] == ["kustos"]
    assert c["args"] == kustos_serve_args(s, host="0.0.0.0", port=8080)
    args = c["args"]
    assert args[0] == "serve"
    assert args[args.index("--model") + 1] == f"{MODEL_DIR}/model.skops"
    assert args[args.index("--port") + 1] == "8080"
    assert args[args.index("--workers") + 1] == "3"
    assert args[args.index("--digest") + 1] == "sha256:" + "ab" * 32
    assert args[args.index("--drift-url") + 1] == "http://127.0.0.1:8091"
    assert args[args.index("--grpc-port") + 1] == "8081"
    assert ports_of(c) == {"http": 8080, "grpc": 8081}
    assert http_probe(c, "readinessProbe") == ("/v2/health/ready", 8080)
    assert http_probe(c, "livenessProbe") == ("/v2/health/live", 8080)
    assert http_probe(c, "startupProbe") == ("/v2/health/live", 8080)
    assert runtime_ports(s) == RuntimePorts(http=8080, metrics=8080, metrics_path="/metrics",
                                            grpc=8081)


def test_kustos_without_digest_passes_no_digest_flag() -> None:
    c = runtime_container(spec("kustos", digest=None))
    assert "--digest" not in c["args"]
    assert "KUSTOS_MODEL_DIGEST" not in env_of(c)


# --- seldon ----------------------------------------------------------------------------


def test_seldon_runs_the_microservice_with_the_kustos_adapter() -> None:
    s = spec("seldon", workers=2)
    c = runtime_container(s)
    assert c["command"] == ["seldon-core-microservice"]
    args = c["args"]
    assert args[0] == "kustos_seldon_adapter.KustosSeldonModel"
    assert args[args.index("--service-type") + 1] == "MODEL"
    assert args[args.index("--http-port") + 1] == "9000"
    assert args[args.index("--metrics-port") + 1] == "6000"
    assert args[args.index("--grpc-port") + 1] == "5000"
    assert args[args.index("--workers") + 1] == "2"
    env = env_of(c)
    assert env["KUSTOS_MODEL_PATH"] == f"{MODEL_DIR}/model.skops"
    assert env["KUSTOS_MODEL_NAME"] == "iris"
    assert env["KUSTOS_MODEL_VERSION"] == "7"
    assert env["KUSTOS_MODEL_DIGEST"] == "sha256:" + "ab" * 32
    assert env["PREDICTIVE_UNIT_METRICS_ENDPOINT"] == "/metrics"
    assert ports_of(c) == {"http": 9000, "metrics": 6000, "grpc": 5000}
    assert http_probe(c, "readinessProbe") == ("/health/status", 9000)
    assert http_probe(c, "livenessProbe") == ("/health/ping", 9000)
    ports = runtime_ports(s)
    assert (ports.http, ports.metrics, ports.metrics_path) == (9000, 6000, "/metrics")


def test_seldon_adapter_class_is_importable_by_the_rendered_name() -> None:
    # The image installs operator/kustos/runtime/seldon_adapter.py as this module.
    from kustos.runtime import seldon_adapter

    module, cls = runtime_container(spec("seldon"))["args"][0].rsplit(".", 1)
    assert module == "kustos_seldon_adapter"
    assert callable(getattr(seldon_adapter, cls))


def test_seldon_serves_sklearn_only() -> None:
    with pytest.raises(RuntimeRenderError, match="sklearn"):
        runtime_container(spec("seldon", model_format="onnx"))


# --- mlserver --------------------------------------------------------------------------


def test_mlserver_is_configured_through_env() -> None:
    s = spec("mlserver")
    c = runtime_container(s)
    assert c["command"] == ["mlserver", "start", MODEL_DIR]
    env = env_of(c)
    assert env["MLSERVER_MODEL_NAME"] == "iris"
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == "mlserver_sklearn.SKLearnModel"
    assert env["MLSERVER_MODEL_URI"] == f"{MODEL_DIR}/model.joblib"
    assert env["MLSERVER_MODEL_VERSION"] == "7"
    assert env["MLSERVER_HOST"] == "0.0.0.0"
    assert env["MLSERVER_HTTP_PORT"] == "8080"
    assert env["MLSERVER_GRPC_PORT"] == "8081"
    assert env["MLSERVER_METRICS_PORT"] == "8082"
    assert env["MLSERVER_PARALLEL_WORKERS"] == "0"
    # Writable scratch only under /tmp (read-only root filesystem).
    assert env["MLSERVER_METRICS_DIR"].startswith("/tmp/")
    assert env["MLSERVER_ENVIRONMENTS_DIR"].startswith("/tmp/")
    assert ports_of(c) == {"http": 8080, "grpc": 8081, "metrics": 8082}
    assert http_probe(c, "readinessProbe") == ("/v2/health/ready", 8080)
    assert http_probe(c, "livenessProbe") == ("/v2/health/live", 8080)
    assert runtime_ports(s).metrics == 8082


def test_mlserver_rejects_onnx() -> None:
    with pytest.raises(RuntimeRenderError):
        runtime_container(spec("mlserver", model_format="onnx"))


# --- tfserving -------------------------------------------------------------------------


def test_tfserving_serves_rest_on_8501_and_probes_the_model() -> None:
    s = spec("tfserving")
    c = runtime_container(s)
    assert c["command"] == ["tensorflow_model_server"]
    assert c["args"] == [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=iris",
        f"--model_base_path={MODEL_DIR}/saved",
    ]
    assert ports_of(c) == {"http": 8501, "grpc": 8500}
    assert http_probe(c, "readinessProbe") == ("/v1/models/iris", 8501)
    assert tcp_probe_port(c, "livenessProbe") == 8500
    assert runtime_ports(s) == RuntimePorts(http=8501, metrics=None,
                                            extra=(("grpc", 8500),))


# --- torchserve ------------------------------------------------------------------------


def test_torchserve_starts_in_the_foreground_with_the_model_archive() -> None:
    s = spec("torchserve")
    c = runtime_container(s)
    assert c["command"] == ["torchserve"]
    args = c["args"]
    assert "--start" in args and "--foreground" in args
    assert args[args.index("--model-store") + 1] == MODEL_DIR
    assert args[args.index("--models") + 1] == "iris=iris.mar"
    assert args[args.index("--ts-config") + 1].endswith("config.properties")
    assert "--disable-token-auth" in args
    assert env_of(c)["LOG_LOCATION"].startswith("/tmp/")
    assert ports_of(c) == {"http": 8080, "management": 8081, "metrics": 8082}
    assert http_probe(c, "readinessProbe") == ("/ping", 8080)
    assert http_probe(c, "livenessProbe") == ("/ping", 8080)
    ports = runtime_ports(s)
    assert (ports.http, ports.metrics) == (8080, 8082)


def test_torchserve_needs_a_mar_archive() -> None:
    with pytest.raises(RuntimeRenderError, match=r"\.mar"):
        runtime_container(spec("torchserve", model_file="model.pt"))


# --- custom ----------------------------------------------------------------------------


def test_custom_uses_the_users_image_command_args_and_port() -> None:
    s = spec("custom")
    c = runtime_container(s)
    assert c["image"] == "example.com/my-server:1"
    assert c["command"] == ["/srv/run"]
    assert c["args"] == ["--listen", ":7070"]
    assert ports_of(c) == {"http": 7070}
    assert tcp_probe_port(c, "readinessProbe") == 7070
    assert tcp_probe_port(c, "livenessProbe") == 7070
    assert env_of(c)["KUSTOS_MODEL_PATH"] == f"{MODEL_DIR}/model.skops"
    assert runtime_ports(s) == RuntimePorts(http=7070, metrics=None)


def test_custom_without_command_keeps_the_image_entrypoint() -> None:
    c = runtime_container(spec("custom", command=(), args=()))
    assert "command" not in c and "args" not in c


def test_custom_needs_a_port() -> None:
    with pytest.raises(RuntimeRenderError, match="port"):
        runtime_container(spec("custom", port=None))
