"""The payload-log relay: `kustos serve --payload-log-relay` handing predictions to a real
`kustos payload-relay` process over a Unix socket, and the bytes between them.

The events themselves (every protocol, redaction, attributes) are checked in relay mode by
test_payload_log.py's ``logged`` fixture; here: the wire, and what happens when the relay
is late, missing, restarted, or stopped."""

from __future__ import annotations

import random
import signal
import socket
from pathlib import Path

import pytest

from kustos.runtime.server import relay_wire
from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb

from .conftest import Models, spawn_cli, stop_process, wait_for
from .test_payload_log import (
    ROW,
    Sink,
    collecting_sink,
    events,
    sink,  # noqa: F401 (the fixture)
    start,
    start_relay,
    start_relayed,
)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RELAYED = 'kustos_payload_log_relayed_total{model="iris"}'


def test_records_survive_any_cut_of_the_stream() -> None:
    request = pb.ModelInferRequest(model_name="iris", id="g")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 1]).contents.fp64_contents.append(2)
    response = pb.ModelInferResponse(model_name="iris", id="g")
    records: list[relay_wire.Record] = [
        ("a" * 32, "v2", b'{"inputs": []}', None, b'{"outputs": []}', None, 1.5),
        ("idé-ünïcode", "v1", bytearray(b"{}"), None, memoryview(b"[1]"), None, 2.25),
        ("bin", "v2", b'{"j": 1}\x00\x01\x02', 8, b'{"k": 2}\xff', 8, 3.0),
        ("g", "grpc", request, None, response, None, 4.0),
        ("", "seldon", b"", None, b"", None, 0.0),
    ]
    stream = (relay_wire.MAGIC + relay_wire.control("input-0") + relay_wire.encode(records)
              + relay_wire.control("other"))
    expected = [(r[0], r[1], bytes(r[2]) if r[1] != "grpc" else request.SerializeToString(),
                 r[3], bytes(r[4]) if r[1] != "grpc" else response.SerializeToString(), r[5],
                 r[6]) for r in records]
    rng = random.Random(7)
    for cut in ("bytes", "random", "whole"):
        decoder = relay_wire.Decoder()
        got: list[relay_wire.Record] = []
        at = 0
        while at < len(stream):
            step = {"bytes": 1, "random": rng.randint(1, 40), "whole": len(stream)}[cut]
            got += decoder.feed(stream[at:at + step])
            at += step
        assert got == expected, cut
        assert decoder.input_names == ["input-0", "other"]
    with pytest.raises(relay_wire.StreamError, match="another version"):
        relay_wire.Decoder().feed(b"KPLR9\n" + relay_wire.encode(records))
    huge = relay_wire.HEAD.pack(0, 0, 0, relay_wire.MAX_RECORD, 0, -1, -1, 0.0)
    with pytest.raises(relay_wire.StreamError, match="bytes"):
        relay_wire.Decoder().feed(relay_wire.MAGIC + huge)
    bad_kind = relay_wire.HEAD.pack(0, 9, 0, 0, 0, -1, -1, 0.0)
    with pytest.raises(relay_wire.StreamError, match="kind 9"):
        relay_wire.Decoder().feed(relay_wire.MAGIC + bad_kind)


def test_predictions_wait_for_a_late_relay_within_the_queue(
        models: Models, sink: Sink, tmp_path: Path) -> None:  # noqa: F811
    sock = tmp_path / "relay.sock"
    serve = start(models, "--payload-log-relay", str(sock), "--payload-log-queue", "4")
    relay = None
    try:
        ids = [serve.v2([ROW])[1]["id"] for _ in range(10)]  # answered without a relay
        # 4 wait for the relay; the 6 newest are dropped (both their events)
        assert serve.metric(events("dropped")) == 12
        relay, port = start_relay(sock, "--payload-log-url", sink.url)
        serve.relay, serve.relay_port = relay, port
        assert wait_for(lambda: serve.metric(events("sent")) == 8, 30)
        assert set(sink.by_id()) == set(ids[:4])
        assert serve.metric(RELAYED) == 4 and serve.metric(events("failed")) == 0
        # From now on predictions get through (one at a time: the queue holds 4 between
        # two 50 ms hand-overs).
        for _ in range(5):
            rid: str = serve.v2([ROW])[1]["id"]
            assert wait_for(lambda rid=rid: rid in sink.by_id(), 30)  # type: ignore[misc]
        assert serve.metric(events("dropped")) == 12
    finally:
        serve.stop()


def test_the_server_reconnects_to_a_restarted_relay(
        models: Models, sink: Sink, tmp_path: Path) -> None:  # noqa: F811
    serve = start_relayed(models, tmp_path, ("--payload-log-url", sink.url))
    try:
        first = serve.v2([ROW])[1]["id"]
        assert wait_for(lambda: first in sink.by_id(), 30)
        assert serve.relay is not None
        stop_process(serve.relay)  # SIGKILL: the container crashed
        serve.relay, serve.relay_port = start_relay(tmp_path / "relay.sock",
                                                    "--payload-log-url", sink.url)
        # The first write after the crash breaks (its predictions count as failed); the
        # next tick connects to the new relay and every prediction after that arrives.
        answered: list[str] = []

        def flowing() -> bool:
            answered.append(serve.v2([ROW])[1]["id"])
            return any(rid in sink.by_id() for rid in answered)

        assert wait_for(flowing, 30, 0.1)

        def accounted() -> bool:
            lost = [rid for rid in answered if rid not in sink.by_id()]
            return 2 * len(lost) == serve.metric(events("failed"))

        assert wait_for(accounted, 30)
        assert all(len(pair) == 2 for pair in sink.by_id().values())
        assert serve.metric(events("dropped")) == 0
    finally:
        serve.stop()


def test_a_stopping_server_hands_over_what_it_holds(
        models: Models, sink: Sink, tmp_path: Path) -> None:  # noqa: F811
    serve = start_relayed(models, tmp_path, ("--payload-log-url", sink.url),
                          "--workers", "2")
    try:
        ids = {serve.v2([ROW])[1]["id"] for _ in range(200)}
        serve.proc.send_signal(signal.SIGTERM)  # drains; each worker flushes to the relay
        assert serve.proc.wait(60) == 0
        assert wait_for(lambda: len(sink.by_id()) == len(ids), 30)
        assert set(sink.by_id()) == ids
        assert all(len(pair) == 2 for pair in sink.by_id().values())
        assert serve.relay is not None
        serve.relay.send_signal(signal.SIGTERM)  # no server left: it stops at once
        assert serve.relay.wait(30) == 0
    finally:
        serve.stop()


def test_a_foreign_stream_is_dropped_and_the_relay_keeps_serving(
        models: Models, sink: Sink, tmp_path: Path) -> None:  # noqa: F811
    sock = tmp_path / "relay.sock"
    relay, port = start_relay(sock, "--payload-log-url", sink.url)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(sock))
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
            raw.settimeout(30)
            assert raw.recv(16) == b""  # the relay hung up
        serve = start(models, "--payload-log-relay", str(sock))
        serve.relay, serve.relay_port = relay, port
        rid = serve.v2([ROW])[1]["id"]
        assert wait_for(lambda: set(sink.by_id().get(rid, {})) >= {REQUEST_TYPE}, 30)
        serve.stop()
    finally:
        stop_process(relay)


def test_misplaced_relay_flags_are_refused(models: Models, tmp_path: Path) -> None:
    sock = str(tmp_path / "s")
    cases = [
        (("serve", "--model", str(models.iris_lr), "--name", "iris", "--payload-log-relay",
          sock, "--payload-log-url", "http://127.0.0.1:9/"), "belong to the payload-log"),
        (("serve", "--model", str(models.iris_lr), "--name", "iris", "--payload-log-relay",
          sock, "--payload-log-redact", "x"), "belong to the payload-log"),
        (("payload-relay", "--socket", sock, "--name", "iris"), "a sink is needed"),
        (("serve", "--model", str(models.iris_lr), "--name", "iris", "--payload-log-relay",
          sock, "--truth-url", "http://127.0.0.1:9", "--payload-log-sample", "0.5"),
         "hands over all"),
        (("payload-relay", "--socket", sock, "--name", "iris", "--truth-url", "ftp://x"),
         "--truth-url: expected an http(s) URL"),
        (("payload-relay", "--socket", sock, "--name", "iris", "--payload-log-url",
          "http://127.0.0.1:9/", "--payload-log-sample", "0.5"), "the model server samples"),
    ]
    for argv, message in cases:
        proc = spawn_cli(*argv)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and message in err.decode(), err.decode()[-500:]
    assert not Path(sock).exists()  # refused before it listened


def test_with_a_truth_monitor_the_relay_sends_it_every_prediction_and_samples_the_log(
        models: Models, sink: Sink, tmp_path: Path) -> None:  # noqa: F811
    """As the operator renders a pod with a ground-truth monitor: the server hands over
    every prediction and forwards feedback itself; the relay sends the monitor all of
    them (URL/v1/events, unredacted) and the payload log's sink a sample."""
    with collecting_sink() as monitor:
        assert monitor.server is not None
        base = f"http://127.0.0.1:{monitor.server.server_address[1]}"
        serve = start_relayed(
            models, tmp_path, ("--truth-url", base, "--payload-log-url", sink.url,
                               "--payload-log-sample", "0.25", "--payload-log-redact",
                               "input-0"),
            "--truth-url", base)
        try:
            n = 400
            ids = {serve.v2([ROW])[1]["id"] for _ in range(n)}

            def at_monitor() -> dict[str, set[str]]:
                got: dict[str, set[str]] = {}
                with monitor.lock:
                    for e in monitor.events:
                        if e.path == "/v1/events":
                            got.setdefault(e.id, set()).add(e.type)
                return got

            assert wait_for(lambda: len(at_monitor()) == n, 30)
            assert set(at_monitor()) == ids and all(len(t) == 2 for t in at_monitor().values())
            with monitor.lock:  # unredacted for the monitor: it needs the true inputs
                assert any(b"5.1" in e.body for e in monitor.events)
            # The sample: Binomial(400, 0.25), mean 100, sd 8.7; redacted.
            assert wait_for(lambda: serve.metric(RELAYED) == n, 30)
            assert wait_for(lambda: serve.metric(events("sent")) >= 2 * n + 2 * 60, 30)
            logged = sink.by_id()
            assert set(logged) <= ids and 60 <= len(logged) <= 140, len(logged)
            assert all(b"5.1" not in e.body for e in sink.events if "request" in e.type)
            # Feedback still goes from the server to the monitor, checked there first.
            rid = next(iter(ids))
            status, _, _ = serve.post("/v2/models/iris/feedback",
                                      {"labels": [{"id": rid, "label": 0}]})
            assert status == 202

            def forwarded() -> bool:
                with monitor.lock:
                    return any(e.path == "/v2/models/iris/feedback" and rid.encode() in e.body
                               for e in monitor.events)

            assert wait_for(forwarded, 30)
        finally:
            serve.stop()


def test_without_an_event_loop_each_offer_is_sent_at_once(tmp_path: Path) -> None:
    """RelayLogger off the event loop (a plain thread): no timer to wait for, so an offer
    is framed and sent before it returns."""
    from kustos.runtime.server.payload_relay import RelayLogger

    path = str(tmp_path / "relay.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        logger = RelayLogger(path, "iris")
        logger.set_input_name("input-0")
        logger.offer("a", "v1", b'{"instances": [[1]]}', None, b'{"predictions": [0]}')
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            decoder = relay_wire.Decoder()
            got: list[relay_wire.Record] = []
            while not got:
                got += decoder.feed(conn.recv(65536))
            logger.offer("b", "v2", b"{}", None, b"{}")
            while len(got) < 2:
                got += decoder.feed(conn.recv(65536))
        logger.close()
    assert [(r[0], r[1], r[2]) for r in got] == [("a", "v1", b'{"instances": [[1]]}'),
                                                 ("b", "v2", b"{}")]
    assert decoder.input_names == ["input-0"]
