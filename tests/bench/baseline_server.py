"""The benchmark's floor: a model's predict behind the thinnest HTTP server we can write.

asyncio (uvloop when installed, as kustos serve uses) + httptools, one process, one
thread. It parses the same KServe V2 JSON request, calls ``predict`` on the row(s) and
answers V2 JSON, and does nothing else: no routing table, no validation beyond what
the parse needs, no metrics, no logging. Whatever kustos serve adds on top of this is
its overhead.

    python baseline_server.py MODEL.skops NAME PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, cast

import httptools
import numpy as np


class _Protocol(asyncio.Protocol):
    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        status, payload = 200, b""
        try:
            if self.parser.get_method() == b"GET":  # health/readiness
                payload = b'{"ready":true}'
            else:
                tensor = json.loads(b"".join(self.body))["inputs"][0]
                rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
                predictions = self.model.predict(rows)
                payload = json.dumps({
                    "model_name": self.name,
                    "outputs": [{"name": "predict", "shape": [len(predictions)],
                                 "datatype": "INT64" if predictions.dtype.kind in "iu"
                                 else "FP64", "data": predictions.tolist()}],
                }).encode()
        except Exception as exc:  # the floor still reports errors, so the bench can fail
            status, payload = 400, json.dumps({"error": str(exc)}).encode()
        reason = b"OK" if status == 200 else b"Bad Request"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % (status, reason, len(payload)) + payload
        )
        if not self.parser.should_keep_alive():
            self.transport.close()


def main(argv: list[str]) -> int:
    path, name, port = argv[0], argv[1], int(argv[2])
    import sklearn
    import skops.io as sio

    model = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    # The least a server can do per call: no finiteness scan of the input.
    sklearn.set_config(assume_finite=True)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Protocol(model, name), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
