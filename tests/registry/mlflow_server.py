"""A real MLflow tracking server with its Model Registry, for the registry tests.

MLflow (with its SQLAlchemy, Flask, uvicorn, ... tree) lives in its own cached venv
(tests/runtimes/venvs.py, pinned in tests/runtimes/mlflow-requirements.txt), never in the
project's .venv. The server keeps its registry in SQLite and its artifacts in a moto S3
bucket on loopback (``--artifacts-destination s3://...``: the server proxies them, so the
registry hands out ``mlflow-artifacts:/`` locations). ``basic_auth`` starts MLflow's
basic-auth app (``--app-name basic-auth``) with an admin user this module chooses.

Usable by hand too: ``python tests/registry/mlflow_server.py`` starts one and waits.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "runtimes"))

from venvs import ensure_venv  # noqa: E402

from ports import free_port  # noqa: E402

BUCKET = "mlflow"
REGISTER_SCRIPT = HERE / "register_model.py"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def wait_for(check: Callable[[], bool], deadline: float, what: str,
             proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Poll ``check`` until it holds; fail with the server's log if it died or time ran out."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {deadline}s"
                       + (f" (exit {proc.returncode})" if proc and proc.returncode is not None
                          else "") + (f":\n{tail}" if tail else ""))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on loopback (from the project's .venv) with the artifact bucket."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{endpoint}/moto-api/"), 60, "moto server", proc)
        req = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()
        yield endpoint
    finally:
        _stop(proc)


@dataclass
class MlflowServer:
    url: str
    venv: Path
    env: dict[str, str]
    log: Path
    admin: tuple[str, str] | None = None

    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def rest(self, path: str, body: dict[str, Any], method: str = "POST") -> dict[str, Any]:
        """One call of the registry's REST API (as the admin with basic auth)."""
        headers = {"Content-Type": "application/json"}
        if self.admin:
            pair = base64.b64encode(f"{self.admin[0]}:{self.admin[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {pair}"
        req = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{path}", method=method,
                                     data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer: dict[str, Any] = json.loads(resp.read() or b"{}")
            return answer

    def register(self, name: str, *, c: float, alias: str | None = None,
                 serialization: str = "pickle") -> dict[str, Any]:
        """Train a logistic regression on iris (C=c) with the venv's scikit-learn, log it
        with mlflow.sklearn.log_model (``serialization``: pickle -> model.pkl, skops ->
        model.skops) and register it as a new version of ``name`` (register_model.py, run
        by the venv's python); returns version, run id, sha256, source, files."""
        env = {**self.env, "MLFLOW_TRACKING_URI": self.url}
        if self.admin:
            env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = self.admin
        args = [self.python(), str(REGISTER_SCRIPT), name, str(c), alias or "", serialization]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"register_model.py failed ({done.returncode}):\n"
                               f"{done.stderr[-4000:]}")
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return answer

    def register_champion_pair(self, name: str) -> list[dict[str, Any]]:
        """Two pickled versions of ``name`` with their kustos.dev/sha256 tags, alias
        champion -> v1 (C=1.0; v2 has C=0.02)."""
        out = [self.register(name, c=1.0, alias="champion"), self.register(name, c=0.02)]
        for v in out:
            self.rest("model-versions/set-tag", {"name": name, "version": v["version"],
                                                 "key": "kustos.dev/sha256",
                                                 "value": f"sha256:{v['sha256']}"})
        return out


@contextmanager
def mlflow_server(s3_endpoint: str, *, basic_auth: bool = False) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` on a free loopback port and wait for /health."""
    venv = ensure_venv("mlflow")
    work = Path(tempfile.mkdtemp(prefix="kustos-mlflow-"))
    port = free_port()
    env = {**os.environ, **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           # No telemetry, no prompts; the server's own temp files under work/.
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "TMPDIR": str(work)}
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    args = [str(venv / "bin" / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{BUCKET}/artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    admin = None
    if basic_auth:
        admin = ("admin", secrets.token_urlsafe(16))
        ini = work / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{work / 'basic_auth.db'}\n"
            f"admin_username = {admin[0]}\n"
            f"admin_password = {admin[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_urlsafe(32)  # CSRF key
        args += ["--app-name", "basic-auth"]
    log = work / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=work, start_new_session=True)
    try:
        # The first start creates the SQLite schema (alembic migrations): generous.
        wait_for(lambda: _answers(f"{url}/health"), 180, "mlflow server", proc, log)
        yield MlflowServer(url, venv, env, log, admin)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with moto_s3() as s3, mlflow_server(s3, basic_auth="--basic-auth" in sys.argv) as srv:
        print(f"mlflow at {srv.url} (admin {srv.admin}); Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
