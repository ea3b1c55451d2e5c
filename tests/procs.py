"""Waiting on and stopping the server processes the tests start."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any


def wait_for(cond: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """``cond()`` polled every ``step`` s until truthy or ``timeout`` s passed: its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def stop(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL: the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
