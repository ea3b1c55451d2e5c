"""Open Inference Protocol tensors <-> numpy: datatypes, decoding with checks, encoding.

Decoding is strict on purpose: JSON strings are never parsed as numbers, integers must fit
their datatype, ragged nesting is refused, and ``shape`` must account for every element.
Each failure raises :class:`ProtocolError` with the HTTP status the protocols answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

Array = npt.NDArray[Any]

# V2 datatype -> numpy dtype (BYTES are Python str/bytes objects).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPES.items() if k != "BYTES"}
# A safety valve against absurd shapes that would still multiply to a small size.
MAX_RANK = 32


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP status code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def loads_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object (every protocol's and the drift POST)."""
    if not body:
        raise ProtocolError("request body is empty; expected a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object")
    return doc


def nested_array(values: Any, where: str, strings: bool = False) -> Array:
    """JSON nested lists -> an array of numbers (or, with ``strings``, of str objects);
    ragged or mixed data is a ProtocolError naming ``where``."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise ProtocolError(f"{where}: ragged or malformed data") from None
    if arr.dtype.kind in "biuf":
        return arr
    if strings and (arr.dtype.kind in "US" or (arr.dtype.kind == "O" and all(
            isinstance(v, str) for v in arr.reshape(-1).tolist()))):
        out = np.empty(arr.shape, dtype=object)
        out[...] = arr
        return out
    raise ProtocolError(f"{where}: expected numbers" + (" or strings" if strings else ""))


def datatype_of(dtype: np.dtype[Any]) -> str:
    """numpy dtype -> V2 datatype (strings and objects are BYTES)."""
    if dtype.kind in "OUS":
        return "BYTES"
    return _BY_DTYPE.get(dtype, "FP64" if dtype.kind == "f" else "INT64")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a model takes or returns: reported by metadata, enforced on infer."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a variable dimension (the batch)
    # Extra description for metadata (MLServer's tensor parameters), e.g. column names.
    parameters: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype,
                               "shape": list(self.shape)}
        if self.parameters:
            out["parameters"] = self.parameters
        return out


def check_shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise ProtocolError(f"{where}: 'shape' must be a list of at most {MAX_RANK} integers")
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise ProtocolError(f"{where}: 'shape' must hold non-negative integers, got {shape}")
    return tuple(shape)


def _flatten_bytes(data: Any, where: str) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str | bytes):
            out.append(item)
        else:
            raise ProtocolError(f"{where}: BYTES data must be strings, got {type(item).__name__}")
    return out


def decode(data: Any, shape: tuple[int, ...], datatype: str, where: str) -> Array:
    """JSON ``data`` (flat or nested, row-major) -> numpy array of ``shape``/``datatype``."""
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r}")
    if not isinstance(data, list):
        data = [data]  # a scalar is allowed for shape [] or [1]
    expected = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten_bytes(data, where)
        if len(flat) != expected:
            raise ProtocolError(
                f"{where}: shape {list(shape)} needs {expected} elements, data has {len(flat)}"
            )
        return object_array(flat, shape, where)
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):
        raise ProtocolError(f"{where}: ragged or malformed 'data'") from None
    kind = raw.dtype.kind
    if raw.size == 0 and expected == 0:
        try:
            return np.zeros(shape, dtype=dtype)
        except ValueError:  # numpy refuses dimensions whose product overflows, even with a 0
            raise ProtocolError(f"{where}: shape {list(shape)} is too large") from None
    if kind not in "biuf":
        raise ProtocolError(f"{where}: {datatype} data must be numbers, got non-numeric values")
    if raw.size != expected:
        raise ProtocolError(
            f"{where}: shape {list(shape)} needs {expected} elements, data has {raw.size}"
        )
    if dtype.kind in "iu":
        if kind == "f":
            # numpy turns ints beyond int64 (large UINT64) into floats: check the originals.
            return _big_ints(data, shape, dtype, datatype, where)
        if kind in "iu" and raw.size:
            info = np.iinfo(dtype)
            lo, hi = int(raw.min()), int(raw.max())
            if lo < info.min or hi > info.max:
                raise ProtocolError(f"{where}: value out of range for {datatype}")
    elif dtype.kind == "b" and kind != "b" and (
            kind == "f" or (raw.size and (raw.min() < 0 or raw.max() > 1))):
        raise ProtocolError(f"{where}: BOOL data must be true/false (or 0/1)")
    try:
        with np.errstate(over="ignore"):  # FP16/FP32 overflow becomes inf: refused later
            arr = raw.astype(dtype, copy=False)
    except (ValueError, OverflowError):
        raise ProtocolError(f"{where}: data does not fit {datatype}") from None
    return arr.reshape(shape)


def _big_ints(data: Any, shape: tuple[int, ...], dtype: np.dtype[Any], datatype: str,
              where: str) -> Array:
    flat = np.array(data, dtype=object).reshape(-1).tolist()
    if not all(type(v) is int for v in flat):
        raise ProtocolError(f"{where}: {datatype} data must be integers")
    info = np.iinfo(dtype)
    if flat and (min(flat) < info.min or max(flat) > info.max):
        raise ProtocolError(f"{where}: value out of range for {datatype}")
    return np.array(flat, dtype=dtype).reshape(shape)


def encode(name: str, arr: Array) -> dict[str, Any]:
    """numpy -> V2 output tensor; numeric data stays a numpy array for orjson."""
    flat = arr.reshape(-1)
    data: Any
    if flat.dtype.kind in "OUS":
        data = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                for x in flat.tolist()]
    elif flat.dtype.kind in "biuf":
        data = np.ascontiguousarray(flat)
    else:
        data = flat.tolist()
    return {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape),
            "data": data}


def to_jsonable(arr: Array) -> Any:
    """numpy -> nested lists (V1 predictions, Seldon ndarray)."""
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8", "replace").tolist()
    return arr.tolist()


# ------------------------------------------------------------------ raw (binary) tensors
# The binary tensor layout shared by the REST binary extension and gRPC raw contents:
# numeric data little-endian, row-major; BOOL one byte per element; BYTES elements each
# preceded by their length as a 4-byte little-endian unsigned integer.

_LENGTH = 4


def raw_size(arr: Array) -> int:
    """Bytes ``arr`` takes in the raw layout (numeric only: BYTES needs its encoding)."""
    return int(arr.size) * int(arr.dtype.itemsize)


def decode_raw(raw: bytes | memoryview, shape: tuple[int, ...], datatype: str,
               where: str, *, text: bool = False) -> Array:
    """Raw tensor bytes -> numpy array of ``shape``/``datatype``; every size is checked.

    The one decoder of the raw layout: the REST binary extension and gRPC's
    ``raw_input_contents`` both call it. With ``text`` a BYTES element that is UTF-8
    becomes ``str`` (gRPC hands models strings); without it every element stays ``bytes``.
    """
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r}")
    expected = math.prod(shape)
    if datatype == "BYTES":
        return _decode_raw_bytes(raw, shape, expected, where, text)
    need = expected * dtype.itemsize
    if len(raw) != need:
        raise ProtocolError(
            f"{where}: shape {list(shape)} of {datatype} needs {need} raw bytes, "
            f"got {len(raw)}")
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    # numpy would read any non-zero byte as True; the layout allows only 0 and 1.
    if dtype.kind == "b" and arr.size and arr.view(np.uint8).max() > 1:
        raise ProtocolError(f"{where}: BOOL raw bytes must be 0 or 1")
    try:
        # A copy: the view into the body may be unaligned (the JSON header has any length)
        # and is read-only; native libraries get an aligned, owned array.
        return arr.astype(dtype).reshape(shape)
    except ValueError:
        raise ProtocolError(f"{where}: shape {list(shape)} is too large") from None


def _decode_raw_bytes(raw: bytes | memoryview, shape: tuple[int, ...], expected: int,
                      where: str, text: bool) -> Array:
    view = memoryview(raw)
    total = len(view)
    items: list[Any] = []
    off = 0
    while off < total:
        if len(items) >= expected:
            raise ProtocolError(f"{where}: more BYTES elements than shape {list(shape)} holds")
        if off + _LENGTH > total:
            raise ProtocolError(f"{where}: BYTES element {len(items)} has a truncated length")
        size = int.from_bytes(view[off:off + _LENGTH], "little")
        off += _LENGTH
        if off + size > total:
            raise ProtocolError(
                f"{where}: BYTES element {len(items)} claims {size} bytes, "
                f"only {total - off} remain")
        item = bytes(view[off:off + size])
        items.append(text_or_bytes(item) if text else item)
        off += size
    if len(items) != expected:
        raise ProtocolError(
            f"{where}: shape {list(shape)} needs {expected} BYTES elements, got {len(items)}")
    return object_array(items, shape, where)


def text_or_bytes(value: bytes) -> str | bytes:
    """A BYTES element as str when it is UTF-8 (what JSON ``data`` hands models)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def object_array(items: list[Any], shape: tuple[int, ...], where: str) -> Array:
    """BYTES elements (already counted against ``shape``) -> an object array of ``shape``."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    try:
        return arr.reshape(shape)
    except ValueError:
        raise ProtocolError(f"{where}: shape {list(shape)} is too large") from None


def encode_raw(arr: Array) -> tuple[str, bytes]:
    """numpy -> (V2 datatype, raw tensor bytes) in the layout :func:`decode_raw` reads."""
    datatype = datatype_of(arr.dtype)
    if datatype == "BYTES":
        parts: list[bytes] = []
        for x in arr.reshape(-1).tolist():
            item = x if isinstance(x, bytes) else str(x).encode("utf-8")
            parts.append(len(item).to_bytes(_LENGTH, "little"))
            parts.append(item)
        return datatype, b"".join(parts)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"no V2 datatype carries numpy {arr.dtype}")
    want = DATATYPES[datatype].newbyteorder("<")
    return datatype, np.ascontiguousarray(arr, dtype=want).tobytes()
