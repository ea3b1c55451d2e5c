"""Adaptive micro-batching: merge the rows of requests that are waiting at the same time.

A request never waits for company. With a single client connection it runs at once;
otherwise ``submit`` queues it and schedules one flush with
``call_soon``; the flush runs on the next turn of the event loop, after every request
that arrived in the same read burst has been parsed. At concurrency 1 a flush holds one
request (no added latency). Under load, while one model call runs, new requests pile up
in the socket buffers; the next turn parses them all and they share one model call. The
per-call cost of sklearn (validation, a Python loop over 100 trees) is paid once per
batch instead of once per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from kustos.runtime.server import metrics as m
from kustos.runtime.server.models import Model
from kustos.runtime.server.tensors import Array

log = logging.getLogger("kustos.serve")

# Result of one request: its outputs, or the exception its rows caused.
Outcome = dict[str, Array] | BaseException
Done = Callable[[Outcome], None]


class _Item:
    __slots__ = ("done", "inputs", "outputs", "rows")

    def __init__(self, inputs: dict[str, Array], outputs: tuple[str, ...], rows: int,
                 done: Done) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.rows = rows
        self.done = done

    def key(self) -> tuple[Any, ...]:
        # Only requests with the same outputs and the same per-row layout can share a call.
        return (self.outputs,
                *((k, v.shape[1:], v.dtype.str) for k, v in sorted(self.inputs.items())))


class Batcher:
    def __init__(self, model: Model, stats: m.RequestMetrics, max_batch_rows: int = 256,
                 enabled: bool = True, peers: Callable[[], int] = lambda: 2) -> None:
        # ``peers`` says how many client connections are open. With one, nobody can join a
        # batch, so the request runs at once instead of waiting a loop turn for company.
        self.peers = peers
        self.model = model
        self.stats = stats
        self.max_batch_rows = max_batch_rows
        self.enabled = enabled
        self._pending: list[_Item] = []
        self._scheduled = False
        self._batch_hist = m.BATCH_ROWS.labels(model.name)

    def submit(self, inputs: dict[str, Array], outputs: tuple[str, ...], rows: int,
               done: Done) -> None:
        item = _Item(inputs, outputs, rows, done)
        if not self.enabled or (not self._scheduled and self.peers() <= 1):
            self._run([item])
            return
        self._pending.append(item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        items, self._pending = self._pending, []
        if len(items) == 1:
            self._run(items)
            return
        groups: dict[tuple[Any, ...], list[_Item]] = {}
        for item in items:
            groups.setdefault(item.key(), []).append(item)
        for group in groups.values():
            batch: list[_Item] = []
            rows = 0
            for item in group:
                if batch and rows + item.rows > self.max_batch_rows:
                    self._run(batch)
                    batch, rows = [], 0
                batch.append(item)
                rows += item.rows
            self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        if len(batch) == 1:
            item = batch[0]
            outcome = self._call(item.inputs, item.outputs, item.rows)
            item.done(outcome)
            return
        names = list(batch[0].inputs)
        merged = {n: np.concatenate([it.inputs[n] for it in batch]) for n in names}
        total = sum(it.rows for it in batch)
        outcome = self._call(merged, batch[0].outputs, total)
        if isinstance(outcome, BaseException) or any(
                v.ndim == 0 or v.shape[0] != total for v in outcome.values()):
            # One bad request must not fail its neighbours: retry them one by one.
            for item in batch:
                item.done(self._call(item.inputs, item.outputs, item.rows))
            return
        start = 0
        for item in batch:
            end = start + item.rows
            item.done({k: v[start:end] for k, v in outcome.items()})
            start = end

    def _call(self, inputs: dict[str, Array], outputs: tuple[str, ...], rows: int) -> Outcome:
        try:
            result = self.model.predict(inputs, outputs)
        except Exception as exc:
            return exc
        self._batch_hist.observe(rows)
        self.stats.count_predictions(self.model.labels(result) if self.model.label_output
                                     else None, rows)
        self.stats.observe_values(self.model, result)
        return result
