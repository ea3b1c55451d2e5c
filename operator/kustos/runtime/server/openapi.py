"""OpenAPI 3.0 document of the server's own endpoints, for the served model.

The model's name and version are written into the paths: this server serves exactly one
model, so the document describes the endpoints that exist (schemathesis fuzzes it).
"""

from __future__ import annotations

from typing import Any

import orjson

from kustos.runtime.server.models import Model
from kustos.runtime.server.tensors import DATATYPES

_ERROR = {"$ref": "#/components/schemas/Error"}
_SELDON_ERROR = {"$ref": "#/components/schemas/SeldonError"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(schema: dict[str, Any], *codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 404: "Unknown model, version or explainer",
            413: "Body too large", 422: "Input the model cannot take",
            502: "Explainer unavailable", 503: "Model not ready", 504: "Explainer timed out"}
    return {str(c): _json(schema, text[c]) for c in codes}


def _get(ok: dict[str, Any], summary: str, error: dict[str, Any] = _ERROR) -> dict[str, Any]:
    return {"get": {"summary": summary,
                    "responses": {"200": _json(ok, "OK"), **_errors(error, 503)}}}


def _post(body: dict[str, Any], ok: dict[str, Any], summary: str,
          error: dict[str, Any] = _ERROR, extra: tuple[int, ...] = ()) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": _json(ok, "OK"), **_errors(error, 400, 413, 422, 503, *extra)},
    }}


def _schemas() -> dict[str, Any]:
    number_or_nested: dict[str, Any] = {}
    tensor_in = {
        "type": "object", "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": sorted(DATATYPES)},
            "parameters": {"type": "object"},
            "data": {"type": "array", "items": number_or_nested},
        },
    }
    tensor_out = {
        "type": "object", "required": ["name", "shape", "datatype", "data"],
        "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                       "shape": {"type": "array", "items": {"type": "integer"}},
                       "data": {"type": "array"}},
    }
    seldon_data = {
        "type": "object",
        "properties": {
            "names": {"type": "array", "items": {"type": "string"}},
            "ndarray": {"type": "array"},
            "tensor": {"type": "object", "required": ["shape", "values"], "properties": {
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "values": {"type": "array", "items": {"type": "number"}}}},
        },
    }
    metadata_tensor = {"type": "object", "required": ["name", "datatype", "shape"],
                       "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                      "shape": {"type": "array", "items": {"type": "integer"}}}}
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "SeldonError": {"type": "object", "required": ["status"], "properties": {"status": {
            "type": "object", "required": ["code", "info", "reason", "status"],
            "properties": {"code": {"type": "integer"}, "info": {"type": "string"},
                           "reason": {"type": "string"},
                           "status": {"type": "string", "enum": ["FAILURE"]}}}}},
        "InferRequest": {
            "type": "object", "required": ["inputs"],
            "properties": {
                "id": {"type": "string"}, "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "items": tensor_in},
                "outputs": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
            },
        },
        "InferResponse": {
            "type": "object", "required": ["model_name", "outputs"],
            "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                           "id": {"type": "string"},
                           "outputs": {"type": "array", "items": tensor_out}},
        },
        "ModelMetadata": {
            "type": "object", "required": ["name", "platform", "inputs", "outputs"],
            "properties": {"name": {"type": "string"},
                           "versions": {"type": "array", "items": {"type": "string"}},
                           "platform": {"type": "string"},
                           "inputs": {"type": "array", "items": metadata_tensor},
                           "outputs": {"type": "array", "items": metadata_tensor},
                           "parameters": {"type": "object"}},
        },
        "SeldonMessage": {"type": "object", "properties": {
            "data": seldon_data, "meta": {"type": "object"}}},
    }


def document(model: Model, server_meta: bytes) -> dict[str, Any]:
    n, v = model.name, model.version

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    ready = {"type": "object", "properties": {"name": {"type": "string"},
                                              "ready": {"type": "boolean"}}}
    any_object = {"type": "object"}
    paths: dict[str, Any] = {
        "/v2": _get(any_object, "Server metadata"),
        "/v2/health/live": _get({"type": "object", "properties": {"live": {"type": "boolean"}}},
                                "Liveness"),
        "/v2/health/ready": {"get": {"summary": "Readiness", "responses": {
            "200": _json(ready, "Ready"), "503": _json(ready, "Not ready")}}},
        "/v1/models": _get(any_object, "Models (KServe V1)"),
        f"/v1/models/{n}": {"get": {"summary": "Model status (KServe V1)", "responses": {
            "200": _json(ready, "Ready"), "503": _json(ready, "Not ready")}}},
        f"/v1/models/{n}:predict": _post(
            {"type": "object", "required": ["instances"],
             "properties": {"instances": {"type": "array", "minItems": 1}}},
            {"type": "object", "required": ["predictions"],
             "properties": {"predictions": {"type": "array"}}}, "Predict (KServe V1)"),
        f"/v1/models/{n}:explain": _post(any_object, any_object, "Explain (KServe V1)",
                                         extra=(404, 502, 504)),
        "/api/v1.0/predictions": _post(ref("SeldonMessage"), ref("SeldonMessage"),
                                       "Predict (Seldon)", _SELDON_ERROR),
        "/api/v1.0/feedback": _post(
            {"type": "object", "properties": {"request": ref("SeldonMessage"),
                                              "response": ref("SeldonMessage"),
                                              "truth": ref("SeldonMessage"),
                                              "reward": {"type": "number"}}},
            ref("SeldonMessage"), "Feedback (Seldon)", _SELDON_ERROR),
        "/api/v1.0/metadata": _get(any_object, "Model metadata (Seldon)", _SELDON_ERROR),
        "/api/v1.0/health/status": _get(any_object, "Health (Seldon)", _SELDON_ERROR),
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "OpenMetrics text",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }
    for base in (f"/v2/models/{n}", f"/v2/models/{n}/versions/{v}"):
        paths[base] = _get(ref("ModelMetadata"), "Model metadata")
        paths[f"{base}/ready"] = {"get": {"summary": "Model readiness", "responses": {
            "200": _json(ready, "Ready"), "503": _json(ready, "Not ready")}}}
        paths[f"{base}/infer"] = _post(ref("InferRequest"), ref("InferResponse"), "Inference")
        paths[f"{base}/explain"] = _post(any_object, any_object, "Explain",
                                         extra=(404, 502, 504))
    return {
        "openapi": "3.0.3",
        "info": {"title": f"kustos serve: {n}", "version": orjson.loads(server_meta)["version"],
                 "description": "Open Inference Protocol (KServe V2), KServe V1 and Seldon."},
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
