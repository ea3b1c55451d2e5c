"""A chunk's Parquet part, built without pandas: the bytes ``fastparquet.write`` gives for
the same columns (one row group, one PLAIN data page per column, SNAPPY, no statistics,
REQUIRED columns, fastparquet's pandas metadata), at a fraction of its cost.

Why: with a cheap model, fastparquet's per-file work (a DataFrame, the schema and the
pandas metadata made again, a Series per column) and one Python string per row id cost
more than the prediction. Here the schema and metadata are made once by fastparquet
itself (``make_metadata``) and kept; per chunk only the pages and the footer are built.
A row-number id column is written straight from the row numbers: the Parquet PLAIN
BYTE_ARRAY page (a 4-byte little-endian length, then the digits, per row) is computed
with numpy, no string per row. ``tests/unit/runtime/test_batch_parquet_part.py`` checks
the bytes against ``fastparquet.write``.

Only what the batch output holds goes this way: string ids and numeric or boolean
predictions. Anything else (text predictions, other dtypes) answers None and is written
by fastparquet.write.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .source import RowNumbers

MARKER = b"PAR1"
# fastparquet splits a column into pages of at most this many bytes (MAX_PAGE_SIZE);
# one page per column is all this writer makes, so a bigger column goes to fastparquet.
ONE_PAGE_BYTES = 500 * 2**20
# The dtypes written here, as fastparquet writes them (PLAIN, their own width).
PLAIN_DTYPES = frozenset(np.dtype(t) for t in ("float64", "float32", "int64", "int32", "bool"))


def row_number_page(first: int, count: int) -> bytes:
    """The PLAIN encoding of str(first) .. str(first + count - 1) as BYTE_ARRAY values:
    per value its length (uint32, little-endian) then its ASCII digits. Numbers of one
    digit count make a table of equal records, one row each, built column-wise."""
    blocks: list[bytes] = []
    low, end = first, first + count
    while low < end:
        width = len(str(low))
        high = min(end, 10**width)
        kind = np.uint32 if high <= 2**32 else np.uint64
        rest = np.arange(low, high, dtype=kind)
        records = np.zeros((high - low, 4 + width), dtype=np.uint8)
        records[:, 0] = width  # < 256: the length's low byte; the other three stay 0
        for place in range(width - 1, -1, -1):  # the last digit first
            # A division by a scalar, one column at a time: several times faster in
            # numpy than one broadcast division by every power of ten.
            quotient = rest // 10
            records[:, 4 + place] = rest - quotient * 10 + 48
            rest = quotient
        blocks.append(records.tobytes())
        low = high
    return b"".join(blocks)


def _utf8_page(ids: Sequence[str]) -> bytes:
    from fastparquet import speedups

    return speedups.pack_byte_array(  # type: ignore[no-any-return]
        [s.encode("utf-8") for s in ids])


class PartWriter:
    """Parquet parts of one output: ``id_column`` then the predictions. Keeps the schema
    and pandas metadata fastparquet made for the first chunk of each column layout."""

    def __init__(self, id_column: str) -> None:
        self.id_column = id_column
        self._metadata: dict[tuple[tuple[str, str], ...], Any] = {}

    def encode(self, ids: Sequence[str],
               columns: Mapping[str, np.ndarray[Any, Any]]) -> bytes | None:
        """The part's bytes, or None for columns this writer does not write."""
        values = {name: np.asarray(c) for name, c in columns.items()}
        if any(v.dtype not in PLAIN_DTYPES or v.ndim != 1 for v in values.values()):
            return None
        rows = len(ids)
        if rows == 0 or any(len(v) != rows for v in values.values()):
            return None
        if isinstance(ids, RowNumbers):
            id_page = row_number_page(ids.first, ids.rows)
        else:
            id_page = _utf8_page(ids)
        if len(id_page) > ONE_PAGE_BYTES or any(v.nbytes > ONE_PAGE_BYTES
                                                for v in values.values()):
            return None
        fmd = self._file_metadata(values)
        pages = [id_page, *(_plain(v) for v in values.values())]
        return _part(fmd, pages, rows)

    def _file_metadata(self, values: Mapping[str, np.ndarray[Any, Any]]) -> Any:
        key = ((self.id_column, "id"), *((n, v.dtype.str) for n, v in values.items()))
        fmd = self._metadata.get(key)
        if fmd is None:
            import pandas as pd
            from fastparquet import writer

            # A one-row frame of the same columns and dtypes: what fastparquet.write
            # makes its schema and pandas metadata from (they do not depend on values).
            sample = pd.DataFrame({self.id_column: pd.Series(["0"], dtype=object),
                                   **{n: v[:1] for n, v in values.items()}})
            fmd = writer.make_metadata(sample, has_nulls=[], object_encoding="utf8",
                                       index_cols=[], cols_dtype=sample.columns.dtype)
            self._metadata[key] = fmd
        return fmd


def _plain(values: np.ndarray[Any, Any]) -> bytes | np.ndarray[Any, Any]:
    if values.dtype == np.bool_:
        # Bit-packed, least significant bit first, as fastparquet's convert() does.
        return np.packbits(values, bitorder="little")
    return values.astype(values.dtype.newbyteorder("<"), copy=False)


def _part(fmd: Any, pages: Sequence[bytes | np.ndarray[Any, Any]], rows: int) -> bytes:
    from fastparquet import parquet_thrift
    from fastparquet.cencoding import ThriftObject
    from fastparquet.compression import compress_data

    pieces: list[bytes] = [MARKER]
    offset = len(MARKER)
    chunks = []
    schema = [se for se in fmd.schema if se.type is not None]
    for se, page in zip(schema, pages, strict=True):
        # fastparquet ends every v1 data page with 8 zero bytes; the same here.
        raw = (page if isinstance(page, bytes) else page.tobytes()) + b"\x00" * 8
        packed = compress_data(raw, "SNAPPY")
        header = parquet_thrift.PageHeader(
            type=parquet_thrift.PageType.DATA_PAGE, uncompressed_page_size=len(raw),
            compressed_page_size=len(packed),
            data_page_header=parquet_thrift.DataPageHeader(
                num_values=rows, encoding=parquet_thrift.Encoding.PLAIN,
                definition_level_encoding=parquet_thrift.Encoding.RLE,
                repetition_level_encoding=parquet_thrift.Encoding.BIT_PACKED, i32=1),
            i32=1).to_bytes()
        written = len(header) + len(packed)
        meta = ThriftObject.from_fields(
            "ColumnMetaData", type=se.type, path_in_schema=[se.name],
            encodings=[parquet_thrift.Encoding.PLAIN],
            codec=parquet_thrift.CompressionCodec.SNAPPY, num_values=rows,
            statistics=parquet_thrift.Statistics(null_count=0),
            data_page_offset=offset, dictionary_page_offset=None,
            encoding_stats=[parquet_thrift.PageEncodingStats(
                page_type=parquet_thrift.PageType.DATA_PAGE,
                encoding=parquet_thrift.Encoding.PLAIN, count=1, i32=1)],
            key_value_metadata=[], total_uncompressed_size=written + len(raw) - len(packed),
            total_compressed_size=written, i32list=[1, 4])
        chunks.append(parquet_thrift.ColumnChunk(file_offset=offset, meta_data=meta,
                                                 file_path=None))
        pieces += [header, bytes(packed)]
        offset += written
    group = ThriftObject.from_fields(
        "RowGroup", num_rows=rows, columns=chunks,
        total_byte_size=sum(c.meta_data.total_uncompressed_size for c in chunks))
    footer = fmd.copy()
    footer.row_groups = [group]
    footer.num_rows = rows
    tail = footer.to_bytes()
    pieces += [tail, struct.pack("<I", len(tail)), MARKER]
    return b"".join(pieces)
