"""The open window of served input rows: closes when full, or when old enough."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from kustos.runtime.drift.reference import Array


class Window:
    """Rows accumulate until ``size`` (the window closes with exactly ``size`` rows and the
    rest opens the next one) or until the first row is ``max_age`` seconds old, provided
    the window has ``min_rows`` by then; a smaller window stays open until it has them.
    Memory is bounded: the open window never holds more than ``size`` rows."""

    def __init__(self, size: int, max_age: float, min_rows: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1 or min_rows < 1 or min_rows > size:
            raise ValueError("need 1 <= min_rows <= size")
        self.size = size
        self.max_age = max_age
        self.min_rows = min_rows
        self.clock = clock
        self._parts: list[Array] = []
        self.rows = 0
        self.opened_at: float | None = None  # when the first row arrived

    def add(self, rows: Array) -> list[Array]:
        """Append ``rows``; return the windows this closed (each of exactly ``size``)."""
        closed: list[Array] = []
        start = 0
        while start < len(rows):
            if self.opened_at is None:
                self.opened_at = self.clock()
            take = min(self.size - self.rows, len(rows) - start)
            self._parts.append(rows[start:start + take])
            self.rows += take
            start += take
            if self.rows == self.size:
                closed.append(self._take())
        return closed

    def expire(self) -> Array | None:
        """The window, if it is older than ``max_age`` and has ``min_rows``."""
        if (self.opened_at is not None and self.max_age > 0 and self.rows >= self.min_rows
                and self.clock() - self.opened_at >= self.max_age):
            return self._take()
        return None

    def _take(self) -> Array:
        parts, self._parts = self._parts, []
        self.rows = 0
        self.opened_at = None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
