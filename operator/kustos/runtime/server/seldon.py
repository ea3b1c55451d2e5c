"""Seldon Core v1 protocol: SeldonMessage in and out, Seldon's error status object.

Classifiers answer ``predict_proba`` with the class labels as ``names``, like Seldon's
SKLEARN_SERVER; other models answer their default output. A request sent as ``tensor``
gets a ``tensor`` back, ``ndarray`` gets ``ndarray``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from kustos.runtime.server.models import Model
from kustos.runtime.server.tensors import (
    Array,
    ProtocolError,
    check_shape,
    loads_object,
    nested_array,
    to_jsonable,
)

_REASONS = {400: "MICROSERVICE_BAD_DATA", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
            413: "MICROSERVICE_BAD_DATA", 422: "MICROSERVICE_BAD_DATA",
            503: "MICROSERVICE_NOT_READY"}


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"status": {"code": status, "info": message,
                                    "reason": _REASONS.get(status, "MICROSERVICE_INTERNAL_ERROR"),
                                    "status": "FAILURE"}})


@dataclass(slots=True)
class SeldonRequest:
    tensors: dict[str, Array]
    kind: str  # "ndarray" | "tensor"
    meta: dict[str, Any]


def parse_message(doc: dict[str, Any], model: Model, where: str = "data") -> SeldonRequest:
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise ProtocolError("'meta' must be an object")
    data = doc.get("data")
    if not isinstance(data, dict):
        if any(k in doc for k in ("jsonData", "strData", "binData")):
            raise ProtocolError("only data.ndarray and data.tensor are supported", 422)
        raise ProtocolError("'data' must be an object with 'ndarray' or 'tensor'")
    names = data.get("names")
    if "names" in data and (not isinstance(names, list)
                              or not all(isinstance(n, str) for n in names)):
        raise ProtocolError(f"{where}.names must be a list of strings")
    if "ndarray" in data and "tensor" in data:
        raise ProtocolError(f"{where} must hold one of 'ndarray' or 'tensor', not both")
    if "ndarray" in data:
        if not isinstance(data["ndarray"], list):
            raise ProtocolError(f"{where}.ndarray must be a list")
        arr = nested_array(data["ndarray"], f"{where}.ndarray")
        kind = "ndarray"
    elif "tensor" in data:
        tensor = data["tensor"]
        if not isinstance(tensor, dict):
            raise ProtocolError(f"{where}.tensor must be an object with shape and values")
        shape = check_shape(tensor.get("shape"), f"{where}.tensor")
        values = tensor.get("values")
        if not isinstance(values, list):
            raise ProtocolError(f"{where}.tensor.values must be a list of numbers")
        arr = nested_array(values, f"{where}.tensor.values")
        if arr.ndim != 1 or arr.size != int(np.prod(shape)):
            raise ProtocolError(f"{where}.tensor: shape {list(shape)} does not match "
                                f"{arr.size} values")
        arr = arr.reshape(shape)
        kind = "tensor"
    else:
        raise ProtocolError(f"{where} must hold 'ndarray' or 'tensor'")
    if arr.ndim == 1 and model.inputs and len(model.inputs[0].shape) == 2:
        arr = arr.reshape(1, -1)  # Seldon clients commonly send one row unwrapped
    if names and arr.ndim == 2 and len(names) != arr.shape[1]:
        raise ProtocolError(f"{where}.names has {len(names)} names for {arr.shape[1]} columns")
    return SeldonRequest({model.inputs[0].name: arr}, kind, meta)


def parse_predict(body: bytes, model: Model) -> SeldonRequest:
    return parse_message(loads_object(body), model)


def output_for(model: Model) -> tuple[str, list[str]]:
    """The output Seldon clients get and its column names."""
    if model.classes is not None and "predict_proba" in model.output_names:
        return "predict_proba", [str(c) for c in model.classes]
    name = model.default_outputs[0]
    return name, []


def response(model: Model, req: SeldonRequest, outputs: dict[str, Array]) -> bytes:
    name, names = output_for(model)
    arr = outputs[name]
    data: dict[str, Any] = {"names": names}
    if req.kind == "tensor" and arr.dtype.kind in "biuf":
        data["tensor"] = {"shape": list(arr.shape), "values": arr.reshape(-1).tolist()}
    else:
        data["ndarray"] = to_jsonable(arr)
    meta: dict[str, Any] = {"requestPath": {model.name: model.version}}
    if isinstance(req.meta.get("puid"), str):
        meta["puid"] = req.meta["puid"]
    if isinstance(req.meta.get("tags"), dict):
        meta["tags"] = req.meta["tags"]
    return orjson.dumps({"data": data, "meta": meta})


def parse_feedback(body: bytes, model: Model) -> float | None:
    """Validates a Feedback message; returns the reward (if any)."""
    doc = loads_object(body)
    for part in ("request", "response", "truth"):
        value = doc.get(part)
        if part in doc:
            if not isinstance(value, dict):
                raise ProtocolError(f"feedback '{part}' must be a SeldonMessage object")
            if not isinstance(value.get("meta", {}), dict):
                raise ProtocolError(f"feedback '{part}.meta' must be an object")
            if "data" in value:
                parse_message(value, model, f"{part}.data")
    reward = doc.get("reward")
    if "reward" in doc and (isinstance(reward, bool) or not isinstance(reward, int | float)):
        raise ProtocolError("feedback 'reward' must be a number")
    return float(reward) if reward is not None else None


def metadata(model: Model) -> bytes:
    """Seldon's model metadata: V2-like, with tensor schemas as Seldon reports them."""
    def schema(t: Any) -> dict[str, Any]:
        return {"messagetype": "tensor", "schema": {"names": [], "shape": list(t.shape[1:])}}
    out_name, out_names = output_for(model)
    outputs = [schema(o) for o in model.outputs if o.name == out_name]
    if out_names and outputs:
        outputs[0]["schema"]["names"] = out_names
    return orjson.dumps({"name": model.name, "versions": [model.version],
                         "platform": model.platform,
                         "inputs": [schema(t) for t in model.inputs], "outputs": outputs,
                         "custom": {}})
