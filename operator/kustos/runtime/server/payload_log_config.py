"""`kustos serve --payload-log-*`: the flags and what they configure (no heavy imports:
the CLI parses flags before the metrics registry may be set up)."""

from __future__ import annotations

import argparse
import os
import re
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class PayloadLogConfig:
    urls: tuple[str, ...]
    sample: float = 1.0
    redact: frozenset[str] = frozenset()
    queue: int = 10_000  # predictions per sink
    retries: int = 3
    backoff: float = 0.1  # seconds before the first retry; doubles up to max_backoff
    max_backoff: float = 5.0
    timeout: float = 5.0
    kafka: str | None = None  # bootstrap servers, host:port[,host:port]
    kafka_topic: str | None = None
    # CloudEvents attributes (KServe's names).
    source: str = ""
    service: str = ""
    namespace: str = ""
    component: str = "predictor"
    endpoint: str = "default"
    model_version: str = ""  # the served model's version (`--model-version`): ce-modelversion
    # The pod's payload-log container's socket: the server hands predictions over and
    # that container sends them (payload_relay.py); no sink in this process then.
    relay: str | None = None


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("payload logging (off unless a sink is given)")
    g.add_argument("--payload-log-url", action="append", default=[], metavar="URL",
                   help="send each sampled prediction's request and response as CloudEvents "
                        "(HTTP binary mode, KServe's event types) to this URL (repeatable)")
    g.add_argument("--payload-log-kafka", default=None, metavar="HOST:PORT[,HOST:PORT]",
                   help="also send the events to Kafka (these bootstrap servers; plaintext, "
                        "CloudEvents Kafka binding, binary mode)")
    g.add_argument("--payload-log-topic", default=None, metavar="TOPIC",
                   help="the Kafka topic (with --payload-log-kafka)")
    g.add_argument("--payload-log-sample", type=float, default=1.0, metavar="RATE",
                   help="share of predictions logged, 0..1 (1)")
    g.add_argument("--payload-log-redact", action="append", default=[], metavar="NAMES",
                   help="comma-separated input tensor / JSON field names whose values are "
                        "replaced by \"[redacted]\" before an event is sent (repeatable)")
    g.add_argument("--payload-log-queue", type=int, default=10_000, metavar="N",
                   help="predictions waiting per sink; when full the newest is dropped "
                        "(10000)")
    g.add_argument("--payload-log-retries", type=int, default=3, metavar="N",
                   help="retries of a failed POST, with exponential backoff (3)")
    g.add_argument("--payload-log-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="seconds to wait for a sink's answer (5)")
    g.add_argument("--payload-log-service", default=None, metavar="NAME",
                   help="ce-inferenceservicename (default: --name)")
    g.add_argument("--payload-log-namespace", default=os.environ.get("POD_NAMESPACE", ""),
                   metavar="NS", help="ce-namespace (env POD_NAMESPACE)")
    g.add_argument("--payload-log-component", default="predictor", metavar="NAME",
                   help="ce-component (predictor)")
    g.add_argument("--payload-log-endpoint", default="default", metavar="NAME",
                   help="ce-endpoint (default)")


def add_relay_arg(p: argparse.ArgumentParser) -> None:
    """`kustos serve` only (the relay itself takes the sink flags)."""
    p.add_argument("--payload-log-relay", default=None, metavar="PATH",
                   help="hand sampled predictions to the payload-log container (`kustos "
                        "payload-relay`) on this Unix socket instead of sending them from "
                        "this process: with --payload-log-sample and --payload-log-queue "
                        "only; the container has the sinks and the redaction")


def check_args(args: argparse.Namespace) -> str | None:
    if getattr(args, "payload_log_relay", None) and (
            args.payload_log_url or args.payload_log_kafka or args.payload_log_redact):
        return ("--payload-log-relay: the sinks and --payload-log-redact belong to the "
                "payload-log container (kustos payload-relay), not to the server")
    for url in args.payload_log_url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"--payload-log-url: expected an http(s) URL, got {url!r}"
    if (args.payload_log_kafka is None) != (args.payload_log_topic is None):
        return "--payload-log-kafka and --payload-log-topic go together"
    if args.payload_log_kafka is not None:
        from kustos.runtime.server.kafka import parse_servers

        try:
            parse_servers(args.payload_log_kafka)
        except ValueError as exc:
            return f"--payload-log-kafka: {exc}"
        if not re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", args.payload_log_topic):
            return "--payload-log-topic: a Kafka topic name is 1-249 of [a-zA-Z0-9._-]"
    if not 0.0 <= args.payload_log_sample <= 1.0:
        return "--payload-log-sample must be within 0..1"
    if args.payload_log_queue < 1:
        return "--payload-log-queue must be >= 1"
    if args.payload_log_retries < 0:
        return "--payload-log-retries must be >= 0"
    if args.payload_log_timeout <= 0:
        return "--payload-log-timeout must be positive"
    return None


def from_args(args: argparse.Namespace) -> PayloadLogConfig | None:
    relay = getattr(args, "payload_log_relay", None)
    if relay:
        return PayloadLogConfig(urls=(), sample=args.payload_log_sample,
                                queue=args.payload_log_queue, relay=relay)
    if not args.payload_log_url and not args.payload_log_kafka:
        return None
    service = args.payload_log_service or args.name
    namespace = args.payload_log_namespace
    redact = frozenset(n.strip() for item in args.payload_log_redact
                       for n in item.split(",") if n.strip())
    return PayloadLogConfig(
        urls=tuple(args.payload_log_url), sample=args.payload_log_sample, redact=redact,
        queue=args.payload_log_queue, retries=args.payload_log_retries,
        timeout=args.payload_log_timeout, kafka=args.payload_log_kafka,
        kafka_topic=args.payload_log_topic,
        source=f"/kustos/{namespace or '-'}/{service}/{args.payload_log_component}",
        service=service, namespace=namespace, component=args.payload_log_component,
        endpoint=args.payload_log_endpoint, model_version=args.model_version or "")
