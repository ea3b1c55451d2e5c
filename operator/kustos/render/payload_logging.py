"""spec.logging -> the `kustos serve --payload-log-*` flags of one track. Pure."""

from __future__ import annotations

from kustos.api.v1alpha1.modeldeployment import PayloadLoggingSpec

# KServe's ce-endpoint names its predictor's tracks "default" and "canary".
ENDPOINTS = {"stable": "default", "canary": "canary"}


def payload_log_args(logging: PayloadLoggingSpec | None, service: str, namespace: str,
                     track: str) -> tuple[str, ...]:
    if logging is None:
        return ()
    args: list[str] = []
    for sink in logging.sinks:
        if sink.url is not None:
            args += ["--payload-log-url", sink.url]
        elif sink.kafka is not None:
            args += ["--payload-log-kafka", ",".join(sink.kafka.bootstrap_servers),
                     "--payload-log-topic", sink.kafka.topic]
    args += ["--payload-log-sample", f"{logging.sample_rate:g}",
             "--payload-log-queue", str(logging.queue_size),
             "--payload-log-service", service,
             "--payload-log-namespace", namespace,
             "--payload-log-endpoint", ENDPOINTS.get(track, track)]
    if logging.redact:
        args += ["--payload-log-redact", ",".join(logging.redact)]
    return tuple(args)
