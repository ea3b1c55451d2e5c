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
import collections
import concurrent.futures
import http.client
import logging
import math
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from kustos.runtime.server import metrics as m
from kustos.runtime.server.tensors import Array, encode

log = logging.getLogger("kustos.serve")


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    return conn, parts.path.rstrip("/")


def check_url(url: str) -> str:
    _connection(url, 1.0)
    return url


class DriftSender:
    """Bounded, lossy, batched hand-off of request inputs to the drift sidecar."""

    def __init__(self, url: str, model_name: str, model_version: str, maxsize: int = 8192,
                 max_requests_per_post: int = 1024, timeout: float = 2.0,
                 flush_interval: float = 0.05, max_rows_per_second: float = 0) -> None:
        check_url(url)
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout = timeout
        self.max_requests_per_post = max_requests_per_post
        self.flush_interval = flush_interval
        # A deque, not a queue.Queue: append and popleft are atomic under the GIL, so the
        # request path pays no lock or condition variable per request (at ~30k requests/s
        # queue.Queue's put alone cost several percent of the serving core).
        self.maxsize = maxsize
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
        self._pending: collections.deque[dict[str, Array]] = collections.deque()
        self._closing = threading.Event()
        self._full = m.DRIFT_DROPPED.labels(model_name, "queue_full")
        self._failed = m.DRIFT_DROPPED.labels(model_name, "send_failed")
        self._sent = m.DRIFT_SENT.labels(model_name)
        self._sampled = m.DRIFT_SAMPLED_OUT.labels(model_name)
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="kustos-drift", daemon=True)
        self._thread.start()

    def offer(self, inputs: dict[str, Array]) -> None:
        self._offered += 1
        if self._every > 1:
            self._countdown -= 1
            if self._countdown > 0:
                self._skipped += 1
                return
            self._countdown = self._every
        if len(self._pending) >= self.maxsize:
            self._full.inc()
        else:
            self._pending.append(inputs)

    def close(self, timeout: float = 2.0) -> None:
        self._closing.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        # Collect for one interval, then post what has arrived: one POST per request cost
        # the serving process ~40% of its throughput on cheap models (GIL, JSON, syscalls).
        # Drift needs no low latency. On close, what is pending is still sent.
        since, offered_then, skipped_reported = time.monotonic(), 0, 0
        rows_kept = requests_kept = 0
        while True:
            closing = self._closing.wait(self.flush_interval)
            now = time.monotonic()
            if self.max_rows_per_second and now - since >= 1.0:
                offered = self._offered
                rate = (offered - offered_then) / (now - since) \
                    * (rows_kept / requests_kept if requests_kept else 1.0)
                self._every = sample_every(rate, self.max_rows_per_second)
                since, offered_then, rows_kept, requests_kept = now, offered, 0, 0
            skipped = self._skipped
            if skipped > skipped_reported:
                self._sampled.inc(skipped - skipped_reported)
                skipped_reported = skipped
            # What is pending now; later arrivals wait for the next round (a slow sidecar
            # must not keep this loop from adapting the sample).
            left = len(self._pending)
            while left > 0:
                batch: list[dict[str, Array]] = []
                while left > 0 and len(batch) < self.max_requests_per_post:
                    batch.append(self._pending.popleft())
                    left -= 1
                requests_kept += len(batch)
                rows_kept += sum(_rows(b) for b in batch)
                for group in _groups(batch):
                    self._post(group)
            if closing:
                return

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
            body = self.payload(group)
            for attempt in (1, 2):  # a kept-alive connection may have been closed: retry once
                try:
                    if self._conn is None:
                        self._conn, path = _connection(self.url, self.timeout)
                        self._path = path or "/"
                    self._conn.request("POST", self._path, body,
                                       {"content-type": "application/json"})
                    resp = self._conn.getresponse()
                    resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
            if resp.status >= 300:
                raise RuntimeError(f"drift sidecar answered HTTP {resp.status}")
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
