"""Writing predictions: one file per chunk, named by the chunk's index, written atomically.

In a directory, a chunk file is written under a temporary name, synced, then renamed to
``part-NNNNNN.<ext>``: a file with the final name is always complete, so a pod killed at
any moment resumes at its first missing chunk and no row is written twice (the rename
replaces; two pods racing on one chunk write the same bytes).

Under an ``s3://bucket/prefix``, a chunk is one PUT of ``prefix/part-NNNNNN.<ext>``: S3
makes an object visible whole or not at all, so an existing part object is a done chunk
(asked with HEAD) and a killed pod's PUT leaves nothing behind.

Parquet parts are written with fastparquet (imported on first use; the kustos-explain
image has it).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson

from . import csv_part
from .parquet_part import PartWriter

MANIFEST = "_chunking.json"
INPUT_VERSION = "inputVersion"  # in MANIFEST: the ETag of the s3:// input the run reads
FORMATS = ("csv", "jsonl", "parquet")
S3_ATTEMPTS = 4
T = TypeVar("T")


class OutputError(Exception):
    """The output directory cannot be used for this run."""


def chunk_name(index: int, fmt: str) -> str:
    return f"part-{index:06d}.{fmt}"


def done(directory: Path, index: int, fmt: str) -> bool:
    return (directory / chunk_name(index, fmt)).exists()


def check_manifest(where: str, found: bytes, want: Mapping[str, Any]) -> None:
    """Refuse an output that holds the chunks of a run chunked otherwise (its part files
    would not line up with ours), or of this run when its input has been replaced since
    it began: the run's first shard records the version it read (``INPUT_VERSION``, an
    s3:// input's ETag) and every later shard or resumed pod must read the same one, so a
    run never joins rows of two versions."""
    try:
        have = orjson.loads(found)
    except orjson.JSONDecodeError:
        have = None
    if have == dict(want):
        return
    if isinstance(have, dict) and ({k: v for k, v in have.items() if k != INPUT_VERSION}
                                   == {k: v for k, v in want.items() if k != INPUT_VERSION}):
        raise OutputError(
            f"the input was replaced since this run began (ETag "
            f"{have.get(INPUT_VERSION) or 'unknown'} when the run's first shard read it, "
            f"{want.get(INPUT_VERSION) or 'unknown'} now; {where}/{MANIFEST}): a run reads "
            "one version of its input; start a new run with a new output path")
    raise OutputError(f"{where} holds the output of another run ({MANIFEST} differs: "
                      f"{have} != {dict(want)}); use a new output path")


def prepare(directory: Path, settings: Mapping[str, Any]) -> None:
    """Create the directory and record the run's settings, unless a shard did first: then
    ``check_manifest`` against what it recorded."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST
    tmp = _synced_temp(directory, MANIFEST,
                       orjson.dumps(dict(settings), option=orjson.OPT_SORT_KEYS))
    try:
        os.link(tmp, manifest)  # never replaces: of racing shards, exactly one creates it
    except FileExistsError:
        check_manifest(str(directory), manifest.read_bytes(), settings)
        return
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _sync_directory(directory)


def remove_stale(directory: Path, indexes: set[int], fmt: str) -> None:
    """Temporary files of our chunks left by a killed pod."""
    for path in directory.glob(".part-*.tmp-*"):
        with contextlib.suppress(ValueError, OSError):
            if int(path.name.split("-")[1].split(".")[0]) in indexes:
                path.unlink()


def flatten(outputs: Mapping[str, np.ndarray[Any, Any]],
            classes: Sequence[Any] | None) -> dict[str, np.ndarray[Any, Any]]:
    """Each output as 1-D columns: a 2-D output becomes NAME_CLASS (when its width is the
    class count) or NAME_J columns."""
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in outputs.items():
        arr = np.asarray(value)
        if arr.ndim == 1:
            out[name] = arr
        elif arr.ndim == 2 and arr.shape[1] == 1:
            out[name] = arr[:, 0]
        elif arr.ndim == 2:
            labels = (list(classes) if classes is not None and len(classes) == arr.shape[1]
                      else list(range(arr.shape[1])))
            for j, label in enumerate(labels):
                out[f"{name}_{label}"] = arr[:, j]
        else:
            out[name] = arr.reshape(arr.shape[0], -1)[:, 0] if arr.size == arr.shape[0] \
                else np.asarray([orjson.dumps(r.tolist()).decode() for r in arr])
    return out


def encode(id_column: str, ids: Sequence[str], columns: Mapping[str, np.ndarray[Any, Any]],
           fmt: str, parts: PartWriter | None = None) -> bytes:
    """The chunk's rows in ``fmt``: a CSV with a header row, one JSON object per line, or
    a Parquet file (through ``parts`` where it can write them: the same bytes, cheaper)."""
    if fmt == "csv":
        for name in columns:
            if "," in name or '"' in name:
                raise OutputError(f"output column {name!r} cannot be written to CSV")
        return csv_part.encode(id_column, ids, columns)
    if fmt == "jsonl":
        values = [c.tolist() for c in columns.values()]
        names = list(columns)
        rows = (orjson.dumps({id_column: i, **dict(zip(names, vals, strict=True))})
                for i, *vals in zip(ids, *values, strict=True))
        return b"\n".join(rows) + b"\n"
    if fmt == "parquet":
        return _parquet_bytes(id_column, ids, columns, parts)
    raise OutputError(f"output format {fmt!r} is not supported ({', '.join(FORMATS)})")


class _Kept(io.BytesIO):
    """A buffer fastparquet may close: the bytes stay readable."""

    def close(self) -> None:
        pass


def _parquet_bytes(id_column: str, ids: Sequence[str],
                   columns: Mapping[str, np.ndarray[Any, Any]],
                   parts: PartWriter | None = None) -> bytes:
    try:
        import fastparquet
        import pandas as pd
    except ImportError:
        raise OutputError("Parquet needs the fastparquet package, which is in the "
                          "kustos-explain image (pip install 'kustos[explain]'), not in the "
                          "kustos image") from None
    if id_column in columns:
        raise OutputError(f"output column {id_column!r} is both the id and a prediction")
    if parts is not None and parts.id_column == id_column:
        data = parts.encode(ids, columns)
        if data is not None:
            return data
    frame = pd.DataFrame({id_column: pd.Series(list(ids), dtype=object),
                          **{name: np.asarray(c) for name, c in columns.items()}})
    buffer = _Kept()
    # No column statistics: nothing filters on a part file, and they cost a pass per column.
    # The id column and numeric predictions are REQUIRED (no null check, which costs a pass
    # over the id strings): an id is never missing and NaN is a float value. Text
    # predictions stay OPTIONAL.
    maybe_null = [name for name, c in frame.items()
                  if name != id_column and not pd.api.types.is_numeric_dtype(c.dtype)]
    fastparquet.write("part.parquet", frame, compression="SNAPPY", write_index=False,
                      stats=False, object_encoding="utf8", has_nulls=maybe_null,
                      open_with=lambda _path, _mode: buffer)
    return buffer.getvalue()


def _synced_temp(directory: Path, name: str, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``name``, on disk (fsynced)."""
    tmp = directory / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def _sync_directory(directory: Path) -> None:
    """A rename or link survives a crash of the node only once its directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(directory: Path, name: str, data: bytes, sync_directory: bool = True) -> None:
    tmp = _synced_temp(directory, name, data)
    try:
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_directory:
        _sync_directory(directory)


def write_chunk(directory: Path, index: int, fmt: str, data: bytes) -> None:
    # The file is synced before its rename, so a part file is never partial. The directory
    # is not synced per chunk (a second fsync each): a rename that a node crash loses only
    # makes the next pod predict that chunk again, into the same name.
    _atomic_write(directory, chunk_name(index, fmt), data, sync_directory=False)


class Output(Protocol):
    """Where a run's chunks go: a directory (a claim) or an S3 prefix."""

    fmt: str

    def prepare(self, settings: Mapping[str, Any]) -> None: ...

    def done(self, index: int) -> bool: ...

    def write(self, index: int, data: bytes) -> None: ...

    def finish(self, indexes: set[int]) -> None: ...


class DirectoryOutput:
    def __init__(self, directory: Path, fmt: str) -> None:
        self.directory, self.fmt = directory, fmt

    def prepare(self, settings: Mapping[str, Any]) -> None:
        prepare(self.directory, settings)

    def done(self, index: int) -> bool:
        return done(self.directory, index, self.fmt)

    def write(self, index: int, data: bytes) -> None:
        write_chunk(self.directory, index, self.fmt, data)

    def finish(self, indexes: set[int]) -> None:
        # Every chunk of ours is written: a temporary file of ours is a killed pod's leftover.
        remove_stale(self.directory, indexes, self.fmt)


class S3Output:
    """Parts under ``s3://bucket/prefix/``; credentials as for `kustos fetch` (AWS_* in
    the environment: the output's credentialsSecretRef)."""

    def __init__(self, uri: str, fmt: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.prefix, self.fmt, self._sleep = uri.rstrip("/"), fmt, sleep

    def _uri(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _call(self, method: str, name: str, body: bytes = b"",
              create_only: bool = False) -> tuple[int, bytes]:
        from kustos.runtime import s3
        from kustos.runtime.fetch import FetchError

        def once() -> tuple[int, bytes]:
            return s3.object_request(method, self._uri(name), body, create_only=create_only)

        try:
            return retried(once, self._sleep)
        except FetchError as err:
            raise OutputError(str(err)) from None

    def prepare(self, settings: Mapping[str, Any]) -> None:
        status, body = self._call("GET", MANIFEST)
        if status == 404:
            # Of shards racing here exactly one creates it (If-None-Match: *); the others,
            # and a PUT retried after its answer was lost, compare with what is there.
            status, body = self._call(
                "PUT", MANIFEST, orjson.dumps(dict(settings), option=orjson.OPT_SORT_KEYS),
                create_only=True)
            if status == 200:
                return
            status, body = self._call("GET", MANIFEST)
        if status != 200:
            raise OutputError(f"GET {self._uri(MANIFEST)}: HTTP {status}")
        check_manifest(self.prefix, body, settings)

    def done(self, index: int) -> bool:
        return self._call("HEAD", chunk_name(index, self.fmt))[0] == 200

    def write(self, index: int, data: bytes) -> None:
        status, _ = self._call("PUT", chunk_name(index, self.fmt), data)
        if status != 200:
            raise OutputError(f"PUT {self._uri(chunk_name(index, self.fmt))}: HTTP {status}")

    def finish(self, indexes: set[int]) -> None:
        pass  # a PUT that did not finish left no object


def retried(call: Callable[[], T], sleep: Callable[[float], None]) -> T:
    from kustos.runtime.fetch import FetchError

    for attempt in range(S3_ATTEMPTS):
        try:
            return call()
        except FetchError as err:
            if not err.transient or attempt == S3_ATTEMPTS - 1:
                raise
        sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def open_output(target: str | Path, fmt: str) -> Output:
    """The output at ``target``: ``s3://bucket/prefix``, else a local directory."""
    if fmt not in FORMATS:
        raise OutputError(f"output format {fmt!r} is not supported ({', '.join(FORMATS)})")
    text = str(target)
    if text.startswith("s3://"):
        if not text[5:].split("/", 1)[0]:
            raise OutputError(f"an S3 output is s3://bucket/prefix, got {text!r}")
        return S3Output(text, fmt)
    return DirectoryOutput(Path(text), fmt)
