"""Helpers the runtime and explain conftests share. tests/unit is on sys.path (pytest puts
the first directory above a test package there), so both import this as ``unit_support``."""

from __future__ import annotations

import time
from collections.abc import Callable

from loopback_http import loopback_server  # noqa: F401  # the tests import it from here
from ports import free_port  # noqa: F401  # the conftests import it from here


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """True once ``cond()`` is, polling every ``step`` seconds; its last value at timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()

