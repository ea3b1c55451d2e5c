"""Every console command of every built image, run for real inside the image with the
image's own user (uid 65532 from its config) and a read-only root filesystem, through
`ctr run --read-only` against the throwaway containerd of conftest.py. /tmp is a host
directory owned by 65532 (an emptyDir in the pod). Catches an image that lacks what its
commands import (as `kustos run` once lacked hvac and cryptography)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ports import free_port

if TYPE_CHECKING:
    from conftest import Containerd

ROOT = Path(__file__).resolve().parents[2]

TABLE = tomllib.loads((ROOT / "images/images.toml").read_text())
UID, GID = (int(x) for x in TABLE["base"]["user"].split(":"))
_ids = itertools.count()

pytestmark = pytest.mark.slow


def scratch_dir(ctrd: Containerd) -> Path:
    d = ctrd.scratch / f"t{next(_ids)}"
    d.mkdir()
    os.chown(d, UID, GID)
    return d


def ctr_run(ctrd: Containerd, image: str, args: list[str], tmp: Path,
            env: dict[str, str] | None = None) -> list[str]:
    ref = ctrd.images[image].ref
    cid = f"kustos-test-{os.getpid()}-{next(_ids)}"
    cmd = ["ctr", "--address", ctrd.address, "-n", "k8s.io", "run", "--rm", "--read-only",
           "--net-host", "--mount", f"type=bind,src={tmp},dst=/tmp,options=rbind:rw"]
    for k, v in (env or {}).items():
        cmd += ["--env", f"{k}={v}"]
    return [*cmd, ref, cid, *args]


def run_in(ctrd: Containerd, image: str, args: list[str], tmp: Path | None = None,
           env: dict[str, str] | None = None, timeout: float = 180,
           ) -> subprocess.CompletedProcess[str]:
    tmp = tmp or scratch_dir(ctrd)
    return subprocess.run(ctr_run(ctrd, image, args, tmp, env), capture_output=True,
                          text=True, timeout=timeout)


RECIPES = sorted(TABLE["images"].items())
COMMANDS = [(name, c) for name, r in RECIPES for c in r["commands"]]


def entry(recipe: dict[str, Any], command: str) -> list[str]:
    """argv for a console command: kustos subcommands go through the kustos script."""
    return ["kustos", command] if recipe["entrypoint"] == ["kustos"] else [command]


@pytest.mark.parametrize(("image", "recipe"), RECIPES, ids=[n for n, _ in RECIPES])
def test_user_read_only_and_imports(containerd: Containerd, image: str,
                                    recipe: dict[str, Any]) -> None:
    """The image's user is 65532, its root filesystem is read-only and its own smoke
    import (the Dockerfile's) works without writing bytecode."""
    probe = ("import os, sys\n"
             "print(os.getuid(), os.getgid(), os.getcwd(), sys.prefix)\n"
             "try:\n    open(sys.prefix + '/x', 'w')\nexcept OSError as e:\n"
             "    print('errno', e.errno)\n"
             f"{recipe['check']}\n")
    out = run_in(containerd, image, ["python", "-c", probe])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(UID), str(GID), recipe["workdir"], recipe["venv"],
                                  "errno", "30"]  # EROFS


@pytest.mark.parametrize(("image", "command"), COMMANDS,
                         ids=[f"{n}-{c}" for n, c in COMMANDS])
def test_every_command_starts(containerd: Containerd, image: str, command: str) -> None:
    recipe = TABLE["images"][image]
    out = run_in(containerd, image, [*entry(recipe, command), "--help"])
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


def test_every_kustos_module_imports_in_the_kustos_image(containerd: Containerd) -> None:
    """Everything of the kustos package but the sidecars that have images of their own
    imports in the main image: the operator's controllers, the webhook, Vault, fetch,
    the server, governance. The ground-truth monitor's fairness slices need fairlearn,
    which only the kustos-explain image (where `kustos truth` runs) carries; the rest of
    kustos.runtime.truth imports here (the server's --truth-url uses its parser)."""
    script = """
import importlib, pkgutil, kustos
own_image = ("kustos.runtime.explain", "kustos.runtime.drift", "kustos.runtime.truth.fairness")
failed, count = [], 0
for m in pkgutil.walk_packages(kustos.__path__, "kustos."):
    if m.name.startswith(own_image):
        continue
    count += 1
    try:
        importlib.import_module(m.name)
    except Exception as e:
        failed.append(f"{m.name}: {e!r}")
print(count, failed)
"""
    out = run_in(containerd, "kustos", ["python", "-c", script])
    assert out.returncode == 0, out.stderr
    count, _, failed = out.stdout.strip().partition(" ")
    assert int(count) > 50 and failed == "[]", out.stdout


def test_operator_starts_up_to_the_cluster_login(containerd: Containerd) -> None:
    """`kustos run` with the webhook: imports every controller, writes its self-signed
    certificate under /tmp (cryptography), runs its startup activities and stops only
    because there is no cluster to log in to."""
    tmp = scratch_dir(containerd)
    out = run_in(containerd, "kustos",
                 ["kustos", "run", "--metrics-port", "0", "--liveness", "", "--webhook"],
                 tmp=tmp, timeout=120)
    log = out.stdout + out.stderr
    assert "ModuleNotFoundError" not in log and "ImportError" not in log, log
    assert "Activity 'configure' succeeded" in log, log
    assert "LoginError" in log, log
    certs = list(tmp.glob("kustos-webhook-*/*"))
    assert certs, f"no webhook certificate under /tmp: {log}"


def test_fetch_verifies_the_digest(containerd: Containerd) -> None:
    tmp = scratch_dir(containerd)
    payload = os.urandom(4096)
    (tmp / "src.bin").write_bytes(payload)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    ok = run_in(containerd, "kustos", ["kustos", "fetch", "--digest", digest,
                                       "file:///tmp/src.bin", "/tmp/out.bin"], tmp=tmp)
    assert ok.returncode == 0, ok.stderr
    assert (tmp / "out.bin").read_bytes() == payload
    bad = run_in(containerd, "kustos", ["kustos", "fetch", "--digest", "sha256:" + "0" * 64,
                                        "file:///tmp/src.bin", "/tmp/bad.bin"], tmp=tmp)
    assert bad.returncode != 0
    assert not (tmp / "bad.bin").exists()


TRAIN = """
import numpy as np, skops.io as sio
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(0)
X = rng.normal(size=(200, 4)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
sio.dump(LogisticRegression().fit(X, y), "/tmp/model.skops")
"""



@pytest.mark.parametrize("image", ["kustos", "kustos-explain"])
def test_serve_answers_ready_and_infer(containerd: Containerd, image: str) -> None:
    """`kustos serve` on a model trained with the image's own scikit-learn: ready, then
    one V2 inference."""
    tmp = scratch_dir(containerd)
    train = run_in(containerd, image, ["python", "-c", TRAIN], tmp=tmp)
    assert train.returncode == 0, train.stderr
    port = free_port()
    cmd = ctr_run(containerd, image, ["kustos", "serve", "--model", "/tmp/model.skops",
                                      "--name", "m", "--host", "127.0.0.1",
                                      "--port", str(port)], tmp)
    cid = cmd[cmd.index(containerd.images[image].ref) + 1]
    log = tmp / "serve.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        body = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP64",
                                       "shape": [2, 4], "data": [3, 3, 0, 0, -3, -3, 0, 0]}]})
        req = urllib.request.Request(f"{base}/v2/models/m/infer", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            result = json.loads(r.read())
        assert result["outputs"][0]["data"] == [1, 0], result
    finally:
        subprocess.run(["ctr", "--address", containerd.address, "-n", "k8s.io", "tasks",
                        "kill", "-s", "SIGTERM", cid], capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            subprocess.run(["ctr", "--address", containerd.address, "-n", "k8s.io", "tasks",
                            "kill", "-s", "SIGKILL", cid], capture_output=True)
            proc.wait(timeout=30)


def test_import_skips_an_image_already_there(containerd: Containerd) -> None:
    """hack/images.sh import is idempotent: the fixture imported everything, so a second
    run imports nothing."""
    env = {**os.environ, "CONTAINERD_ADDRESS": containerd.address}
    out = subprocess.run(["bash", str(ROOT / "hack/images.sh"), "import", "--no-build"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("already imported") == len(containerd.images), out.stderr
    assert "==> import" not in out.stderr
