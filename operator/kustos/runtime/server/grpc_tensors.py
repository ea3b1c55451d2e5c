"""Open Inference Protocol gRPC tensors <-> numpy: typed ``contents`` and raw bytes.

Pure functions over the generated messages. Raw tensors are the REST binary extension's
layout and decoded by the same function (:func:`tensors.decode_raw`). FP16 has no typed
field, so it travels raw only. Every refusal is a :class:`ProtocolError` (status 400),
which the gRPC server answers with INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kustos.runtime.server.tensors import (
    DATATYPES,
    MAX_RANK,
    Array,
    ProtocolError,
    datatype_of,
    decode_raw,
    encode_raw,
    object_array,
    text_or_bytes,
)

# V2 datatype -> the field of InferTensorContents that carries it.
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS = frozenset(TYPED_FIELD.values())
# Types narrower than their field: the values must be range-checked before the cast.
_NARROW = frozenset({"UINT8", "UINT16", "INT8", "INT16"})


def _shape(tensor: Any, where: str) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise ProtocolError(
            f"{where}: 'shape' must hold at most {MAX_RANK} non-negative integers, "
            f"got {list(shape)}")
    return shape


def _has_contents(tensor: Any) -> bool:
    if not tensor.HasField("contents"):
        return False
    return any(len(getattr(tensor.contents, f)) for f in _FIELDS)


def decode_input(tensor: Any, raw: bytes | None, where: str) -> Array:
    """One InferInputTensor (with its raw_input_contents entry, if the request has them)
    -> a numpy array of its shape and datatype; BYTES elements become str when UTF-8."""
    datatype = tensor.datatype
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(f"{where}: unknown datatype {datatype!r}")
    shape = _shape(tensor, where)
    count = math.prod(shape)
    if raw is not None:
        if _has_contents(tensor):
            raise ProtocolError(f"{where}: data given both in 'contents' and in "
                                "'raw_input_contents'")
        return decode_raw(raw, shape, datatype, where, text=True)
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(f"{where}: {datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {count} elements, "
                            f"{field} has {len(values)}")
    if datatype == "BYTES":
        return object_array([text_or_bytes(v) for v in values], shape, where)
    if datatype in _NARROW:
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.size and (int(wide.min()) < info.min or int(wide.max()) > info.max):
            raise ProtocolError(f"{where}: value out of range for {datatype}")
        return _reshape(wide.astype(dtype), shape, where)
    return _reshape(np.array(values, dtype=dtype), shape, where)


def _reshape(arr: Array, shape: tuple[int, ...], where: str) -> Array:
    try:
        return arr.reshape(shape)
    except ValueError:
        raise ProtocolError(f"{where}: shape {list(shape)} does not fit the data") from None


def output_datatype(arr: Array) -> str:
    return datatype_of(arr.dtype)


def needs_raw(outputs: dict[str, Array]) -> bool:
    """Outputs only raw bytes can carry (FP16)."""
    return any(output_datatype(a) not in TYPED_FIELD for a in outputs.values())


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def raw_bytes(arr: Array) -> bytes:
    """An output's raw_output_contents entry: the layout the REST binary extension uses."""
    return encode_raw(arr)[1]


def fill_contents(contents: Any, arr: Array, datatype: str) -> None:
    """An output's typed InferTensorContents."""
    flat = arr.reshape(-1)
    field = getattr(contents, TYPED_FIELD[datatype])
    if datatype == "BYTES":
        field.extend([_as_bytes(v) for v in flat.tolist()])
    else:
        field.extend(flat.astype(DATATYPES[datatype], copy=False).tolist())
