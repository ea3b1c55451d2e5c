"""Generate the CustomResourceDefinitions from the pydantic models.

The pydantic models in ``kustos.api.v1alpha1`` are the source of truth; this module
turns their JSON schema into structural OpenAPI v3 schemas as the API server wants
them: definitions inlined (no ``$ref``), no ``anyOf`` for optionals, defaults, enums,
bounds, CEL rules. ``kustos crds`` prints them; ``kustos crds --write crds/`` writes
one file per kind (what ``make crds`` runs and a test checks).
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kustos.api.v1alpha1 import (
    GROUP,
    VERSION,
    BatchInference,
    DriftMonitor,
    ExplainerSpec,
    GovernancePolicy,
    ModelDeployment,
)

# Keys of JSON schema that a structural CRD schema does not take.
_DROP = {"title", "const", "$defs", "examples"}


@dataclass(frozen=True)
class Kind:
    model: type[BaseModel]
    plural: str
    short_names: list[str]
    columns: list[dict[str, Any]]
    scale: bool = False
    scope: str = "Namespaced"


def _column(name: str, type_: str, path: str, description: str,
            priority: int | None = None) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path,
                              "description": description}
    if priority is not None:
        column["priority"] = priority
    return column


def _condition_column(name: str, cond: str, description: str) -> dict[str, Any]:
    return _column(name, "string", f'.status.conditions[?(@.type=="{cond}")].status',
                   description)


AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

KINDS: list[Kind] = [
    Kind(
        ModelDeployment,
        "modeldeployments",
        ["md"],
        [
            _condition_column("Ready", "Ready", "Whether the model is serving"),
            _column("Replicas", "integer", ".status.readyReplicas", "Ready serving pods"),
            _column("Version", "string", ".spec.model.version", "Model version"),
            _column("URL", "string", ".status.url", "In-cluster URL"),
            _column("Risk", "string", ".spec.governance.riskTier", "Risk tier", priority=1),
            _column("Owner", "string", ".spec.governance.owner", "Owner", priority=1),
            _column("Compliant", "string",
                    '.status.conditions[?(@.type=="PolicyCompliant")].status',
                    "Whether the governance policies are met", priority=1),
            AGE,
        ],
        scale=True,
    ),
    Kind(
        ExplainerSpec,
        "explainerspecs",
        ["xs"],
        [
            _condition_column("Ready", "Ready", "Whether the explainer is serving"),
            _column("Target", "string", ".spec.targetRef.name", "The ModelDeployment explained"),
            _column("Method", "string", ".spec.method", "Explanation method"),
            _column("URL", "string", ".status.endpoint", "Explain endpoint"),
            AGE,
        ],
    ),
    Kind(
        DriftMonitor,
        "driftmonitors",
        ["dm"],
        [
            _condition_column("Ready", "Ready", "Whether the drift sidecar is running"),
            _condition_column("Drift", "DriftDetected", "Whether drift is detected"),
            _column("Target", "string", ".spec.targetRef.name", "The ModelDeployment monitored"),
            _column("Detector", "string", ".spec.detector", "Detector"),
            _column("Windows", "integer", ".status.windowsEvaluated", "Windows tested", priority=1),
            AGE,
        ],
    ),
    Kind(
        GovernancePolicy,
        "governancepolicies",
        ["gp"],
        [
            _condition_column("Ready", "Ready", "Whether the policy is in force"),
            _column("Enforcement", "string", ".spec.enforcement", "Deny or Warn"),
            AGE,
        ],
        scope="Cluster",
    ),
    Kind(
        BatchInference,
        "batchinferences",
        ["bi"],
        [
            _column("Phase", "string", ".status.phase", "Pending, Running, Complete or Failed"),
            _column("Done", "integer", ".status.rowsDone", "Rows predicted"),
            _column("Total", "integer", ".status.rowsTotal", "Rows in the input"),
            _column("Rows/s", "integer", ".status.rowsPerSecond", "Rows per second"),
            _column("Model", "string", ".spec.modelRef.name", "The ModelDeployment used",
                    priority=1),
            _column("Output", "string", ".status.outputUri", "Where the predictions are",
                    priority=1),
            _column("Image", "string", ".status.image",
                    "kustos, or kustos-explain for Parquet", priority=1),
            AGE,
        ],
    ),
]


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every $ref by a copy of its definition."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _inline({**target, **rest}, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """One schema node, made structural."""
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        branches = [b for b in any_of if b.get("type") != "null"]
        types = {b.get("type") for b in branches}
        if types == {"integer", "string"}:
            node["x-kubernetes-int-or-string"] = True
        elif len(branches) == 1:
            node = {**branches[0], **node}
        else:  # pragma: no cover - a model change that needs a human decision
            raise ValueError(f"cannot make {any_of} structural")
    if "default" in node and node["default"] is None:
        del node["default"]
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    for key in _DROP:
        node.pop(key, None)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node["type"] = "object"
    if "properties" in node:
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
        node["type"] = "object"
    if "items" in node:
        node["items"] = _structural(node["items"])
    ap = node.pop("additionalProperties", None)
    if isinstance(ap, dict) and "properties" not in node:  # dict[str, X]: a map
        node["additionalProperties"] = _structural(ap)
        node["type"] = "object"
    return node


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural openAPIV3Schema of one kind."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    inlined = _inline({k: v for k, v in raw.items() if k != "$defs"}, raw.get("$defs", {}))
    schema = _structural(inlined)
    props = schema["properties"]
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"type": "object"}
    _default_factories(model, schema)
    schema["required"] = ["spec"]
    schema.pop("default", None)
    return schema


def _default_factories(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Nested models built by default_factory get their defaults in the schema, so the
    API server fills them in when the field is left out."""
    for name, info in model.model_fields.items():
        key = info.alias or name
        sub = schema.get("properties", {}).get(key)
        if sub is None:
            continue
        annotation = info.annotation
        nested = _model_of(annotation)
        if nested is not None:
            if info.default_factory is not None and "default" not in sub:
                # The full default (not {}): the API server checks CEL rules on it as is.
                sub["default"] = nested().model_dump(by_alias=True, exclude_none=True,
                                                     mode="json")
            _default_factories(nested, sub)
        elif "items" in sub:
            item_model = _model_of(getattr(annotation, "__args__", (None,))[0])
            if item_model is not None:
                _default_factories(item_model, sub["items"])


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    name = kind.model.__name__
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kustos", "app.kubernetes.io/part-of": "kustos"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": name,
                "listKind": f"{name}List",
                "plural": kind.plural,
                "singular": name.lower(),
                "shortNames": kind.short_names,
                "categories": ["kustos"],
            },
            "scope": kind.scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(kind.model)},
                    "subresources": subresources,
                    "additionalPrinterColumns": kind.columns,
                }
            ],
        },
    }


HEADER = "# Generated by `kustos crds --write crds/` from kustos.api.v1alpha1. Do not edit.\n"


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {
        f"{GROUP}_{k.plural}.yaml": HEADER + yaml.safe_dump(crd(k), sort_keys=False, width=100)
        for k in KINDS
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kustos crds", description=__doc__)
    parser.add_argument("--write", metavar="DIR", type=Path,
                        help="write one file per CRD into DIR instead of printing")
    args = parser.parse_args(argv)
    files = render_all()
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (args.write / name).write_text(text)
        return 0
    sys.stdout.write("---\n".join(files.values()))
    return 0
