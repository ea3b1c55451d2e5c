"""Separate virtual environments for third-party runtimes (seldon-core, MLServer) and
servers the tests talk to (an MLflow tracking server with its Model Registry).

They live outside the repository, under ``${KUSTOS_CACHE:-~/.cache/kustos}/venvs/<name>``,
are built once and reused while their pinned requirements (and the Python that built
them) are unchanged. A venv is only used once its marker file is written, so an
interrupted build is rebuilt rather than half-used. A file lock keeps two test runs
from building the same venv at once.

Usable as a script too: ``python tests/runtimes/venvs.py seldon mlserver`` builds both.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = {
    "seldon": REPO / "images" / "seldon-requirements.txt",
    "mlserver": REPO / "tests" / "runtimes" / "mlserver-requirements.txt",
    "mlflow": REPO / "tests" / "runtimes" / "mlflow-requirements.txt",
}
MARKER = ".kustos-venv.json"


def cache_dir() -> Path:
    root = os.environ.get("KUSTOS_CACHE") or str(Path.home() / ".cache" / "kustos")
    return Path(root) / "venvs"


def _python() -> str:
    # The base interpreter, not this venv's: a venv made from a venv still works, but
    # this keeps the new one independent of the project's .venv being rebuilt.
    return getattr(sys, "_base_executable", sys.executable)


def _key(requirements: str, python: str) -> str:
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return hashlib.sha256(f"{version}\n{requirements}".encode()).hexdigest()


def ensure_venv(name: str, timeout: float = 1500) -> Path:
    """Return the path of venv ``name``, building it if missing or stale."""
    requirements_file = REQUIREMENTS[name]
    requirements = requirements_file.read_text()
    python = _python()
    key = _key(requirements, python)
    path = cache_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = path / MARKER
        if marker.exists() and json.loads(marker.read_text()).get("key") == key:
            return path
        shutil.rmtree(path, ignore_errors=True)
        started = time.monotonic()
        log = path.parent / f"{name}.build.log"
        with open(log, "w") as out:
            try:
                subprocess.run([python, "-m", "venv", str(path)], check=True,
                               stdout=out, stderr=subprocess.STDOUT, timeout=120)
                subprocess.run(
                    [str(path / "bin" / "python"), "-m", "pip", "install", "--no-input",
                     "--disable-pip-version-check", "-r", str(requirements_file)],
                    check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                tail = log.read_text()[-4000:]
                raise RuntimeError(
                    f"building venv {name!r} failed ({exc}); log {log}:\n{tail}"
                ) from exc
        seconds = round(time.monotonic() - started, 1)
        marker.write_text(json.dumps({"key": key, "build_seconds": seconds,
                                      "requirements": str(requirements_file)}))
        print(f"built venv {name} in {seconds}s at {path}", file=sys.stderr)
        return path


def build_seconds(path: Path) -> float | None:
    marker = path / MARKER
    if not marker.exists():
        return None
    value = json.loads(marker.read_text()).get("build_seconds")
    return float(value) if value is not None else None


if __name__ == "__main__":
    for arg in sys.argv[1:] or list(REQUIREMENTS):
        venv = ensure_venv(arg)
        print(f"{arg}: {venv} (built in {build_seconds(venv)}s)")
