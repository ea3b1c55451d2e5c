"""A minimal Kafka producer over the Kafka wire protocol (no client library is installed).

What the payload log needs and no more: ApiVersions to pick versions, Metadata for the
topic's partition leaders, Produce (v3..v8) of RecordBatch v2 (uncompressed, with record
headers: the CloudEvents Kafka binding puts the attributes there), ``acks=all``. No
idempotence, transactions, compression, SASL or TLS. Records go to partitions as Kafka's
default partitioner puts keyed records (murmur2 of the key), so both events of a
prediction (key: the inference id) land in one partition, in order.

Blocking sockets, used from one sender thread, which shares the GIL with the event loop
serving predictions: so the per-record Python is kept small (headers that are the same for
every record encoded once by the caller, small varints from a table, a batch's CRC-32C
computed by google-crc32c's C code when it is installed, else with numpy over many slices
at once instead of a Python loop per byte).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kustos.runtime.server.sender import Outbox

API_PRODUCE, API_METADATA, API_VERSIONS = 0, 3, 18
PRODUCE_VERSIONS = (3, 8)  # RecordBatch v2 and the same request layout
METADATA_VERSIONS = (1, 8)  # non-flexible layouts
# Errors after which fresh metadata (a new leader) may help.
RETRIABLE = frozenset({3, 5, 6, 7, 13, 14, 15, 19, 20, 46, 47, 57})

Header = tuple[str, bytes]
# A record's headers encoded as RecordBatch v2 lays them out: (count, bytes); see
# encode_headers (records that share headers share their encoding).
Headers = tuple[int, bytes]
Record = tuple[bytes | None, bytes, Headers]  # key, value, headers


class KafkaError(Exception):
    """The broker cannot be reached or answered with an error (no secret in the text)."""


# -- encoding ------------------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def _crc32c_bytewise(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """The CRC register after ``data`` from ``crc`` (no final inversion)."""
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


# Bytes per slice of the vectorised CRC (a power of two, a multiple of 4), and below
# what size the Python loop is cheaper than numpy's fixed cost.
_SLICE = 32
_VECTOR_MIN = 2048


def _native_extend() -> Callable[[int, bytes], int] | None:
    """google-crc32c's C ``extend`` (the SSE4.2 / ARMv8 CRC instructions) when it is
    installed with its C extension, else None (its pure-Python fallback is slower than
    ``_crc32c_numpy``)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    if google_crc32c.implementation != "c":
        return None
    extend: Callable[[int, bytes], int] = google_crc32c.extend
    return extend


# Resolved once: a constant of the installation, like the tables below.
_NATIVE_EXTEND = _native_extend()
# Bytes handed to the C CRC at once: it takes only bytes (not a view of the Outbox),
# so the data is copied a chunk at a time, small enough to come from malloc's free lists
# (a fresh batch-sized copy cost a page fault per 4 KiB on the sender thread).
_NATIVE_CHUNK = 1 << 16


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli), as RecordBatch v2 checksums its contents: with
    google-crc32c's C code when it is installed (~0.04 ns a byte, ~0.04 us per logged
    prediction), else with numpy (``_crc32c_numpy``, ~1.3 ns a byte: 1.3-1.5 us per
    logged prediction, the Kafka sender's largest single cost)."""
    extend = _NATIVE_EXTEND
    if extend is None:
        return _crc32c_numpy(data)
    if type(data) is bytes:  # any size: below _VECTOR_MIN the numpy way is a Python loop
        return extend(0, data)
    crc = 0
    view = memoryview(data)
    for at in range(0, len(view), _NATIVE_CHUNK):
        crc = extend(crc, bytes(view[at:at + _NATIVE_CHUNK]))
    return crc


def _crc32c_numpy(data: bytes | memoryview) -> int:
    """CRC-32C without a C extension.

    A Python loop per byte cost ~0.4 us a byte (100 us per logged prediction). The CRC is
    linear over GF(2), so larger inputs are cut into slices whose CRCs numpy computes side
    by side, a table look-up per byte, and then combines 16 at a time with "append n zero
    bytes" operators: ~200x faster on a 256-prediction batch.
    The slices are read where ``data`` lies (no copy: on a sender thread a fresh buffer
    of a batch's size cost a page fault per 4 KiB)."""
    size = len(data)
    if size < _VECTOR_MIN:
        return _crc32c_bytewise(bytes(data)) ^ 0xFFFFFFFF
    import numpy as np

    # The bytes before the first 4-byte aligned one one by one from the initial
    # 0xFFFFFFFF (the first slice starts from that register, the others from 0); the
    # bytes after the last whole slice one by one at the end.
    flat = np.frombuffer(data, dtype=np.uint8)
    lead = -flat.ctypes.data % 4
    lanes = (size - lead) // _SLICE
    # Each slice's register: the xor of what each of its bytes becomes followed by the
    # rest of the slice, one look-up per byte in a 32 KiB table (it stays in cache: the
    # 512 KiB of 16-bit tables used before were evicted between batches by the serving
    # loop, a miss per look-up).
    table, places = _slice_tables()
    reg = np.bitwise_xor.reduce(table.take(np.add(
        flat[lead:lead + lanes * _SLICE].reshape(lanes, _SLICE), places, dtype=np.uint16)),
        axis=1)
    reg[0] ^= _apply(_zeros_operator(_SLICE), _crc32c_bytewise(bytes(data[:lead])))
    # Combine the lanes 16 at a time (crc(a + b) = zeros(len b)(crc a) ^ crc b), each
    # lane's register through the tables of "append as many zero bytes as follow it in
    # its group": a few numpy calls per 16x fewer lanes, not a dozen per halving.
    span = _SLICE
    while len(reg) > 1:
        short = -len(reg) % _GROUP
        if short:  # zero lanes in front: a zero register stays zero
            reg = np.concatenate([np.zeros(short, dtype=np.uint32), reg])
        index = reg.view(np.uint8).reshape(-1, _GROUP, 4) + _group_offsets()
        reg = np.bitwise_xor.reduce(_group_tables(span).take(index).reshape(-1, _GROUP * 4),
                                    axis=1)
        span *= _GROUP
    return _crc32c_bytewise(bytes(data[lead + lanes * _SLICE:]), int(reg[0])) ^ 0xFFFFFFFF


_TABLES: dict[Any, Any] = {}
_GROUP = 16  # lanes combined at once


def _group_offsets() -> Any:
    """Where, in ``_group_tables``, byte k of the register of lane p of a group looks up:
    the table of the 15 - p lanes after it, byte k's part."""
    offsets = _TABLES.get("offsets")
    if offsets is None:
        import numpy as np

        p, k = np.meshgrid(np.arange(_GROUP), np.arange(4), indexing="ij")
        offsets = _TABLES["offsets"] = ((_GROUP - 1 - p) * 1024 + k * 256).astype(np.int32)
    return offsets


def _group_tables(span: int) -> Any:
    """For d = 0.._GROUP-1, per byte of a register, what appending d * ``span`` zero bytes
    makes of it: flat, [d][byte k][value] (d = 0: the byte in its place)."""
    key = ("group", span)
    tables = _TABLES.get(key)
    if tables is None:
        import numpy as np

        step = _zeros_operator(span)
        columns = [1 << i for i in range(32)]
        rows = []
        for _ in range(_GROUP):
            for k in range(4):
                row = [0] * 256
                for b in range(1, 256):
                    low = b & -b
                    row[b] = row[b ^ low] ^ columns[8 * k + low.bit_length() - 1]
                rows.append(row)
            columns = [_apply(step, c) for c in columns]
        tables = _TABLES[key] = np.array(rows, dtype=np.uint32).reshape(-1)
    return tables


def _slice_tables() -> tuple[Any, Any]:
    """For each place j of a slice, what byte b there adds to the slice's register (b
    fed to a zero register, then the slice's remaining bytes as zeros): flat, [j][b];
    and the offsets j * 256."""
    tables = _TABLES.get("slice")
    if tables is None:
        import numpy as np

        t0 = np.array(_CRC32C, dtype=np.uint32)
        after = [t0]  # after[m]: followed by m zero bytes
        for _ in range(_SLICE - 1):
            after.append(t0[after[-1] & 0xFF] ^ (after[-1] >> 8))
        tables = _TABLES["slice"] = (np.concatenate(after[::-1]),
                                     np.arange(_SLICE, dtype=np.uint16) * 256)
    return tables


def _zeros_operator(n: int) -> list[int]:
    """The columns (images of the 32 register bits) of "append n zero bytes", n a power
    of two: the one-byte operator squared log2(n) times."""
    op: list[int] | None = _TABLES.get(("op", n))
    if op is None:
        if n == 1:
            op = [(1 << i >> 8) ^ _CRC32C[(1 << i) & 0xFF] for i in range(32)]
        else:
            half = _zeros_operator(n // 2)
            op = [_apply(half, c) for c in half]
        _TABLES[("op", n)] = op
    return op


def _apply(columns: list[int], value: int) -> int:
    out, i = 0, 0
    while value:
        if value & 1:
            out ^= columns[i]
        value >>= 1
        i += 1
    return out


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (signed 32-bit), the default partitioner's hash of a record key."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partitions_for(keys: Sequence[bytes | None], partitions: int) -> list[int]:
    """``partition_for`` of each key (a record without a key: round robin by position),
    murmur2 computed with numpy for all keys of one length at once (a Python murmur2
    cost several microseconds a key)."""
    out = [i % partitions for i in range(len(keys))]
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            by_length.setdefault(len(key), []).append(i)
    for length, indexes in by_length.items():
        if len(indexes) < 8:
            for i in indexes:
                out[i] = partition_for(keys[i] or b"", partitions)
            continue
        import numpy as np

        data = np.frombuffer(b"".join(keys[i] or b"" for i in indexes),
                             dtype=np.uint8).reshape(len(indexes), length)
        h = murmur2_rows(data)
        for i, part in zip(indexes, ((h & np.uint32(0x7FFFFFFF)) % partitions).tolist(),
                           strict=True):
            out[i] = part
    return out


def murmur2_rows(data: Any) -> Any:
    """Kafka's murmur2 of each row of a 2-D uint8 array (keys of one length), as uint32
    (the bits of ``murmur2``'s signed result)."""
    import numpy as np

    count, length = data.shape
    m = np.uint32(0x5BD1E995)
    h = np.full(count, (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint32)
    end = length - length % 4
    words = np.ascontiguousarray(data[:, :end]).view("<u4")
    for j in range(end // 4):  # uint32 arithmetic wraps as murmur2's does
        k = words[:, j] * m
        k ^= k >> np.uint32(24)
        k *= m
        h = (h * m) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[:, end + 2].astype(np.uint32) << np.uint32(16)
    if rest >= 2:
        h ^= data[:, end + 1].astype(np.uint32) << np.uint32(8)
    if rest >= 1:
        h ^= data[:, end].astype(np.uint32)
        h *= m
    h ^= h >> np.uint32(13)
    h *= m
    h ^= h >> np.uint32(15)
    return h


def varint(value: int) -> bytes:
    """Zigzag varint (Kafka's record fields)."""
    if 0 <= value < len(_SMALL):
        return _SMALL[value]
    return _varint(value)


def _varint(value: int) -> bytes:
    v = (value << 1) ^ (value >> 63)
    out = bytearray()
    while v & ~0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


_SMALL: list[bytes] = [_varint(i) for i in range(4096)]  # lengths, offsets: most fields
# varint(i) for 0 <= i < len(SMALL_VARINTS), to index without a call.
SMALL_VARINTS = _SMALL


def encode_headers(headers: Sequence[Header]) -> Headers:
    """Record headers as RecordBatch v2 lays them out, for ``Record``s (and to concatenate:
    the count of a + b is the sum, the bytes the concatenation)."""
    parts = []
    for name, value in headers:
        hname = name.encode()
        parts += [varint(len(hname)), hname, varint(len(value)), value]
    return len(headers), b"".join(parts)


def _string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def record_batch(records: Sequence[Record], timestamp_ms: int) -> bytes:
    return batch_of(encode_records(records), len(records), timestamp_ms)


def encode_records(records: Sequence[Record]) -> bytes:
    """Records one after the other, each with its length (offset deltas 0.., timestamp
    deltas 0): what a RecordBatch holds after its header."""
    body: list[bytes] = []
    append, v, small = body.append, varint, _SMALL
    for delta, (key, value, (count, headers)) in enumerate(records):
        # attributes 0, timestamp delta 0, offset delta, key (null: -1), value, headers
        n = len(value)
        rec = b"".join((b"\x00\x00", v(delta),
                        b"\x01" if key is None else small[len(key)] if len(key) < 4096
                        else v(len(key)), key or b"",
                        small[n] if n < 4096 else v(n), value, small[count], headers))
        n = len(rec)
        append(small[n] if n < 4096 else v(n))
        append(rec)
    return b"".join(body)


def batch_of(records: bytes, count: int, timestamp_ms: int) -> bytes:
    """A RecordBatch v2 around ``count`` records already encoded one after the other
    (each with its length; offset deltas 0..count-1, timestamp deltas 0)."""
    box = Outbox()
    write_batch(box, [records], count, timestamp_ms)
    with box.view() as data:
        return bytes(data)


# The records of a partition's RecordBatch in pieces (``encode_records``), and how many.
Records = tuple[list[bytes], int]
_BATCH_START = 12 + 9  # base offset, length, leader epoch, magic, CRC


def write_batch(box: Outbox, records: list[bytes], count: int, timestamp_ms: int) -> int:
    """Write a RecordBatch v2 around ``records`` to ``box``; its size. The records are
    written once, where they are sent from, and the CRC read there (no batch-sized
    buffer made per batch)."""
    start = box.add((bytes(_BATCH_START), struct.pack(
        ">hiqqqhii", 0, count - 1, timestamp_ms, timestamp_ms, -1, -1, -1, count)))
    end = box.add(records)
    covered = start - 40  # attributes .. records: what the CRC covers
    with box.view(covered, end) as data:
        crc = crc32c(data)
    box.patch(covered - _BATCH_START,
              struct.pack(">qiibI", 0, 9 + end - covered, -1, 2, crc))
    return end - covered + _BATCH_START


# -- decoding ------------------------------------------------------------------------------

class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def int32s(self) -> list[int]:
        return [self.take(">i") for _ in range(self.take(">i"))]


@dataclass
class Metadata:
    brokers: dict[int, tuple[str, int]]
    leaders: list[int]  # partition index -> leader node id (-1: none)


def parse_metadata(data: bytes, version: int, topic: str) -> Metadata:
    r = Reader(data)
    if version >= 3:
        r.take(">i")  # throttle
    brokers = {}
    for _ in range(r.take(">i")):
        node = r.take(">i")
        host = r.string() or ""
        port = r.take(">i")
        r.string()  # rack
        brokers[node] = (host, port)
    if version >= 2:
        r.string()  # cluster id
    r.take(">i")  # controller
    leaders: dict[int, int] = {}
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string()
        r.take(">b")  # internal
        for _ in range(r.take(">i")):
            perror = r.take(">h")
            index = r.take(">i")
            leader = r.take(">i")
            if version >= 7:
                r.take(">i")  # leader epoch
            r.int32s()
            r.int32s()
            if version >= 5:
                r.int32s()
            if name == topic:
                leaders[index] = leader if perror in (0, 9) else -1  # 9: replica missing
        if version >= 8:
            r.take(">i")
        if name == topic and error not in (0,):
            raise KafkaError(f"metadata for topic {topic!r}: error code {error}")
    if not leaders:
        raise KafkaError(f"topic {topic!r} has no partitions")
    return Metadata(brokers, [leaders.get(i, -1) for i in range(max(leaders) + 1)])


# -- the producer --------------------------------------------------------------------------

class Connection:
    def __init__(self, host: str, port: int, timeout: float, client_id: str) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client_id = client_id
        self.correlation = 0
        self._outbox = Outbox()

    def call(self, api: int, version: int, body: bytes) -> bytes:
        return self.call_written(api, version, lambda box: box.add((body,)))

    def call_written(self, api: int, version: int, write: Callable[[Outbox], Any]) -> bytes:
        """One request, its body written by ``write`` after the header into one buffer
        reused from request to request, and its answer."""
        self.correlation += 1
        header = struct.pack(">hhi", api, version, self.correlation) + _string(self.client_id)
        box = self._outbox
        box.start()
        box.add((b"\0\0\0\0", header))
        write(box)
        with box.view() as msg:
            end = len(msg)
        box.patch(0, struct.pack(">i", end - 4))
        box.send(self.sock)
        size = struct.unpack(">i", self._read(4))[0]
        data = self._read(size)
        if struct.unpack_from(">i", data)[0] != self.correlation:
            raise KafkaError("response out of order")
        return data[4:]

    def _read(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise KafkaError("connection closed by the broker")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


def _pick(supported: dict[int, tuple[int, int]], api: int, mine: tuple[int, int]) -> int:
    lo, hi = supported.get(api, (0, -1))
    version = min(hi, mine[1])
    if version < max(lo, mine[0]):
        raise KafkaError(f"the broker supports API {api} versions {lo}..{hi}, "
                         f"this producer {mine[0]}..{mine[1]}")
    return version


def parse_servers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {item.strip()!r}")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("no bootstrap server given")
    return out


class KafkaProducer:
    def __init__(self, bootstrap: str, topic: str, timeout: float = 5.0,
                 client_id: str = "kustos-serve") -> None:
        self.bootstrap = parse_servers(bootstrap)
        self.topic = topic
        self.timeout = timeout
        self.client_id = client_id
        self._conns: dict[tuple[str, int], Connection] = {}
        self._meta: Metadata | None = None
        self._versions: dict[int, int] = {}
        self._scratch = Outbox()  # where a batch's records are written for their CRC

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _conn(self, address: tuple[str, int]) -> Connection:
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = Connection(*address, self.timeout, self.client_id)
            if not self._versions:
                self._negotiate(conn)
        return conn

    def _drop(self, address: tuple[str, int]) -> None:
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.close()

    def _negotiate(self, conn: Connection) -> None:
        r = Reader(conn.call(API_VERSIONS, 0, b""))
        error = r.take(">h")
        if error:
            raise KafkaError(f"ApiVersions: error code {error}")
        supported = {}
        for _ in range(r.take(">i")):
            api, lo, hi = r.take(">h"), r.take(">h"), r.take(">h")
            supported[api] = (lo, hi)
        self._versions = {API_METADATA: _pick(supported, API_METADATA, METADATA_VERSIONS),
                          API_PRODUCE: _pick(supported, API_PRODUCE, PRODUCE_VERSIONS)}

    def metadata(self) -> Metadata:
        last: Exception | None = None
        for address in self.bootstrap:
            try:
                conn = self._conn(address)
                version = self._versions[API_METADATA]
                body = struct.pack(">i", 1) + _string(self.topic)
                if version >= 4:
                    body += b"\x00"  # allow_auto_topic_creation: no
                if version >= 8:
                    body += b"\x00\x00"
                self._meta = parse_metadata(conn.call(API_METADATA, version, body), version,
                                            self.topic)
                return self._meta
            except (OSError, KafkaError, struct.error) as exc:
                self._drop(address)
                last = exc
        raise KafkaError(f"no bootstrap server answered: {last}")

    def partition_count(self) -> int:
        """The topic's partitions (asking the cluster when not known)."""
        return len((self._meta or self.metadata()).leaders)

    def send(self, records: Sequence[Record]) -> list[bool]:
        """Produce ``records`` (keyed records to the key's partition); per record whether
        the broker acknowledged it. One Produce request per leader."""
        meta = self._meta or self.metadata()
        groups: dict[int, list[int]] = {}
        for i, part in enumerate(partitions_for([r[0] for r in records], len(meta.leaders))):
            groups.setdefault(part, []).append(i)
        now = int(time.time() * 1000)
        acked = self.send_batches({part: ([encode_records([records[i] for i in indexes])],
                                          len(indexes)) for part, indexes in groups.items()},
                                  now)
        ok = [False] * len(records)
        for part, indexes in groups.items():
            if acked[part]:
                for i in indexes:
                    ok[i] = True
        return ok

    def send_batches(self, batches: dict[int, Records], timestamp_ms: int
                     ) -> dict[int, bool]:
        """Produce each partition's records (a RecordBatch around them, ``write_batch``);
        per partition whether the
        broker acknowledged it. One Produce request per leader, with all its partitions:
        each round trip is a blocking wait and a GIL hand-over on the serving core."""
        meta = self._meta or self.metadata()
        acked = dict.fromkeys(batches, False)
        stale = False
        by_leader: dict[tuple[str, int], list[int]] = {}
        for part in batches:
            address = meta.brokers.get(meta.leaders[part])
            if address is None:
                stale = True
            else:
                by_leader.setdefault(address, []).append(part)
        version = self._versions[API_PRODUCE]
        for address, parts in by_leader.items():
            def write(box: Outbox, parts: list[int] = parts) -> None:
                box.add((_string(None), struct.pack(">hii", -1, int(self.timeout * 1000), 1),
                         _string(self.topic), struct.pack(">i", len(parts))))
                for part in parts:
                    at = box.add((bytes(8),))  # partition, size
                    size = write_batch(box, *batches[part], timestamp_ms)
                    box.patch(at - 8, struct.pack(">ii", part, size))

            try:
                errors = parse_produce(self._conn(address).call_written(API_PRODUCE, version,
                                                                        write), version)
            except (OSError, KafkaError, struct.error):
                self._drop(address)
                stale = True
                continue
            for part in parts:
                error = errors.get(part)
                if error == 0:
                    acked[part] = True
                elif error is None or error in RETRIABLE:
                    stale = True
        if stale:
            self._meta = None  # ask again before the retry
        return acked


def parse_produce(data: bytes, version: int) -> dict[int, int]:
    """A Produce answer (v3..v8): each partition's error code."""
    r = Reader(data)
    errors = {}
    for _ in range(r.take(">i")):
        r.string()  # topic
        for _ in range(r.take(">i")):
            index, error = r.take(">i"), r.take(">h")
            r.take(">q")  # base offset
            r.take(">q")  # log append time
            if version >= 5:
                r.take(">q")  # log start offset
            if version >= 8:
                for _ in range(r.take(">i")):  # record errors
                    r.take(">i")
                    r.string()
                r.string()  # error message
            errors[index] = error
    return errors
