"""What the monitor reads: logged inference events (KServe CloudEvents, binary or
structured mode, with V2, V1 or Seldon bodies) and labels (Seldon Feedback, the V2-style
``{"labels": [...]}``, rows of bulk files). Pure: bytes in, records out; every problem is
a ProtocolError (status 4xx) whose message names the field.

Features come from the request: V2 input tensors (a tensor of one column is named after
the tensor; the columns of one [N, F] tensor after ``featureNames`` by position, else
"0".."F-1"), V1 instances (objects by key), Seldon ``data.names``. The prediction comes
from the response: a class label (an output of one column, V2 ``predict``), the
probabilities (an output of K > 1 columns: the label is then their argmax unless a label
output is present too) or, for regression, the value.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from kustos.runtime.server.tensors import (
    ProtocolError,
    check_shape,
    decode,
    decode_raw,
    loads_object,
)

__all__ = ["ProtocolError", "canonical"]

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
_KINDS = {REQUEST_TYPE.encode(): "request", RESPONSE_TYPE.encode(): "response"}
MAX_ROWS = 100_000  # rows of one event or one label post
MAX_ID = 256  # characters of an inference id
LABEL_OUTPUTS = ("predict", "label", "labels", "class", "classes", "prediction", "output")
PROBA_OUTPUTS = ("predict_proba", "probabilities", "probability", "proba", "scores")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def canonical(value: Any, where: str) -> str:
    """A class label as text that compares equal across protocols: 1, 1.0, "1" and "1.0"
    are all "1"; other strings are kept; booleans are "true"/"false"."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ProtocolError(f"{where}: empty label")
        if _NUMBER.fullmatch(text):
            return canonical(float(text), where)
        return text
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        f = float(value)
        if not math.isfinite(f):
            raise ProtocolError(f"{where}: label must be finite, got {f}")
        return str(int(f)) if f.is_integer() and abs(f) < 2**63 else repr(f)
    raise ProtocolError(f"{where}: a label must be a number or a string, got "
                        f"{type(value).__name__}")


def numeric(value: Any, where: str) -> float:
    """A regression label or value as a finite float."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f):
        raise ProtocolError(f"{where}: expected a finite number, got {f}")
    return f


def _scalar(value: Any) -> Any:
    """A feature value as JSON: numbers as numbers, bytes as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    kind: str  # "request" | "response"
    id: str
    version: str | None  # ce-modelversion, or the version the response body names
    time: float | None  # ce-time
    body: dict[str, Any]


def _header(headers: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("utf-8", "replace").strip()


def _check_id(rid: Any, where: str) -> str:
    if not isinstance(rid, str) or not rid.strip():
        raise ProtocolError(f"{where}: the inference id must be a non-empty string")
    if len(rid) > MAX_ID:
        raise ProtocolError(f"{where}: the inference id is longer than {MAX_ID} characters")
    return rid


def parse_time(text: str | None, where: str) -> float | None:
    if text is None or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("z", "Z")).timestamp()
    except ValueError:
        raise ProtocolError(f"{where}: expected an RFC 3339 time, got {text[:64]!r}") from None


def parse_event(headers: Mapping[bytes, bytes], body: bytes) -> Event:
    """One CloudEvent: binary mode (``ce-*`` headers, the payload as the body) or
    structured mode (``application/cloudevents+json``)."""
    ctype = headers.get(b"content-type")
    ce_type = headers.get(b"ce-type")
    if (ctype is None or b"cloudevents" not in ctype) and ce_type in _KINDS:
        # Binary mode as kustos serve sends it: no header decoded that is not needed.
        data = loads_object(body)  # any content type: curl -d sends a form's
        when = headers.get(b"ce-time")
        return Event(_KINDS[ce_type], _check_id(_header(headers, b"ce-id"), "ce-id"),
                     _header(headers, b"ce-modelversion") or None,
                     None if when is None else parse_time(_header(headers, b"ce-time"),
                                                          "ce-time"), data)
    return _parse_event(headers, body)


def _parse_event(headers: Mapping[bytes, bytes], body: bytes) -> Event:
    ctype = _header(headers, b"content-type") or ""
    if ctype.startswith("application/cloudevents+json"):
        doc = loads_object(body)
        attrs = {k: v for k, v in doc.items() if isinstance(v, str)}
        data = doc.get("data")
        if data is None and isinstance(doc.get("data_base64"), str):
            raise ProtocolError("data_base64 events are not supported: send JSON data")
        if not isinstance(data, dict):
            raise ProtocolError("the event's 'data' must be a JSON object (the inference "
                                "request or response)")

        def get(name: str) -> str | None:
            return attrs.get(name)
    else:
        data = loads_object(body)  # any content type: curl -d sends a form's

        def get(name: str) -> str | None:
            return _header(headers, b"ce-" + name.encode())
    ce_type = get("type")
    if ce_type is None:
        raise ProtocolError("ce-type is missing: expected " + REQUEST_TYPE + " or "
                            + RESPONSE_TYPE)
    if ce_type == REQUEST_TYPE:
        kind = "request"
    elif ce_type == RESPONSE_TYPE:
        kind = "response"
    else:
        raise ProtocolError(f"ce-type {ce_type[:100]!r} is not an inference request or "
                            f"response event")
    rid = _check_id(get("id"), "ce-id")
    version = get("modelversion") or None
    return Event(kind, rid, version, parse_time(get("time"), "ce-time"), data)


def _columns(arr: np.ndarray[Any, Any], where: str) -> np.ndarray[Any, Any]:
    if arr.ndim == 0:
        raise ProtocolError(f"{where}: needs a batch dimension, got a scalar")
    if len(arr) > MAX_ROWS:
        raise ProtocolError(f"{where}: more than {MAX_ROWS} rows")
    if arr.size == 0:
        raise ProtocolError(f"{where}: holds no values")
    return arr.reshape(len(arr), -1)


def _grpc_shape(shape: Any) -> Any:
    """gRPC's int64 shape as protobuf JSON writes it: strings of digits."""
    if isinstance(shape, list):
        return [int(d) if isinstance(d, str) and d.isdigit() else d for d in shape]
    return shape


def _grpc_data(contents: Any, where: str) -> Any:
    """The values of a gRPC tensor's ``contents`` (protobuf JSON: 64-bit integers as
    strings, bytes as base64)."""
    if not isinstance(contents, dict) or len(contents) != 1:
        raise ProtocolError(f"{where}: 'contents' must hold one *_contents list")
    (field, values), = contents.items()
    if not isinstance(values, list):
        raise ProtocolError(f"{where}: contents.{field} must be a list")
    try:
        if field in ("int64_contents", "uint64_contents"):
            return [int(v) for v in values]
        if field == "bytes_contents":
            return [base64.b64decode(v, validate=True) for v in values]
    except (ValueError, TypeError, binascii.Error):
        raise ProtocolError(f"{where}: contents.{field} holds a malformed value") from None
    return values


# The Python types of a flat list that numpy turns into exactly this datatype.
_EXACT_TYPES: dict[str, tuple[type[np.generic], frozenset[type]]] = {
    "FP64": (np.float64, frozenset({float, int})), "INT64": (np.int64, frozenset({int}))}
_INT64 = (-(2**63), 2**63 - 1)


def _decode(data: Any, shape: tuple[int, ...], datatype: str, where: str
            ) -> np.ndarray[Any, Any]:
    """``tensors.decode`` with a fast path for the common logged tensor: a flat list of
    FP64 or INT64 numbers (a few us instead of ~10: no checks numpy would repeat)."""
    exact = _EXACT_TYPES.get(datatype)
    if exact is not None and isinstance(data, list) and data and len(shape) <= 2 \
            and len(data) == math.prod(shape):
        dtype, allowed = exact
        types = set(map(type, data))
        if types <= allowed:
            if int in types and (min(data) < _INT64[0] or max(data) > _INT64[1]):
                return decode(data, shape, datatype, where)  # numpy's rules for big ints
            return np.array(data, dtype=dtype).reshape(shape)
    return decode(data, shape, datatype, where)


def _v2_tensors(tensors: Any, key: str, raw: Any = None
                ) -> list[tuple[str, np.ndarray[Any, Any] | None, int]]:
    """(name, rows x columns or None when the data was not logged, rows) per tensor.
    gRPC's protobuf JSON too: ``contents``, or ``raw_*_contents`` (base64) by position."""
    if not isinstance(tensors, list) or not tensors:
        raise ProtocolError(f"'{key}' must be a non-empty list of V2 tensors")
    out: list[tuple[str, np.ndarray[Any, Any] | None, int]] = []
    for i, t in enumerate(tensors):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise ProtocolError(f"{where} must be a tensor object")
        name = t.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"{where}: 'name' must be a string")
        where = f"{key[:-1]} {name!r}"
        try:
            shape = check_shape(t.get("shape"), where)
        except ProtocolError:  # gRPC's shape as protobuf JSON writes it, or wrong
            shape = check_shape(_grpc_shape(t.get("shape")), where)
        datatype = t.get("datatype")
        if not isinstance(datatype, str):
            raise ProtocolError(f"{where}: 'datatype' must be a string such as FP64")
        if "data" in t:
            arr = _decode(t["data"], shape, datatype, where)
        elif "contents" in t:
            arr = decode(_grpc_data(t["contents"], where), shape, datatype, where)
        elif isinstance(raw, list) and i < len(raw) and isinstance(raw[i], str):
            try:
                blob = base64.b64decode(raw[i], validate=True)
            except (ValueError, binascii.Error):
                raise ProtocolError(f"{where}: raw contents are not base64") from None
            arr = decode_raw(blob, shape, datatype, where)
        else:  # binary tensor data: only the JSON header was logged
            out.append((name, None, shape[0] if shape else 1))
            continue
        arr = _columns(arr, where)
        out.append((name, arr, len(arr)))
    return out


def _names(count: int, configured: Sequence[str]) -> list[str]:
    return list(configured) if len(configured) == count else [str(j) for j in range(count)]


@functools.lru_cache(maxsize=64)
def _column_names(count: int, configured: tuple[str, ...]) -> tuple[str, ...]:
    """``_names``, made once per width (one string per column per event otherwise)."""
    return tuple(_names(count, configured))


def _values(col: np.ndarray[Any, Any]) -> list[Any]:
    """A column as Python values (one tolist, not a conversion per cell)."""
    values: list[Any] = col.tolist()
    return [_scalar(v) for v in values] if col.dtype == object else values


def _rows_of(columns: list[tuple[str, np.ndarray[Any, Any]]], n: int
             ) -> list[dict[str, Any] | None]:
    names = [name for name, _ in columns]
    return [dict(zip(names, row, strict=True))
            for row in zip(*(_values(col) for _, col in columns), strict=True)]


def request_features(body: dict[str, Any], feature_names: Sequence[str]
                     ) -> list[dict[str, Any] | None]:
    """Per row, the request's features by name (None: not logged)."""
    if "inputs" in body and isinstance(body["inputs"], list) and body["inputs"] \
            and all(isinstance(t, dict) and "datatype" in t for t in body["inputs"]):
        tensors = _v2_tensors(body["inputs"], "inputs", body.get("raw_input_contents"))
        rows = tensors[0][2]
        if any(r != rows for _, _, r in tensors):
            raise ProtocolError("input tensors have different numbers of rows")
        if any(arr is None for _, arr, _ in tensors):
            return [None] * rows
        arrays = [(n, a) for n, a, _ in tensors if a is not None]
        width = sum(a.shape[1] for _, a in arrays)
        columns: list[tuple[str, np.ndarray[Any, Any]]] = []
        if len(arrays) == 1 and arrays[0][1].dtype != object:  # the common case, at once
            fixed = _column_names(width, tuple(feature_names))
            return [dict(zip(fixed, row, strict=True)) for row in arrays[0][1].tolist()]
        if len(arrays) == 1 or len(feature_names) == width:
            order = iter(_names(width, feature_names))
            for _, arr in arrays:
                columns += [(next(order), arr[:, j]) for j in range(arr.shape[1])]
        else:
            for name, arr in arrays:
                columns += ([(name, arr[:, 0])] if arr.shape[1] == 1 else
                            [(f"{name}[{j}]", arr[:, j]) for j in range(arr.shape[1])])
        return _rows_of(columns, rows)
    if "instances" in body or "inputs" in body:
        instances = body.get("instances", body.get("inputs"))
        if not isinstance(instances, list) or not instances:
            raise ProtocolError("'instances' must be a non-empty list")
        if len(instances) > MAX_ROWS:
            raise ProtocolError(f"'instances': more than {MAX_ROWS} rows")
        if all(isinstance(r, dict) for r in instances):
            return [{k: v for k, v in r.items() if isinstance(v, str | int | float | bool)}
                    for r in instances]
        out: list[dict[str, Any] | None] = []
        for i, r in enumerate(instances):
            values = r if isinstance(r, list) else [r]
            if any(isinstance(v, list | dict) for v in values):
                raise ProtocolError(f"instances[{i}]: expected a flat row of values")
            out.append(dict(zip(_names(len(values), feature_names), values, strict=True)))
        return out
    if "data" in body:
        data = body["data"]
        if not isinstance(data, dict):
            raise ProtocolError("'data' must be an object with 'ndarray' or 'tensor'")
        arr = _seldon_array(data, "data")
        given = data.get("names") or []
        names = given if isinstance(given, list) and len(given) == arr.shape[1] else \
            _names(arr.shape[1], feature_names)
        return _rows_of([(str(n), arr[:, j]) for j, n in enumerate(names)], len(arr))
    raise ProtocolError("the request event holds no V2 'inputs', V1 'instances' or Seldon "
                        "'data'")


def request_rows(body: dict[str, Any]) -> int:
    """The rows of a request event, without reading its values (when no feature is used):
    the first V2 input's batch dimension, or the V1 instances; any other body is read in
    full by ``request_features``, which names what is wrong with it."""
    inputs = body.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) \
            and "datatype" in inputs[0]:
        shape = inputs[0].get("shape")
        if isinstance(shape, list):
            if not shape:
                return 1
            first = _grpc_shape(shape[:1])[0]
            if type(first) is int and 0 < first <= MAX_ROWS:
                return first
    else:
        instances = body.get("instances", inputs)
        if isinstance(instances, list) and 0 < len(instances) <= MAX_ROWS:
            return len(instances)
    return len(request_features(body, ()))


def _seldon_array(data: dict[str, Any], where: str) -> np.ndarray[Any, Any]:
    if "ndarray" in data:
        values = data["ndarray"]
        if not isinstance(values, list) or not values:
            raise ProtocolError(f"{where}.ndarray must be a non-empty list")
        try:
            arr = np.asarray(values, dtype=object)
        except ValueError:
            raise ProtocolError(f"{where}.ndarray is ragged") from None
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2:
            raise ProtocolError(f"{where}.ndarray must be rows of values")
    elif "tensor" in data:
        tensor = data["tensor"]
        if not isinstance(tensor, dict):
            raise ProtocolError(f"{where}.tensor must be an object with shape and values")
        shape = check_shape(tensor.get("shape"), f"{where}.tensor")
        values = tensor.get("values")
        if not isinstance(values, list) or int(np.prod(shape)) != len(values):
            raise ProtocolError(f"{where}.tensor: shape {list(shape)} does not match its "
                                f"values")
        arr = _columns(np.asarray(values, dtype=object).reshape(shape), f"{where}.tensor")
    else:
        raise ProtocolError(f"{where} must hold 'ndarray' or 'tensor'")
    if len(arr) > MAX_ROWS:
        raise ProtocolError(f"{where}: more than {MAX_ROWS} rows")
    if any(isinstance(v, list | dict) for v in arr.reshape(-1)):
        raise ProtocolError(f"{where}: expected rows of scalars")
    return arr


@dataclass(frozen=True)
class Predicted:
    """The response's answer for one row."""

    label: str | None
    value: float | None
    proba: list[float] | None
    classes: list[str] | None


def _probabilities(arr: np.ndarray[Any, Any], where: str) -> np.ndarray[Any, Any]:
    if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) == 0:
        raise ProtocolError(f"{where}: probabilities must be rows of at least two classes")
    try:
        p = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise ProtocolError(f"{where}: probabilities must be numbers") from None
    # NaN fails both comparisons, infinities one of them.
    if not (p.min() >= 0 and p.max() <= 1 + 1e-6):
        raise ProtocolError(f"{where}: probabilities must be within 0..1")
    return p


def _answers(label_col: np.ndarray[Any, Any] | None, proba: np.ndarray[Any, Any] | None,
             classes: list[str], task: str, where: str) -> list[Predicted]:
    n = len(label_col) if label_col is not None else len(proba) if proba is not None else 0
    if label_col is not None and proba is not None and len(proba) != n:
        raise ProtocolError(f"{where}: the label and probability outputs have different "
                            f"numbers of rows")
    if task == "regression" and label_col is None:
        raise ProtocolError(f"{where}: a regression response needs an output of one value "
                            f"per row")
    # Python values at once (one tolist each), not a numpy scalar per cell.
    probas: list[list[float]] | None = None if proba is None else proba.tolist()
    labels: list[Any] | None = None if label_col is None else label_col.tolist()
    out = []
    for i in range(n):
        p = None if probas is None else probas[i]
        if task == "regression":
            assert labels is not None
            out.append(Predicted(None, numeric(_scalar(labels[i]), f"{where}[{i}]"),
                                 None, None))
            continue
        if labels is not None:
            label = canonical(_scalar(labels[i]), f"{where}[{i}]")
        else:
            assert p is not None
            label = classes[p.index(max(p))]
        out.append(Predicted(label, None, p, classes if p is not None else None))
    return out


def _class_names(width: int, given: Any, configured: Sequence[str]) -> list[str]:
    if isinstance(given, list) and len(given) == width:
        return [canonical(c, "class names") for c in given]
    return _default_classes(width, tuple(configured))


@functools.lru_cache(maxsize=64)
def _default_classes(width: int, configured: tuple[str, ...]) -> list[str]:
    """The configured classes, else "0".."K-1" (the same list object for every row: the
    store keeps one class list per row, JSON-encoded once per event)."""
    return [canonical(c, "classes") for c in _names(width, configured)]


def response_predictions(body: dict[str, Any], task: str, classes: Sequence[str],
                         model: str) -> tuple[list[Predicted], str | None]:
    """The answer per row, and the model version the body names (V2 model_version,
    Seldon meta.requestPath)."""
    if "outputs" in body:
        tensors = _v2_tensors(body["outputs"], "outputs", body.get("raw_output_contents"))
        logged = [(n, a) for n, a, _ in tensors if a is not None]
        if not logged:
            raise ProtocolError("the response's output data was not logged (binary tensor "
                                "data): nothing to evaluate", 422)
        label_col = proba = None
        for name, arr in sorted(logged, key=lambda t: t[0] not in LABEL_OUTPUTS):
            if arr.shape[1] == 1 and label_col is None:
                label_col = arr[:, 0]
            elif arr.shape[1] > 1 and proba is None and arr.dtype.kind in "fiu" \
                    and (name in PROBA_OUTPUTS or task == "classification"):
                proba = _probabilities(arr, f"output {name!r}")
        if label_col is None and proba is None:
            raise ProtocolError("no output holds a label, a value or probabilities", 422)
        names = _class_names(proba.shape[1], None, classes) if proba is not None else []
        version = body.get("model_version")
        return (_answers(label_col, proba, names, task, "outputs"),
                version if isinstance(version, str) and version else None)
    if "predictions" in body:
        preds = body["predictions"]
        if not isinstance(preds, list) or not preds:
            raise ProtocolError("'predictions' must be a non-empty list")
        if len(preds) > MAX_ROWS:
            raise ProtocolError(f"'predictions': more than {MAX_ROWS} rows")
        if all(isinstance(p, dict) for p in preds):
            keys = [k for k in preds[0] if k in LABEL_OUTPUTS]
            pkeys = [k for k in preds[0] if k in PROBA_OUTPUTS]
            labels = np.asarray([p.get(keys[0]) for p in preds], dtype=object) \
                if keys else None
            pr = _probabilities(np.asarray([p.get(pkeys[0]) for p in preds], dtype=object),
                                "predictions") if pkeys else None
        else:
            try:
                arr = np.asarray(preds, dtype=object)
            except ValueError:
                raise ProtocolError("'predictions' is ragged") from None
            if arr.ndim == 1:
                labels, pr = arr, None
            elif arr.ndim == 2 and arr.shape[1] == 1:
                labels, pr = arr[:, 0], None
            elif arr.ndim == 2 and task == "classification":
                labels, pr = None, _probabilities(arr, "predictions")
            else:
                raise ProtocolError("'predictions' must hold one value or one row of "
                                    "probabilities per row")
        if labels is None and pr is None:
            raise ProtocolError("'predictions' hold no label, value or probabilities", 422)
        names = _class_names(pr.shape[1], None, classes) if pr is not None else []
        return _answers(labels, pr, names, task, "predictions"), None
    if "data" in body:
        data = body["data"]
        if not isinstance(data, dict):
            raise ProtocolError("'data' must be an object with 'ndarray' or 'tensor'")
        arr = _seldon_array(data, "data")
        meta = body.get("meta")
        version = None
        if isinstance(meta, dict) and isinstance(meta.get("requestPath"), dict):
            v = meta["requestPath"].get(model)
            version = v if isinstance(v, str) and v else None
        if arr.shape[1] == 1:
            return _answers(arr[:, 0], None, [], task, "data"), version
        if task == "regression":
            raise ProtocolError("data: a regression response needs one value per row", 422)
        pr = _probabilities(arr, "data")
        names = _class_names(arr.shape[1], data.get("names"), classes)
        return _answers(None, pr, names, task, "data"), version
    raise ProtocolError("the response event holds no V2 'outputs', V1 'predictions' or "
                        "Seldon 'data'")


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelIn:
    id: str
    row: int
    label: str
    value: float | None
    metadata: dict[str, Any] | None
    time: float | None = None


def make_label(rid: Any, row: Any, label: Any, metadata: Any, task: str, where: str,
               when: float | None = None) -> LabelIn:
    rid = _check_id(rid, f"{where}.id")
    if row is None:
        row = 0
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < MAX_ROWS:
        raise ProtocolError(f"{where}.row: expected an integer row index >= 0")
    if label is None:
        raise ProtocolError(f"{where}.label is missing")
    if isinstance(label, list | dict):
        raise ProtocolError(f"{where}.label: expected a number or a string")
    if task == "regression":
        value: float | None = numeric(label, f"{where}.label")
        text = canonical(value, f"{where}.label")
    else:
        text = canonical(label, f"{where}.label")
        value = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ProtocolError(f"{where}.metadata: expected an object")
        if any(isinstance(v, list | dict) for v in metadata.values()):
            raise ProtocolError(f"{where}.metadata: values must be strings or numbers")
        metadata = {str(k): v for k, v in metadata.items()} or None
    return LabelIn(rid, row, text, value, metadata, when)


def parse_v2_feedback(body: bytes, task: str) -> list[LabelIn]:
    """``{"labels": [{"id": ..., "label": ..., "row"?: n, "metadata"?: {...}}]}``."""
    doc = loads_object(body)
    items = doc.get("labels")
    if not isinstance(items, list) or not items:
        raise ProtocolError("'labels' must be a non-empty list of {id, label, metadata}")
    if len(items) > MAX_ROWS:
        raise ProtocolError(f"'labels': at most {MAX_ROWS} per request")
    out = []
    for i, item in enumerate(items):
        where = f"labels[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{where}: expected an object {{id, label}}")
        when = item.get("timestamp")
        out.append(make_label(item.get("id"), item.get("row"), item.get("label"),
                              item.get("metadata"), task, where,
                              parse_time(when, f"{where}.timestamp")
                              if isinstance(when, str) else None))
    return out


def _puid(message: Any) -> str | None:
    if isinstance(message, dict) and isinstance(message.get("meta"), dict):
        puid = message["meta"].get("puid")
        if isinstance(puid, str) and puid:
            return puid
    return None


def parse_seldon_feedback(body: bytes, header_id: str | None, task: str,
                          classes: Sequence[str]) -> list[LabelIn]:
    """A Seldon Feedback message: the id from ``response.meta.puid``, the request's
    ``meta.puid`` or the x-request-id header; the labels from ``truth.data``, one per row
    (a row of one value is the label; a one-hot or probability row the argmax of
    ``truth.data.names`` or of the configured classes); ``truth.meta.tags`` is the
    labels' metadata."""
    doc = loads_object(body)
    rid = _puid(doc.get("response")) or _puid(doc.get("request")) or header_id
    if rid is None:
        raise ProtocolError("feedback has no inference id: set response.meta.puid (as "
                            "the prediction's response carries it) or an x-request-id "
                            "header")
    truth = doc.get("truth")
    if not isinstance(truth, dict):
        raise ProtocolError("feedback 'truth' is missing: a SeldonMessage with the label "
                            "in data.ndarray or data.tensor")
    data = truth.get("data")
    if not isinstance(data, dict):
        raise ProtocolError("feedback 'truth.data' must be an object with 'ndarray' or "
                            "'tensor'")
    arr = _seldon_array(data, "truth.data")
    meta = truth.get("meta")
    tags = meta.get("tags") if isinstance(meta, dict) else None
    if tags is not None and not isinstance(tags, dict):
        raise ProtocolError("feedback 'truth.meta.tags' must be an object")
    out = []
    for i in range(len(arr)):
        where = f"truth.data[{i}]"
        if arr.shape[1] == 1:
            label = arr[i, 0]
        elif task == "classification":
            try:
                scores = arr[i].astype(np.float64)
            except (TypeError, ValueError):
                raise ProtocolError(f"{where}: a row of several values must be a one-hot "
                                    f"or probability row") from None
            names = _class_names(arr.shape[1], data.get("names"), classes)
            label = names[int(np.argmax(scores))]
        else:
            raise ProtocolError(f"{where}: expected one value per row")
        out.append(make_label(rid, i, _scalar(label), tags, task, where))
    return out


def parse_bulk_row(row: Mapping[str, Any], task: str, where: str) -> LabelIn:
    """One row of a bulk file: columns id, label, optional row; the rest is metadata."""
    meta = {k: _scalar(v) for k, v in row.items() if k not in ("id", "label", "row")
            and v is not None and not (isinstance(v, float) and math.isnan(v))}
    rid = row.get("id")
    if isinstance(rid, int | float) and not isinstance(rid, bool):
        rid = canonical(rid, f"{where}.id")  # a numeric id column
    label = row.get("label")
    if isinstance(label, float) and math.isnan(label):
        label = None
    index = row.get("row")
    if isinstance(index, float) and math.isnan(index):
        index = None
    elif isinstance(index, str):
        index = int(index) if index.strip().isdigit() else None if not index.strip() \
            else index
    elif isinstance(index, float) and index.is_integer():
        index = int(index)
    return make_label(rid, index, label, meta, task, where)


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
