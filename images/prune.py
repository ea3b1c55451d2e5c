"""Remove what an image's venv installs but never runs: `prune.py VENV`.

Run after the dependency install and before byte-compiling, by hack/image_build.py (the
registry-less build) and by the Dockerfiles alike, so both ship the same files. Every
removal here is a package's own test suite, which nothing imports at run time; the
image tests (tests/images) run each console entry point afterwards.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# Test suites of the numeric stack (about 65 MB in the kustos image, plus their
# byte-compiled files).
TEST_SUITES = ("numpy", "scipy", "sklearn", "pandas")


def size(path: Path) -> int:
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file())


def targets(site: Path) -> list[Path]:
    found: list[Path] = []
    for pkg in TEST_SUITES:
        if (site / pkg).is_dir():
            found += sorted(d for d in (site / pkg).rglob("tests") if d.is_dir())
    # A tests/ inside another tests/ goes with its parent.
    return [d for d in found if not any(p in found for p in d.parents)]


def main(venv: str) -> int:
    sites = sorted(Path(venv).glob("lib/python3*/site-packages"))
    if len(sites) != 1:
        print(f"prune: expected one site-packages under {venv}, found {sites}", file=sys.stderr)
        return 2
    removed = 0
    for path in targets(sites[0]):
        removed += size(path)
        shutil.rmtree(path)
    print(f"prune: {removed / 1e6:.0f} MB removed from {sites[0]}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1]))
