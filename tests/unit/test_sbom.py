"""hack/gen-sbom.py: one CycloneDX SBOM per image of images/images.toml, structurally valid
and covering exactly what the image's lock installs, at the locked versions."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = tomllib.loads((ROOT / "images" / "images.toml").read_text())
NAMES = list(IMAGES["images"])
LICENSES = json.loads((ROOT / "requirements" / "licenses.json").read_text())
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# What CycloneDX 1.5/1.6 require or constrain (bom-1.6.schema.json): the top-level fields,
# the serialNumber pattern, the component type enum, one licence choice per entry.
SERIAL = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}"
                    r"-[0-9a-f]{12}$")
COMPONENT_TYPES = {"application", "framework", "library", "container", "platform",
                   "operating-system", "device", "device-driver", "firmware", "file",
                   "machine-learning-model", "data", "cryptographic-asset"}
# purl: pkg:TYPE/[NAMESPACE/]NAME[@VERSION][?QUALIFIERS][#SUBPATH]
PURL = re.compile(r"^pkg:[a-z][a-z0-9.+-]*/[^@?#\s]+(@[^?#\s]+)?(\?[^#\s]+)?(#\S+)?$")
PYPI_PURL = re.compile(r"^pkg:pypi/([a-z0-9]+(?:-[a-z0-9]+)*)@([^?#/\s]+)$")
SPDX_ID = re.compile(r"^[A-Za-z0-9.+-]+$")


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load("gen_sbom", ROOT / "hack" / "gen-sbom.py")
builder = load("image_build", ROOT / "hack" / "image_build.py")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_structure(doc: dict[str, Any]) -> None:
    assert doc["bomFormat"] == "CycloneDX"
    assert doc["specVersion"] in ("1.5", "1.6")
    assert SERIAL.match(doc["serialNumber"]), doc["serialNumber"]
    assert isinstance(doc["version"], int) and doc["version"] >= 1
    meta = doc["metadata"]["component"]
    refs = [meta["bom-ref"]]
    for comp in [meta, *doc["components"]]:
        assert comp["type"] in COMPONENT_TYPES and comp["name"]
        assert isinstance(comp.get("version", ""), str)
        if "purl" in comp:
            assert PURL.match(comp["purl"]), comp["purl"]
        for entry in comp.get("licenses", []):
            assert len(entry) == 1, entry  # exactly one of license / expression
            if "license" in entry:
                lic = entry["license"]
                assert ("id" in lic) != ("name" in lic), lic
                if "id" in lic:
                    assert lic["id"] in gen.SPDX_IDS and SPDX_ID.match(lic["id"])
            else:
                assert set(entry) == {"expression"} and entry["expression"].strip()
        if comp is not meta:
            refs.append(comp["bom-ref"])
    assert len(refs) == len(set(refs)), "bom-ref values must be unique"
    for dep in doc["dependencies"]:
        assert dep["ref"] in refs and set(dep["dependsOn"]) <= set(refs)


def pypi(doc: dict[str, Any]) -> dict[str, str]:
    """normalised name -> version of the pkg:pypi components, checked against the purl."""
    out = {}
    for comp in doc["components"]:
        m = PYPI_PURL.match(comp["purl"])
        if m is None:
            continue
        assert m.group(1) == normalise(comp["name"]) and m.group(2) == comp["version"]
        assert comp["bom-ref"] == comp["purl"]
        out[m.group(1)] = comp["version"]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_sbom_is_valid_cyclonedx(name: str) -> None:
    doc = gen.sbom(name)
    check_structure(doc)
    meta = doc["metadata"]["component"]
    recipe = IMAGES["images"][name]
    assert meta["type"] == "container" and meta["name"] == recipe["repository"]
    assert meta["version"] == VERSION
    assert json.loads(gen.render(doc)) == doc


@pytest.mark.parametrize("name", NAMES)
def test_sbom_covers_exactly_the_lock_closure(name: str) -> None:
    recipe = IMAGES["images"][name]
    got = pypi(gen.sbom(name))
    # The closure hack/gen-licenses.py recorded for this image ...
    closure = {}
    for key in LICENSES["environments"][name]["packages"]:
        raw = LICENSES["packages"][key]
        closure[normalise(raw["name"])] = raw["version"]
    extra = {}
    if recipe["top"] == "wheel":
        extra["kustos"] = VERSION
    if "pip" in recipe.get("prune", []):  # images/prune.py removes the installers
        closure = {k: v for k, v in closure.items() if k not in ("pip", "setuptools")}
    else:
        extra["pip"] = IMAGES["venv"]["pip"]
    assert got == {**closure, **extra}
    # ... at the versions the lock file pins,
    pins = builder.pins(ROOT / recipe["lock"])
    packages = {k: v for k, v in got.items() if k not in extra}
    wrong = {k: (v, pins[k]) for k, v in packages.items() if k in pins and pins[k] != v}
    assert not wrong, f"versions differ from {recipe['lock']}: {wrong}"
    if recipe["lock_mode"] == "no-deps":  # the lock lists every package: exactly those,
        # and the venv's own setuptools where a dependency needs it and the lock has none.
        assert set(packages) - ({"setuptools"} - set(pins)) == set(pins)
    elif recipe["lock_mode"] == "constraints":  # pinned whole, roots included
        assert set(packages) <= set(pins)
        roots = {normalise(re.split(r"[\[<>=!~; ]", r)[0])
                 for r in builder.requirements(recipe)}
        assert roots <= set(packages), roots - set(packages)
    else:  # requirements: the lock's entries are in, at their pins
        assert set(pins) <= set(packages)


def test_the_same_input_gives_the_same_bytes_and_serial() -> None:
    a, b = gen.render(gen.sbom("kustos")), gen.render(gen.sbom("kustos"))
    assert a == b
    stamped = gen.sbom("kustos", timestamp=datetime(2026, 1, 2, tzinfo=UTC))
    assert stamped["metadata"]["timestamp"] == "2026-01-02T00:00:00Z"
    assert stamped["serialNumber"] == json.loads(a)["serialNumber"]
    serials = {gen.sbom(n)["serialNumber"] for n in NAMES}
    assert len(serials) == len(NAMES)  # different content, different serial


DPKG = """Package: python3.11-minimal
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u6
Description: Minimal subset of the Python language
 continued description line: with a colon

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: libgomp1
Status: install ok installed
Architecture: amd64
Source: gcc-12
Version: 12.2.0-14
"""


def test_debian_packages_from_the_base_dpkg_status() -> None:
    plain = gen.sbom("kustos")
    doc = gen.sbom("kustos", dpkg_status=DPKG)
    check_structure(doc)
    debs = {c["name"]: c for c in doc["components"] if c["purl"].startswith("pkg:deb/")}
    assert set(debs) == {"python3.11-minimal", "libgomp1"}
    assert debs["python3.11-minimal"]["purl"] == (
        "pkg:deb/debian/python3.11-minimal@3.11.2-6%2Bdeb12u6?arch=amd64&distro=debian-12")
    assert doc["serialNumber"] != plain["serialNumber"]


def test_licences_are_spdx_ids_expressions_or_names() -> None:
    assert gen.licence_entry("MIT") == [{"license": {"id": "MIT"}}]
    assert gen.licence_entry("Apache-2.0 OR MIT") == [{"expression": "Apache-2.0 OR MIT"}]
    assert gen.licence_entry("MPL-2.0 AND (Apache-2.0 OR MIT)") == [
        {"expression": "MPL-2.0 AND (Apache-2.0 OR MIT)"}]
    assert gen.licence_entry("BSD-2-Clause AND Apache-2.0 WITH LLVM-exception") == [
        {"expression": "BSD-2-Clause AND Apache-2.0 WITH LLVM-exception"}]
    assert gen.licence_entry("BSD") == [{"license": {"name": "BSD"}}]  # not an SPDX id
    assert gen.licence_entry("Apache-2.0 OR BSD") == [{"license": {"name": "Apache-2.0 OR BSD"}}]
    assert gen.licence_entry("") == []


def test_cli_writes_one_file_per_image(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "hack" / "gen-sbom.py"), "--out-dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.cdx.json" for n in NAMES)
    for n in NAMES:
        check_structure(json.loads((tmp_path / f"{n}.cdx.json").read_text()))
    r = subprocess.run([sys.executable, str(ROOT / "hack" / "gen-sbom.py"), "--out",
                        str(tmp_path / "x.json"), "no-such-image"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "no image 'no-such-image'" in r.stderr


def test_image_build_writes_the_sbom_beside_the_archive(tmp_path: Path) -> None:
    """The hook of hack/image_build.py, on a base layer directory as the build leaves it
    (nothing is built here)."""
    base = builder.Layer(tmp_path / "base-0123")
    status = base.tree / "var" / "lib" / "dpkg" / "status"
    status.parent.mkdir(parents=True)
    status.write_text(DPKG)
    out = tmp_path / "kustos-0123456789abcdef.cdx.json"
    builder.write_sbom("kustos", out, base)
    doc = json.loads(out.read_text())
    check_structure(doc)
    assert {"kustos", "libgomp1"} <= {c["name"] for c in doc["components"]}
    before = out.stat().st_mtime_ns
    builder.write_sbom("kustos", out, base)  # unchanged content: the file is left alone
    assert out.stat().st_mtime_ns == before
