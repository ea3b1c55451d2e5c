"""Every package that goes into a Kustos image is under OSI-approved licences, judged from
the wheels' own metadata as recorded in requirements/licenses.json (hack/gen-licenses.py
--update writes it from the installed environments; no network here). The table must
cover every pin of every lock file an image is built from, at the pinned version, and
docs/licenses.md must show what the table says."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = tomllib.loads((ROOT / "images" / "images.toml").read_text())["images"]
REGENERATE = "regenerate: .venv/bin/python hack/gen-licenses.py --update"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_licenses", ROOT / "hack/gen-licenses.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load()
TABLE: dict[str, Any] = json.loads(GEN.TABLE.read_text())


def _lock_files() -> dict[str, Path]:
    """Every lock or requirements file an image (or the default install) is built from."""
    files = {name: ROOT / image["lock"] for name, image in IMAGES.items()}
    files["constraints"] = ROOT / "requirements" / "constraints.txt"
    return files


@pytest.mark.parametrize(("owner", "path"), sorted(_lock_files().items()))
def test_table_covers_every_pin(owner: str, path: Path) -> None:
    missing = [f"{name}=={version}" for name, version in GEN.pins(path).items()
               if version and f"{name}=={version}" not in TABLE["packages"]]
    unpinned = [name for name, version in GEN.pins(path).items() if not version
                and not any(k.startswith(f"{name}==") for k in TABLE["packages"])]
    assert not missing and not unpinned, (
        f"{path.relative_to(ROOT)} pins packages requirements/licenses.json does not "
        f"know: {missing + unpinned}; {REGENERATE}")


def test_every_image_has_its_packages_in_the_table() -> None:
    envs = TABLE["environments"]
    assert set(IMAGES) <= set(envs), f"images without licence data: {set(IMAGES) - set(envs)}"
    for name in IMAGES:
        assert envs[name]["image"] and envs[name]["packages"], name
        # What a no-deps or requirements lock names is in the image's recorded closure.
        if IMAGES[name]["lock_mode"] != "constraints":
            recorded = {k.split("==")[0] for k in envs[name]["packages"]}
            named = set(GEN.pins(ROOT / IMAGES[name]["lock"]))
            assert named <= recorded, (name, named - recorded, REGENERATE)


def _image_packages() -> list[str]:
    """Each package of each image, plus each package a non-constraints lock names."""
    keys: set[str] = set()
    for env in TABLE["environments"].values():
        if env["image"]:
            keys |= set(env["packages"])
    for image in IMAGES.values():
        if image["lock_mode"] != "constraints":
            keys |= {f"{n}=={v}" for n, v in GEN.pins(ROOT / image["lock"]).items() if v}
    return sorted(keys)


@pytest.mark.parametrize("package", _image_packages())
def test_image_packages_are_osi_approved(package: str) -> None:
    raw = TABLE["packages"][package]
    spdx, ok, why = GEN.verdict(raw)
    assert ok, f"{package} ({spdx}): {why}"


@pytest.mark.parametrize(("fields", "ok"), [
    # alibi-detect 0.11.4 and 0.11.5, seldon-core 1.17.1 and 1.18.0 as their wheels say.
    ({"license": "Apache 2.0",
      "classifiers": ["License :: OSI Approved :: Apache Software License"]}, True),
    ({"license": "Business Source License 1.1",
      "classifiers": ["License :: Other/Proprietary License"]}, False),
    ({"license": "Apache 2.0"}, True),
    ({"license": "Business Source License 1.1"}, False),
    ({"license_expression": "BUSL-1.1"}, False),
    ({"license_expression": "SSPL-1.0"}, False),
    ({"license_expression": "Elastic-2.0"}, False),
    ({"license_expression": "Apache-2.0 WITH Commons-Clause"}, False),
    ({"license": "MIT", "license_file": "\"Commons Clause\" License Condition v1.0"}, False),
    ({"classifiers": ["License :: Other/Proprietary License"]}, False),
    ({"license_file": "Business Source License 1.1 Parameters Licensor: Seldon"}, False),
    ({}, False),  # nothing declared is not a licence
    ({"license_expression": "LicenseRef-Custom"}, False),
    ({"license_expression": "Apache-2.0 OR BSD-3-Clause"}, True),
    ({"license_expression": "MPL-2.0 AND (Apache-2.0 OR MIT)"}, True),
    ({"license_expression": "MIT AND BUSL-1.1"}, False),
    ({"license_expression": "BSL-1.0"}, True),  # the Boost licence, not Business Source
    ({"license_expression": "BSD-2-Clause AND Apache-2.0 WITH LLVM-exception"}, True),
    ({"license_expression": "BSD-3-Clause AND CC0-1.0"}, True),
])
def test_verdict(fields: dict[str, Any], ok: bool) -> None:
    raw = {"license_expression": "", "license": "", "classifiers": [], "license_file": "",
           **fields}
    assert GEN.verdict(raw)[1] is ok, GEN.verdict(raw)


def test_the_bsl_releases_are_not_pinned() -> None:
    # The last Apache-2.0 releases; the default install must not move past them.
    drift = GEN.pins(ROOT / "images" / "drift-requirements.txt")
    seldon = GEN.pins(ROOT / "images" / "seldon-requirements.txt")
    assert drift["alibi-detect"] == "0.11.4"
    assert seldon["seldon-core"] == "1.17.1"


def test_docs_show_the_table() -> None:
    doc = (ROOT / "docs" / "licenses.md").read_text()
    start, end = doc.index(GEN.BEGIN), doc.index(GEN.END) + len(GEN.END) + 1
    assert doc[start:end] == GEN.render(TABLE), f"docs/licenses.md is stale; {REGENERATE}"
    assert not re.search(r"not OSI-approved\*\*", GEN.render({
        "environments": {k: v for k, v in TABLE["environments"].items() if v["image"]},
        "packages": TABLE["packages"]}))
