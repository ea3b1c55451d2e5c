"""Background data: fetched with its digest, parsed (.csv / .npy), checked, sampled.

The explainer compares every explained row with this data, so problems are caught here
with a message that says what to fix: a column count that does not match the model, a
cell that is not a number, a file that is neither CSV nor .npy. Large files are sampled
while they are read (reservoir sampling, seeded), so memory stays bounded by
``max_samples`` rows whatever the file's size.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kustos.runtime.explain.problems import (
    BACKGROUND_FETCH_FAILED,
    BACKGROUND_INVALID,
    DIGEST_MISMATCH,
    FEATURE_NAMES_INVALID,
    SetupProblem,
)
from kustos.runtime.server.tensors import Array

FORMATS = (".csv", ".npy")
SEED = 0


@dataclass
class Background:
    data: Array  # [rows, features], float64, in model feature order
    feature_names: list[str] | None  # the CSV header (label column removed), if any
    labels: Array | None  # the --label-column values of the sampled rows
    total_rows: int  # rows in the file, before sampling
    path: Path


def fetch_background(uri: str, digest: str | None, work_dir: Path,
                     credentials_dir: str | None = None, retries: int = 4,
                     timeout: float = 30.0) -> Path:
    """Download (or copy) the background file with kustos fetch; SetupProblem on failure."""
    from kustos.runtime.fetch import DigestMismatch, FetchError, fetch

    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = fetch(uri, work_dir, digest, retries=retries, timeout=timeout,
                       credentials_dir=credentials_dir)
    except DigestMismatch as exc:
        raise SetupProblem(DIGEST_MISMATCH, f"{exc}; fix background.digest or the file") from None
    except ValueError as exc:  # a malformed digest string
        raise SetupProblem(DIGEST_MISMATCH, f"{exc}; fix background.digest") from None
    except FetchError as exc:
        raise SetupProblem(BACKGROUND_FETCH_FAILED,
                           f"{exc}; check background.uri and its credentials") from None
    return result.path


def read_background(path: Path, max_samples: int, label_column: str | None = None,
                    seed: int = SEED) -> Background:
    """Parse a .csv (header row = feature names) or .npy file; SetupProblem if unusable."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise SetupProblem(BACKGROUND_INVALID,
                           f"{path.name}: background data must be a .csv or .npy file")
    try:
        if suffix == ".npy":
            return _read_npy(path, max_samples, label_column, seed)
        return _read_csv(path, max_samples, label_column, seed)
    except OSError as exc:
        raise SetupProblem(BACKGROUND_INVALID,
                           f"cannot read {path.name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SetupProblem(BACKGROUND_INVALID,
                           f"{path.name} is not UTF-8 text; give a CSV file or a .npy array"
                           ) from None


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_csv(path: Path, max_samples: int, label_column: str | None, seed: int) -> Background:
    rng = random.Random(seed)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        first = next(reader, None)
        while first is not None and not any(c.strip() for c in first):
            first = next(reader, None)  # leading blank lines
        if first is None:
            raise SetupProblem(BACKGROUND_INVALID, f"{path.name} is empty")
        cells = [c.strip() for c in first]
        # A first row of numbers is data, not a header: losing it silently would be worse.
        header = None if all(_number(c) is not None for c in cells) else cells
        if header is not None and len(set(header)) != len(header):
            raise SetupProblem(BACKGROUND_INVALID,
                               f"{path.name}: the header row names a column twice")
        width = len(cells)
        label = _label_index(label_column, header, width, path.name)
        sample: list[list[str]] = []
        seen = 0

        def take(row: list[str], line: int) -> None:
            nonlocal seen
            if len(row) != width:
                raise SetupProblem(
                    BACKGROUND_INVALID,
                    f"{path.name} line {line}: {len(row)} columns, the first row has {width}")
            for j, cell in enumerate(row):
                if j != label and _number(cell) is None:
                    name = header[j] if header else str(j)
                    shown = cell.strip()[:40] or "(empty)"
                    raise SetupProblem(
                        BACKGROUND_INVALID,
                        f"{path.name} line {line}, column {name!r}: {shown!r} is not a finite "
                        "number; background data must be numeric features in model order "
                        "(encode categories and fill missing values first)")
            seen += 1
            if len(sample) < max_samples:
                sample.append(row)
            else:  # reservoir sampling: every row ends up in the sample with equal chance
                k = rng.randrange(seen)
                if k < max_samples:
                    sample[k] = row

        if header is None:
            take(cells, 1)
        for line, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            take([c.strip() for c in row], line)
    if not sample:
        raise SetupProblem(BACKGROUND_INVALID, f"{path.name} has a header but no rows")
    labels: Array | None = None
    if label is not None:
        raw = [r[label] for r in sample]
        nums = [_number(v) for v in raw]
        labels = (np.array(nums, dtype=np.float64) if all(v is not None for v in nums)
                  else np.array(raw, dtype=object))
    keep = [j for j in range(width) if j != label]
    data = np.array([[float(r[j]) for j in keep] for r in sample], dtype=np.float64)
    names = [header[j] for j in keep] if header else None
    return Background(data, names, labels, seen, path)


def _label_index(label_column: str | None, header: list[str] | None, width: int,
                 file: str) -> int | None:
    if label_column is None:
        return None
    if header is not None and label_column in header:
        return header.index(label_column)
    if label_column.isdigit() and int(label_column) < width:
        return int(label_column)
    where = f"columns {header}" if header else f"{width} unnamed columns"
    raise SetupProblem(BACKGROUND_INVALID,
                       f"{file}: label column {label_column!r} not found among {where}")


def _read_npy(path: Path, max_samples: int, label_column: str | None, seed: int) -> Background:
    try:
        arr: Any = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        raise SetupProblem(BACKGROUND_INVALID,
                           f"{path.name} is not a plain numeric .npy array ({exc}); save it "
                           "with numpy.save from a float array") from None
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise SetupProblem(BACKGROUND_INVALID,
                           f"{path.name} has shape {list(arr.shape)}; background data must be "
                           "a 2-D array [rows, features] with at least one row")
    if arr.dtype.kind not in "biuf":
        raise SetupProblem(BACKGROUND_INVALID,
                           f"{path.name} holds {arr.dtype} values; background data must be "
                           "numeric")
    rows = arr.shape[0]
    if rows > max_samples:
        picked = np.sort(np.random.default_rng(seed).choice(rows, max_samples, replace=False))
        arr = arr[picked]
    full = np.asarray(arr, dtype=np.float64)
    label = _label_index(label_column, None, full.shape[1], path.name)
    labels = None
    if label is not None:
        labels = full[:, label].copy()
        full = np.delete(full, label, axis=1)
    if not np.isfinite(full).all():
        bad = np.argwhere(~np.isfinite(full))[0]
        raise SetupProblem(BACKGROUND_INVALID,
                           f"{path.name} row {int(bad[0])}, column {int(bad[1])} is NaN or "
                           "infinite; fill missing values first")
    return Background(np.ascontiguousarray(full), None, labels, rows, path)


def align(bg: Background, n_features: int | None, feature_names: list[str] | None,
          model_names: list[str] | None) -> tuple[Array, list[str]]:
    """The background in model feature order and the feature names to report.

    Names come from --feature-names, else the model's own (``feature_names_in_``), else
    the CSV header, else ``feature_0..``. A CSV header naming the same features in another
    order is reordered; a header naming other features is refused.
    """
    data = bg.data
    if n_features is not None and data.shape[1] != n_features:
        extra = " (not counting the label column)" if bg.labels is not None else ""
        raise SetupProblem(
            BACKGROUND_INVALID,
            f"{bg.path.name} has {data.shape[1]} feature columns{extra} but the model takes "
            f"{n_features} (n_features_in_); give one column per model feature, in model order")
    width = data.shape[1]
    if feature_names is not None and len(feature_names) != width:
        raise SetupProblem(
            FEATURE_NAMES_INVALID,
            f"{len(feature_names)} feature names given but the model takes {width} features; "
            "fix featureNames")
    if feature_names is not None and len(set(feature_names)) != len(feature_names):
        raise SetupProblem(FEATURE_NAMES_INVALID, "featureNames holds duplicates")
    names = feature_names or model_names
    if bg.feature_names is not None and names is not None and bg.feature_names != names:
        if sorted(bg.feature_names) != sorted(names):
            missing = [n for n in names if n not in bg.feature_names][:10]
            unknown = [n for n in bg.feature_names if n not in names][:10]
            raise SetupProblem(
                BACKGROUND_INVALID,
                f"{bg.path.name}'s header does not name the model's features: missing "
                f"{missing}, unknown {unknown}; make the header match featureNames")
        order = [bg.feature_names.index(n) for n in names]
        data = data[:, order]
    final = names or bg.feature_names or [f"feature_{i}" for i in range(width)]
    return np.ascontiguousarray(data), list(final)

