"""Reading the input file: its columns, and its rows in chunks of one shard.

Chunk k holds data rows [k * chunk_size, (k + 1) * chunk_size) of the file, in file order,
whatever the shard count; shard i of n takes the chunks with k % n == i. Every shard reads
through the whole file (skipping is cheap next to parsing and predicting), so each knows
the total row count when it is done.

Parquet (fastparquet, imported on first use: it is in the kustos-explain image, not the
kustos image) is cut the same way, from the row groups: the row counts come from the
footer, so a shard reads only the row groups that hold its missing chunks, one at a time
(memory: one row group plus one chunk).

The input is a local file or ``s3://bucket/key`` (a string, or a remote.S3Input that says
where its credentials come from), read in place (see remote).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import orjson

from . import remote

FORMATS = ("csv", "jsonl", "parquet")
# A local file, or s3://bucket/key (read in place, see remote).
Input = Path | str | remote.S3Input
name_of = remote.name_of


class InputError(Exception):
    """The input cannot be read as asked; the message names the file, rows and columns
    (never a cell's value)."""


@dataclass(frozen=True)
class Layout:
    """Which fields of a row are the features (in model order) and which is the id."""

    features: tuple[str, ...]
    id_field: str | None
    # csv: column positions of the features and of the id; jsonl and parquet: None.
    feature_positions: tuple[int, ...] | None = None
    id_position: int | None = None
    # s3://: the ETag of the object the layout was read from ("" unknown); the chunks are
    # read from that version only (remote.S3Input.etag).
    version: str = ""


@dataclass(frozen=True)
class Chunk:
    """One chunk, not parsed yet: raw lines (csv, jsonl), or a Parquet chunk's columns
    (only when the chunk is wanted: a Parquet chunk that is not is never read)."""

    index: int
    first_row: int
    lines: list[str]
    count: int | None = None  # rows, for Parquet (no lines)
    x: np.ndarray[Any, Any] | None = None  # a wanted Parquet chunk's features (float64)
    id_values: Any = None  # and its id column (a pandas Series), if the input has one
    wanted: bool = True

    @property
    def rows(self) -> int:
        return len(self.lines) if self.count is None else self.count


class RowNumbers(Sequence[str]):
    """The ids of rows ``first`` .. ``first + rows - 1`` when the id is the row number:
    the strings are made only when asked for (CSV, JSONL); a Parquet part is written
    from the numbers (parquet_part.row_number_page)."""

    def __init__(self, first: int, rows: int) -> None:
        self.first, self.rows = first, rows
        self._numbers = range(first, first + rows)

    def __len__(self) -> int:
        return self.rows

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return list(map(str, self._numbers[index]))
        return str(self._numbers[index])

    def __iter__(self) -> Iterator[str]:
        return map(str, self._numbers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Parsed:
    """A chunk as arrays: features (rows x features, float64) and one id per row."""

    x: np.ndarray[Any, Any]
    ids: Sequence[str]


def _data_lines(handle: io.TextIOBase) -> Iterator[str]:
    return (line for line in handle if line.strip())


def _open_text(path: Input, version: str = "") -> io.TextIOBase:
    if remote.is_remote(path):
        return remote.open_text(_remote(path, version))
    return Path(str(path)).open(encoding="utf-8", newline="")


def _remote(path: Input, version: str = "") -> remote.S3Input:
    where = remote.s3_input(path)
    return dataclasses.replace(where, etag=version) if version else where


def _version(handle: Any) -> str:
    """The ETag a remote reader (maybe under a text or buffered wrapper) is pinned to."""
    raw = getattr(getattr(handle, "buffer", handle), "raw", handle)
    return raw.etag if isinstance(raw, remote.S3Reader) else ""


def _header(path: Input) -> tuple[list[str], str]:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                return [c.strip() for c in line.rstrip("\r\n").split(",")], _version(handle)
    raise InputError(f"{name_of(path)}: empty file (a CSV input starts with a header row)")


def _first_object(path: Input) -> tuple[Any, str]:
    with (remote.open_binary(_remote(path)) if remote.is_remote(path)
          else Path(str(path)).open("rb")) as handle:
        for line in handle:
            if line.strip():
                try:
                    return orjson.loads(line), _version(handle)
                except orjson.JSONDecodeError:
                    raise InputError(f"{name_of(path)}: row 0 is not JSON") from None
    raise InputError(f"{name_of(path)}: no rows")


def layout(path: Input, fmt: str, features: Sequence[str] | None,
           id_field: str | None) -> Layout:
    """The features and id of ``path``: ``features`` (all fields but the id when None)."""
    if fmt == "csv":
        header, version = _header(path)
        position = {name: i for i, name in enumerate(header)}
        missing = [c for c in [*(features or ()), *([id_field] if id_field else [])]
                   if c not in position]
        if missing:
            raise InputError(f"{name_of(path)}: no column {', '.join(missing)} in the header")
        chosen = tuple(features) if features else tuple(c for c in header if c != id_field)
        return Layout(chosen, id_field, tuple(position[c] for c in chosen),
                      position[id_field] if id_field else None, version)
    if fmt == "jsonl":
        first, version = _first_object(path)
        if isinstance(first, list):
            if features or id_field:
                raise InputError(f"{name_of(path)}: rows are JSON arrays; featureColumns and "
                                 "idColumn need JSON objects")
            return Layout(tuple(str(i) for i in range(len(first))), None, version=version)
        if not isinstance(first, dict):
            raise InputError(f"{name_of(path)}: a row must be a JSON object or array")
        keys = list(first)
        chosen = tuple(features) if features else tuple(k for k in keys if k != id_field)
        return Layout(chosen, id_field, version=version)
    if fmt == "parquet":
        return _parquet_layout(path, features, id_field)
    raise InputError(f"input format {fmt!r} is not supported ({', '.join(FORMATS)})")


def fastparquet() -> Any:
    """The fastparquet module, or a clear error where it is not installed."""
    try:
        import fastparquet as module
    except ImportError:
        raise InputError("Parquet needs the fastparquet package, which is in the "
                         "kustos-explain image (pip install 'kustos[explain]'), not in the "
                         "kustos image") from None
    return module


def _parquet_file(path: Input, version: str = "") -> Any:
    """The file's footer read; a remote one keeps its reader as ``pf.remote``."""
    try:
        if remote.is_remote(path):
            reader = remote.S3Reader(_remote(path, version), block=remote.FIRST_BLOCK)
            pf = fastparquet().ParquetFile(reader)
            pf.remote = reader
            return pf
        return fastparquet().ParquetFile(str(path))
    except (OSError, ValueError, TypeError, IndexError) as err:
        raise InputError(f"{name_of(path)}: not a Parquet file ({type(err).__name__})") from None


def _parquet_layout(path: Input, features: Sequence[str] | None,
                    id_field: str | None) -> Layout:
    pf = _parquet_file(path)
    dtypes = dict(pf.dtypes)
    missing = [c for c in [*(features or ()), *([id_field] if id_field else [])]
               if c not in dtypes]
    if missing:
        raise InputError(f"{name_of(path)}: no column {', '.join(missing)} in the schema")
    chosen = tuple(features) if features else tuple(c for c in pf.columns if c != id_field)
    for column in chosen:
        kind = getattr(dtypes[column], "kind", "O")
        if kind not in "biuf":  # bool, integers, floats (nullable ones included)
            raise InputError(f"{name_of(path)}: column {column} is {dtypes[column]}, not numeric")
    return Layout(chosen, id_field, version=_version(getattr(pf, "remote", None)))


def chunks(path: Input, fmt: str, chunk_size: int,
           wanted: Callable[[int], bool] | None = None,
           lay: Layout | None = None) -> Iterator[Chunk]:
    """Every chunk of the file, in order (the CSV header skipped), each asked ``wanted``
    once. Parquet: only the wanted chunks are read (the features and id of ``lay``), the
    others only counted."""
    wanted = wanted or (lambda _: True)
    if fmt == "parquet":
        yield from _parquet_chunks(path, chunk_size, wanted,
                                   lay or _parquet_layout(path, None, None))
        return
    with _open_text(path, lay.version if lay else "") as handle:
        lines = _data_lines(handle)
        if fmt == "csv":
            next(lines, None)
        for index in itertools.count():
            batch = list(itertools.islice(lines, chunk_size))
            if not batch:
                return
            yield Chunk(index, index * chunk_size, batch, wanted=wanted(index))


@dataclass(frozen=True)
class _Group:
    """One Parquet row group as read: its features and its id column."""

    x: np.ndarray[Any, Any]  # rows x features, float64, Fortran order
    id_values: Any  # pandas Series, or None


def _read_group(pf: Any, handle: Any, g: int, lay: Layout, first_row: int,
                name: str) -> _Group:
    """Row group ``g``: each float64 feature column decoded by fastparquet straight into
    its column of the feature matrix (no DataFrame, no copy out of one); other numeric
    features and the id through the DataFrame fastparquet allocates, as to_pandas does."""
    rg = pf.row_groups[g]
    rows = int(rg.num_rows)
    dtypes = pf.dtypes
    in_place = [c for c in lay.features
                if c != lay.id_field and dtypes[c] == np.float64]
    placed = set(in_place)
    other = list(dict.fromkeys(
        [*(c for c in lay.features if c not in placed),
         *([lay.id_field] if lay.id_field else [])]))
    categories = pf.check_categories(None)
    frame, assign = pf.pre_allocate(rows, other, categories, False)
    x = np.empty((len(lay.features), rows), dtype=np.float64).T
    for j, column in enumerate(lay.features):
        if column in placed:
            assign[column] = x[:, j]
    wanted = [*in_place, *other]
    try:
        if isinstance(handle, remote.S3Reader):
            # The columns' bytes of this row group in one GET (they are contiguous in
            # any writer's file but one column may sit between two we read).
            spans = [_span(c.meta_data) for c in rg.columns
                     if ".".join(c.meta_data.path_in_schema) in wanted]
            handle.prefetch(min(s for s, _ in spans), max(e for _, e in spans))
        pf.read_row_group_file(rg, wanted, categories, index=False,
                               assign=assign, infile=handle)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as err:
        raise InputError(f"{name}: row group {g} cannot be read "
                         f"({type(err).__name__})") from None
    for j, column in enumerate(lay.features):
        if column not in placed:
            try:
                x[:, j] = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                raise InputError(f"{name}: rows {first_row}..{first_row + rows - 1} "
                                 "cannot be read as numbers") from None
    return _Group(x, frame[lay.id_field] if lay.id_field else None)


def _span(meta: Any) -> tuple[int, int]:
    """[start, end) of a column chunk in the file (its dictionary page first, if any)."""
    start = min(meta.dictionary_page_offset or meta.data_page_offset, meta.data_page_offset)
    return start, start + meta.total_compressed_size


def _parquet_chunks(path: Input, chunk_size: int, wanted: Callable[[int], bool],
                    lay: Layout) -> Iterator[Chunk]:
    import pandas as pd  # comes with fastparquet

    pf = _parquet_file(path, lay.version)
    sizes = [int(rg.num_rows) for rg in pf.row_groups]
    starts = list(itertools.accumulate([0, *sizes]))
    total = starts[-1]
    held: tuple[int, _Group] | None = None  # the last row group read (chunks may share it)

    remote_reader = getattr(pf, "remote", None)
    with remote_reader or Path(str(path)).open("rb") as handle:
        def group(g: int) -> _Group:
            nonlocal held
            if held is None or held[0] != g:
                held = None  # let the previous one go before reading the next
                held = (g, _read_group(pf, handle, g, lay, starts[g], name_of(path)))
            return held[1]

        for index in range(-(-total // chunk_size)):
            first, end = index * chunk_size, min(total, (index + 1) * chunk_size)
            if not wanted(index):
                yield Chunk(index, first, [], end - first, wanted=False)
                continue
            xs, ids = [], []
            for g, (lo, hi) in enumerate(itertools.pairwise(starts)):
                if hi > first and lo < end:
                    part = group(g)
                    cut = slice(max(first, lo) - lo, min(end, hi) - lo)
                    xs.append(part.x[cut])
                    if part.id_values is not None:
                        ids.append(part.id_values.iloc[cut])
            # C order, as a model reads rows (trees walk one row at a time).
            x = np.ascontiguousarray(xs[0] if len(xs) == 1 else np.concatenate(xs))
            id_values = (None if not ids else ids[0] if len(ids) == 1
                         else pd.concat(ids, ignore_index=True))
            yield Chunk(index, first, [], end - first, x, id_values)


def parse(chunk: Chunk, fmt: str, lay: Layout, name: str) -> Parsed:
    """The chunk's features and ids. A bad row fails with its row number and field."""
    if fmt == "csv":
        return _parse_csv(chunk, lay, name)
    if fmt == "parquet":
        return _parse_parquet(chunk, lay, name)
    return _parse_jsonl(chunk, lay, name)


def _parse_parquet(chunk: Chunk, lay: Layout, name: str) -> Parsed:
    assert chunk.x is not None, "a Parquet chunk is parsed only when it was read"
    ids: Sequence[str]
    if lay.id_field is not None:
        values = chunk.id_values
        if values.isna().any():
            row = chunk.first_row + int(values.isna().to_numpy().argmax())
            raise InputError(f"{name}: row {row}, column {lay.id_field}: no id")
        ids = values.astype(str).tolist()
    else:
        ids = RowNumbers(chunk.first_row, chunk.rows)
    return Parsed(chunk.x.reshape(chunk.rows, len(lay.features)), ids)


def _parse_csv(chunk: Chunk, lay: Layout, name: str) -> Parsed:
    assert lay.feature_positions is not None
    try:
        x = np.loadtxt(chunk.lines, delimiter=",", dtype=np.float64,
                       usecols=lay.feature_positions, ndmin=2)
    except ValueError:
        raise _bad_csv_row(chunk, lay, name) from None
    ids: Sequence[str]
    if lay.id_position is not None:
        pos = lay.id_position
        ids = [line.rstrip("\r\n").split(",")[pos].strip() for line in chunk.lines]
    else:
        ids = RowNumbers(chunk.first_row, len(chunk.lines))
    return Parsed(x, ids)


def _bad_csv_row(chunk: Chunk, lay: Layout, name: str) -> InputError:
    assert lay.feature_positions is not None
    width = max(*lay.feature_positions, lay.id_position or 0) + 1
    for i, line in enumerate(chunk.lines):
        cells = line.rstrip("\r\n").split(",")
        row = chunk.first_row + i
        if len(cells) < width:
            return InputError(f"{name}: row {row} has {len(cells)} columns, needs {width}")
        for column, pos in zip(lay.features, lay.feature_positions, strict=True):
            try:
                float(cells[pos])
            except ValueError:
                return InputError(f"{name}: row {row}, column {column}: not a number")
    return InputError(f"{name}: rows {chunk.first_row}..{chunk.first_row + len(chunk.lines) - 1}"
                      " cannot be read as numbers")


def _parse_jsonl(chunk: Chunk, lay: Layout, name: str) -> Parsed:
    rows: list[list[Any]] = []
    ids: list[str] = []
    for i, line in enumerate(chunk.lines):
        row = chunk.first_row + i
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InputError(f"{name}: row {row} is not JSON") from None
        if isinstance(obj, list):
            if len(obj) != len(lay.features):
                raise InputError(f"{name}: row {row} has {len(obj)} values, needs "
                                 f"{len(lay.features)}")
            rows.append(obj)
            ids.append(str(row))
            continue
        if not isinstance(obj, dict):
            raise InputError(f"{name}: row {row} is not a JSON object")
        try:
            rows.append([obj[c] for c in lay.features])
        except KeyError as missing:
            raise InputError(f"{name}: row {row} has no field {missing}") from None
        if lay.id_field is not None:
            if lay.id_field not in obj:
                raise InputError(f"{name}: row {row} has no field {lay.id_field!r}")
            ids.append(str(obj[lay.id_field]))
        else:
            ids.append(str(row))
    try:
        x = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        for i, values in enumerate(rows):
            for column, value in zip(lay.features, values, strict=True):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InputError(f"{name}: row {chunk.first_row + i}, field {column}: "
                                     "not a number") from None
        raise InputError(f"{name}: rows cannot be read as numbers") from None
    return Parsed(x.reshape(len(rows), len(lay.features)), ids)
