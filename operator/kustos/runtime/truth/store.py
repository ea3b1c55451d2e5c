"""The monitor's store of predictions and labels: SQLite (stdlib sqlite3) in WAL mode, one
file in the monitor's volume (/var/lib/kustos-truth).

Why SQLite: the monitor is one process (one Deployment, one replica, Recreate), so there
is exactly one writer and no server is needed; the file survives restarts of the process
(on a PVC, of the pod too), so labels that arrive days later still find their
predictions; sqlite3 is in the standard library, so the image needs no extra dependency;
the join of predictions and labels by inference id is one indexed SQL join. WAL lets the
evaluation read on its own connection while events are written.

Bounded: predictions and labels are each kept to ``max_rows`` rows and ``retention``
seconds; beyond that the oldest rows (by arrival time) are evicted first. A label whose
prediction has not been seen is kept like any other label (it counts against the same
bound) and joins when the prediction arrives: the join happens at query time, so the
order of arrival does not matter. A second label for the same id replaces the first.

A prediction or label is addressed by (inference id, row): row r of a request of N rows.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

FILE = "truth.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT NOT NULL, row INTEGER NOT NULL, version TEXT NOT NULL, ts REAL NOT NULL,
    label TEXT, value REAL, proba TEXT, classes TEXT, features TEXT,
    PRIMARY KEY (id, row));
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS labels (
    id TEXT NOT NULL, row INTEGER NOT NULL, label TEXT NOT NULL, value REAL,
    metadata TEXT, ts REAL NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (id, row));
CREATE INDEX IF NOT EXISTS labels_ts ON labels (ts);
CREATE TABLE IF NOT EXISTS bulk_files (
    uri TEXT PRIMARY KEY, size INTEGER NOT NULL, stamp TEXT NOT NULL, loaded REAL NOT NULL,
    rows INTEGER NOT NULL, bad INTEGER NOT NULL, error TEXT);
"""
# Evict down to this share of max_rows at once: not one DELETE per insert at the bound.
EVICT_TO = 0.95
WAL_PAGES = 10_000
# Ids per "WHERE id IN (...)" lookup: well under SQLite's 32766 bound variables.
IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Prediction:
    id: str
    row: int
    version: str
    ts: float
    label: str | None  # class label (classification)
    value: float | None  # predicted value (regression)
    proba: Sequence[float] | None
    classes: Sequence[str] | None  # the labels of proba's columns
    features: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Label:
    id: str
    row: int
    label: str  # canonical text (see parse.canonical)
    value: float | None  # the label as a number, when it is one
    metadata: dict[str, Any] | None
    ts: float
    source: str


@dataclass(frozen=True, slots=True)
class Joined:
    """One prediction of the window with its label, if one arrived."""

    version: str
    ts: float
    label: str | None
    value: float | None
    proba: list[float] | None
    classes: list[str] | None
    features: dict[str, Any] | None
    true_label: str | None
    true_value: float | None
    metadata: dict[str, Any] | None
    label_ts: float | None


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class Store:
    """One writer connection (behind a lock: the event loop and the bulk loader write)
    and one reader connection for the evaluation thread."""

    def __init__(self, directory: str | Path, max_rows: int, retention: float) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / FILE
        self.max_rows = max_rows
        self.retention = retention
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: a power loss may lose the last commits, never corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Inference ids are random (uuid4): each insert dirties its own page of the id
        # index, so a checkpoint every WAL_PAGES frames, not SQLite's 1000, writes each
        # such page back once for many commits (a quarter less CPU per prediction at
        # 300000 rows; the WAL grows to ~40 MB before it is folded back).
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        self._db.executescript(SCHEMA)
        self._reader = sqlite3.connect(self.path, check_same_thread=False)
        self._read_lock = threading.Lock()
        self._counts = {t: self._count(t) for t in ("predictions", "labels")}
        self.evicted = {"predictions": 0, "labels": 0}

    def _count(self, table: str) -> int:
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    # -- writes
    def add_predictions(self, preds: Sequence[Prediction]) -> list[tuple[Prediction, float]]:
        """Store ``preds`` (a prediction logged again replaces the earlier one); returns
        those that joined a label already present, with the label's arrival time."""
        return self.add_events(preds, {})[0]

    def add_events(self, preds: Sequence[Prediction],
                   features: Mapping[str, Sequence[dict[str, Any] | None]]
                   ) -> tuple[list[tuple[Prediction, float]], set[str]]:
        """One transaction for a batch of events (group commit: one COMMIT, not one per
        event): ``features`` by inference id of requests whose response may already be
        stored (the rows get them where they have none), then ``preds``. Returns the
        predictions that joined a label already present (with the label's time) and the
        ids of ``features`` that found their stored prediction."""
        # The rows of a response share one class list (parse._default_classes): encoded
        # once per batch. Keyed by id(): the lists are alive for the whole call.
        classes: dict[int, str | None] = {}
        rows = [(p.id, p.row, p.version, p.ts, p.label, p.value, _dumps(p.proba),
                 classes[id(p.classes)] if id(p.classes) in classes else
                 classes.setdefault(id(p.classes), _dumps(p.classes)),
                 _dumps(p.features)) for p in preds]
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                found = self._ids_in("predictions", list(features))
                if found:
                    db.executemany(
                        "UPDATE predictions SET features=? WHERE id=? AND row=? "
                        "AND features IS NULL",
                        [(_dumps(f), rid, i) for rid in found
                         for i, f in enumerate(features[rid])])
                db.executemany(
                    "INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,?,?)", rows)
                label_ts = self._times("labels", {p.id for p in preds})
                joined = [(p, label_ts[(p.id, p.row)]) for p in preds
                          if (p.id, p.row) in label_ts]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._counts["predictions"] += len(rows)
            self._bound("predictions")
        return joined, found

    def _ids_in(self, table: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` have a row in ``table`` (under the lock): one query per
        IN_CHUNK ids, not one per id."""
        found: set[str] = set()
        for chunk in chunks(ids, IN_CHUNK):
            found.update(r[0] for r in self._db.execute(
                f"SELECT DISTINCT id FROM {table} WHERE id IN "
                f"({','.join('?' * len(chunk))})", chunk))
        return found

    def _times(self, table: str, ids: set[str]) -> dict[tuple[str, int], float]:
        """The time of each (id, row) of ``table`` whose id is in ``ids`` (under the lock)."""
        times: dict[tuple[str, int], float] = {}
        for chunk in chunks(ids, IN_CHUNK):
            for rid, row, ts in self._db.execute(
                    f"SELECT id, row, ts FROM {table} WHERE id IN "
                    f"({','.join('?' * len(chunk))})", chunk):
                times[(rid, row)] = float(ts)
        return times

    def add_labels(self, labels: Sequence[Label]) -> list[tuple[Label, float]]:
        """Store ``labels`` (replacing earlier labels of the same id and row); returns those
        that joined a prediction already present, with the prediction's time."""
        rows = [(lb.id, lb.row, lb.label, lb.value, _dumps(lb.metadata), lb.ts, lb.source)
                for lb in labels]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO labels VALUES (?,?,?,?,?,?,?)",
                                     rows)
                pred_ts = self._times("predictions", {lb.id for lb in labels})
                joined = [(lb, pred_ts[(lb.id, lb.row)]) for lb in labels
                          if (lb.id, lb.row) in pred_ts]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._counts["labels"] += len(rows)
            self._bound("labels")
        return joined

    def _bound(self, table: str) -> None:
        """Evict the oldest rows of ``table`` beyond max_rows (under the lock)."""
        # The count is an upper bound (a replaced row was counted again): exact only here.
        if self._counts[table] <= self.max_rows:
            return
        count = self._counts[table] = self._count(table)
        if count <= self.max_rows:
            return
        excess = count - int(self.max_rows * EVICT_TO)
        self._db.execute(f"DELETE FROM {table} WHERE rowid IN "
                         f"(SELECT rowid FROM {table} ORDER BY ts LIMIT ?)", (excess,))
        self.evicted[table] += excess
        self._counts[table] = self._count(table)

    def expire(self, now: float | None = None) -> int:
        """Drop rows older than the retention; how many."""
        cutoff = (time.time() if now is None else now) - self.retention
        dropped = 0
        with self._lock:
            for table in ("predictions", "labels"):
                cur = self._db.execute(f"DELETE FROM {table} WHERE ts < ?", (cutoff,))
                dropped += max(cur.rowcount, 0)
                self._counts[table] = self._count(table)
        return dropped

    # -- bulk files loaded
    def bulk_seen(self, uri: str, size: int, stamp: str) -> bool:
        with self._lock:
            hit = self._db.execute("SELECT 1 FROM bulk_files WHERE uri=? AND size=? AND "
                                   "stamp=?", (uri, size, stamp)).fetchone()
        return hit is not None

    def bulk_done(self, uri: str, size: int, stamp: str, rows: int, bad: int,
                  error: str | None) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO bulk_files VALUES (?,?,?,?,?,?,?)",
                             (uri, size, stamp, time.time(), rows, bad, error))

    def bulk_files(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT uri, size, stamp, loaded, rows, bad, error "
                                   "FROM bulk_files ORDER BY loaded")
            return [dict(zip(("uri", "size", "stamp", "loaded", "rows", "badRows", "error"),
                             r, strict=True)) for r in cur.fetchall()]

    # -- reads (the evaluation thread)
    def counts(self) -> dict[str, int]:
        with self._read_lock:
            db = self._reader
            joined = db.execute("SELECT COUNT(*) FROM predictions p JOIN labels l "
                                "ON p.id = l.id AND p.row = l.row").fetchone()[0]
            preds = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            labels = db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        return {"predictions": int(preds), "labels": int(labels), "joined": int(joined)}

    def window(self, since: float, features: bool = True) -> Iterator[Joined]:
        """The predictions made since ``since``, each with its label if any (without the
        request features unless ``features``: decoding them is most of the cost)."""
        column = "p.features" if features else "NULL"
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT p.version, p.ts, p.label, p.value, p.proba, p.classes, {column}, "
                "l.label, l.value, l.metadata, l.ts FROM predictions p LEFT JOIN labels l "
                "ON p.id = l.id AND p.row = l.row WHERE p.ts >= ? ORDER BY p.ts",
                (since,)).fetchall()
        loads = orjson.loads
        # A version's rows share a few class lists: each text decoded once (one list
        # object for all its rows; nothing changes them).
        class_lists: dict[str, Any] = {}
        for r in rows:
            proba, classes, feats, meta = r[4], r[5], r[6], r[9]
            if classes is not None:
                classes = class_lists.get(classes) or class_lists.setdefault(
                    classes, loads(classes))
            yield Joined(r[0], r[1], r[2], r[3], None if proba is None else loads(proba),
                         classes, None if feats is None else loads(feats), r[7], r[8],
                         None if meta is None else loads(meta), r[10])

    def table_counts(self) -> dict[str, int]:
        return dict(self._counts)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
