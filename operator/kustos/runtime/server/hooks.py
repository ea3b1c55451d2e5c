"""Side channels of the model server: inputs to the drift sidecar, `:explain` forwarding.

The drift hand-off must never slow or fail a prediction: ``DriftSender.offer`` is a
non-blocking append to a bounded deque (above a row rate, every n-th request);
a daemon thread drains it every 50 ms, merges the rows of the pending requests and POSTs
them. A full deque or a failed POST drops the inputs and counts them in
``kustos_drift_handoff_dropped_total``; requests left out of the sample are counted in
``kustos_drift_handoff_sampled_out_total``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import logging
import math
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from kustos.runtime.server import metrics as m
from kustos.runtime.server.sender import BoundedSender, HttpPoster, SendError, check_url
from kustos.runtime.server.tensors import Array, encode

__all__ = ["DriftSender", "ExplainForwarder", "check_url", "sample_every"]

log = logging.getLogger("kustos.serve")


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(check_url(url))
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout)
    return conn, parts.path.rstrip("/")


class DriftSender(BoundedSender[dict[str, Array]]):
    """Bounded, lossy, batched hand-off of request inputs to the drift sidecar."""

    def __init__(self, url: str, model_name: str, model_version: str, maxsize: int = 8192,
                 max_requests_per_post: int = 1024, timeout: float = 2.0,
                 flush_interval: float = 0.05, max_rows_per_second: float = 0) -> None:
        super().__init__("kustos-drift", maxsize, flush_interval, max_requests_per_post)
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout = timeout
        self.max_requests_per_post = max_requests_per_post
        self._poster = HttpPoster(url, timeout)
        # Above max_rows_per_second the sidecar gets a systematic sample: every n-th
        # request, n adapted once a second by the sender thread from the rate offered. The
        # hand-off costs the serving process CPU per row under the GIL; a drift window needs
        # far fewer rows than a busy model serves. 0 keeps every request. The request path
        # only touches plain ints (one writer each); the thread turns them into metrics.
        self.max_rows_per_second = max_rows_per_second
        self._every = 1
        self._countdown = 1
        self._offered = 0  # requests offered (written by offer only)
        self._skipped = 0  # requests left out of the sample (written by offer only)
        self._full = m.DRIFT_DROPPED.labels(model_name, "queue_full")
        self._failed = m.DRIFT_DROPPED.labels(model_name, "send_failed")
        self._sent = m.DRIFT_SENT.labels(model_name)
        self._sampled = m.DRIFT_SAMPLED_OUT.labels(model_name)
        self._since = time.monotonic()
        self._offered_then = self._skipped_reported = 0
        self._rows_kept = self._requests_kept = 0
        self.start()

    def offer(self, inputs: dict[str, Array]) -> None:
        self._offered += 1
        if self._every > 1:
            self._countdown -= 1
            if self._countdown > 0:
                self._skipped += 1
                return
            self._countdown = self._every
        if not self.enqueue(inputs):
            self._full.inc()

    def tick(self, now: float) -> None:
        # Collect for one interval, then post what has arrived: one POST per request cost
        # the serving process ~40% of its throughput on cheap models (GIL, JSON, syscalls).
        # Drift needs no low latency. On close, what is pending is still sent.
        if self.max_rows_per_second and now - self._since >= 1.0:
            offered = self._offered
            kept = self._requests_kept
            rate = (offered - self._offered_then) / (now - self._since) \
                * (self._rows_kept / kept if kept else 1.0)
            self._every = sample_every(rate, self.max_rows_per_second)
            self._since, self._offered_then = now, offered
            self._rows_kept = self._requests_kept = 0
        skipped = self._skipped
        if skipped > self._skipped_reported:
            self._sampled.inc(skipped - self._skipped_reported)
            self._skipped_reported = skipped

    def deliver(self, batch: list[dict[str, Array]]) -> None:
        self._requests_kept += len(batch)
        self._rows_kept += sum(_rows(b) for b in batch)
        for group in _groups(batch):
            self._post(group)

    def payload(self, group: list[dict[str, Array]]) -> bytes:
        inputs = []
        for name in group[0]:
            arr = np.concatenate([g[name] for g in group]) if len(group) > 1 else group[0][name]
            inputs.append(encode(name, arr))
        return orjson.dumps(
            {"model_name": self.model_name, "model_version": self.model_version,
             "inputs": inputs, "parameters": {"requests": len(group)}},
            option=orjson.OPT_SERIALIZE_NUMPY)

    def _post(self, group: list[dict[str, Array]]) -> None:
        try:
            status = self._poster.post(self.payload(group), b"content-type: application/json\r\n")
            if status >= 300:
                raise SendError(f"drift sidecar answered HTTP {status}")
            self._sent.inc(len(group))
        except Exception as exc:
            self._failed.inc(len(group))
            log.debug("drift hand-off failed: %s", exc)


def sample_every(rows_per_second: float, cap: float) -> int:
    """Keep every n-th request so that about ``cap`` rows a second reach the sidecar."""
    if cap <= 0 or rows_per_second <= cap:
        return 1
    return math.ceil(rows_per_second / cap)


def _rows(inputs: dict[str, Array]) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _groups(batch: list[dict[str, Array]]) -> list[list[dict[str, Array]]]:
    """Requests whose inputs can be concatenated row-wise go in one POST."""
    groups: dict[tuple[Any, ...], list[dict[str, Array]]] = {}
    for item in batch:
        key: tuple[Any, ...] = tuple((k, v.shape[1:], v.dtype.str) for k, v in item.items())
        if any(v.ndim == 0 for v in item.values()):
            key = (id(item),)
        groups.setdefault(key, []).append(item)
    return list(groups.values())


@dataclass(frozen=True)
class Forwarded:
    status: int
    body: bytes
    content_type: bytes


class ExplainForwarder:
    """Forwards explain requests, with the same path, to the explainer sidecar."""

    def __init__(self, url: str, timeout: float = 30.0, max_concurrent: int = 8) -> None:
        check_url(url)
        parts = urllib.parse.urlsplit(url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrent, "kustos-explain")

    async def forward(self, path: str, body: bytes, content_type: bytes) -> Forwarded:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._send, path, body, content_type)

    def _send(self, path: str, body: bytes, content_type: bytes) -> Forwarded:
        conn, _ = _connection(self.base, self.timeout)
        try:
            conn.request("POST", self.prefix + path, body,
                         {"content-type": content_type.decode("latin-1") or "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            ctype = (resp.getheader("content-type") or "application/json").encode("latin-1")
            return Forwarded(resp.status, data, ctype)
        except TimeoutError:
            return Forwarded(504, orjson.dumps(
                {"error": f"explainer did not answer within {self.timeout:g}s"}),
                b"application/json")
        except (OSError, http.client.HTTPException) as exc:
            return Forwarded(502, orjson.dumps(
                {"error": f"explainer unavailable: {getattr(exc, 'strerror', None) or exc}"}),
                b"application/json")
        finally:
            conn.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
