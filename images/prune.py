"""Remove what an image's venv installs but never runs: `prune.py VENV WHAT...`.

  tests   the numeric packages' own test suites (about 30 MB in the kustos image, and as
          much again byte-compiled)
  pip     pip and setuptools (about 30 MB with their byte-compiled files): nothing
          installs into a read-only image; a later build step installs with Debian's pip
          wheel (/usr/share/python-wheels) instead
  ort     onnxruntime's C API library (capi/libonnxruntime.so.*, 35 MB): the Python
          binding is linked statically and never loads it (`ldd` on
          onnxruntime_pybind11_state shows no libonnxruntime); and its `transformers`
          optimisation tooling (6 MB), which inference never imports
  strip   `strip --strip-unneeded` on the venv's shared objects (about 43 MB in the kustos
          image: uvloop alone 12 MB), except those under `*.libs/`: auditwheel grafted
          those with patchelf, and stripping a patchelf-edited file can break it. Needs
          binutils' `strip` on PATH: hack/image_build.py runs this action on the host
          against the image tree; the Dockerfiles install binutils in their build stage.

Run after the dependency install and before byte-compiling, by hack/image_build.py (the
registry-less build) and by the Dockerfiles alike, so both ship the same files; the image
tests (tests/images) run each console entry point afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TEST_SUITES = ("numpy", "scipy", "sklearn", "pandas")
INSTALLERS = ("pip", "setuptools", "pkg_resources", "_distutils_hack")


def size(path: Path) -> int:
    if path.is_file():
        return path.lstat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file())


def test_suites(site: Path) -> list[Path]:
    found: list[Path] = []
    for pkg in TEST_SUITES:
        if (site / pkg).is_dir():
            found += sorted(d for d in (site / pkg).rglob("tests") if d.is_dir())
    # A tests/ inside another tests/ goes with its parent.
    return [d for d in found if not any(p in found for p in d.parents)]


def installers(site: Path, venv: Path) -> list[Path]:
    found = [site / name for name in INSTALLERS if (site / name).exists()]
    found += sorted(p for name in ("pip", "setuptools")
                    for p in site.glob(f"{name}-*.dist-info"))
    if (site / "distutils-precedence.pth").exists():
        found.append(site / "distutils-precedence.pth")
    found += sorted(venv.glob("bin/pip*"))
    return found


def onnxruntime_unused(site: Path) -> list[Path]:
    ort = site / "onnxruntime"
    return sorted((ort / "capi").glob("libonnxruntime.so*")) + \
        ([ort / "transformers"] if (ort / "transformers").is_dir() else [])


def strip(site: Path) -> int:
    """Strip the shared objects in place; returns the bytes saved."""
    tool = shutil.which("strip")
    if tool is None:
        raise SystemExit("prune: strip: no `strip` on PATH (Debian package binutils)")
    files = sorted(p for p in site.rglob("*.so*") if p.is_file() and not p.is_symlink()
                   and not any(part.endswith(".libs") for part in p.relative_to(site).parts))
    before = sum(size(p) for p in files)
    for i in range(0, len(files), 200):
        subprocess.run([tool, "--strip-unneeded", *map(str, files[i:i + 200])], check=True)
    return before - sum(size(p) for p in files)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not set(argv[1:]) <= {"tests", "pip", "ort", "strip"}:
        print(__doc__, file=sys.stderr)
        return 2
    venv = Path(argv[0])
    sites = sorted(venv.glob("lib/python3*/site-packages"))
    if len(sites) != 1:
        print(f"prune: expected one site-packages under {venv}, found {sites}", file=sys.stderr)
        return 2
    site = sites[0]
    paths = (test_suites(site) if "tests" in argv else []) + \
        (installers(site, venv) if "pip" in argv else []) + \
        (onnxruntime_unused(site) if "ort" in argv else [])
    removed = 0
    for path in paths:
        removed += size(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if "strip" in argv:
        removed += strip(site)
    print(f"prune ({' '.join(argv[1:])}): {removed / 1e6:.0f} MB removed from {venv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
