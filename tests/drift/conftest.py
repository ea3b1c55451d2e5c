"""The drift venv (hack/drift-env.sh) and real datasets for the drift sidecar tests.

The tests run under the main venv's pytest; the sidecar runs from its own venv (alibi-detect
needs numpy < 2). KUSTOS_DRIFT_VENV points at a ready venv; otherwise hack/drift-env.sh
builds (or finds) it. Under CI=true a missing venv fails the tests instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from drift_support import REPO


@pytest.fixture(scope="session")
def drift_venv() -> Path:
    given = os.environ.get("KUSTOS_DRIFT_VENV")
    if given:
        path = Path(given)
    else:
        try:
            out = subprocess.run(["bash", str(REPO / "hack" / "drift-env.sh"), str(REPO)],
                                 check=True, capture_output=True, text=True, timeout=1800)
            path = Path(out.stdout.strip().splitlines()[-1])
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, IndexError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            message = f"cannot build the drift venv with hack/drift-env.sh: {exc}\n{detail}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    if not (path / "bin" / "kustos").exists():
        message = f"no kustos in the drift venv {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def shuffled(x: np.ndarray, seed: int = 0) -> np.ndarray:
    return x[np.random.default_rng(seed).permutation(len(x))]


@pytest.fixture(scope="session")
def cancer() -> tuple[np.ndarray, list[str]]:
    """breast_cancer's 569 rows x 30 features, in a fixed random order."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    return shuffled(data.data), names


@pytest.fixture(scope="session")
def diabetes() -> tuple[np.ndarray, list[str]]:
    """diabetes' 442 rows x 10 (standardised) features, in a fixed random order."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return shuffled(data.data, 2), list(data.feature_names)
