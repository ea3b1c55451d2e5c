"""The monitor: events and labels into the store, the evaluation on an interval, the status.

Events arrive in pairs (request, response) with one inference id. The prediction is
stored when the response arrives; the request's features join it then (the request came
first: held in memory, bounded by ``maxPending``, oldest dropped) or update it later
(the request came second).

Group commit: ``take`` parses an event into a batch, ``flush`` writes the batch in one
transaction; the HTTP app answers the batch's events after the flush (app.py).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kustos.runtime.truth import evaluate, parse
from kustos.runtime.truth.config import TruthConfig
from kustos.runtime.truth.metrics import TruthMetrics
from kustos.runtime.truth.store import Joined, Label, Prediction, Store

log = logging.getLogger("kustos.truth")

try:  # written in parallel by another change; the monitor runs without it
    from kustos.runtime.truth.fairness import fairness_report
except ImportError:  # pragma: no cover
    fairness_report = None  # type: ignore[assignment]

# A prediction's time from ce-time when plausible, else its arrival: a clock that runs
# ahead in the model's pod must not make label delays negative or predictions immortal.
CLOCK_SKEW = 300.0


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Monitor:
    def __init__(self, cfg: TruthConfig, store: Store, metrics: TruthMetrics) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self._pending: collections.OrderedDict[str, list[dict[str, Any] | None]] = \
            collections.OrderedDict()
        # Taken, not yet written (``flush``): predictions by inference id, and requests
        # whose response may already be in the store.
        self._batch: dict[str, list[Prediction]] = {}
        self._batch_requests: dict[str, list[dict[str, Any] | None]] = {}
        self._status: dict[str, Any] = self._empty_status()
        self._status_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.sources: dict[str, dict[str, Any]] = {}  # bulk source status, by URI
        self._thread = threading.Thread(target=self._run, name="kustos-truth-eval",
                                        daemon=True)

    def _empty_status(self) -> dict[str, Any]:
        counts = self.store.counts()
        return {"ready": True, "error": None, "model": self.cfg.model, "task": self.cfg.task,
                **counts, "versions": {}, "violations": [], "lastEvaluation": None,
                "bulk": []}

    # -- ingestion (the event loop)
    def take(self, ev: parse.Event, now: float | None = None) -> int:
        """Parse one event into the batch ``flush`` writes; the rows it held."""
        now = time.time() if now is None else now
        cfg = self.cfg
        if ev.kind == "request":
            if not cfg.reads_inputs:  # nothing reads the features: neither held nor stored
                return parse.request_rows(ev.body)
            rows = parse.request_features(ev.body, cfg.feature_names)
            batched = self._batch.get(ev.id)
            if batched is not None:  # its response came first, in this batch
                if len(batched) == len(rows):
                    self._batch[ev.id] = [p if p.features is not None else
                                          dataclasses.replace(p, features=f)
                                          for p, f in zip(batched, rows, strict=True)]
                return len(rows)
            # Held for the response to come; at the flush, a response already stored
            # takes the features instead.
            self._pending[ev.id] = rows
            self._pending.move_to_end(ev.id)
            self._batch_requests[ev.id] = rows
            while len(self._pending) > cfg.max_pending:
                self._pending.popitem(last=False)
            return len(rows)
        answers, body_version = parse.response_predictions(ev.body, cfg.task, cfg.classes,
                                                           cfg.model)
        version = ev.version or body_version or cfg.default_version
        ts = ev.time if ev.time is not None and now - cfg.retention_seconds <= ev.time \
            <= now + CLOCK_SKEW else now
        ts = min(ts, now)
        features: list[dict[str, Any] | None] | None = self._pending.pop(ev.id, None)
        self._batch_requests.pop(ev.id, None)
        if features is not None and len(features) != len(answers):
            features = None  # not the same inference after all
        # A prediction logged again replaces the earlier one, in the batch as in the store.
        self._batch[ev.id] = [
            Prediction(ev.id, i, version, ts, a.label, a.value, a.proba, a.classes,
                       features[i] if features is not None else None)
            for i, a in enumerate(answers)]
        return len(answers)

    def batched(self) -> int:
        """Events taken and not yet written."""
        return len(self._batch) + len(self._batch_requests)

    def flush(self) -> None:
        """Write the batch in one transaction. Raises what the store raises (the batch
        is then dropped: the caller answers its events with an error)."""
        if not self._batch and not self._batch_requests:
            return
        preds = [p for rows in self._batch.values() for p in rows]
        requests = self._batch_requests
        self._batch, self._batch_requests = {}, {}
        joined, found = self.store.add_events(preds, requests)
        for rid in found:  # the request came second: its features are stored now
            self._pending.pop(rid, None)
        for p, label_ts in joined:
            self.metrics.delay.observe(max(0.0, label_ts - p.ts))

    def labels(self, items: Sequence[parse.LabelIn], source: str,
               now: float | None = None) -> int:
        """Store labels; how many joined a prediction already stored."""
        now = time.time() if now is None else now
        labels = [Label(x.id, x.row, x.label, x.value, x.metadata,
                        x.time if x.time is not None and x.time <= now else now, source)
                  for x in items]
        joined = self.store.add_labels(labels)
        for lb, pred_ts in joined:
            self.metrics.delay.observe(max(0.0, lb.ts - pred_ts))
        self.metrics.labels.labels(source, "accepted").inc(len(labels))
        return len(joined)

    # -- evaluation (its own thread)
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.evaluate()
            except Exception:  # keep the monitor up; the log says what broke
                log.exception("evaluation failed")
            took = time.monotonic() - started
            self.metrics.evaluation.observe(took)
            # A large window costs seconds (~15 us per prediction in it) under the GIL the
            # event loop needs too: at most a third of the time goes to evaluating.
            self._wake.wait(max(self.cfg.evaluation_interval, 2 * took))
            self._wake.clear()

    def status(self) -> dict[str, Any]:
        with self._status_lock:
            status = dict(self._status)
        bulk = [dict(s) for s in self.sources.values()]
        status["bulk"] = bulk
        if not bulk:
            return status
        failed = [f for f in self.store.bulk_files() if f["error"]]
        for source in bulk:
            uri = source["uri"]
            source["failedFiles"] = [{"uri": f["uri"], "error": f["error"]} for f in failed
                                     if f["uri"] == uri or f["uri"].startswith(
                                         uri.rstrip("/") + "/")][-5:]
        failing = [s for s in bulk if s.get("lastError")]
        broken = [f for s in bulk for f in s["failedFiles"]]
        if failing:
            status["error"] = {"reason": "BulkSourceFailed",
                               "message": f"{failing[0]['uri']}: {failing[0]['lastError']}"}
        elif broken:
            status["error"] = {"reason": "BulkFileUnreadable",
                               "message": f"{broken[-1]['uri']}: {broken[-1]['error']}"}
        return status

    def evaluate(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        cfg, m = self.cfg, self.metrics
        self.store.expire(now)
        by_version: dict[str, list[Joined]] = collections.defaultdict(list)
        for row in self.store.window(now - cfg.window_seconds, features=cfg.reads_inputs):
            by_version[row.version].append(row)
        versions: dict[str, Any] = {}
        found: list[dict[str, Any]] = []
        metric_values: dict[tuple[str, ...], float] = {}
        coverage: dict[tuple[str, ...], float] = {}
        gaps: dict[tuple[str, ...], float] = {}
        slices: dict[tuple[str, ...], float] = {}
        for version, rows in sorted(by_version.items()):
            entry, _, labelled = evaluate.version_report(rows, cfg, now)
            found += evaluate.violations(version, entry, cfg)
            if cfg.fairness is not None and not entry["inconclusive"]:
                entry["fairness"] = self._fairness(version, labelled, found, gaps, slices)
            versions[version] = entry
            for name, value in entry["metrics"].items():
                if value is not None:
                    metric_values[(cfg.model, version, name)] = value
            if entry["coverage"] is not None:
                coverage[(cfg.model, version)] = entry["coverage"]
        m.replace(m.metric, metric_values)
        m.replace(m.coverage, coverage)
        m.replace(m.fairness_gap, gaps)
        m.replace(m.fairness_slice, slices)
        for kind in ("performance", "fairness"):
            m.violations.labels(cfg.model, kind).set(sum(v["kind"] == kind for v in found))
        for table, n in self.store.table_counts().items():
            m.store_rows.labels(cfg.model, table).set(n)
        status = {"ready": True, "error": None, "model": cfg.model, "task": cfg.task,
                  **self.store.counts(), "versions": versions, "violations": found,
                  "lastEvaluation": rfc3339(now), "evicted": dict(self.store.evicted)}
        with self._status_lock:
            self._status = status
        return self.status()

    def _fairness(self, version: str, labelled: list[Joined], found: list[dict[str, Any]],
                  gaps: dict[tuple[str, ...], float], slices: dict[tuple[str, ...], float]
                  ) -> dict[str, Any] | None:
        fair = self.cfg.fairness
        if fair is None or fair.config is None or fairness_report is None:
            return None
        sensitive: dict[str, list[Any]] = {}
        for feature in fair.features:
            values: list[Any] = []
            for r in labelled:
                source = r.features if feature.source == "input" else r.metadata
                value = (source or {}).get(feature.name)
                values.append(None if value is None else str(value))
            sensitive[feature.name] = values
        try:
            report: dict[str, Any] = fairness_report(
                [r.true_label for r in labelled], [r.label for r in labelled], sensitive,
                fair.config)
        except ValueError as exc:
            log.warning("fairness of version %s: %s", version, exc)
            return {"error": str(exc)}
        model = self.cfg.model
        for v in report.get("violations", []):
            found.append({"version": version, "metric": f"{v['feature']}/{v['metric']}",
                          "value": v["value"], "threshold": v["threshold"],
                          "kind": "fairness", "feature": v["feature"]})
        for name, feat in report.get("features", {}).items():
            for gap in ("demographicParityDifference", "equalizedOddsDifference",
                        "accuracyGap"):
                if feat.get(gap) is not None:
                    gaps[(model, version, name, gap)] = float(feat[gap])
            for value, sl in feat.get("slices", {}).items():
                for metric in ("accuracy", "selectionRate", "truePositiveRate",
                               "falsePositiveRate", "count"):
                    if isinstance(sl.get(metric), int | float):
                        slices[(model, version, name, str(value), metric)] = float(sl[metric])
        return report
