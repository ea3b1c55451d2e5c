"""A bounded HTTP load for the live autoscaling tests (test_autoscaling_live.py,
test_keda_live.py): V2 inference requests from this host, one connection per request so
kube-proxy spreads them over the pods, new ones included."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

# at most this long, this many requests, this many connections at a time
LOAD_SECONDS, LOAD_REQUESTS, CONCURRENCY = 300.0, 200_000, 4


@dataclass
class Load:
    """A bounded load: CONCURRENCY workers posting V2 inference requests until stopped,
    LOAD_SECONDS pass or LOAD_REQUESTS have been sent."""

    host: str
    path: str
    body: bytes
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def sent(self) -> int:
        return self.ok + sum(self.errors.values())

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def one(self) -> None:
        t0 = time.monotonic()
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        try:
            async with asyncio.timeout(15):
                reader, writer = await asyncio.open_connection(self.host, 80)
                try:
                    writer.write(head + self.body)
                    status = (await reader.readline()).split(b" ", 2)
                    rest = await reader.read()
                finally:
                    writer.close()
        except TimeoutError:
            self.error("timeout")
            return
        except OSError as err:
            self.error(type(err).__name__)
            return
        if len(status) < 2 or status[1] != b"200" or b'"outputs"' not in rest:
            self.error(f"status {status[1].decode() if len(status) > 1 else '?'}")
            return
        self.ok += 1
        self.latencies.append(time.monotonic() - t0)

    async def worker(self, deadline: float) -> None:
        while not self.stop.is_set() and time.monotonic() < deadline \
                and self.sent < LOAD_REQUESTS:
            await self.one()

    async def run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        await asyncio.gather(*(self.worker(deadline) for _ in range(CONCURRENCY)))
