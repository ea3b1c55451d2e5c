"""helm (built by hack/build-tools.sh) against the local cluster, for the chart tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml
from cluster import REPO, bin_dir, required_binary

CHART = REPO / "charts" / "kustos"


def helm_bin() -> Path:
    return required_binary(bin_dir() / "helm", "hack/build-tools.sh helm")


class Helm:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.exe = helm_bin()

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": str(REPO / ".cluster" / "helm" / "cache"),
               "HELM_CONFIG_HOME": str(REPO / ".cluster" / "helm" / "config"),
               "HELM_DATA_HOME": str(REPO / ".cluster" / "helm" / "data")}
        proc = subprocess.run([str(self.exe), "--kubeconfig", str(self.kubeconfig), *args],
                              capture_output=True, text=True, timeout=300, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc


def chart_crds() -> list[str]:
    names = []
    for path in sorted((CHART / "crds").glob("*.yaml")):
        names += [d["metadata"]["name"] for d in yaml.safe_load_all(path.read_text()) if d]
    return names
