"""The monitor's configuration: one JSON file (`kustos truth --config PATH`), rendered by
the operator from the DriftMonitor's ``spec.groundTruth``. Checked on load; a problem is
one ConfigError naming the field."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

TASKS = ("classification", "regression")
BULK_FORMATS = ("csv", "jsonl", "parquet")
# threshold name -> (metric it bounds, "min" | "max")
THRESHOLDS: dict[str, tuple[str, str]] = {
    "minAccuracy": ("accuracy", "min"), "minPrecision": ("precision", "min"),
    "minRecall": ("recall", "min"), "minF1": ("f1", "min"), "minRocAuc": ("rocAuc", "min"),
    "maxLogLoss": ("logLoss", "max"), "maxMae": ("mae", "max"), "maxRmse": ("rmse", "max"),
    "minCoverage": ("coverage", "min"),
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class ConfigError(Exception):
    """The configuration file is unusable; the message names the field."""


def parse_duration(value: Any, where: str) -> float:
    """Seconds of ``value``: a number of seconds or a string like 90s, 30m, 1h, 7d, 1h30m."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration such as 1h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and _DURATION.sub("", value) == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
    else:
        raise ConfigError(f"{where}: expected a duration such as 30m, 1h or 7d, got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return seconds


@dataclass(frozen=True)
class BulkSource:
    uri: str  # file:///dir/, file:///dir/file.csv, s3://bucket/prefix/, s3://bucket/key
    format: str
    interval: float  # seconds between polls


@dataclass(frozen=True)
class SensitiveFeature:
    name: str
    source: str  # "input" | "label"


@dataclass(frozen=True)
class Fairness:
    features: tuple[SensitiveFeature, ...]
    raw: dict[str, Any] = field(default_factory=dict)  # the wire form, for fairness.py
    config: Any = None  # fairness.FairnessConfig, None while that module is missing


@dataclass(frozen=True)
class TruthConfig:
    model: str
    task: str = "classification"
    window: str = "1h"
    window_seconds: float = 3600.0
    min_samples: int = 100
    thresholds: dict[str, float] = field(default_factory=dict)
    bulk: tuple[BulkSource, ...] = ()
    max_rows: int = 1_000_000
    retention_seconds: float = 7 * 86400.0
    # Input columns by position when a request names none (one [N, F] tensor, V1 rows).
    feature_names: tuple[str, ...] = ()
    # Class labels in the column order of probability outputs that do not name them.
    classes: tuple[str, ...] = ()
    fairness: Fairness | None = None
    evaluation_interval: float = 30.0
    default_version: str = "unknown"
    # Request halves waiting for their response event (and the reverse), in memory.
    max_pending: int = 10_000

    @property
    def reads_inputs(self) -> bool:
        """Whether a sensitive feature comes from the requests: only then are the request
        events' features read, held until the response and stored."""
        return self.fairness is not None and any(f.source == "input"
                                                 for f in self.fairness.features)


def _number(doc: dict[str, Any], key: str, where: str, *, integer: bool = False,
            low: float | None = None, high: float | None = None) -> Any:
    value = doc[key]
    ok = (isinstance(value, int) if integer else isinstance(value, int | float))
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}.{key}: expected {kind}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"within {low}..{high}"
        raise ConfigError(f"{where}.{key}: must be {bounds}, got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str | int) and not
                                              isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(str(v) for v in value)


def _unknown(doc: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(doc) - known)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")


def _bulk(items: Any) -> tuple[BulkSource, ...]:
    if not isinstance(items, list):
        raise ConfigError("bulk: expected a list of {uri, format, interval}")
    out = []
    for i, item in enumerate(items):
        where = f"bulk[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected an object")
        _unknown(item, {"uri", "format", "interval"}, where)
        uri = item.get("uri")
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"{where}.uri: expected a file:// or s3:// URI")
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme not in ("file", "s3"):
            raise ConfigError(f"{where}.uri: only file:// and s3:// are supported, got "
                              f"{parts.scheme or 'no'} scheme")
        if parts.scheme == "s3" and not parts.netloc:
            raise ConfigError(f"{where}.uri: expected s3://bucket/key or s3://bucket/prefix/")
        fmt = item.get("format")
        if fmt is None:
            fmt = Path(parts.path).suffix.lstrip(".").lower()
        if fmt not in BULK_FORMATS:
            raise ConfigError(f"{where}.format: expected one of {', '.join(BULK_FORMATS)}, "
                              f"got {fmt!r}")
        interval = parse_duration(item.get("interval", "5m"), f"{where}.interval")
        out.append(BulkSource(uri, fmt, interval))
    return tuple(out)


def _fairness(doc: Any) -> Fairness | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ConfigError("fairness: expected an object")
    try:  # written in parallel by another change: the monitor runs without it
        from kustos.runtime.truth.fairness import FairnessConfig, FairnessConfigError
    except ImportError:
        FairnessConfig = None  # type: ignore[assignment,misc]
        FairnessConfigError = ValueError  # type: ignore[assignment,misc]
    items = doc.get("sensitiveFeatures")
    if not isinstance(items, list) or not items:
        raise ConfigError("fairness.sensitiveFeatures: expected a non-empty list of "
                          "{name, source: input|label}")
    features = []
    for i, item in enumerate(items):
        where = f"fairness.sensitiveFeatures[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not item["name"]:
            raise ConfigError(f"{where}: expected {{name, source: input|label}}")
        source = item.get("source", "input")
        if source not in ("input", "label"):
            raise ConfigError(f"{where}.source: expected input or label, got {source!r}")
        features.append(SensitiveFeature(item["name"], source))
    parsed = None
    if FairnessConfig is not None:
        try:
            parsed = FairnessConfig.from_spec(doc, "fairness")
        except FairnessConfigError as exc:
            raise ConfigError(str(exc)) from None
    return Fairness(tuple(features), dict(doc), parsed)


FIELDS = {"model", "task", "window", "minSamples", "thresholds", "bulk", "maxRows",
          "retention", "featureNames", "classes", "fairness", "evaluationInterval",
          "defaultVersion", "maxPending"}


def _no_nulls(doc: Any) -> Any:
    """``doc`` without null fields (at any depth): a null is an unset field."""
    if isinstance(doc, dict):
        return {k: _no_nulls(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [_no_nulls(v) for v in doc]
    return doc


def parse(doc: Any) -> TruthConfig:
    if not isinstance(doc, dict):
        raise ConfigError("the configuration must be a JSON object")
    doc = _no_nulls(doc)
    _unknown(doc, FIELDS, "config")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("model: expected the model's name (a non-empty string)")
    task = doc.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"task: expected classification or regression, got {task!r}")
    window = doc.get("window", "1h")
    window_seconds = parse_duration(window, "window")
    thresholds_doc = doc.get("thresholds", {})
    if not isinstance(thresholds_doc, dict):
        raise ConfigError("thresholds: expected an object such as {\"minAccuracy\": 0.9}")
    _unknown(thresholds_doc, set(THRESHOLDS), "thresholds")
    thresholds = {k: float(_number(thresholds_doc, k, "thresholds", low=0))
                  for k in thresholds_doc}
    for k, v in thresholds.items():
        if k.startswith("min") and v > 1:
            raise ConfigError(f"thresholds.{k}: must be within 0..1, got {v}")
    kw: dict[str, Any] = {}
    if "minSamples" in doc:
        kw["min_samples"] = int(_number(doc, "minSamples", "config", integer=True, low=1))
    if "maxRows" in doc:
        kw["max_rows"] = int(_number(doc, "maxRows", "config", integer=True, low=10))
    if "maxPending" in doc:
        kw["max_pending"] = int(_number(doc, "maxPending", "config", integer=True, low=1))
    if "retention" in doc:
        kw["retention_seconds"] = parse_duration(doc["retention"], "retention")
    if "evaluationInterval" in doc:
        kw["evaluation_interval"] = parse_duration(doc["evaluationInterval"],
                                                   "evaluationInterval")
    if "featureNames" in doc:
        kw["feature_names"] = _strings(doc["featureNames"], "featureNames")
    if "classes" in doc:
        kw["classes"] = _strings(doc["classes"], "classes")
    if "defaultVersion" in doc:
        if not isinstance(doc["defaultVersion"], str) or not doc["defaultVersion"]:
            raise ConfigError("defaultVersion: expected a non-empty string")
        kw["default_version"] = doc["defaultVersion"]
    fairness = _fairness(doc.get("fairness"))
    if fairness is not None and task != "classification":
        raise ConfigError("fairness: needs task classification")
    return TruthConfig(model=model, task=task, window=str(window),
                       window_seconds=window_seconds, thresholds=thresholds,
                       bulk=_bulk(doc.get("bulk", [])), fairness=fairness, **kw)


def load(path: str | Path) -> TruthConfig:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return parse(doc)
