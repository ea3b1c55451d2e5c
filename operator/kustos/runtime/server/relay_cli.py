"""`kustos payload-relay`: the pod's payload-log container.

The model server (`kustos serve --payload-log-relay PATH`, payload_relay.py) writes each
sampled prediction to the Unix socket PATH (relay_wire); this process sends them as
CloudEvents to the ``--payload-log-*`` sinks with the in-process code (payload_log: the
same framing, redaction, bounded queue per sink, retries and metrics), on the CPU of its
own container, so the serving container's throughput does not pay for it.

HTTP on ``--port``: ``/metrics`` (``kustos_payload_log_events_total`` sent / dropped /
failed, ``kustos_payload_log_retries_total``), on every path: ``/v2/health/live`` (the
probes) answers 200 as long as the process serves.
On SIGTERM it keeps reading until the servers' connections close (they send what they
hold when they stop) or ``--drain-seconds`` pass, then gives the sinks up to 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from kustos.runtime import process
from kustos.runtime.server import payload_log_config, relay_wire

if TYPE_CHECKING:
    from kustos.runtime.server.payload_log import PayloadLogger

log = logging.getLogger("kustos.payload-relay")

READ_SIZE = 1 << 20


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kustos payload-relay", description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True, metavar="PATH",
                   help="the Unix socket the model server writes predictions to")
    p.add_argument("--host", default="0.0.0.0", help="HTTP address (/metrics, health)")
    p.add_argument("--port", type=int, default=8092, help="HTTP port (8092)")
    p.add_argument("--name", required=True, help="the model's name (metrics label; "
                   "ce-inferenceservicename unless --payload-log-service)")
    p.add_argument("--model-version", default="", help="ce-modelversion")
    p.add_argument("--drain-seconds", type=float, default=20.0,
                   help="on SIGTERM, how long to wait for the servers to hand over the "
                        "rest (20)")
    p.add_argument("--truth-url", default=None, metavar="URL",
                   help="also send every prediction, unredacted, to the ground-truth "
                        "monitor's URL/v1/events (the server then hands over all of them, "
                        "and --payload-log-sample applies here, to the payload log's sinks)")
    p.add_argument("--log-level", default="info")
    payload_log_config.add_args(p)
    return p


class Relay:
    """The listening socket, a reader thread per server connection, the sinks."""

    def __init__(self, path: str, logger: PayloadLogger) -> None:
        self.path = path
        self.logger = logger
        self.connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a previous run's (the container restarted)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)  # the pod's containers run as one user
        self.listener.listen(16)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed: stopping
            with self._lock:
                self.connections.add(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True,
                             name="kustos-relay-read").start()

    def _read(self, conn: socket.socket) -> None:
        decoder = relay_wire.Decoder()
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        names_seen = 0
        offer = self.logger.offer_exchange
        try:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                records = decoder.feed(view[:n])
                if len(decoder.input_names) > names_seen:
                    names_seen = len(decoder.input_names)
                    self.logger.set_input_name(decoder.input_names[-1])
                for record in records:
                    offer(_parsed(record))
        except relay_wire.StreamError as exc:
            log.error("payload relay: dropping a connection: %s", exc)
        except OSError as exc:
            log.warning("payload relay: a server connection broke: %s", exc)
        finally:
            with self._lock:
                self.connections.discard(conn)
            conn.close()

    def stop_listening(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def open_connections(self) -> int:
        with self._lock:
            return len(self.connections)


def _parsed(record: relay_wire.Record) -> relay_wire.Record:
    """gRPC's messages as protobuf objects (payload_log encodes those as JSON)."""
    if record[1] != "grpc":
        return record
    from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb

    rid, kind, request, request_json, response, response_json, when = record
    return (rid, kind, pb.ModelInferRequest.FromString(request), request_json,
            pb.ModelInferResponse.FromString(response), response_json, when)


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, or None."""
    problem = payload_log_config.check_args(args)
    if problem is not None:
        return problem
    if not (args.payload_log_url or args.payload_log_kafka or args.truth_url):
        return "a sink is needed: --payload-log-url, --payload-log-kafka or --truth-url"
    if args.truth_url:
        from kustos.runtime.server.sender import check_url  # stdlib only

        try:
            check_url(args.truth_url)
        except ValueError as exc:
            return f"--truth-url: {exc}"
    elif args.payload_log_sample != 1.0:
        return ("--payload-log-sample: the model server samples (its own flag); the relay "
                "samples only with --truth-url, when the server hands over all")
    return None


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    process.setup_logging(args.log_level)
    problem = check(args)
    if problem is not None:
        p.error(problem)
    config = payload_log_config.from_args(args)

    from prometheus_client import start_http_server

    from kustos.runtime import metrics  # noqa: F401  (its registry settings)
    from kustos.runtime.server import truth_link
    from kustos.runtime.server.payload_log import PayloadLogger

    # The payload log's sinks (the server has drawn the sample, or, with a monitor, this
    # PayloadLogger draws it), and the monitor's sink for every prediction: the same
    # pairing as in the server without a relay.
    logger = PayloadLogger(config, args.name) if config is not None else None
    if args.truth_url:
        logger = truth_link.TruthLogger(args.truth_url, args.name, args.model_version,
                                        logger, args.payload_log_namespace)
    assert logger is not None
    relay = Relay(args.socket, logger)
    # /metrics; prometheus_client answers every path, /v2/health/live (the probes) too.
    web, _ = start_http_server(args.port, addr=args.host)
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=relay.serve, daemon=True, name="kustos-relay-accept").start()
    log.info("payload relay: listening on %s; sinks: %d HTTP%s%s", args.socket,
             len(config.urls) if config else 0, ", Kafka" if config and config.kafka else "",
             ", the ground-truth monitor" if args.truth_url else "")
    while not stopping.wait(1.0):
        pass
    # The servers hand over what they hold when they stop: read until they have gone.
    deadline = time.monotonic() + args.drain_seconds
    while relay.open_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    relay.stop_listening()
    logger.close(5.0)
    web.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
