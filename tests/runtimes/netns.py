"""Run a server in its own network namespace and talk to it there.

Third-party runtimes bind where they like (seldon-core hard-codes 0.0.0.0 and fixed
ports 9000/5000/6000). Running them exactly as rendered, but inside a fresh network
namespace that has only a loopback interface, keeps them off the machine's network and
lets several test runs use the same ports at once. Needs root (CAP_SYS_ADMIN), as the
tests and CI run here.

``python netns.py exec CMD...``    (inside the namespace) bring lo up, exec CMD
``python netns.py request ...``    (inside it, via nsenter) one HTTP request, JSON out
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def _loopback_up() -> None:
    # A new network namespace starts with lo down; the ioctl avoids needing iproute2.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


class NetnsServer:
    """A process started in a new network namespace, stopped with its whole group."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", sys.executable, str(HERE), "exec", *argv],
            env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def request(self, method: str, url: str, body: Any = None,
                timeout: float = 10) -> tuple[int, Any]:
        """One HTTP request from inside the namespace; (status, parsed JSON or text)."""
        cmd = ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--",
               sys.executable, str(HERE), "request", method, url, json.dumps(body),
               str(timeout)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 20)
        if out.returncode != 0:
            raise RuntimeError(f"request helper failed: {out.stderr[-2000:]}")
        result = json.loads(out.stdout)
        return int(result["status"]), result["body"]

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.output()}"
                )
            try:
                status, body = self.request("GET", url, timeout=3)
                if status == 200:
                    return
                last = (status, body)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"{url} not ready after {timeout}s (last: {last}):\n{self.output()}")

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._log_file.close()


def _request(method: str, url: str, body_json: str, timeout: float) -> None:
    body = json.loads(body_json)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        status, raw = 0, str(err).encode()
    text = raw.decode(errors="replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text
    print(json.dumps({"status": status, "body": parsed}))


if __name__ == "__main__":
    if sys.argv[1] == "exec":
        _loopback_up()
        os.execvp(sys.argv[2], sys.argv[2:])
    elif sys.argv[1] == "request":
        _request(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")
