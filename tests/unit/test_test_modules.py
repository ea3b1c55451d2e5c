"""pytest imports test files without __init__.py by their base name (rootdir
conftest, no packages): two with the same name in different folders stop the whole run
at collection ("import file mismatch"). Caught here, in the unit run, not after the
images and the cluster are up."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_outside_packages() -> None:
    seen: dict[str, list[Path]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if (path.parent / "__init__.py").exists() or path.name in ("conftest.py", "__init__.py"):
            continue
        seen[path.name].append(path.relative_to(TESTS))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, clashes
