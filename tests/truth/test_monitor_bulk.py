"""Bulk label sources against a real moto S3 server and local files: one object or a
prefix, each file loaded once (and again once rewritten), unreadable files and sources
reported in the status, never fatal."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from truth_support import moto_s3, s3_put

from kustos.runtime.truth import config
from kustos.runtime.truth.bulk import BulkLoader
from kustos.runtime.truth.metrics import TruthMetrics
from kustos.runtime.truth.monitor import Monitor
from kustos.runtime.truth.store import Store


@pytest.mark.timeout(120)
def test_sources_load_once_and_report_problems(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    local = tmp_path / "drop"
    local.mkdir()
    (local / "no-id.csv").write_text("key,label\n1,2\n")
    (local / "ok.csv").write_text("id,label,region\nl1,1,north\nl2,0,south\n")
    with moto_s3("labels") as env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3_put(env, "labels", "one.csv", b"id,label\na,1\nb,0\nc,\n")
        buf = io.BytesIO()
        pd.DataFrame({"id": ["p1", "p2"], "label": ["x", "y"]}).to_parquet(
            buf, engine="fastparquet", index=False)
        s3_put(env, "labels", "day/ok.parquet", buf.getvalue())
        s3_put(env, "labels", "day/broken.parquet", b"not a parquet file")
        s3_put(env, "labels", "day/ignored.csv", b"id,label\nz,1\n")  # not the format
        cfg = config.parse({"model": "m", "bulk": [
            {"uri": "s3://labels/one.csv"}, {"uri": "s3://labels/day/", "format": "parquet"},
            {"uri": local.as_uri() + "/", "format": "csv"},
            {"uri": "s3://no-such-bucket/x/", "format": "csv"}]})
        store = Store(tmp_path / "store", 1000, 10**9)
        monitor = Monitor(cfg, store, TruthMetrics("m"))
        loader = BulkLoader(monitor, tmp_path / "store")
        for source in cfg.bulk:
            loader.poll(source)
        st = monitor.status()
        by_uri = {b["uri"]: b for b in st["bulk"]}
        one = by_uri["s3://labels/one.csv"]
        assert (one["files"], one["rows"], one["badRows"]) == (1, 3, 1), one
        assert "row 2" in one["badExamples"][0] and "label is missing" in one["badExamples"][0]
        day = by_uri["s3://labels/day/"]
        assert (day["files"], day["rows"]) == (2, 2), day
        assert [f["uri"] for f in day["failedFiles"]] == ["s3://labels/day/broken.parquet"]
        drop = by_uri[local.as_uri() + "/"]
        assert drop["rows"] == 2 and "no column(s) id" in drop["failedFiles"][0]["error"]
        missing = by_uri["s3://no-such-bucket/x/"]
        assert "NoSuchBucket" in missing["lastError"], missing
        assert st["error"]["reason"] == "BulkSourceFailed"
        assert store.counts()["labels"] == 2 + 2 + 2  # a, b; p1, p2; l1, l2

        # A second poll loads nothing again; a rewritten object is loaded anew.
        for source in cfg.bulk:
            loader.poll(source)
        assert [by["files"] for by in monitor.status()["bulk"]][:3] == [1, 2, 2]
        s3_put(env, "labels", "one.csv", b"id,label\na,0\nd,1\n")
        loader.poll(cfg.bulk[0])
        st = monitor.status()
        assert st["bulk"][0]["files"] == 2 and store.counts()["labels"] == 7
        rows = {r[0]: r[1] for r in store._reader.execute("SELECT id, label FROM labels")}
        assert rows["a"] == "0"  # the newer file's label replaced the older
        # Without the unreachable source, the unreadable files are the error.
        cfg2 = config.parse({"model": "m", "bulk": [
            {"uri": "s3://labels/day/", "format": "parquet"}]})
        monitor2 = Monitor(cfg2, store, TruthMetrics("m"))
        BulkLoader(monitor2, tmp_path / "store")
        err = monitor2.status()["error"]
        assert err["reason"] == "BulkFileUnreadable" and "broken.parquet" in err["message"]
        body = orjson.loads(orjson.dumps(monitor2.status()))  # JSON-ready
        assert body["bulk"][0]["failedFiles"]
        store.close()
