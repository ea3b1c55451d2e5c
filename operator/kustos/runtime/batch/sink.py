"""Writing predictions: one file per chunk, named by the chunk's index, written atomically.

A chunk file is written under a temporary name, synced, then renamed to
``part-NNNNNN.<ext>``: a file with the final name is always complete, so a pod killed at
any moment resumes at its first missing chunk and no row is written twice (the rename
replaces; two pods racing on one chunk write the same bytes).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

MANIFEST = "_chunking.json"


class OutputError(Exception):
    """The output directory cannot be used for this run."""


def chunk_name(index: int, fmt: str) -> str:
    return f"part-{index:06d}.{fmt}"


def done(directory: Path, index: int, fmt: str) -> bool:
    return (directory / chunk_name(index, fmt)).exists()


def prepare(directory: Path, settings: Mapping[str, Any]) -> None:
    """Create the directory and record how it is chunked; refuse one that holds the chunks
    of a run chunked otherwise (its part files would not line up with ours)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST
    want = dict(settings)
    if manifest.exists():
        try:
            have = orjson.loads(manifest.read_bytes())
        except orjson.JSONDecodeError:
            have = None
        if have != want:
            raise OutputError(f"{directory} holds the output of another run ({MANIFEST} "
                              f"differs: {have} != {want}); use a new output path")
        return
    _atomic_write(directory, MANIFEST, orjson.dumps(want, option=orjson.OPT_SORT_KEYS))


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


def _text(column: np.ndarray[Any, Any]) -> list[str]:
    # astype(str) prints float64 as its shortest round-trip form.
    return column.astype(str).tolist()  # type: ignore[no-any-return]


def encode(id_column: str, ids: Sequence[str], columns: Mapping[str, np.ndarray[Any, Any]],
           fmt: str) -> bytes:
    """The chunk's rows in ``fmt``: a CSV with a header row, or one JSON object per line."""
    if fmt == "csv":
        for name in columns:
            if "," in name or '"' in name:
                raise OutputError(f"output column {name!r} cannot be written to CSV")
        cells = [list(ids), *(_text(c) for c in columns.values())]
        lines = [",".join([id_column, *columns])]
        lines += [",".join(row) for row in zip(*cells, strict=True)]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "jsonl":
        values = [c.tolist() for c in columns.values()]
        names = list(columns)
        rows = (orjson.dumps({id_column: i, **dict(zip(names, vals, strict=True))})
                for i, *vals in zip(ids, *values, strict=True))
        return b"\n".join(rows) + b"\n"
    raise OutputError(f"output format {fmt!r} is not supported (csv, jsonl)")


def _atomic_write(directory: Path, name: str, data: bytes) -> None:
    tmp = directory / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename itself survives a crash of the node only once the directory is synced.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_chunk(directory: Path, index: int, fmt: str, data: bytes) -> None:
    _atomic_write(directory, chunk_name(index, fmt), data)
