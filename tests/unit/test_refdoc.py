"""docs/reference/crds.md is generated from the API types and must not go stale."""

from __future__ import annotations

from pathlib import Path

from kustos.api import refdoc
from kustos.api.crdgen import KINDS, crd

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference" / "crds.md"


def test_reference_is_current() -> None:
    assert REFERENCE.read_text() == refdoc.render(), (
        "docs/reference/crds.md is stale: run make docs "
        "(python -m kustos.api.refdoc --write docs/reference/crds.md)")


def _leaf_paths(node: dict[str, object], path: str) -> list[str]:
    out = [path]
    props = node.get("properties")
    if isinstance(props, dict):
        for key, child in props.items():
            out += _leaf_paths(child, f"{path}.{key}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        sub = node.get(key)
        if isinstance(sub, dict) and (sub.get("properties") or sub.get("items")):
            out += _leaf_paths(sub, path + suffix)[1:]
    return out


def test_every_kind_field_and_rule_is_documented() -> None:
    text = refdoc.render()
    for kind in KINDS:
        doc = crd(kind)
        name = doc["spec"]["names"]["kind"]
        assert f"## {name}\n" in text
        schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for root in ("spec", "status"):
            if root in schema["properties"]:
                for path in _leaf_paths(schema["properties"][root], root)[1:]:
                    assert f"| `{path}` |" in text, f"{name}: {path} missing"
    assert "## GovernancePolicy" in text, "every kind, GovernancePolicy included"
    assert "riskTier high needs a pinned model digest" in text  # a CEL rule's message


def test_main_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "ref" / "crds.md"
    assert refdoc.main(["--write", str(out)]) == 0
    assert out.read_text() == refdoc.render()
