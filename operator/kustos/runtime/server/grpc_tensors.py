"""Open Inference Protocol gRPC tensors <-> numpy: typed ``contents`` and raw bytes.

Pure functions over the generated messages. Raw tensors are little-endian and row-major;
a BYTES element is its length as a 4-byte little-endian integer followed by the bytes.
FP16 has no typed field, so it travels raw only. Every refusal is a :class:`ProtocolError`
(status 400), which the gRPC server answers with INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from kustos.runtime.server.tensors import (
    DATATYPES,
    MAX_RANK,
    Array,
    ProtocolError,
    datatype_of,
    encode_raw,
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
_LENGTH = struct.Struct("<I")


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
        return _decode_raw(raw, shape, count, datatype, dtype, where)
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(f"{where}: {datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {count} elements, "
                            f"{field} has {len(values)}")
    if datatype == "BYTES":
        return _objects([_text(v) for v in values], shape, where)
    if datatype in _NARROW:
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.size and (int(wide.min()) < info.min or int(wide.max()) > info.max):
            raise ProtocolError(f"{where}: value out of range for {datatype}")
        return _reshape(wide.astype(dtype), shape, where)
    return _reshape(np.array(values, dtype=dtype), shape, where)


def _decode_raw(raw: bytes, shape: tuple[int, ...], count: int, datatype: str,
                dtype: np.dtype[Any], where: str) -> Array:
    if datatype == "BYTES":
        return _objects(split_bytes(raw, count, where), shape, where)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"{where}: shape {list(shape)} of {datatype} needs "
                            f"{count * dtype.itemsize} raw bytes, got {len(raw)}")
    if datatype == "BOOL" and raw and max(raw) > 1:
        raise ProtocolError(f"{where}: BOOL raw data must be bytes 0 or 1")
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    return _reshape(arr.astype(dtype, copy=False), shape, where)


def split_bytes(raw: bytes, count: int, where: str) -> list[Any]:
    """Length-prefixed BYTES elements -> exactly ``count`` values (str when UTF-8)."""
    out: list[Any] = []
    pos, end = 0, len(raw)
    view = memoryview(raw)
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError(f"{where}: truncated BYTES element length")
        (size,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + size > end:
            raise ProtocolError(f"{where}: BYTES element longer than the raw data")
        out.append(_text(bytes(view[pos:pos + size])))
        pos += size
        if len(out) > count:
            break
    if len(out) != count:
        raise ProtocolError(f"{where}: shape needs {count} BYTES elements, raw data holds "
                            f"{'more' if len(out) > count else len(out)}")
    return out


def _text(value: bytes) -> Any:
    # The REST protocol hands models str; keep that unless the bytes are not text.
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _objects(values: list[Any], shape: tuple[int, ...], where: str) -> Array:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return _reshape(arr, shape, where)


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
