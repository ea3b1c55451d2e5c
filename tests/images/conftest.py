"""A throwaway containerd (own config, root, state and socket under a temporary directory,
never /run/containerd) with the built images imported, for tests/images/test_images.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[metrics]
  address = ""
# The VM lacks CAP_SYS_RESOURCE and AppArmor; cgroup v1 without systemd.
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  disable_apparmor = true
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
"""


@dataclass
class Image:
    name: str
    ref: str
    digest: str


@dataclass
class Containerd:
    address: str
    scratch: Path
    images: dict[str, Image]


def _unmount_under(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(path))), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    if os.geteuid() != 0:
        pytest.fail("tests/images needs root (containerd, runc)")
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: apt-get install containerd runc")
    d = Path(tempfile.mkdtemp(prefix="kustos-ctrd-"))
    (d / "config.toml").write_text(CONFIG.format(d=d))
    log = (d / "containerd.log").open("w")
    proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")],
                            stdout=log, stderr=subprocess.STDOUT)
    address = str(d / "containerd.sock")
    try:
        for _ in range(100):
            if subprocess.run(["ctr", "--address", address, "version"],
                              capture_output=True).returncode == 0:
                break
            if proc.poll() is not None:
                pytest.fail(f"containerd exited: {(d / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        # The images as `make images` left them: fails (does not build) when missing.
        env = {**os.environ, "CONTAINERD_ADDRESS": address}
        out = subprocess.run(["bash", str(ROOT / "hack/images.sh"), "import", "--no-build"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            pytest.fail(f"hack/images.sh import --no-build failed (run `make images`):\n"
                        f"{out.stderr}")
        images = {}
        for line in out.stdout.splitlines():
            name, ref, _archive, digest = line.split()
            images[name] = Image(name, ref, digest)
        scratch = d / "scratch"
        scratch.mkdir()
        yield Containerd(address, scratch, images)
    finally:
        # A test that timed out leaves its container running: its shim would outlive
        # containerd. Kill and remove every task and container first.
        ctr = ["ctr", "--address", address, "-n", "k8s.io"]
        tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True)
        for task in tasks.stdout.split():
            subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True,
                           timeout=60)
            subprocess.run([*ctr, "tasks", "delete", "-f", task], capture_output=True,
                           timeout=60)
        containers = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True,
                                    text=True)
        for container in containers.stdout.split():
            subprocess.run([*ctr, "containers", "rm", container], capture_output=True,
                           timeout=60)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _unmount_under(d)
        shutil.rmtree(d, ignore_errors=True)
