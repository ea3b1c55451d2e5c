"""Open Inference Protocol (KServe V2) REST: request parsing and response bodies.

Pure functions over bytes and numpy, so the hypothesis tests can drive them directly.

The binary tensor data extension (Triton's and KServe's): a request whose header
``Inference-Header-Content-Length: N`` says its first N bytes are the JSON document and
the rest raw tensor data, consumed in input order by the inputs whose
``parameters.binary_data_size`` gives their share; outputs asked for with
``parameters.binary_data: true`` (or the request's ``parameters.binary_data_output: true``)
come back the same way. The raw layout is tensors.decode_raw / encode_raw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kustos.runtime.server.models import Model
from kustos.runtime.server.tensors import (
    Array,
    ProtocolError,
    check_shape,
    decode,
    decode_raw,
    encode,
    encode_raw,
    loads_object,
)

NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any] | None
    tensors: dict[str, Array]
    outputs: tuple[str, ...] | None
    # Outputs to answer as raw bytes after the JSON header (binary tensor extension).
    binary_outputs: frozenset[str] = frozenset()
    # Request-level parameters.binary_data_output: every output not told otherwise.
    binary_default: bool = False
    # Outputs whose own parameters.binary_data said false.
    json_outputs: frozenset[str] = frozenset()

    def binary(self, name: str) -> bool:
        if name in self.binary_outputs:
            return True
        return self.binary_default and name not in self.json_outputs

    @property
    def any_binary(self) -> bool:
        return bool(self.binary_outputs) or self.binary_default


HEADER_LENGTH = b"inference-header-content-length"


def header_length(value: bytes | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header's value, checked against the body."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 19:
        raise ProtocolError("Inference-Header-Content-Length must be a non-negative integer")
    size = int(text)
    if size == 0:
        raise ProtocolError("Inference-Header-Content-Length must be positive: "
                            "the JSON header cannot be empty")
    if size > body_size:
        raise ProtocolError(f"Inference-Header-Content-Length is {size}, "
                            f"but the body has only {body_size} bytes")
    return size


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if key in params and not isinstance(value, bool):
        raise ProtocolError(f"{where}: parameters.{key} must be true or false")
    return value


def _binary_size(params: dict[str, Any], where: str) -> int | None:
    if "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if type(size) is not int or size < 0:
        raise ProtocolError(f"{where}: parameters.binary_data_size must be a non-negative integer")
    return size


def parse_infer(body: bytes, json_length: int | None = None) -> InferRequest:
    """A V2 infer request; ``json_length`` (from :func:`header_length`) marks a binary one."""
    if json_length is None:
        doc = loads_object(body)
        raw = memoryview(b"")
    else:
        view = memoryview(body)
        doc = loads_object(bytes(view[:json_length]))
        raw = view[json_length:]
    offset = 0
    rid = doc.get("id")
    if "id" in doc and not isinstance(rid, str):
        raise ProtocolError("'id' must be a string")
    params = doc.get("parameters")
    if "parameters" in doc and not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    tensors: dict[str, Array] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise ProtocolError(f"inputs[{i}] must be an object")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"inputs[{i}]: 'name' must be a non-empty string")
        if name in tensors:
            raise ProtocolError(f"input {name!r} given twice")
        where = f"input {name!r}"
        tparams = tensor.get("parameters", {})
        if not isinstance(tparams, dict):
            raise ProtocolError(f"{where}: 'parameters' must be an object")
        shape = check_shape(tensor.get("shape"), where)
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str):
            raise ProtocolError(f"{where}: 'datatype' must be a string")
        size = _binary_size(tparams, where)
        if size is None:
            if "data" not in tensor:
                raise ProtocolError(
                    f"{where}: 'data' is required unless parameters.binary_data_size is given")
            tensors[name] = decode(tensor["data"], shape, datatype, where)
            continue
        if "data" in tensor:
            raise ProtocolError(f"{where}: give either 'data' or binary_data_size, not both")
        if json_length is None:
            raise ProtocolError(f"{where}: binary_data_size needs the "
                                "Inference-Header-Content-Length header")
        if offset + size > len(raw):
            raise ProtocolError(
                f"{where}: binary_data_size {size} runs past the binary data "
                f"({len(raw) - offset} bytes left)")
        tensors[name] = decode_raw(raw[offset:offset + size], shape, datatype, where)
        offset += size
    if offset != len(raw):
        raise ProtocolError(f"the body has {len(raw)} bytes of binary data, "
                            f"but the inputs' binary_data_size add up to {offset}")
    binary_default = False
    if params is not None:
        binary_default = bool(_flag(params, "binary_data_output", "request"))
    binary_outputs: set[str] = set()
    json_outputs: set[str] = set()
    outputs: tuple[str, ...] | None = None
    requested = doc.get("outputs")
    if "outputs" in doc:
        if not isinstance(requested, list):
            raise ProtocolError("'outputs' must be a list")
        names = []
        for i, out in enumerate(requested):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
            oparams = out.get("parameters", {})
            if not isinstance(oparams, dict):
                raise ProtocolError(f"outputs[{i}]: 'parameters' must be an object")
            flag = _flag(oparams, "binary_data", f"outputs[{i}]")
            if flag is not None:
                (binary_outputs if flag else json_outputs).add(out["name"])
            if out["name"] not in names:
                names.append(out["name"])
        outputs = tuple(names) if names else None
    return InferRequest(rid, params, tensors, outputs, frozenset(binary_outputs),
                        binary_default, frozenset(json_outputs))


def select_outputs(model: Model, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    if requested is None:
        return model.default_outputs
    known = model.output_names
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise ProtocolError(
            f"unknown output(s) {unknown}; model {model.name!r} has {sorted(known)}")
    return requested


def batch_rows(inputs: dict[str, Array]) -> int:
    """Rows of the request: the first dimension, which every input must share."""
    rows = {v.shape[0] if v.ndim else 1 for v in inputs.values()}
    if len(rows) != 1:
        raise ProtocolError("all inputs must have the same first (batch) dimension", 422)
    return rows.pop()


class Responses:
    """Bodies that never change for a model, rendered once."""

    def __init__(self, model_name: str, model_version: str, server_version: str) -> None:
        self.prefix = orjson.dumps({"model_name": model_name, "model_version": model_version})[:-1]
        self.server = orjson.dumps({"name": "kustos", "version": server_version,
                                    "extensions": ["binary_tensor_data"]})
        self.model_ready = orjson.dumps({"name": model_name, "ready": True})
        self.model_not_ready = orjson.dumps({"name": model_name, "ready": False})

    def infer(self, rid: str | None, outputs: dict[str, Array]) -> bytes:
        body = orjson.dumps(
            {"id": rid, "outputs": [encode(k, v) for k, v in outputs.items()]} if rid is not None
            else {"outputs": [encode(k, v) for k, v in outputs.items()]},
            option=NUMPY)
        # prefix is '{"model_name":..,"model_version":..' : splice the rest in after a comma.
        return self.prefix + b"," + body[1:]

    def infer_binary(self, rid: str | None, outputs: dict[str, Array],
                     request: InferRequest) -> tuple[bytes, int]:
        """Body and JSON header length of a response with the outputs ``request`` wants raw."""
        tensors: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for name, arr in outputs.items():
            if request.binary(name):
                datatype, blob = encode_raw(arr)
                tensors.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                                "parameters": {"binary_data_size": len(blob)}})
                blobs.append(blob)
            else:
                tensors.append(encode(name, arr))
        doc: dict[str, Any] = {"outputs": tensors}
        if rid is not None:
            doc = {"id": rid, **doc}
        header = self.prefix + b"," + orjson.dumps(doc, option=NUMPY)[1:]
        return b"".join([header, *blobs]), len(header)
