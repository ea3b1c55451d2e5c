"""crds/ is generated from the pydantic models: stale files and non-structural schemas fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kustos.api.crdgen import KINDS, crd, render_all

ROOT = Path(__file__).resolve().parents[2]


def test_crds_dir_matches_generator() -> None:
    files = render_all()
    on_disk = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    assert set(on_disk) == set(files), "crds/ has extra or missing files: run `make crds`"
    for name, text in files.items():
        assert on_disk[name] == text, f"crds/{name} is stale: run `make crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.items():
            out += _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, f"{path}[{i}]")
    return out


def test_schemas_are_structural() -> None:
    for kind in KINDS:
        schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            for banned in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const"):
                assert banned not in node or path.endswith(".properties"), f"{banned} at {path}"
            if "properties" in node and not path.endswith(".properties"):
                assert node.get("type") == "object", f"untyped object at {path}"
            if node.get("additionalProperties") is False:
                raise AssertionError(f"additionalProperties: false at {path}")


def test_every_field_has_a_description() -> None:
    for kind in KINDS:
        spec = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for path, node in _walk(spec):
            if path.endswith(".properties"):
                for field, sub in node.items():
                    assert sub.get("description"), f"{kind.model.__name__}{path}.{field}"


def test_modeldeployment_crd_shape() -> None:
    md = crd(KINDS[0])
    spec = md["spec"]
    assert spec["names"]["shortNames"] == ["md"]
    assert spec["names"]["categories"] == ["kustos"]
    version = spec["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    for wanted in ("Ready", "Replicas", "Version", "URL", "Age"):
        assert wanted in columns
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    auto = props["autoscaling"]
    assert {"rule": "self.minReplicas <= self.maxReplicas"}.items() <= \
        auto["x-kubernetes-validations"][0].items()
    assert props["canary"]["properties"]["trafficPercent"]["minimum"] == 1
    assert props["canary"]["properties"]["trafficPercent"]["maximum"] == 99
    assert props["model"]["properties"]["digest"]["pattern"] == r"^sha256:[a-f0-9]{64}$"
    # Nested defaults need the parent object defaulted to {}.
    assert props["runtime"]["default"] == {"kind": "kustos", "protocol": "v2", "workers": 1}
    assert props["runtime"]["properties"]["kind"]["default"] == "kustos"
    assert "targetCPUUtilization" in auto["properties"]


def test_driftmonitor_has_drift_column_and_short_names() -> None:
    names = {k.model.__name__: crd(k) for k in KINDS}
    dm = names["DriftMonitor"]["spec"]
    assert dm["names"]["shortNames"] == ["dm"]
    assert "Drift" in [c["name"] for c in dm["versions"][0]["additionalPrinterColumns"]]
    assert names["ExplainerSpec"]["spec"]["names"]["shortNames"] == ["xs"]
    for k in names.values():
        assert k["spec"]["versions"][0]["subresources"]["status"] == {}
        yaml.safe_dump(k)  # serialisable
