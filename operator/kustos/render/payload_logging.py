"""spec.logging -> the pod's payload-log relay and the `kustos serve` flags that feed it.
Pure.

The server only samples and hands each logged prediction over a Unix socket in a
memory-backed emptyDir shared by the two containers; the relay (`kustos payload-relay`,
container `payload-log`, its own CPU budget) redacts, encodes and sends the CloudEvents,
so none of that runs on the serving core.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kustos.api.v1alpha1.modeldeployment import PayloadLoggingSpec

from .containers import sidecar_container

# KServe's ce-endpoint names its predictor's tracks "default" and "canary".
ENDPOINTS = {"stable": "default", "canary": "canary"}

RELAY_CONTAINER = "payload-log"
RELAY_VOLUME = "payload-log"
RELAY_DIR = "/var/run/kustos/payload-log"
RELAY_SOCKET = f"{RELAY_DIR}/relay.sock"
RELAY_PORT = 8092  # /metrics and /v2/health/live; next to explain 8090 and drift 8091
RELAY_PORT_NAME = "payload-log"
# Only a socket lives there; the limit keeps a stray writer from eating the pod's memory.
RELAY_VOLUME_SIZE = "1Mi"
# The server's --payload-log-queue when only a monitor is attached (the flag's default).
DEFAULT_QUEUE = 10_000


def relayed(logging: PayloadLoggingSpec | None, truth_url: str | None) -> bool:
    """Whether the pod has the relay: for the payload log's sinks, for the ground-truth
    monitor's event stream, or both."""
    return logging is not None or truth_url is not None


def server_args(logging: PayloadLoggingSpec | None, truth_url: str | None = None
                ) -> tuple[str, ...]:
    """The `kustos serve` flags: where the relay listens, and what the server itself
    still decides (the sample, and how many predictions wait for the relay). With a
    monitor the server hands over every prediction (the monitor needs them all) and the
    relay draws the payload log's sample."""
    if not relayed(logging, truth_url):
        return ()
    sample = 1.0 if truth_url is not None or logging is None else logging.sample_rate
    queue = logging.queue_size if logging is not None else DEFAULT_QUEUE
    return ("--payload-log-relay", RELAY_SOCKET,
            "--payload-log-sample", f"{sample:g}",
            "--payload-log-queue", str(queue))


def relay_args(logging: PayloadLoggingSpec | None, truth_url: str | None, service: str,
               namespace: str, track: str, model_version: str) -> list[str]:
    """`kustos payload-relay`'s arguments: the sinks, the CloudEvents attributes and the
    redaction; the monitor's URL (every prediction, unredacted), and then the payload
    log's sample (without a monitor the server has drawn it)."""
    args = ["payload-relay", "--socket", RELAY_SOCKET, "--port", str(RELAY_PORT),
            "--name", service, "--model-version", model_version]
    for sink in logging.sinks if logging is not None else ():
        if sink.url is not None:
            args += ["--payload-log-url", sink.url]
        elif sink.kafka is not None:
            args += ["--payload-log-kafka", ",".join(sink.kafka.bootstrap_servers),
                     "--payload-log-topic", sink.kafka.topic]
    if logging is not None:
        args += ["--payload-log-queue", str(logging.queue_size)]
    args += ["--payload-log-service", service,
             "--payload-log-namespace", namespace,
             "--payload-log-endpoint", ENDPOINTS.get(track, track)]
    if logging is not None and logging.redact:
        args += ["--payload-log-redact", ",".join(logging.redact)]
    if truth_url is not None:
        args += ["--truth-url", truth_url]
        if logging is not None and logging.sample_rate < 1:
            args += ["--payload-log-sample", f"{logging.sample_rate:g}"]
    return args


def relay_volume() -> dict[str, Any]:
    return {"name": RELAY_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": RELAY_VOLUME_SIZE}}


def relay_mount() -> dict[str, Any]:
    """The socket's directory, in the server and in the relay."""
    return {"name": RELAY_VOLUME, "mountPath": RELAY_DIR}


def relay_container(logging: PayloadLoggingSpec | None, truth_url: str | None, service: str,
                    namespace: str, track: str, model_version: str, image: str,
                    resources: Mapping[str, Any], prestop_seconds: int) -> dict[str, Any]:
    """The `payload-log` container. ``prestop_seconds``: the server's preStop sleep, so
    the relay gets SIGTERM with the server, not before it; it then reads on until the
    draining server has closed its connection (`kustos payload-relay --drain-seconds`),
    so the events of the last predictions still get out. A longer sleep would only hold
    every terminating pod that much longer."""
    container = sidecar_container(
        RELAY_CONTAINER, image,
        relay_args(logging, truth_url, service, namespace, track, model_version),
        RELAY_PORT, RELAY_PORT_NAME, resources, [relay_mount()])
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": prestop_seconds}}}
    return container
