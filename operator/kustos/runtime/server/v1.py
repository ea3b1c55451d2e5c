"""KServe V1 (TensorFlow-Serving style) REST: ``instances`` in, ``predictions`` out."""

from __future__ import annotations

import orjson

from kustos.runtime.server.models import Model
from kustos.runtime.server.tensors import (
    Array,
    ProtocolError,
    loads_object,
    nested_array,
    to_jsonable,
)


def parse_predict(body: bytes, model: Model) -> dict[str, Array]:
    """``{"instances": [...]}`` (or ``{"inputs": ...}``) -> model tensors, one row each."""
    doc = loads_object(body)
    instances = doc.get("instances", doc.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise ProtocolError("'instances' must be a non-empty list")
    if all(isinstance(row, dict) for row in instances):
        # Named inputs: [{"a": ..., "b": ...}, ...] -> one tensor per name.
        names = set(instances[0])
        if any(set(row) != names for row in instances):
            raise ProtocolError("every instance must have the same keys")
        return {n: nested_array([row[n] for row in instances], f"instances[*].{n}", strings=True)
                for n in names}
    if any(isinstance(row, dict) for row in instances):
        raise ProtocolError("instances must be all objects or all arrays")
    return {model.inputs[0].name: nested_array(instances, "instances", strings=True)}


def predictions(outputs: dict[str, Array], names: tuple[str, ...]) -> bytes:
    if len(names) == 1:
        return orjson.dumps({"predictions": to_jsonable(outputs[names[0]])})
    cols = {n: to_jsonable(outputs[n]) for n in names}
    rows = len(next(iter(cols.values())))
    return orjson.dumps({"predictions": [{n: cols[n][i] for n in names} for i in range(rows)]})


def model_status(name: str, ready: bool) -> bytes:
    return orjson.dumps({"name": name, "ready": ready})
