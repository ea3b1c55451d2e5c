"""spec.logging -> kustos serve's --payload-log-* flags; the schema's rules."""

from __future__ import annotations

import argparse
from typing import Any

import pydantic
import pytest
from test_modeldeployment import body, by_kind

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.config import OperatorConfig
from kustos.render.modeldeployment import render

LOGGING = {"sinks": [{"url": "http://collector.logs:8080/events"},
                     {"url": "https://broker.example/ns/default"},
                     {"kafka": {"bootstrapServers": ["kafka-0.kafka:9092", "kafka-1.kafka:9092"],
                                "topic": "inference-log"}}],
           "sampleRate": 0.25, "redact": ["input-0", "ssn"], "queueSize": 500}


def server_args(objs: list[dict[str, Any]], deployment: str = "iris") -> list[str]:
    deps = {d["metadata"]["name"]: d for d in by_kind(objs)["Deployment"]}
    containers = deps[deployment]["spec"]["template"]["spec"]["containers"]
    return list(containers[0]["args"])


def parsed(args: list[str]) -> argparse.Namespace:
    """The rendered args as kustos serve itself parses and checks them."""
    from kustos.runtime.server.cli import _check, build_parser

    ns = build_parser().parse_args(args[1:])  # args[0] is the "serve" subcommand
    assert _check(ns) is None
    return ns


def test_logging_renders_the_flags_kustos_serve_takes() -> None:
    objs = render(body(logging=LOGGING), OperatorConfig())
    ns = parsed(server_args(objs))
    assert ns.payload_log_url == ["http://collector.logs:8080/events",
                                  "https://broker.example/ns/default"]
    assert ns.payload_log_kafka == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert ns.payload_log_topic == "inference-log"
    assert ns.payload_log_sample == 0.25 and ns.payload_log_queue == 500
    assert ns.payload_log_redact == ["input-0,ssn"]
    assert (ns.payload_log_service, ns.payload_log_namespace, ns.payload_log_endpoint) == \
        ("iris", "ml", "default")
    from kustos.runtime.server.payload_log_config import from_args

    config = from_args(ns)
    assert config is not None and config.redact == frozenset({"input-0", "ssn"})


def test_without_logging_no_flag() -> None:
    args = server_args(render(body(), OperatorConfig()))
    assert not [a for a in args if a.startswith("--payload-log")]
    assert parsed(args).payload_log_url == []


def test_the_canary_logs_as_its_own_endpoint() -> None:
    objs = render(body(replicas=4, logging=LOGGING, canary={
        "model": {"version": "4", "uri": "s3://m/iris/v4/model.skops"}, "trafficPercent": 25}),
        OperatorConfig())
    assert parsed(server_args(objs, "iris-canary")).payload_log_endpoint == "canary"
    assert parsed(server_args(objs, "iris")).payload_log_endpoint == "default"


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
