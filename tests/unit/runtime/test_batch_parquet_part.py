"""`kustos batch`'s own Parquet part writer and row-group reader against fastparquet.

The writer must give the bytes `fastparquet.write` gives for the same frame (with the
options `kustos batch` always used), so readers see exactly what they saw before; the
reader must give the features and ids `to_pandas` gives, for every numeric dtype."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kustos.runtime.batch import parquet_part, sink, source

fastparquet = pytest.importorskip("fastparquet")
pd = pytest.importorskip("pandas")


def fastparquet_bytes(id_column: str, ids: list[str], columns: dict[str, Any]) -> bytes:
    """What sink wrote before parquet_part: fastparquet.write of a DataFrame."""
    frame = pd.DataFrame({id_column: pd.Series(ids, dtype=object), **columns})
    buffer = io.BytesIO()
    buffer.close = lambda: None  # type: ignore[method-assign]
    fastparquet.write("part.parquet", frame, compression="SNAPPY", write_index=False,
                      stats=False, object_encoding="utf8", has_nulls=[],
                      open_with=lambda _path, _mode: buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(("first", "rows"), [
    (0, 1), (0, 10), (7, 3), (95, 10), (0, 10000), (123456, 10000), (9999990, 25),
    (2**32 - 5, 10)])
def test_row_number_page_is_the_plain_encoding_of_the_numbers(first: int, rows: int) -> None:
    from fastparquet import speedups

    want = speedups.pack_byte_array([str(i).encode() for i in range(first, first + rows)])
    assert parquet_part.row_number_page(first, rows) == want


CASES = {
    "labels and probabilities": lambda n, rng: {
        "predict": rng.integers(0, 3, n), "predict_proba_0": rng.random(n),
        "predict_proba_1": rng.random(n)},
    "bool, float32, int32": lambda n, rng: {
        "flag": rng.random(n) > 0.5, "score": rng.random(n).astype(np.float32),
        "bucket": rng.integers(-5, 5, n).astype(np.int32)},
    "NaN and infinities": lambda n, rng: {
        "value": np.where(rng.random(n) > 0.5, np.nan, rng.standard_normal(n) * np.inf)},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("first", "rows"), [(0, 1), (0, 7), (3000, 1000), (99995, 10)])
def test_part_bytes_equal_fastparquet_write(case: str, first: int, rows: int) -> None:
    columns = CASES[case](rows, np.random.default_rng(rows))
    writer = parquet_part.PartWriter("inference_id")
    ids = source.RowNumbers(first, rows)
    want = fastparquet_bytes("inference_id", list(ids), columns)
    assert writer.encode(ids, columns) == want
    text_ids = [f"k-{i}-é" for i in range(rows)]  # ids from the input: any UTF-8
    assert writer.encode(text_ids, columns) == fastparquet_bytes("inference_id", text_ids,
                                                                 columns)
    # A second chunk through the same writer (its kept metadata) is right too.
    assert writer.encode(ids, columns) == want


@pytest.mark.filterwarnings("ignore:The .fastparquet. engine is deprecated")
def test_parts_read_back_as_before_with_fastparquet_and_pandas(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    columns = {"predict": rng.integers(0, 2, 500), "predict_proba_1": rng.random(500)}
    data = sink.encode("inference_id", source.RowNumbers(1000, 500), columns, "parquet",
                       parquet_part.PartWriter("inference_id"))
    (tmp_path / "p.parquet").write_bytes(data)
    for frame in (fastparquet.ParquetFile(io.BytesIO(data)).to_pandas(),
                  pd.read_parquet(tmp_path / "p.parquet", engine="fastparquet")):
        assert list(frame.columns) == ["inference_id", "predict", "predict_proba_1"]
        assert frame["inference_id"].tolist() == [str(i) for i in range(1000, 1500)]
        assert frame["predict"].dtype == np.int64 and frame["predict_proba_1"].dtype == np.float64
        np.testing.assert_array_equal(frame["predict_proba_1"], columns["predict_proba_1"])


def test_text_predictions_go_through_fastparquet() -> None:
    columns = {"predict": np.array(["cat", "dog", None], dtype=object)}
    writer = parquet_part.PartWriter("id")
    assert writer.encode(["a", "b", "c"], columns) is None
    data = sink.encode("id", ["a", "b", "c"], columns, "parquet", writer)
    frame = fastparquet.ParquetFile(io.BytesIO(data)).to_pandas()
    assert frame["predict"].tolist()[:2] == ["cat", "dog"] and frame["predict"].isna()[2]


def test_row_numbers_are_the_strings_of_the_rows() -> None:
    ids = source.RowNumbers(98, 4)
    assert list(ids) == ["98", "99", "100", "101"] and len(ids) == 4
    assert ids[0] == "98" and ids[-1] == "101" and ids[1:3] == ["99", "100"]
    assert ids == ["98", "99", "100", "101"] and ids != ["98"]


def test_row_groups_read_as_to_pandas_reads_them(tmp_path: Path) -> None:
    """Every numeric dtype, nulls, an integer id; chunks of 300 over row groups of 400."""
    rng = np.random.default_rng(2)
    n = 1000
    frame = pd.DataFrame({
        "key": np.arange(5000, 5000 + n),
        "f64": rng.random(n),
        "f64_nulls": np.where(rng.random(n) > 0.8, np.nan, rng.random(n)),
        "f32": rng.random(n).astype(np.float32),
        "i64": rng.integers(-100, 100, n),
        "i8": rng.integers(-100, 100, n).astype(np.int8),
        "u16": rng.integers(0, 1000, n).astype(np.uint16),
        "flag": rng.random(n) > 0.5,
        "i_nulls": pd.array([None if i % 7 == 0 else i for i in range(n)], dtype="Int64"),
    })
    path = tmp_path / "in.parquet"
    fastparquet.write(str(path), frame, write_index=False,
                      row_group_offsets=list(range(0, n, 400)))
    lay = source.layout(path, "parquet", None, "key")
    assert lay.features == tuple(c for c in frame.columns if c != "key")
    want = fastparquet.ParquetFile(str(path)).to_pandas()
    x_want = want[list(lay.features)].to_numpy(dtype=np.float64, na_value=np.nan)
    got = list(source.chunks(path, "parquet", 300, None, lay))
    assert [c.first_row for c in got] == [0, 300, 600, 900]
    x = np.concatenate([c.x for c in got if c.x is not None])
    np.testing.assert_array_equal(x, x_want)
    assert all(c.x is not None and c.x.flags.c_contiguous for c in got)
    ids = [i for c in got for i in source.parse(c, "parquet", lay, "in.parquet").ids]
    assert ids == [str(k) for k in range(5000, 5000 + n)]
