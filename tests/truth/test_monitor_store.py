"""The monitor's SQLite store: the join in either order, the bounds, retention, restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kustos.runtime.truth.store import Label, Prediction, Store


def pred(rid: str, ts: float, label: str = "1", version: str = "1") -> Prediction:
    return Prediction(rid, 0, version, ts, label, None, [0.25, 0.75], ["0", "1"], {"f": 1})


def lab(rid: str, ts: float, label: str = "1") -> Label:
    return Label(rid, 0, label, None, {"group": "a"}, ts, "v2")


def test_labels_join_whichever_arrives_first(tmp_path: Path) -> None:
    store = Store(tmp_path, max_rows=100, retention=3600)
    assert store.add_labels([lab("early", 10.0)]) == []  # kept, nothing to join yet
    joined = store.add_predictions([pred("early", 5.0), pred("late", 6.0)])
    assert [(p.id, ts) for p, ts in joined] == [("early", 10.0)]
    joined_l = store.add_labels([lab("late", 20.0, "0")])
    assert [(lb.id, ts) for lb, ts in joined_l] == [("late", 6.0)]
    rows = {r.ts: r for r in store.window(0)}
    assert rows[5.0].true_label == "1" and rows[5.0].label_ts == 10.0
    assert rows[6.0].true_label == "0" and rows[6.0].metadata == {"group": "a"}
    assert rows[5.0].proba == [0.25, 0.75] and rows[5.0].features == {"f": 1}
    assert store.counts() == {"predictions": 2, "labels": 2, "joined": 2}
    # A second label for an id replaces the first.
    store.add_labels([lab("late", 30.0, "1")])
    assert {r.ts: r.true_label for r in store.window(0)}[6.0] == "1"
    assert store.counts()["labels"] == 2
    store.close()


def test_rows_are_bounded_and_the_oldest_go_first(tmp_path: Path) -> None:
    store = Store(tmp_path, max_rows=50, retention=10**9)
    for i in range(300):
        store.add_predictions([pred(f"p{i}", float(i))])
        store.add_labels([lab(f"orphan{i}", float(i))])  # labels of unknown ids: bounded
    counts = store.counts()
    assert 0 < counts["predictions"] <= 50 and 0 < counts["labels"] <= 50, counts
    kept = [r.ts for r in store.window(0)]
    assert kept == sorted(kept) and kept[-1] == 299.0 and min(kept) >= 300 - 50
    assert store.evicted["predictions"] >= 250 and store.evicted["labels"] >= 250
    # The same id logged again is one row, not two: the bound counts rows.
    store.add_predictions([pred("p299", 299.0)] * 3)
    assert store.counts()["predictions"] == counts["predictions"]
    store.close()


def test_retention_drops_old_rows(tmp_path: Path) -> None:
    store = Store(tmp_path, max_rows=1000, retention=100)
    store.add_predictions([pred("old", 1000.0), pred("new", 1950.0)])
    store.add_labels([lab("old", 1001.0), lab("new", 1960.0)])
    assert store.expire(now=2000.0) == 2
    assert [r.ts for r in store.window(0)] == [1950.0]
    assert store.counts() == {"predictions": 1, "labels": 1, "joined": 1}
    store.close()


def test_the_store_survives_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path, max_rows=1000, retention=10**9)
    store.add_predictions([pred("a", 1.0)])
    store.add_labels([lab("a", 2.0)])
    store.bulk_done("file:///x.csv", 10, "123", 5, 1, None)
    store.close()
    again = Store(tmp_path, max_rows=1000, retention=10**9)
    assert again.counts() == {"predictions": 1, "labels": 1, "joined": 1}
    assert again.bulk_seen("file:///x.csv", 10, "123")
    assert not again.bulk_seen("file:///x.csv", 11, "123")  # rewritten: loaded again
    mode = sqlite3.connect(again.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    again.close()
