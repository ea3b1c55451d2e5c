"""Side channels of the model server: inputs to the drift sidecar, `:explain` forwarding.

The drift hand-off must never slow or fail a prediction: ``DriftSender.offer`` is a
non-blocking put on a bounded queue; a daemon thread drains it, merges the rows of the
queued requests and POSTs them. A full queue or a failed POST drops the inputs and counts
them in ``kustos_drift_handoff_dropped_total``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import logging
import queue
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
                 flush_interval: float = 0.05) -> None:
        check_url(url)
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.timeout = timeout
        self.max_requests_per_post = max_requests_per_post
        self.flush_interval = flush_interval
        self._queue: queue.Queue[dict[str, Array] | None] = queue.Queue(maxsize)
        self._full = m.DRIFT_DROPPED.labels(model_name, "queue_full")
        self._failed = m.DRIFT_DROPPED.labels(model_name, "send_failed")
        self._sent = m.DRIFT_SENT.labels(model_name)
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="kustos-drift", daemon=True)
        self._thread.start()

    def offer(self, inputs: dict[str, Array]) -> None:
        try:
            self._queue.put_nowait(inputs)
        except queue.Full:
            self._full.inc()

    def close(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            # Collect for one interval before posting: one POST per request costs the
            # serving process ~40% of its throughput on cheap models (GIL, JSON, syscalls);
            # one POST per interval costs nothing measurable. Drift needs no low latency.
            if self.max_requests_per_post > 1 and self.flush_interval > 0:
                time.sleep(self.flush_interval)
            while len(batch) < self.max_requests_per_post:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            for group in _groups(batch):
                self._post(group)
            if stop:
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
