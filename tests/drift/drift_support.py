"""Helpers for the drift sidecar tests: start `kustos drift` from its own venv, talk HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from loopback_http import metrics, request
from ports import free_port
from procs import stop, wait_for

REPO = Path(__file__).resolve().parents[2]



def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def write_csv(path: Path, x: np.ndarray, names: list[str]) -> Path:
    fmt = ["%d" if np.array_equal(c, np.round(c)) else "%.17g" for c in x.T]  # exact
    np.savetxt(path, x, delimiter=",", header=",".join(names), comments="", fmt=fmt)
    return path


def payload(x: np.ndarray, model: str = "m") -> bytes:
    """The exact body kustos serve's DriftSender posts for one request of rows ``x``."""
    from kustos.runtime.server.hooks import DriftSender

    sender = DriftSender(f"http://127.0.0.1:{free_port()}/v1/inputs", model, "1")
    try:
        return sender.payload([{"input-0": np.ascontiguousarray(x)}])
    finally:
        sender.close()


class Sidecar:
    """One `kustos drift` process on 127.0.0.1, from the drift venv."""

    def __init__(self, venv: Path, workdir: Path, *args: str) -> None:
        self.port = free_port()
        self.log = workdir / f"drift-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "kustos"), "drift", "--host", "127.0.0.1",
             "--port", str(self.port), "--work-dir", str(workdir / f"ref-{self.port}"), *args],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True)

    def get(self, path: str) -> tuple[int, Any]:
        return request(self.port, "GET", path)

    def post(self, body: bytes, path: str = "/v1/inputs") -> tuple[int, Any]:
        return request(self.port, "POST", path, body)

    def status(self) -> dict[str, Any]:
        code, body = self.get("/v1/drift/status")
        assert code == 200, body
        return dict(body)

    def wait_listening(self, timeout: float = 60) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.logs()
            with contextlib.suppress(OSError):
                return self.get("/v2/health/live")[0] == 200
            return False

        assert wait_for(up, timeout), f"sidecar did not listen in {timeout}s:\n{self.logs()}"

    def wait_loaded(self, timeout: float = 180) -> dict[str, Any]:
        """Until the reference is loaded or failed; returns the status."""
        self.wait_listening()
        st = wait_for(lambda: (s := self.status()) and not s["loading"] and s, timeout)
        assert st and not st["loading"], f"still loading after {timeout}s:\n{self.logs()}"
        return dict(st)

    def wait_windows(self, n: int, timeout: float = 60) -> dict[str, Any]:
        st = wait_for(lambda: (s := self.status())["windowsEvaluated"] >= n and s, timeout)
        assert st, f"fewer than {n} windows after {timeout}s: {self.status()}\n{self.logs()}"
        return dict(st)

    def metrics(self) -> dict[str, float]:
        return metrics(self.port)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop(self.proc, 15)


@contextlib.contextmanager
def sidecar(venv: Path, workdir: Path, *args: str) -> Iterator[Sidecar]:
    s = Sidecar(venv, workdir, *args)
    try:
        yield s
    finally:
        s.stop()
