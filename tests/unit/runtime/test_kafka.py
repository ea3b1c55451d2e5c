"""The minimal Kafka producer: its encodings against published vectors, and `kustos serve`
sending payload log events to a loopback listener that decodes the Kafka wire protocol
(ApiVersions, Metadata, Produce with RecordBatch v2) as a broker does. Not a real broker:
the broker test belongs with the cluster integration."""

from __future__ import annotations

import random
import socket
import socketserver
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from kustos.runtime.server.kafka import (
    Reader,
    batch_of,
    crc32c,
    murmur2,
    parse_servers,
    partition_for,
    partitions_for,
    varint,
)

from .conftest import Models, free_port, spawn_cli, stop_process, wait_for, wait_http_ready

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.mark.parametrize("native", [False, True], ids=["numpy", "google-crc32c"])
def test_crc32c_check_value(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from kustos.runtime.server import kafka

    if native and kafka._NATIVE_EXTEND is None:
        pytest.skip("google-crc32c (with its C extension) is not installed")
    if not native:
        monkeypatch.setattr(kafka, "_NATIVE_EXTEND", None)
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c(memoryview(b"x123456789")[1:]) == 0xE3069283
    assert crc32c(b"") == 0


def _crc32c_bitwise(data: bytes) -> int:
    """The definition, bit by bit (no table): reflected polynomial 0x82F63B78."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("native", [False, True], ids=["numpy", "google-crc32c"])
def test_crc32c_of_large_inputs_matches_the_definition(native: bool,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Both ways (the C one when google-crc32c is installed) against the bitwise
    definition, on inputs over several of the C way's chunks too."""
    from kustos.runtime.server import kafka

    if native and kafka._NATIVE_EXTEND is None:
        pytest.skip("google-crc32c (with its C extension) is not installed")
    if not native:
        monkeypatch.setattr(kafka, "_NATIVE_EXTEND", None)
    monkeypatch.setattr(kafka, "_NATIVE_CHUNK", 4096)
    # Inputs from 2 KiB up take the vectorised path (slices combined 16 at a time): around
    # every slice, group and level boundary, and a record batch's size.
    rng = random.Random(7)
    for n in (2047, 2048, 2049, 2112, 4096, 4099, 8191, 8192, 8193, 65536 + 13, 131_073,
              250_621):
        data = rng.randbytes(n)
        assert crc32c(data) == _crc32c_bitwise(data), n
    assert crc32c(bytes(5000)) == _crc32c_bitwise(bytes(5000))
    # a view into a larger buffer at any alignment (a batch read where it was written)
    data = rng.randbytes(9000)
    for start in range(5):
        for end in (8000, 8001, 8030, 9000):
            view = memoryview(bytearray(data))[start:end]
            assert crc32c(view) == _crc32c_bitwise(data[start:end]), (start, end)


@pytest.mark.parametrize("size", [10, 3000, 70001])
def test_batch_of_lays_out_a_record_batch_v2(size: int) -> None:
    """The header fields in order, the CRC-32C over attributes .. records (the batch is
    written in place with the CRC patched in: its bytes must be the layout's)."""
    records = random.Random(size).randbytes(size)
    tail = struct.pack(">hiqqqhii", 0, 6, 1700000000123, 1700000000123, -1, -1, -1,
                       7) + records
    expected = struct.pack(">qiibI", 0, 9 + len(tail), -1, 2, _crc32c_bitwise(tail)) + tail
    assert batch_of(records, 7, 1700000000123) == expected


def test_murmur2_matches_kafkas_partitioner() -> None:
    # Kafka's own test vectors for Utils.murmur2 (clients' UtilsTest).
    cases = {b"21": -973932308, b"foobar": -790332482,
             b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}
    assert {k: murmur2(k) for k in cases} == cases


def test_partitions_of_many_keys_match_the_one_key_partitioner() -> None:
    # partitions_for hashes keys of one length together (numpy): every length mod 4,
    # groups under and over its threshold, keyless records round robin.
    rng = random.Random(11)
    keys: list[bytes | None] = [rng.randbytes(n) for n in (0, 1, 2, 3, 5, 6, 7)
                                for _ in range(10)]
    keys += [rng.randbytes(32) for _ in range(300)] + [b"21", b"foobar", None, None]
    rng.shuffle(keys)
    for partitions in (1, 3, 7):
        assert partitions_for(keys, partitions) == [
            i % partitions if key is None else partition_for(key, partitions)
            for i, key in enumerate(keys)]


def test_varint_is_zigzag() -> None:
    assert [varint(v) for v in (0, -1, 1, -2, 63, -64, 64, 300, 4095, 4096, 1 << 20)] == [
        b"\x00", b"\x01", b"\x02", b"\x03", b"\x7e", b"\x7f", b"\x80\x01", b"\xd8\x04",
        b"\xfe\x3f", b"\x80\x40", b"\x80\x80\x80\x01"]


def test_parse_servers() -> None:
    assert parse_servers("a:9092, b:9093") == [("a", 9092), ("b", 9093)]
    for bad in ("a", "a:x", ":9092", "a:0"):
        with pytest.raises(ValueError):
            parse_servers(bad)


# -- a loopback listener speaking the broker's side ----------------------------------------

def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7


def decode_batch(batch: bytes) -> list[dict[str, Any]]:
    base_offset, length, _epoch, magic, crc = struct.unpack_from(">qiibI", batch)
    assert base_offset == 0 and magic == 2 and length == len(batch) - 12
    tail = batch[21:]
    assert crc32c(tail) == crc, "batch CRC"
    (_attrs, last_delta, _ts, _max_ts, _pid, _pepoch, _seq,
     count) = struct.unpack_from(">hiqqqhii", tail)
    assert last_delta == count - 1
    pos, out = struct.calcsize(">hiqqqhii"), []
    for i in range(count):
        size, pos = _uvarint(tail, pos)
        end = pos + size
        pos += 1  # attributes
        _, pos = _uvarint(tail, pos)  # timestamp delta
        delta, pos = _uvarint(tail, pos)
        assert delta == i
        klen, pos = _uvarint(tail, pos)
        key = tail[pos:pos + klen] if klen >= 0 else None
        pos += max(klen, 0)
        vlen, pos = _uvarint(tail, pos)
        value = tail[pos:pos + vlen]
        pos += vlen
        nheaders, pos = _uvarint(tail, pos)
        headers = {}
        for _ in range(nheaders):
            hk, pos = _uvarint(tail, pos)
            name = tail[pos:pos + hk].decode()
            pos += hk
            hv, pos = _uvarint(tail, pos)
            headers[name] = tail[pos:pos + hv].decode()
            pos += hv
        assert pos == end
        out.append({"key": key, "value": value, "headers": headers})
    return out


def _s(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(text)) + text.encode()


@dataclass
class Broker:
    topic: str = "inference"
    partitions: int = 2
    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (partition, rec)
    versions: list[tuple[int, int]] = field(default_factory=list)  # (api, version) asked
    lock: threading.Lock = field(default_factory=threading.Lock)
    produced: list[int] = field(default_factory=list)  # partition of each batch
    batches: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, batch)
    requests: int = 0  # Produce requests
    port: int = 0

    def answer(self, api: int, version: int, r: Reader) -> bytes:
        self.versions.append((api, version))
        if api == 18:
            return struct.pack(">hi", 0, 3) + struct.pack(">hhh", 0, 3, 9) + \
                struct.pack(">hhh", 3, 1, 12) + struct.pack(">hhh", 18, 0, 3)
        if api == 3:
            assert version == 8
            assert r.take(">i") == 1 and r.string() == self.topic
            parts = b"".join(struct.pack(">hiii", 0, i, 1, 0) + struct.pack(">ii", 1, 1)
                             + struct.pack(">ii", 1, 1) + struct.pack(">i", 0)
                             for i in range(self.partitions))
            return (struct.pack(">i", 0) + struct.pack(">ii", 1, 1) + _s("127.0.0.1")
                    + struct.pack(">i", self.port) + _s(None) + _s(None) + struct.pack(">i", 1)
                    + struct.pack(">i", 1) + struct.pack(">h", 0) + _s(self.topic) + b"\x00"
                    + struct.pack(">i", self.partitions) + parts + struct.pack(">ii", 0, 0))
        assert api == 0 and version == 8
        assert r.string() is None  # transactional id
        acks, _timeout = r.take(">h"), r.take(">i")
        assert acks == -1
        assert r.take(">i") == 1 and r.string() == self.topic
        answers = []
        for _ in range(r.take(">i")):  # one batch per partition
            index, size = r.take(">i"), r.take(">i")
            batch = r.data[r.pos:r.pos + size]
            r.pos += size
            with self.lock:
                self.records += [(index, rec) for rec in decode_batch(batch)]
            self.produced.append(index)
            self.batches.append((index, batch))
            answers.append(struct.pack(">ihqqq", index, 0, 0, -1, 0) + struct.pack(">i", 0)
                           + _s(None))
        assert r.pos == len(r.data)
        self.requests += 1
        return (struct.pack(">i", 1) + _s(self.topic) + struct.pack(">i", len(answers))
                + b"".join(answers) + struct.pack(">i", 0))


@pytest.fixture
def broker() -> Iterator[Broker]:
    state = Broker()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            f = sock.makefile("rb")
            while True:
                head = f.read(4)
                if len(head) < 4:
                    return
                data = f.read(struct.unpack(">i", head)[0])
                r = Reader(data)
                api, version, corr = r.take(">h"), r.take(">h"), r.take(">i")
                r.string()  # client id
                body = struct.pack(">i", corr) + state.answer(api, version, r)
                sock.sendall(struct.pack(">i", len(body)) + body)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


def test_serve_logs_cloudevents_to_kafka(models: Models, broker: Broker) -> None:
    port = free_port()
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris", "--port",
                     str(port), "--log-level", "warning", "--payload-log-kafka",
                     f"127.0.0.1:{broker.port}", "--payload-log-topic", broker.topic,
                     "--payload-log-namespace", "team-a", "--payload-log-redact", "input-0")
    try:
        wait_http_ready(port, proc)
        import http.client

        answered = []
        for _ in range(6):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v2/models/iris/infer", orjson.dumps({"inputs": [
                {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}))
            resp = conn.getresponse()
            answered.append(orjson.loads(resp.read())["id"])
            conn.close()
        assert wait_for(lambda: len(broker.records) >= 12, 30)
        assert len(broker.records) == 12
        by_id: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        for part, rec in broker.records:
            h = rec["headers"]
            assert rec["key"] == h["ce_id"].encode()
            assert h["ce_specversion"] == "1.0" and h["content-type"] == "application/json"
            assert (h["ce_inferenceservicename"], h["ce_namespace"], h["ce_component"],
                    h["ce_endpoint"]) == ("iris", "team-a", "predictor", "default")
            assert part == (murmur2(rec["key"]) & 0x7FFFFFFF) % broker.partitions
            by_id.setdefault(h["ce_id"], {})[h["ce_type"]] = (part, rec)
        assert set(by_id) == set(answered)
        for rid, pair in by_id.items():
            request = pair["org.kubeflow.serving.inference.request"][1]
            response = pair["org.kubeflow.serving.inference.response"][1]
            assert orjson.loads(request["value"])["inputs"][0]["data"] == "[redacted]"
            assert orjson.loads(response["value"])["id"] == rid
        assert (3, 8) in broker.versions and (0, 8) in broker.versions
    finally:
        stop_process(proc)


def test_a_batch_framed_from_its_tuples_is_its_events_produced(broker: Broker) -> None:
    """The sender's fast path (records encoded straight from the predictions' tuples) and
    the per-event path (the retry's) produce the same records to the same partitions."""
    import time

    from kustos.runtime.server.payload_log import (
        KafkaTransport,
        PayloadLogConfig,
        PayloadSink,
    )

    broker.partitions = 3
    rng = random.Random(11)
    small = orjson.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                      "data": ROW}]})
    big = orjson.dumps({"inputs": [{"name": "input-0", "shape": [1, 900], "datatype": "INT64",
                                    "data": list(range(900))}]})  # > 4 KiB: longer varints
    start = int(time.time()) + 0.9  # the batch crosses a second
    batch: list[Any] = []
    for i in range(300):  # ~200 records a partition: offset deltas past one varint byte
        rid = f"{rng.getrandbits(128):032x}" if i % 3 else f"req-{i}"
        request, length = (big, None) if i % 50 == 7 else (small, None)
        if i % 40 == 5:  # V2 binary tensor extension: only the JSON header is logged
            request, length = small + b"\x00\x01\x02", len(small)
        if i == 77:
            request = b"{not json"  # left out when it has to be parsed (redaction)
        response = orjson.dumps({"id": rid, "outputs": [{"name": "predict", "data": [i]}]})
        batch.append((rid, "v2", request, length, response, None, start + i * 0.0007))
    for redact in (frozenset(), frozenset({"input-0"})):
        config = PayloadLogConfig(urls=(), kafka=f"127.0.0.1:{broker.port}",
                                  kafka_topic=broker.topic, service="iris", namespace="ns",
                                  model_version="3", redact=redact)
        transport = KafkaTransport(config.kafka or "", broker.topic, config)
        sink = PayloadSink(transport, "iris", config)
        sink.close()  # its thread is not needed here
        statuses = transport.send_batch(batch, sink.payloads, not redact)
        fast = list(broker.records)
        broker.records.clear()
        events = sink.events(batch, False)
        assert statuses == [200] * len(events)
        assert len(events) == (599 if redact else 600)
        assert transport.send(events) == [200] * len(events)
        assert sorted(broker.records, key=lambda r: r[0]) == sorted(fast, key=lambda r: r[0])
        assert {part for part, _ in fast} == {0, 1, 2}
        # one Produce request per leader (here one broker) with a batch per partition
        assert broker.requests == 2 and sorted(broker.produced) == [0, 0, 1, 1, 2, 2]
        broker.requests, broker.produced, broker.batches = 0, [], []
        broker.records.clear()
        transport.close()


def kafka_sink(broker: Broker) -> tuple[Any, Any]:
    """A Kafka transport to ``broker`` and a payload sink around it whose thread is
    stopped: the tests call the transport with the sink's own event encoding."""
    from kustos.runtime.server.payload_log import KafkaTransport, PayloadLogConfig, PayloadSink

    config = PayloadLogConfig(urls=(), kafka=f"127.0.0.1:{broker.port}",
                              kafka_topic=broker.topic, service="iris", namespace="ns",
                              model_version="3")
    transport = KafkaTransport(config.kafka or "", broker.topic, config)
    sink = PayloadSink(transport, "iris", config)
    sink.close()
    return transport, sink


def _without_times(batch: bytes) -> bytes:
    """A RecordBatch with its CRC and two timestamps blanked (the rest is compared)."""
    return batch[:17] + bytes(4) + batch[21:27] + bytes(16) + batch[43:]


@pytest.mark.parametrize("body_size", [40, 5000])
def test_a_batch_of_same_length_ids_is_framed_byte_for_byte_as_its_events(
        broker: Broker, body_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The vectorised framing (batch_frame: ids of one length, bodies sent as they are)
    makes the same RecordBatch bytes, CRC aside (it covers the timestamps), as the
    per-event path makes of the same events, record by record."""
    import time

    from kustos.runtime.server import payload_log

    # one piece (the two paths cut a large delivery at other events: tested below)
    monkeypatch.setattr(payload_log, "MAX_PRODUCE_BYTES", 1 << 30)

    broker.partitions = 3
    rng = random.Random(5)
    start = int(time.time()) + 0.95  # the batch crosses a second
    batch: list[Any] = []
    for i in range(256):  # ~170 records a partition: offset deltas of two varint bytes
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        request = orjson.dumps({"inputs": [{"name": "input-0", "data": "x" * (
            body_size + rng.randrange(100))}]})  # 5000: lengths and sizes past 4096
        response = orjson.dumps({"id": rid, "outputs": [{"name": "predict", "data": [i]}]})
        batch.append((rid, "v2", request, None, response, None, start + i * 0.000371))
    transport, sink = kafka_sink(broker)
    try:
        assert transport._frame_plain(batch, 3) is not None  # the vectorised path is taken
        statuses = transport.send_batch(batch, sink.payloads, True)
        fast, broker.batches = broker.batches, []
        events = sink.events(batch, False)
        assert statuses == [200] * len(events) == [200] * 512
        assert transport.send(events) == [200] * 512
        slow = broker.batches
        assert sorted(part for part, _ in fast) == [0, 1, 2]
        assert sorted((p, _without_times(b)) for p, b in fast) == \
            sorted((p, _without_times(b)) for p, b in slow)
        # the records of a partition in one order on both paths
        for part, _ in fast:
            ids = [r["key"] for p, r in broker.records if p == part]
            assert ids[:len(ids) // 2] == ids[len(ids) // 2:]
    finally:
        transport.close()


def test_a_large_delivery_is_produced_in_pieces_under_the_limit(broker: Broker) -> None:
    """512 predictions of ~5 KB (2.6 MB), and 2048 small ones to one partition (their
    headers weigh more than their payloads): RecordBatches of at most MAX_PRODUCE_BYTES
    of records each (a broker refuses one above its message.max.bytes whole), on both
    paths, every event acknowledged once, in order within its partition."""
    from kustos.runtime.server.payload_log import MAX_PRODUCE_BYTES, pieces

    assert pieces(list("abcde"), [3, 3, 3, 9, 1], 6) == [["a", "b"], ["c"], ["d"], ["e"]]
    def produced_in_pieces(batch: list[Any], partitions: int, at_least: int) -> None:
        """Both paths: every event acknowledged, at least ``at_least`` RecordBatches, none
        above the limit (+ its 61-byte header), the batch's order within each partition."""
        broker.partitions = partitions
        transport, sink = kafka_sink(broker)
        try:
            events = sink.events(batch, False)
            for send in (lambda: transport.send_batch(batch, sink.payloads, True),
                         lambda: transport.send(events)):
                broker.batches, broker.records = [], []
                assert send() == [200] * (2 * len(batch))
                assert len(broker.batches) >= at_least
                assert max(len(b) for _, b in broker.batches) <= MAX_PRODUCE_BYTES + 61
                keys = [r["key"] for _, r in broker.records]
                assert sorted(keys) == sorted(ex[0].encode() for ex in batch for _ in range(2))
                for part in range(partitions):
                    mine = [r["key"] for p, r in broker.records if p == part]
                    assert mine == sorted(mine)
        finally:
            transport.close()

    large: list[Any] = []
    for i in range(512):
        rid = f"{i:08d}"
        request = orjson.dumps({"inputs": [{"name": "input-0", "data": "x" * 5000}]})
        response = orjson.dumps({"id": rid, "outputs": [{"name": "predict", "data": [i]}]})
        large.append((rid, "v2", request, None, response, None, 1.7e9 + i))
    produced_in_pieces(large, 2, 3)  # 2.6 MB in pieces of under 0.9 MiB
    small = [(f"{i:032x}", "v2", b'{"inputs":[]}', None, b'{"outputs":[]}', None,
              1.7e9 + i) for i in range(2048)]
    produced_in_pieces(small, 1, 2)  # ~1 KiB of records per prediction
