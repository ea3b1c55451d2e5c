#!/usr/bin/env python3
"""CycloneDX 1.6 (JSON) SBOMs of the Kustos images, from what their locks install.

    python3 hack/gen-sbom.py --out-dir DIR [NAME...]     DIR/NAME.cdx.json per image
    python3 hack/gen-sbom.py --out FILE [--dpkg-status STATUS] NAME

The Python packages of an image are the dependency closure of its lock that
hack/gen-licenses.py recorded in requirements/licenses.json (environment NAME), each with
its version, purl (pkg:pypi/...) and licence (an SPDX id, an SPDX expression, or the
licence's name when it is not SPDX, e.g. "BSD"). Added to that: the kustos wheel for
images whose top layer is the wheel, and pip when the image keeps the pip that
images/images.toml's [venv] installs first (its prune list does not remove it). The image
itself is metadata.component (the repository and the project's version as the tag).
Caveat: a setuptools that no lock pins but the recorded closure has (the drift image's:
a dependency requires it, the venv's seed provides it) carries the version of the local
environment gen-licenses scanned, which need not be the seed of the image's Debian python.
With --dpkg-status (hack/image_build.py passes the base layer's /var/lib/dpkg/status) the
Debian packages of the base are listed too, as pkg:deb purls without licences (Debian's
copyright files are not machine-readable reliably).

Same input, same bytes: components are sorted, the serialNumber is a UUIDv5 of the
content, and metadata.timestamp is written only when SOURCE_DATE_EPOCH is set.
Standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tomllib
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LICENSES = REPO / "requirements" / "licenses.json"
IMAGES = REPO / "images" / "images.toml"
SPEC_VERSION = "1.6"
# A fixed namespace: the serialNumber is uuid5(NAMESPACE, canonical content).
NAMESPACE = uuid.UUID("6f0c4a52-2d0e-4a63-9c53-6b5d1c1e7a10")
# pip's licence (it is installed from [venv] pip, not from a lock the licence table scans).
PIP_LICENSE = "MIT"
# SPDX licence identifiers and exceptions the table uses (https://spdx.org/licenses/);
# anything else is written as a licence name.
SPDX_IDS = {
    "0BSD", "AFL-2.1", "Apache-2.0", "Artistic-2.0", "BSD-1-Clause", "BSD-2-Clause",
    "BSD-3-Clause", "BSD-3-Clause-Clear", "BSL-1.0", "CC-BY-4.0", "CC0-1.0", "CNRI-Python",
    "EPL-2.0", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only", "GPL-3.0-or-later",
    "HPND", "ISC", "LGPL-2.0-or-later", "LGPL-2.1-only", "LGPL-2.1-or-later",
    "LGPL-3.0-only", "LGPL-3.0-or-later", "MIT", "MIT-0", "MIT-CMU", "MPL-2.0",
    "NCSA", "OpenSSL", "PSF-2.0", "Python-2.0", "Unicode-DFS-2016", "Unlicense", "X11",
    "Zlib", "ZPL-2.1",
}
SPDX_EXCEPTIONS = {"LLVM-exception", "Classpath-exception-2.0"}


def _load_licenses_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_licenses", REPO / "hack" / "gen-licenses.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normalise(name: str) -> str:
    """PEP 503 name, as the pypi purl type wants it (lower case, runs of -_. as -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_purl(name: str, version: str) -> str:
    return f"pkg:pypi/{normalise(name)}@{urllib.parse.quote(version, safe='')}"


def deb_purl(name: str, version: str, arch: str) -> str:
    v = urllib.parse.quote(version, safe="")
    return f"pkg:deb/debian/{name}@{v}?arch={arch}&distro=debian-12"


def licence_entry(spdx: str) -> list[dict[str, Any]]:
    """CycloneDX licenses: an SPDX id, an SPDX expression, or a name."""
    text = spdx.strip()
    if not text:
        return []
    if text in SPDX_IDS:
        return [{"license": {"id": text}}]
    tokens = [t for t in re.split(r"[\s()]+", text) if t]
    valid, expect_exception = True, False
    for t in tokens:
        if t in ("AND", "OR"):
            continue
        if t == "WITH":
            expect_exception = True
            continue
        if not (t in SPDX_EXCEPTIONS if expect_exception else t in SPDX_IDS):
            valid = False
        expect_exception = False
    if valid and len(tokens) > 1:
        return [{"expression": text}]
    return [{"license": {"name": text}}]


def dpkg_packages(status: str) -> list[tuple[str, str, str]]:
    """(package, version, architecture) of the installed entries of a dpkg status file."""
    out = []
    for stanza in status.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Package") and " installed" in " " + fields.get("Status", ""):
            out.append((fields["Package"], fields.get("Version", ""),
                        fields.get("Architecture", "all")))
    return sorted(set(out))


def image_packages(name: str, table: dict[str, Any], images: dict[str, Any],
                   project: dict[str, Any]) -> list[dict[str, str]]:
    """The Python packages in image ``name``: [{name, version, license}] sorted by name."""
    env = table["environments"].get(name)
    if env is None or not env.get("image"):
        raise SystemExit(f"gen-sbom: {LICENSES.relative_to(REPO)} has no image environment "
                         f"{name!r}: run hack/gen-licenses.py --update")
    gl = _load_licenses_module()
    recipe = images["images"][name]
    out: dict[str, dict[str, str]] = {}
    for key in env["packages"]:
        raw = table["packages"][key]
        out[normalise(raw["name"])] = {"name": raw["name"], "version": raw["version"],
                                       "license": gl.spdx_of(raw)}
    if recipe.get("top") == "wheel":
        out["kustos"] = {"name": "kustos", "version": project["version"],
                         "license": recipe.get("licenses", "")}
    if "pip" in recipe.get("prune", []):
        # images/prune.py's "pip" removes the installers, even where the closure has them.
        out.pop("pip", None)
        out.pop("setuptools", None)
    else:
        out.setdefault("pip", {"name": "pip", "version": images["venv"]["pip"],
                               "license": PIP_LICENSE})
    return [out[k] for k in sorted(out)]


def sbom(name: str, *, dpkg_status: str | None = None,
         timestamp: datetime | None = None) -> dict[str, Any]:
    table = json.loads(LICENSES.read_text())
    images = tomllib.loads(IMAGES.read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    recipe = images["images"].get(name)
    if recipe is None:
        raise SystemExit(f"gen-sbom: no image {name!r} in {IMAGES.relative_to(REPO)}")
    tag = project["version"]
    image_ref = f"image:{recipe['repository']}:{tag}"
    components: list[dict[str, Any]] = []
    for pkg in image_packages(name, table, images, project):
        purl = pypi_purl(pkg["name"], pkg["version"])
        comp: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": pkg["name"],
                                "version": pkg["version"], "purl": purl}
        if lic := licence_entry(pkg["license"]):
            comp["licenses"] = lic
        components.append(comp)
    if dpkg_status is not None:
        for pkg_name, version, arch in dpkg_packages(dpkg_status):
            purl = deb_purl(pkg_name, version, arch)
            components.append({"type": "library", "bom-ref": purl, "name": pkg_name,
                               "version": version, "purl": purl})
    registry, _, short = recipe["repository"].rpartition("/")
    metadata: dict[str, Any] = {
        "tools": {"components": [{"type": "application", "name": "hack/gen-sbom.py",
                                  "group": "kustos"}]},
        "component": {
            "type": "container", "bom-ref": image_ref, "name": recipe["repository"],
            "version": tag, "description": recipe.get("description", ""),
            "purl": (f"pkg:oci/{short}?repository_url="
                     f"{urllib.parse.quote(registry + '/' + short, safe='')}"
                     f"&tag={urllib.parse.quote(tag, safe='')}"),
            **({"licenses": licence_entry(recipe["licenses"])} if recipe.get("licenses")
               else {}),
        },
    }
    body: dict[str, Any] = {
        "metadata": metadata,
        "components": components,
        "dependencies": [{"ref": image_ref,
                          "dependsOn": [c["bom-ref"] for c in components]}],
    }
    serial = uuid.uuid5(NAMESPACE, json.dumps(body, sort_keys=True, separators=(",", ":")))
    if timestamp is not None:
        metadata["timestamp"] = timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"$schema": f"http://cyclonedx.org/schema/bom-{SPEC_VERSION}.schema.json",
            "bomFormat": "CycloneDX", "specVersion": SPEC_VERSION,
            "serialNumber": f"urn:uuid:{serial}", "version": 1, **body}


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def _timestamp() -> datetime | None:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return datetime.fromtimestamp(int(epoch), UTC) if epoch else None


def write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gen-sbom.py", description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out-dir", type=Path, help="write DIR/NAME.cdx.json per image")
    where.add_argument("--out", type=Path, help="write this one image's SBOM here")
    p.add_argument("--dpkg-status", type=Path, help="the base's /var/lib/dpkg/status")
    p.add_argument("names", nargs="*", help="images (default: every image)")
    args = p.parse_args(argv)
    names = args.names or list(tomllib.loads(IMAGES.read_text())["images"])
    status = args.dpkg_status.read_text() if args.dpkg_status else None
    if args.out is not None:
        if len(names) != 1:
            p.error("--out takes exactly one image name")
        write_if_changed(args.out, render(sbom(names[0], dpkg_status=status,
                                               timestamp=_timestamp())))
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_if_changed(args.out_dir / f"{name}.cdx.json",
                         render(sbom(name, dpkg_status=status, timestamp=_timestamp())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
