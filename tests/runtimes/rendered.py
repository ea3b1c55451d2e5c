"""Turn a rendered serving container into a local process: same command, args and env,
with the pod's paths (/mnt/models, /tmp) mapped to a test directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from kustos.render.runtimes import MODEL_DIR, SCRATCH_DIR

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def map_paths(value: str, model_dir: Path, scratch: Path) -> str:
    if value == MODEL_DIR or value.startswith(MODEL_DIR + "/"):
        return str(model_dir) + value[len(MODEL_DIR):]
    if value.startswith(SCRATCH_DIR + "/"):
        return str(scratch) + value[len(SCRATCH_DIR):]
    return value


def local_command(container: dict[str, Any], venv: Path, model_dir: Path,
                  scratch: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment for running ``container`` from ``venv``."""
    argv = [map_paths(a, model_dir, scratch)
            for a in [*container.get("command", []), *container.get("args", [])]]
    env = {
        # Only what a container would have: the image's PATH, a HOME and a TMPDIR.
        "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
    }
    for entry in container.get("env", []):
        assert "value" in entry, f"test cannot resolve env {entry}"
        env[entry["name"]] = map_paths(str(entry["value"]), model_dir, scratch)
    return argv, env


def container_port(container: dict[str, Any], name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    for port in container["ports"]:
        if port["name"] == name_or_number:
            return int(port["containerPort"])
    raise AssertionError(f"no port named {name_or_number!r} in {container['ports']}")


def probe_url(container: dict[str, Any], probe: str) -> str:
    get = container[probe]["httpGet"]
    return f"http://127.0.0.1:{container_port(container, get['port'])}{get['path']}"


def train_in(venv: Path, kind: str, outdir: Path, fmt: str) -> dict[str, Any]:
    """Train with the venv's own scikit-learn; return expected.json."""
    out = subprocess.run([str(venv / "bin" / "python"), str(HERE / "train_model.py"), kind,
                          str(outdir), "--format", fmt], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"training {kind} in {venv} failed:\n{out.stderr[-3000:]}"
    expected: dict[str, Any] = json.loads((outdir / "expected.json").read_text())
    return expected


def site_packages(venv: Path) -> Path:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip())
