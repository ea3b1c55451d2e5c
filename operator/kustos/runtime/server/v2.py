"""Open Inference Protocol (KServe V2) REST: request parsing and response bodies.

Pure functions over bytes and numpy, so the hypothesis tests can drive them directly.
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
    encode,
    loads_object,
)

NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any] | None
    tensors: dict[str, Array]
    outputs: tuple[str, ...] | None


def parse_infer(body: bytes) -> InferRequest:
    doc = loads_object(body)
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
        if "parameters" in tensor and not isinstance(tensor["parameters"], dict):
            raise ProtocolError(f"{where}: 'parameters' must be an object")
        if "data" not in tensor:
            raise ProtocolError(f"{where}: 'data' is required (binary tensors are not supported)")
        shape = check_shape(tensor.get("shape"), where)
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str):
            raise ProtocolError(f"{where}: 'datatype' must be a string")
        tensors[name] = decode(tensor["data"], shape, datatype, where)
    outputs: tuple[str, ...] | None = None
    requested = doc.get("outputs")
    if "outputs" in doc:
        if not isinstance(requested, list):
            raise ProtocolError("'outputs' must be a list")
        names = []
        for i, out in enumerate(requested):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
            if "parameters" in out and not isinstance(out["parameters"], dict):
                raise ProtocolError(f"outputs[{i}]: 'parameters' must be an object")
            if out["name"] not in names:
                names.append(out["name"])
        outputs = tuple(names) if names else None
    return InferRequest(rid, params, tensors, outputs)


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
                                    "extensions": []})
        self.model_ready = orjson.dumps({"name": model_name, "ready": True})
        self.model_not_ready = orjson.dumps({"name": model_name, "ready": False})

    def infer(self, rid: str | None, outputs: dict[str, Array]) -> bytes:
        body = orjson.dumps(
            {"id": rid, "outputs": [encode(k, v) for k, v in outputs.items()]} if rid is not None
            else {"outputs": [encode(k, v) for k, v in outputs.items()]},
            option=NUMPY)
        # prefix is '{"model_name":..,"model_version":..' : splice the rest in after a comma.
        return self.prefix + b"," + body[1:]
