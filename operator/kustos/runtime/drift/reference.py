"""Reference data: fetched with digest check, read from .csv (header = names) or .npy."""

from __future__ import annotations

import csv
import math
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kustos.runtime.fetch import DigestMismatch, FetchError, fetch

Array = npt.NDArray[Any]
# Fewer rows than this cannot say anything about a distribution.
MIN_ROWS = 10


class ReferenceProblem(Exception):
    """A reason for status.error and a message that says what to fix."""

    def __init__(self, reason: str, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


@dataclass(frozen=True)
class Reference:
    data: Array  # (rows, features) float64
    names: list[str]
    digest: str


def _format(uri: str) -> str:
    path = urllib.parse.urlsplit(uri).path if "://" in uri else uri
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".npy"):
        raise ReferenceProblem(
            "ReferenceInvalid",
            f"reference {Path(path).name!r} must be a .csv file (header row = feature names) "
            "or a .npy array of shape (rows, features)")
    return suffix


def download(uri: str, digest: str | None, work_dir: Path) -> tuple[Path, str]:
    suffix = _format(uri)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = fetch(uri, work_dir / f"reference{suffix}", digest, retries=3)
    except DigestMismatch as exc:
        raise ReferenceProblem(
            "DigestMismatch",
            f"{exc}; update the DriftMonitor's reference digest or restore the file") from None
    except FetchError as exc:
        raise ReferenceProblem("ReferenceFetchFailed", str(exc), retry=True) from None
    except ValueError as exc:  # a malformed digest
        raise ReferenceProblem("ReferenceInvalid", str(exc)) from None
    return result.path, result.digest


def _read_csv(path: Path) -> tuple[Array, list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ReferenceProblem("ReferenceInvalid",
                               f"reference CSV is unreadable: {exc}") from None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise ReferenceProblem("ReferenceInvalid", "reference CSV is empty")
    header = [c.strip() for c in rows[0]]
    if any(_is_number(c) for c in header):
        raise ReferenceProblem(
            "ReferenceInvalid",
            "reference CSV needs a header row of feature names as its first line")
    data = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ReferenceProblem(
                "ReferenceInvalid",
                f"reference CSV line {i} has {len(row)} columns, the header has {len(header)}")
        for j, cell in enumerate(row):
            try:
                data[i - 2, j] = float(cell)
            except ValueError:
                raise ReferenceProblem(
                    "ReferenceInvalid",
                    f"reference CSV line {i}, column {header[j]!r}: {cell!r} is not a number "
                    "(encode categories as integers)") from None
    return data, header


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npy(path: Path) -> Array:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReferenceProblem(
            "ReferenceInvalid",
            f"reference .npy is unreadable ({exc}); save it with numpy.save and a numeric "
            "dtype (object arrays are refused)") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise ReferenceProblem("ReferenceInvalid",
                               f"reference .npy must hold numbers, not {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ReferenceProblem(
            "ReferenceInvalid",
            f"reference .npy must have shape (rows, features), got {list(arr.shape)}")
    out: Array = arr.astype(np.float64)
    return out


def load(path: Path, digest: str, feature_names: list[str] | None, categorical: list[int],
         max_samples: int | None, seed: int) -> Reference:
    """Read and check the reference; ``feature_names`` override (and must match) a header."""
    if path.suffix == ".csv":
        data, header = _read_csv(path)
    else:
        data, header = _read_npy(path), []
    n_rows, n_features = data.shape
    if n_features == 0:
        raise ReferenceProblem("ReferenceInvalid", "reference has no feature columns")
    if n_rows < MIN_ROWS:
        raise ReferenceProblem(
            "ReferenceInvalid", f"reference has {n_rows} rows; at least {MIN_ROWS} are needed")
    if not np.isfinite(data).all():
        bad = int(np.argwhere(~np.isfinite(data))[0][1])
        raise ReferenceProblem(
            "ReferenceInvalid",
            f"reference column {bad} has missing or infinite values; drop or impute them")
    names = header or [f"f{i}" for i in range(n_features)]
    if feature_names:
        if len(feature_names) != n_features:
            raise ReferenceProblem(
                "ReferenceInvalid",
                f"featureNames lists {len(feature_names)} features but the reference has "
                f"{n_features} columns" + (f" ({', '.join(header)})" if header else ""))
        if header and header != feature_names:
            raise ReferenceProblem(
                "ReferenceInvalid",
                f"the reference CSV's header {header} differs from featureNames "
                f"{feature_names}: reorder the columns or fix featureNames")
        names = list(feature_names)
    if len(set(names)) != len(names):
        raise ReferenceProblem("ReferenceInvalid", "feature names must be unique")
    for idx in categorical:
        if not 0 <= idx < n_features:
            raise ReferenceProblem(
                "ReferenceInvalid",
                f"categorical feature index {idx} is out of range: the reference has "
                f"{n_features} features (indices 0..{n_features - 1})")
        col = data[:, idx]
        if not np.array_equal(col, np.round(col)):
            raise ReferenceProblem(
                "ReferenceInvalid",
                f"categorical feature {names[idx]!r} (index {idx}) has non-integer values; "
                "encode categories as integers")
    if max_samples is not None and max_samples < MIN_ROWS:
        raise ReferenceProblem(
            "ReferenceInvalid",
            f"maxSamples is {max_samples}; at least {MIN_ROWS} reference rows are needed")
    if max_samples is not None and n_rows > max_samples:
        rng = np.random.default_rng(seed)
        data = data[np.sort(rng.choice(n_rows, max_samples, replace=False))]
    return Reference(np.ascontiguousarray(data), names, digest)


def describe(value: float) -> float | None:
    """A JSON-safe float (NaN -> None)."""
    return None if math.isnan(value) else float(value)
