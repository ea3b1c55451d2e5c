"""Windows in, drift status out: the state of the sidecar between HTTP and the detector.

The HTTP handler (event-loop thread) appends rows to the open window; a closed window goes
to a bounded queue that one worker thread drains, so a slow evaluation never blocks a
POST. When the queue is full the closed window's rows are dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kustos.runtime.drift.detectors import Detector, Result
from kustos.runtime.drift.metrics import OVERALL, DriftMetrics
from kustos.runtime.drift.reference import Array, describe
from kustos.runtime.drift.window import Window

log = logging.getLogger("kustos.drift")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Monitor:
    def __init__(self, detector_name: str, model: str, window: Window, metrics: DriftMetrics,
                 threshold: float, max_pending: int = 2) -> None:
        self.detector_name = detector_name
        self.model = model
        self.window = window
        self.metrics = metrics
        self._lock = threading.Lock()
        self._queue: queue.Queue[Array | None] = queue.Queue(max_pending)
        self.detector: Detector | None = None
        self.n_features: int | None = None
        self.names: list[str] = []
        self.error: dict[str, str] | None = None
        self.loading = True
        self.windows = 0
        self.last_check: float | None = None
        self.last: Result | None = None
        self.threshold = threshold
        self.episode: dict[str, Any] | None = None
        self.episodes = 0
        self.dropped = 0
        self.accepted = 0
        self.posts = 0
        self.evaluating = False
        self._worker = threading.Thread(target=self._run, name="kustos-drift-eval", daemon=True)
        self._worker.start()

    # -- lifecycle (loader thread)
    def set_ready(self, detector: Detector, n_features: int) -> None:
        with self._lock:
            self.detector = detector
            self.n_features = n_features
            self.names = list(detector.names)
            self.error = None
            self.loading = False
        self.metrics.ready.set(1)

    def set_error(self, reason: str, message: str) -> None:
        with self._lock:
            self.error = {"reason": reason, "message": message}
            self.loading = False
        self.metrics.ready.set(0)

    @property
    def ready(self) -> bool:
        return self.detector is not None

    # -- inputs (event-loop thread)
    def add(self, rows: Array) -> None:
        self.accepted += len(rows)
        self.posts += 1
        self.metrics.posts.inc()
        self.metrics.inputs.inc(len(rows))
        for closed in self.window.add(rows):
            self._submit(closed)
        self.metrics.window_rows.set(self.window.rows)

    def tick(self) -> None:
        closed = self.window.expire()
        if closed is not None:
            self._submit(closed)
            self.metrics.window_rows.set(self.window.rows)

    def _submit(self, rows: Array) -> None:
        try:
            self._queue.put_nowait(rows)
        except queue.Full:
            self.dropped += len(rows)
            self.metrics.dropped.inc(len(rows))
            log.warning("evaluation is behind: dropped a window of %d rows", len(rows))

    def close(self, timeout: float = 2.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._worker.join(timeout)

    # -- evaluation (worker thread)
    def _run(self) -> None:
        while True:
            rows = self._queue.get()
            if rows is None:
                return
            detector = self.detector
            if detector is None:  # cannot happen: inputs are refused until ready
                continue
            self.evaluating = True
            started = time.perf_counter()
            try:
                result = detector.evaluate(rows)
            except Exception:
                log.exception("evaluating a window of %d rows failed", len(rows))
                continue
            finally:
                self.evaluating = False
            self.metrics.evaluation.observe(time.perf_counter() - started)
            self._record(result, len(rows))

    def _record(self, result: Result, rows: int) -> None:
        now = time.time()
        m = self.metrics
        with self._lock:
            self.windows += 1
            self.last_check = now
            self.last = result
            if result.threshold == result.threshold:  # not NaN
                self.threshold = result.threshold
            started = ended = False
            if result.drift and self.episode is None:
                self.episodes += 1
                self.episode = {"id": self.episodes, "startedAt": rfc3339(now)}
                started = True
            elif not result.drift and self.episode is not None:
                self.episode = None
                ended = True
        m.windows.inc()
        m.detected.set(1 if result.drift else 0)
        m.set_features(result.feature_p_values, result.feature_distances)
        if result.p_value is not None and not result.feature_p_values:
            m.p_value.labels(self.model, OVERALL).set(result.p_value)
        if result.distance is not None:
            m.distance.set(result.distance)
        if started:
            m.episodes.inc()
            log.warning("drift episode %d started: features %s", self.episodes,
                        ", ".join(result.drifting) or "(whole window)")
        elif ended:
            log.info("drift episode %d ended", self.episodes)
        log.info("window %d (%d rows): drift=%s p=%s distance=%s", self.windows, rows,
                 result.drift, result.p_value, result.distance)

    # -- status (any thread)
    def status(self) -> dict[str, Any]:
        with self._lock:
            r = self.last
            return {
                "ready": self.detector is not None,
                "detector": self.detector_name,
                "model": self.model,
                "error": self.error,
                "loading": self.loading,
                "windowsEvaluated": self.windows,
                "lastCheck": rfc3339(self.last_check) if self.last_check else None,
                "drift": bool(r and r.drift),
                "driftingFeatures": list(r.drifting) if r else [],
                "featurePValues": ({k: describe(v) for k, v in r.feature_p_values.items()}
                                   if r else {}),
                "featureDistances": ({k: describe(v) for k, v in r.feature_distances.items()}
                                     if r else {}),
                "pValue": describe(r.p_value) if r and r.p_value is not None else None,
                "distance": describe(r.distance) if r and r.distance is not None else None,
                "threshold": describe(self.threshold),
                "episode": dict(self.episode) if self.episode else None,
                "episodes": self.episodes,
                "featureNames": list(self.names),
                "window": {"rows": self.window.rows, "size": self.window.size,
                           "maxAgeSeconds": self.window.max_age,
                           "minRows": self.window.min_rows},
                "inputsAccepted": self.accepted,
                "posts": self.posts,
                "inputsDropped": self.dropped,
                "detectedAtRow": r.detected_at_row if r else None,
            }
