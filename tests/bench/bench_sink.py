"""A stand-in HTTP peer for the benchmarks: reads each request's framing only (head and
content-length body, pipelined) and answers every one with the same canned bytes, at
almost no CPU."""

from __future__ import annotations

import asyncio
from typing import Any


def serve_canned(port: int, answer: bytes) -> None:
    """Serve on 127.0.0.1:``port`` forever, writing ``answer`` (a whole HTTP response)
    once per request received."""

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            out = []
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                head = self.buf[:end].lower()
                i = head.find(b"content-length:")
                length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
                if len(self.buf) < end + 4 + length:
                    break
                self.buf = self.buf[end + 4 + length:]
                out.append(answer)
            if out:
                self.transport.write(b"".join(out))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def wait_for_sink(port: int, timeout: float = 30.0) -> None:
    """Until the sink on 127.0.0.1:``port`` answers a POST (or ``timeout`` seconds pass)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/", data=b"x"), timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
