"""`kustos serve --payload-log-relay PATH`: predictions handed to the pod's payload-log
container (`kustos payload-relay`, relay_cli.py) instead of sent from this process.

Why: a sender thread in the serving process shares its core and its GIL. Framing,
redaction, CRCs and the sinks' sockets cost 1.5-3 us per logged prediction on that thread
and, in GIL hand-overs, about as much again on the serving thread: 9-13 % of a ~60 us
prediction (docs/benchmarks.md). Here the serving process does only what cannot be
avoided: the sample draw and a tuple appended to a list per prediction; every 50 ms the
event loop (no other thread, so no GIL hand-over) frames the pending predictions
(relay_wire) and writes them to a Unix socket in one non-blocking send. The relay
container, with its own CPU, does the rest with the in-process code (payload_log).

Drop policy as in-process: at ``queue`` pending predictions the newest is dropped and its
two events count as ``dropped``. While the relay cannot be reached (not started yet,
restarting) predictions wait, within that bound. A connection that breaks with a write half
done loses that write's predictions (counted as ``failed``, both events each).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from typing import Any

from kustos.runtime.server import metrics as m
from kustos.runtime.server import relay_wire
from kustos.runtime.server.relay_wire import Record

log = logging.getLogger("kustos.serve")

FLUSH_INTERVAL = 0.05  # seconds; a prediction waits at most this long in this process
RECONNECT_INTERVAL = 1.0
SEND_BUFFER = 4 << 20  # the kernel caps it (net.core.wmem_max)


class RelayLogger:
    """The request path's side of payload logging through the relay container."""

    def __init__(self, path: str, model: str, sample: float = 1.0, queue: int = 10_000,
                 flush_interval: float = FLUSH_INTERVAL) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError("the payload log sample rate must be within 0..1")
        self.path = path
        self.sample = sample
        self.queue = queue
        self.flush_interval = flush_interval
        self._pending: list[Record] = []
        self._sock: socket.socket | None = None
        self._unsent = memoryview(b"")
        self._unsent_predictions = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing = False  # add_writer is waiting to send _unsent
        self._retry_at = 0.0
        self._warned = False
        self._input_name: str | None = None
        self._prefix = b""  # a control record to send before the next predictions
        self.dropped = m.PAYLOAD_LOG_EVENTS.labels(model, "dropped")
        self.failed = m.PAYLOAD_LOG_EVENTS.labels(model, "failed")
        self.relayed = m.PAYLOAD_LOG_RELAYED.labels(model)

    def set_input_name(self, name: str) -> None:
        self._input_name = name
        if self._sock is not None:  # the relay learns it before the next predictions
            self._prefix = relay_wire.control(name)

    def offer(self, rid: str, kind: str, request: Any, request_json_length: int | None,
              response: Any, response_json_length: int | None = None) -> None:
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        pending = self._pending
        if len(pending) >= self.queue:
            self.dropped.inc(2)  # both its events
            return
        pending.append((rid, kind, request, request_json_length, response,
                        response_json_length, time.time()))
        if self._timer is None and not self._writing:
            self._arm(self.flush_interval)

    # -- the event loop's side
    def _arm(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a plain thread): send now, blocking briefly
            self.flush(timeout=2.0)
            return
        self._loop = loop
        self._timer = loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._unsent:
            return  # the writer callback sends it, then arms again
        if not self._pending:
            return
        if self._sock is None and not self._connect():
            self._arm(max(self._retry_at - time.monotonic(), self.flush_interval))
            return
        self._send(self._take())

    def _take(self) -> bytes:
        pending, self._pending = self._pending, []
        self._unsent_predictions = len(pending)
        data = self._prefix + relay_wire.encode(pending)
        self._prefix = b""
        self.relayed.inc(len(pending))
        return data

    def _connect(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            sock.settimeout(1.0)
            sock.connect(self.path)
            hello = relay_wire.MAGIC
            if self._input_name is not None:
                hello += relay_wire.control(self._input_name)
            sock.sendall(hello)  # a fresh socket's buffer takes it whole
            sock.setblocking(False)
            self._prefix = b""
        except OSError as exc:
            sock.close()
            self._retry_at = time.monotonic() + RECONNECT_INTERVAL
            if not self._warned:
                self._warned = True
                log.warning("payload log: the relay at %s cannot be reached (%s); "
                            "predictions wait (up to %d), then are dropped",
                            self.path, exc.strerror or exc, self.queue)
            return False
        if self._warned:
            log.info("payload log: the relay at %s is reachable again", self.path)
            self._warned = False
        self._sock = sock
        return True

    def _send(self, data: bytes | memoryview) -> None:
        sock = self._sock
        assert sock is not None
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            log.warning("payload log: the relay connection broke (%s); %d prediction(s) "
                        "lost", exc.strerror or exc, self._unsent_predictions)
            self.failed.inc(2 * self._unsent_predictions)
            self._close_socket()
            if self._pending:
                self._arm(self.flush_interval)
            return
        rest = memoryview(data)[sent:]
        self._unsent = rest
        if rest:
            if self._loop is None:
                return
            self._writing = True
            self._loop.add_writer(sock.fileno(), self._writable)
        elif self._pending and self._timer is None:
            self._arm(self.flush_interval)

    def _writable(self) -> None:
        sock = self._sock
        if sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())
        self._writing = False
        if sock is None:
            return
        self._send(self._unsent)

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._writing and self._loop is not None:
            self._loop.remove_writer(sock.fileno())
            self._writing = False
        self._unsent = memoryview(b"")
        sock.close()

    # -- shutdown (and loop-less callers)
    def flush(self, timeout: float = 2.0) -> None:
        """Send what is pending now, waiting up to ``timeout`` for the relay to take it."""
        deadline = time.monotonic() + timeout
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is None and (self._pending or self._unsent):
            self._retry_at = 0.0
            if not self._connect():
                return
        sock = self._sock
        if sock is None:
            return
        if self._writing and self._loop is not None:
            self._loop.remove_writer(sock.fileno())
            self._writing = False
        carried = self._unsent_predictions if self._unsent else 0
        data = bytes(self._unsent) + (self._take() if self._pending else b"")
        self._unsent_predictions += carried
        self._unsent = memoryview(b"")
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            sock.sendall(data)
            sock.setblocking(False)
        except OSError as exc:
            log.warning("payload log: %d prediction(s) not handed to the relay (%s)",
                        self._unsent_predictions, exc.strerror or exc)
            self.failed.inc(2 * self._unsent_predictions)
            self._close_socket()

    def close(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        self._close_socket()
