"""spec.logging -> the payload-log relay container, its socket volume, kustos serve's
--payload-log-* flags, the NetworkPolicy and the PodMonitor; the schema's rules."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from test_modeldeployment import body, by_kind

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.config import NetworkPolicySettings, OperatorConfig
from kustos.render.attachments import Attachments
from kustos.render.modeldeployment import render

LOGGING = {"sinks": [{"url": "http://collector.logs:8080/events"},
                     {"url": "https://broker.example/ns/default"},
                     {"kafka": {"bootstrapServers": ["kafka-0.kafka:9092", "kafka-1.kafka:9092"],
                                "topic": "inference-log"}}],
           "sampleRate": 0.25, "redact": ["input-0", "ssn"], "queueSize": 500}


KUSTOS_IMAGE = "reg.example/kustos:relay-test"
CONFIG = OperatorConfig.model_validate({"images": {"kustos": KUSTOS_IMAGE}})
SOCKET = "/var/run/kustos/payload-log/relay.sock"
PODMONITOR = Path(__file__).resolve().parents[3] / "manifests" / "monitoring" / "podmonitor.yaml"


def pod_spec(objs: list[dict[str, Any]], deployment: str = "iris") -> dict[str, Any]:
    deps = {d["metadata"]["name"]: d for d in by_kind(objs)["Deployment"]}
    spec: dict[str, Any] = deps[deployment]["spec"]["template"]["spec"]
    return spec


def container(objs: list[dict[str, Any]], name: str,
              deployment: str = "iris") -> dict[str, Any]:
    (found,) = [c for c in pod_spec(objs, deployment)["containers"] if c["name"] == name]
    return found


def server_args(objs: list[dict[str, Any]], deployment: str = "iris") -> list[str]:
    return list(pod_spec(objs, deployment)["containers"][0]["args"])


def relay_args(objs: list[dict[str, Any]], deployment: str = "iris") -> list[str]:
    return list(container(objs, "payload-log", deployment)["args"])


def parsed(args: list[str]) -> argparse.Namespace:
    """The rendered args as kustos serve itself parses and checks them."""
    from kustos.runtime.server.cli import _check, build_parser

    ns = build_parser().parse_args(args[1:])  # args[0] is the "serve" subcommand
    assert _check(ns) is None
    return ns


def test_the_server_only_hands_sampled_predictions_to_the_relay() -> None:
    logged = server_args(render(body(logging=LOGGING), CONFIG))
    plain = server_args(render(body(), CONFIG))
    at = logged.index("--payload-log-relay")
    assert logged[at:at + 6] == ["--payload-log-relay", SOCKET, "--payload-log-sample", "0.25",
                                 "--payload-log-queue", "500"]
    # Nothing else changed: no sink, redaction or CloudEvents attribute in the server.
    assert logged[:at] + logged[at + 6:] == plain
    assert [a for a in logged if a.startswith("--payload-log")] == [
        "--payload-log-relay", "--payload-log-sample", "--payload-log-queue"]


def test_the_relay_container_sends_to_the_sinks() -> None:
    objs = render(body(logging=LOGGING, runtime={"image": "reg.example/custom-serve:1"}),
                  CONFIG)
    assert [c["name"] for c in pod_spec(objs)["containers"]] == ["server", "payload-log"]
    relay = container(objs, "payload-log")
    assert relay["image"] == KUSTOS_IMAGE, "the relay command is in the kustos image"
    assert container(objs, "server")["image"] == "reg.example/custom-serve:1"
    assert relay["command"] == ["kustos"]
    assert relay["args"] == [
        "payload-relay", "--socket", SOCKET, "--port", "8092",
        "--name", "iris", "--model-version", "3",
        "--payload-log-url", "http://collector.logs:8080/events",
        "--payload-log-url", "https://broker.example/ns/default",
        "--payload-log-kafka", "kafka-0.kafka:9092,kafka-1.kafka:9092",
        "--payload-log-topic", "inference-log",
        "--payload-log-queue", "500",
        "--payload-log-service", "iris",
        "--payload-log-namespace", "ml",
        "--payload-log-endpoint", "default",
        "--payload-log-redact", "input-0,ssn"]
    assert "--payload-log-sample" not in relay["args"], "the server has drawn the sample"
    assert relay["ports"] == [{"name": "payload-log", "containerPort": 8092, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert relay[probe]["httpGet"] == {"path": "/v2/health/live", "port": "payload-log"}
    assert relay["securityContext"] == container(objs, "server")["securityContext"]
    assert relay["securityContext"]["readOnlyRootFilesystem"] is True
    assert relay["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert relay["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                  "limits": {"memory": "512Mi"}}
    assert "envFrom" not in relay and "env" not in relay  # no model credentials


def test_both_processes_accept_the_rendered_flags() -> None:
    """The rendered args as `kustos serve` and `kustos payload-relay` parse and check them,
    and what each ends up configured with."""
    from kustos.runtime.server import payload_log_config
    from kustos.runtime.server.relay_cli import parser

    objs = render(body(logging=LOGGING), CONFIG)
    server = payload_log_config.from_args(parsed(server_args(objs)))
    assert server is not None
    assert (server.relay, server.sample, server.queue, server.urls, server.redact) == (
        SOCKET, 0.25, 500, (), frozenset())
    args = relay_args(objs)
    assert args[0] == "payload-relay"
    ns = parser().parse_args(args[1:])
    assert payload_log_config.check_args(ns) is None
    relay = payload_log_config.from_args(ns)
    assert relay is not None and relay.relay is None
    assert (ns.socket, ns.port, ns.name) == (SOCKET, 8092, "iris")
    assert relay.urls == ("http://collector.logs:8080/events",
                          "https://broker.example/ns/default")
    assert (relay.kafka, relay.kafka_topic) == ("kafka-0.kafka:9092,kafka-1.kafka:9092",
                                                "inference-log")
    assert relay.sample == 1.0, "the relay refuses any other sample: the server draws it"
    assert (relay.queue, relay.redact) == (500, frozenset({"input-0", "ssn"}))
    assert (relay.service, relay.namespace, relay.endpoint, relay.model_version,
            relay.source) == ("iris", "ml", "default", "3", "/kustos/ml/iris/predictor")


TRUTH = Attachments(truth_url="http://watch-truth.ml.svc:8080")


@pytest.mark.parametrize("logging", [LOGGING, None], ids=["with-logging", "monitor-only"])
def test_with_a_truth_monitor_the_relay_sends_its_events(
        logging: dict[str, Any] | None) -> None:
    """A ground-truth monitor needs every prediction: the server hands over all of them
    (and keeps --truth-url to forward feedback), the relay sends the monitor its events
    and draws the payload log's sample itself."""
    from kustos.runtime.server import payload_log_config
    from kustos.runtime.server.relay_cli import check, parser

    objs = render(body(**({"logging": logging} if logging else {})), CONFIG,
                  attachments=TRUTH)
    assert [c["name"] for c in pod_spec(objs)["containers"]] == ["server", "payload-log"]
    args = server_args(objs)
    at = args.index("--payload-log-relay")
    assert args[at:at + 6] == ["--payload-log-relay", SOCKET, "--payload-log-sample", "1",
                               "--payload-log-queue", "500" if logging else "10000"]
    served = parsed(args)  # kustos serve's own checks, the truth/sample rule among them
    assert served.truth_url == TRUTH.truth_url
    ns = parser().parse_args(relay_args(objs)[1:])
    assert check(ns) is None
    assert ns.truth_url == TRUTH.truth_url
    relay = payload_log_config.from_args(ns)
    if logging:
        assert relay is not None and relay.sample == 0.25 and len(relay.urls) == 2
    else:
        assert relay is None and ns.payload_log_redact == []
    assert 8092 in policy_ports(objs)
    spec = pod_spec(objs)
    assert "payload-log" in {v["name"] for v in spec["volumes"]}


def test_a_url_sink_without_redaction() -> None:
    logging = {"sinks": [{"url": "http://collector.logs:8080/events"}]}
    objs = render(body(logging=logging), CONFIG)
    assert relay_args(objs) == [
        "payload-relay", "--socket", SOCKET, "--port", "8092",
        "--name", "iris", "--model-version", "3",
        "--payload-log-url", "http://collector.logs:8080/events",
        "--payload-log-queue", "10000", "--payload-log-service", "iris",
        "--payload-log-namespace", "ml", "--payload-log-endpoint", "default"]
    assert server_args(objs)[-6:] == [
        "--payload-log-relay", SOCKET, "--payload-log-sample", "1",
        "--payload-log-queue", "10000"]


def test_the_socket_volume_is_shared_by_server_and_relay() -> None:
    objs = render(body(logging=LOGGING), CONFIG)
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    assert volumes["payload-log"] == {"name": "payload-log",
                                      "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    mount = {"name": "payload-log", "mountPath": "/var/run/kustos/payload-log"}
    assert mount in container(objs, "server")["volumeMounts"]
    assert container(objs, "payload-log")["volumeMounts"] == [mount]
    assert SOCKET.startswith(mount["mountPath"] + "/")


def test_the_relay_stops_no_earlier_than_the_server() -> None:
    # Both sleep through the moment the pod leaves the Service's endpoints; after that
    # SIGTERM, the relay reads on until the draining server has closed its connection.
    objs = render(body(logging=LOGGING), CONFIG)
    server = container(objs, "server")["lifecycle"]["preStop"]["sleep"]["seconds"]
    relay = container(objs, "payload-log")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert relay >= server > 0
    # After SIGTERM the relay waits up to --drain-seconds for the server, then gives the
    # sinks 5 s: all of it within the grace period, or the kubelet kills it sending.
    from kustos.runtime.server.relay_cli import parser

    assert "--drain-seconds" not in container(objs, "payload-log")["args"]
    drain = float(parser().get_default("drain_seconds"))
    assert relay + drain + 5 <= pod_spec(objs)["terminationGracePeriodSeconds"]


def test_the_relay_goes_before_attached_sidecars() -> None:
    drift = {"name": "drift", "image": "x",
             "ports": [{"name": "drift", "containerPort": 8091, "protocol": "TCP"}]}
    objs = render(body(logging=LOGGING), CONFIG, Attachments(sidecars=(drift,)))
    assert [c["name"] for c in pod_spec(objs)["containers"]] == ["server", "payload-log",
                                                                  "drift"]


def test_payload_log_resources_come_from_the_operator_config() -> None:
    resources = {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}
    config = OperatorConfig.model_validate(
        {"images": {"kustos": KUSTOS_IMAGE}, "sidecars": {"payload_log_resources": resources}})
    assert container(render(body(logging=LOGGING), config), "payload-log")[
        "resources"] == resources
    assert OperatorConfig().sidecars.payload_log_resources == {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


def test_without_logging_no_relay() -> None:
    objs = render(body(), CONFIG)
    args = server_args(objs)
    assert not [a for a in args if a.startswith("--payload-log")]
    assert parsed(args).payload_log_url == []
    spec = pod_spec(objs)
    assert [c["name"] for c in spec["containers"]] == ["server"]
    assert "payload-log" not in {v["name"] for v in spec["volumes"]}
    assert "payload-log" not in {m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert 8092 not in policy_ports(objs)


@pytest.mark.parametrize(("kind", "file"), [
    ("mlserver", "model.skops"), ("seldon", "model.skops"), ("tfserving", "model.tar.gz"),
    ("torchserve", "iris.mar")])
def test_other_runtimes_render_as_without_logging(kind: str, file: str) -> None:
    # The API server refuses spec.logging on them (CEL); the render ignores it regardless.
    model = {"version": "3", "uri": f"s3://m/iris/{file}"}
    plain = render(body(model=model, runtime={"kind": kind}), CONFIG)
    logged = render(body(model=model, runtime={"kind": kind}, logging=LOGGING), CONFIG)
    assert logged == plain
    assert [c["name"] for c in pod_spec(logged)["containers"]] == ["server"]


def test_the_canary_logs_as_its_own_endpoint_and_version() -> None:
    objs = render(body(replicas=4, logging=LOGGING, canary={
        "model": {"version": "4", "uri": "s3://m/iris/v4/model.skops"}, "trafficPercent": 25}),
        CONFIG)
    for deployment, endpoint, version in (("iris", "default", "3"),
                                          ("iris-canary", "canary", "4")):
        args = relay_args(objs, deployment)
        assert args[args.index("--payload-log-endpoint") + 1] == endpoint
        assert args[args.index("--model-version") + 1] == version
        assert args[args.index("--payload-log-service") + 1] == "iris"
        assert "--payload-log-relay" in server_args(objs, deployment)


def policy_ports(objs: list[dict[str, Any]], rule: int | None = None) -> set[int]:
    (np,) = by_kind(objs)["NetworkPolicy"]
    rules = np["spec"]["ingress"] if rule is None else [np["spec"]["ingress"][rule]]
    return {p["port"] for r in rules for p in r["ports"]}


def test_network_policy_lets_monitoring_scrape_the_relay() -> None:
    config = CONFIG.model_copy(update={"network_policy": NetworkPolicySettings(
        operator_namespace="ops")})
    drift = {"name": "drift", "image": "x",
             "ports": [{"name": "drift", "containerPort": 8091, "protocol": "TCP"}]}
    objs = render(body(logging=LOGGING), config, Attachments(sidecars=(drift,)))
    (np,) = by_kind(objs)["NetworkPolicy"]
    serving, scrape, operator = np["spec"]["ingress"]
    assert scrape["from"] == [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert [p["port"] for p in scrape["ports"]] == [8080, 8091, 8092]
    # The operator reads the drift sidecar's status, and nothing of the relay.
    assert [p["port"] for p in operator["ports"]] == [8091]
    assert 8092 not in {p["port"] for p in serving["ports"]}
    # Ingress only: the relay's sends to the sinks leave the pod as the server's did.
    assert np["spec"]["policyTypes"] == ["Ingress"] and "egress" not in np["spec"]


def test_no_monitoring_selector_no_relay_port() -> None:
    config = CONFIG.model_copy(update={"network_policy": NetworkPolicySettings(
        monitoring_namespace_selector=None)})
    assert 8092 not in policy_ports(render(body(logging=LOGGING), config))


def test_the_podmonitor_scrapes_the_relay() -> None:
    text = PODMONITOR.read_text()
    endpoints = {e["port"]: e for e in yaml.safe_load(text)["spec"]["podMetricsEndpoints"]}
    relay = container(render(body(logging=LOGGING), CONFIG), "payload-log")
    (port,) = relay["ports"]
    assert endpoints[port["name"]] == {"port": "payload-log", "path": "/metrics",
                                       "honorLabels": True}
    header = "".join(ln for ln in text.splitlines(keepends=True) if ln.startswith("#"))
    assert '"payload-log"' in header and "8092" in header


def test_logging_changes_the_deployment_hash() -> None:
    from kustos.render.meta import SPEC_HASH

    def spec_hash(objs: list[dict[str, Any]]) -> str:
        dep = by_kind(objs)["Deployment"][0]
        return str(dep["metadata"]["annotations"][SPEC_HASH])

    plain = render(body(), OperatorConfig())
    logged = render(body(logging=LOGGING), OperatorConfig())
    assert spec_hash(plain) != spec_hash(logged)


def rules_of(model: type[pydantic.BaseModel]) -> dict[str, dict[str, str]]:
    return {r["message"]: r for r in model.model_json_schema()["x-kubernetes-validations"]}


def test_cel_rules_name_their_fields() -> None:
    from kustos.api.v1alpha1.modeldeployment import PayloadLoggingSpec

    kind = rules_of(ModelDeploymentSpec)["spec.logging is served by runtime kind kustos only"]
    assert kind["fieldPath"] == ".logging" and "self.runtime.kind" in kind["rule"]
    rules = rules_of(PayloadLoggingSpec)
    assert rules["spec.logging.sinks must not name the same sink twice"]["fieldPath"] == ".sinks"
    assert rules["spec.logging allows one kafka sink"]["fieldPath"] == ".sinks"
    from kustos.api.v1alpha1.modeldeployment import PayloadLogSink

    assert "has(self.url) != has(self.kafka)" in {
        r["rule"] for r in rules_of(PayloadLogSink).values()}
    assert rules["spec.logging.redact must not name a field twice"]["fieldPath"] == ".redact"


@pytest.mark.parametrize(("logging", "field"), [
    ({"sinks": []}, "sinks"),
    ({}, "sinks"),
    ({"sinks": [{"url": "ftp://x/y"}]}, "url"),
    ({"sinks": [{"url": "http://x"}], "sampleRate": 1.5}, "sampleRate"),
    ({"sinks": [{"url": "http://x"}], "sampleRate": -0.1}, "sampleRate"),
    ({"sinks": [{"url": "http://x"}], "redact": ["a,b"]}, "redact"),
    ({"sinks": [{"url": "http://x"}], "queueSize": 0}, "queueSize"),
    ({"sinks": [{"url": "http://x"}], "kafka": {}}, "kafka"),
    ({"sinks": [{"kafka": {"bootstrapServers": ["k"], "topic": "t"}}]}, "bootstrapServers"),
    ({"sinks": [{"kafka": {"bootstrapServers": [], "topic": "t"}}]}, "bootstrapServers"),
    ({"sinks": [{"kafka": {"bootstrapServers": ["k:9092"], "topic": "a b"}}]}, "topic"),
])
def test_schema_refuses_bad_logging(logging: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        ModelDeploymentSpec.model_validate(body(logging=logging)["spec"])
