"""`kustos serve --truth-url URL`: the model server's side of the ground-truth monitor.

Every prediction goes to ``URL/v1/events`` as the payload log's CloudEvents (one more
HTTP sink with its own bounded queue: 100 % sampling and no redaction, whatever the
``--payload-log-*`` flags say, since the monitor needs every id and the true inputs).
Feedback the server receives (Seldon ``/api/v1.0/feedback`` with a ``truth``, V2-style
``/v2/models/{name}/feedback``) is checked here, answered at once, and forwarded to the
same path on URL by a sender thread (bounded queue, drop newest; counted in
``kustos_truth_feedback_forwarded_total{model,outcome=sent|dropped|failed}``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import Counter

from kustos.runtime.server.payload_log import Exchange, PayloadLogConfig, PayloadLogger
from kustos.runtime.server.sender import BoundedSender, HttpPoster, SendError, check_url

log = logging.getLogger("kustos.serve")

FORWARDED = Counter("kustos_truth_feedback_forwarded",
                    "Feedback messages forwarded to the ground-truth monitor",
                    ["model", "outcome"])
SELDON_PATH = "/api/v1.0/feedback"


def base_url(url: str) -> str:
    return check_url(url).rstrip("/")


def events_config(url: str, model: str, version: str,
                  namespace: str | None = None) -> PayloadLogConfig:
    """The monitor's sink: every prediction, unredacted, to URL/v1/events."""
    if namespace is None:
        namespace = os.environ.get("POD_NAMESPACE", "")
    return PayloadLogConfig(urls=(base_url(url) + "/v1/events",), sample=1.0,
                            redact=frozenset(),
                            source=f"/kustos/{namespace or '-'}/{model}/predictor",
                            service=model, namespace=namespace, model_version=version)


class TruthLogger(PayloadLogger):
    """The payload logger of ``--payload-log-*`` (if any) plus the monitor's sink."""

    def __init__(self, url: str, model: str, version: str, inner: PayloadLogger | None,
                 namespace: str | None = None) -> None:
        super().__init__(events_config(url, model, version, namespace), model)
        self.inner = inner

    def set_input_name(self, name: str) -> None:
        if self.inner is not None:
            self.inner.set_input_name(name)

    def offer(self, rid: str, kind: str, request: Any, request_json_length: int | None,
              response: Any, response_json_length: int | None = None) -> None:
        if self.inner is not None:
            self.inner.offer(rid, kind, request, request_json_length, response,
                             response_json_length)
        super().offer(rid, kind, request, request_json_length, response,
                      response_json_length)

    def offer_exchange(self, ex: Exchange) -> None:
        """In the payload-log relay: the same, for a prediction the server handed over."""
        if self.inner is not None:
            self.inner.offer_exchange(ex)
        super().offer_exchange(ex)

    def close(self, timeout: float = 2.0) -> None:
        if self.inner is not None:
            self.inner.close(timeout)
        super().close(timeout)


class FeedbackForwarder(BoundedSender[tuple[str, bytes, bytes]]):
    """(path, body, header lines) items POSTed to the monitor, in order."""

    def __init__(self, url: str, model: str, maxsize: int = 10_000,
                 timeout: float = 5.0) -> None:
        super().__init__("kustos-truth-feedback", maxsize, flush_interval=0.05,
                         max_batch=256)
        self.base = base_url(url)
        self.timeout = timeout
        self._posters: dict[str, HttpPoster] = {}
        self.sent = FORWARDED.labels(model, "sent")
        self.dropped = FORWARDED.labels(model, "dropped")
        self.failed = FORWARDED.labels(model, "failed")
        self.start()

    def forward(self, path: str, body: bytes, request_id: str | None = None) -> None:
        headers = b"content-type: application/json\r\n"
        if request_id:
            headers += b"x-request-id: %s\r\n" % request_id.encode("latin-1", "replace")
        if not self.enqueue((path, body, headers)):
            self.dropped.inc()

    def deliver(self, batch: list[tuple[str, bytes, bytes]]) -> None:
        for path, body, headers in batch:
            poster = self._posters.get(path)
            if poster is None:
                poster = self._posters[path] = HttpPoster(self.base + path, self.timeout)
            try:
                status = poster.post(body, headers)
            except SendError as exc:
                log.debug("feedback forwarding: %s", exc)
                self.failed.inc()
                continue
            if status < 300:
                self.sent.inc()
            else:
                log.debug("feedback forwarding: the monitor answered HTTP %d", status)
                self.failed.inc()

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        for poster in self._posters.values():
            poster.close()


def check_feedback(path: str, body: bytes, request_id: str | None,
                   classes: list[Any] | None) -> bool:
    """Raise ProtocolError for feedback the monitor would refuse; False when there is
    nothing to forward (a Seldon message with only a reward)."""
    from kustos.runtime.server.tensors import loads_object
    from kustos.runtime.truth import parse

    if path == SELDON_PATH:
        if "truth" not in loads_object(body):
            return False
        parse.parse_seldon_feedback(body, request_id, "classification",
                                    [str(c) for c in classes or []])
    else:
        parse.parse_v2_feedback(body, "classification")
    return True
