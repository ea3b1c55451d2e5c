"""A batch of logged predictions framed with numpy, not a Python step per event: the
payload log's senders in the common case (every id of the batch ASCII of one length, as
the ids this server makes always are; bodies sent as they are, nothing to redact).

The parts of the events that vary per prediction (the id, ``ce-time``'s date and digits,
lengths, and for Kafka the varints of sizes and offset deltas) are computed for the whole
batch at once and turned into bytes by numpy (fixed-width rows) or by table look-ups
mapped in C; the events are written out from one list of pieces filled by slice
assignment (sender.Outbox), and a Kafka batch's CRC is read where it was written. The
per-prediction Python is a few C-level map/zip calls instead of a loop body of some
twenty (HTTP) to forty (Kafka) operations. The bytes are exactly those of the general
path (payload_log's per-event framing, ``kafka.record_batch``); anything else goes that
way (these functions return None), and so do batches of fewer than ``MIN_BATCH``
predictions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from kustos.runtime.server.kafka import SMALL_VARINTS, murmur2_rows, varint

# Below this many predictions numpy's fixed cost per call (its code and tables out of
# cache between batches) exceeds the Python loop's per prediction: the general path.
# What this module earns, in `kustos serve` (bench_payload_log.py, sender thread CPU per
# logged prediction, 4 rounds, medians (min-max), MIN_BATCH out of reach vs 64): HTTP
# 2.16 (1.88-2.57) -> 1.47 (1.34-1.71) us, Kafka 5.16 (5.04-5.61) -> 4.87 (4.47-5.31) us;
# offline, warm, 512 a batch: Kafka 3.3-3.5 -> 2.8-3.0 us.
MIN_BATCH = 64
# An encoded record's start (attributes 0, timestamp delta 0) with its offset delta.
LEADS = [b"\x00\x00" + v for v in SMALL_VARINTS]
# ce_time's value: "YYYY-mm-ddTHH:MM:SS." (20 bytes), six digits of microseconds, "Z".
_DATE = 20
_CE_TIME = b"\x0ece_time" + varint(_DATE + 7)
_CE_ID = b"\x0ace_id"

_THREE_DIGITS = b"".join(b"%03d" % i for i in range(1000))


def _widths(values: Any) -> Any:
    """Bytes of the zigzag varint of each (non-negative) value."""
    import numpy as np

    zigzag = values.astype(np.int64) * 2
    width = np.ones(len(values), dtype=np.int64)
    for shift in (7, 14, 21, 28):
        width += zigzag >= (1 << shift)
    return width


def _varints(values: Any) -> list[bytes]:
    """The zigzag varints of non-negative values, from the table when they are small."""
    as_list = values.tolist()
    if not as_list or max(as_list) < len(SMALL_VARINTS):
        return list(map(SMALL_VARINTS.__getitem__, as_list))
    return list(map(varint, as_list))


def _rows(array: Any) -> list[bytes]:
    """Each row of a 2-D uint8 array as bytes (numpy makes them, no Python per row)."""
    import numpy as np

    width = array.shape[1]
    return list(np.ascontiguousarray(array).view(f"V{width}").ravel().tolist())


def _stamps(when: Any) -> Any:
    """ce-time of each answer time up to its "Z", as rows of bytes: the date and time to
    the second with its ".", then six digits of microseconds (None for a year outside
    1000..9999)."""
    import numpy as np

    seconds = np.floor(when)
    # As the general path computes them: int((when - int(when)) * 1e6).
    micros = ((when - seconds) * 1e6).astype(np.int64)
    whole = seconds.astype(np.int64)
    first, span = int(whole.min()), int(whole.max() - whole.min())
    # A batch spans a second or two: strftime for each second of the span, else once
    # for each distinct second.
    unique = list(range(first, first + span + 1)) if span < 64 else \
        np.unique(whole).tolist()
    dates = np.frombuffer(b"".join(
        time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(s)).encode()
        for s in unique), dtype=np.uint8).reshape(len(unique), -1)
    if dates.shape[1] != _DATE:
        return None
    out = np.empty((len(when), _DATE + 6), dtype=np.uint8)
    out[:, :_DATE] = dates[whole - first] if span < 64 else \
        dates[np.searchsorted(np.array(unique), whole)]
    # milliseconds, then microseconds: three digits each, from a table
    three = np.frombuffer(_THREE_DIGITS, dtype=np.uint8).reshape(1000, 3)
    out[:, _DATE:_DATE + 3] = three[micros // 1000]
    out[:, _DATE + 3:] = three[micros % 1000]
    return out


def _pick(items: Sequence[Any], order: list[int]) -> list[Any]:
    if len(order) == 1:
        return [items[order[0]]]
    return list(itemgetter(*order)(items))


def kafka_records(rids: Sequence[str], requests: Sequence[bytes],
                      responses: Sequence[bytes], whens: Sequence[float], partitions: int,
                      count: bytes, rests: tuple[bytes, bytes]
                  ) -> tuple[dict[int, tuple[list[bytes], int]], list[int]] | None:
    """Kafka records, the CloudEvents binding's: each partition's records in pieces (two
    records per prediction, offset deltas from 0) and how many, and the partition of each prediction
    (in the given order), or None when the ids are not all ASCII of one length.
    ``count`` is the header count's varint and ``rests`` what follows ce_time's digits,
    for the request and the response."""
    import numpy as np

    n = len(rids)
    if n < MIN_BATCH:
        return None
    k = len(rids[0])
    joined = "".join(rids).encode()
    if len(joined) != n * k or len(set(map(len, rids))) != 1:
        return None
    keys = np.frombuffer(joined, dtype=np.uint8).reshape(n, k)
    parts = ((murmur2_rows(keys) & np.uint32(0x7FFFFFFF)) % partitions).astype(np.int64)
    order = np.argsort(parts, kind="stable")
    sorted_parts = parts[order]
    per_part = np.bincount(parts, minlength=partitions)
    if 2 * int(per_part.max()) > len(LEADS):
        return None
    first = np.concatenate(([0], np.cumsum(per_part)[:-1]))
    # Offset deltas: each prediction's place in its partition, two records each.
    place = np.arange(n) - first[sorted_parts]
    deltas = np.empty(2 * n, dtype=np.int64)
    deltas[0::2] = 2 * place
    deltas[1::2] = 2 * place + 1

    picked = order.tolist()
    values: list[bytes] = [b""] * (2 * n)
    values[0::2] = _pick(requests, picked)
    values[1::2] = _pick(responses, picked)
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=2 * n)

    # What both records of a prediction share: its key with the key's length, and the
    # header count, ce_id and ce_time up to the digits' end, as fixed-width rows.
    key_len = SMALL_VARINTS[k] if k < len(SMALL_VARINTS) else varint(k)
    keyed = np.empty((n, len(key_len) + k), dtype=np.uint8)
    keyed[:, :len(key_len)] = np.frombuffer(key_len, dtype=np.uint8)
    keyed[:, len(key_len):] = keys[order]
    stamps = _stamps(np.fromiter(whens, dtype=np.float64, count=n)[order])
    if stamps is None:
        return None
    lead = count + _CE_ID
    mid = _CE_TIME
    width = len(lead) + keyed.shape[1] + len(mid) + _DATE + 6
    ident = np.empty((n, width), dtype=np.uint8)
    at = len(lead)
    ident[:, :at] = np.frombuffer(lead, dtype=np.uint8)
    ident[:, at:at + keyed.shape[1]] = keyed
    at += keyed.shape[1]
    ident[:, at:at + len(mid)] = np.frombuffer(mid, dtype=np.uint8)
    at += len(mid)
    ident[:, at:] = stamps

    # A record: size, lead (attributes, timestamp delta, offset delta), key, value length,
    # value, then header count, ce_id, ce_time (the ident row) and the rest of its type's.
    rest_widths = np.empty(2 * n, dtype=np.int64)
    rest_widths[0::2], rest_widths[1::2] = len(rests[0]), len(rests[1])
    sizes = (2 + _widths(deltas) + keyed.shape[1] + _widths(lengths) + lengths + width
             + rest_widths)
    keyed_rows, ident_rows = _rows(keyed), _rows(ident)
    pieces: list[bytes] = [b""] * (14 * n)
    pieces[0::7] = _varints(sizes)
    pieces[1::7] = itemgetter(*deltas.tolist())(LEADS)  # 2n >= 2 indexes: a tuple
    pieces[2::14] = pieces[9::14] = keyed_rows
    pieces[3::7] = _varints(lengths)
    pieces[4::7] = values
    pieces[5::14] = pieces[12::14] = ident_rows
    pieces[6::14] = [rests[0]] * n
    pieces[13::14] = [rests[1]] * n
    out: dict[int, tuple[list[bytes], int]] = {}
    start = 0
    for part, many in enumerate(per_part.tolist()):
        if many:
            out[part] = (pieces[14 * start:14 * (start + many)], 2 * many)
            start += many
    return out, parts.tolist()


# content-length values with the blank line after them, without a format per event.
_LENGTHS = [b"%d\r\n\r\n" % i for i in range(1 << 14)]


def http_requests(rids: Sequence[str], requests: Sequence[bytes],
                  responses: Sequence[bytes], whens: Sequence[float], start: bytes,
                  rests: tuple[bytes, bytes]) -> list[bytes] | None:
    """HTTP POSTs, the CloudEvents binding's, in pieces to join: each prediction's request
    event, then its response event, or None when the ids are not all ASCII of one length
    and printable without '%' or '"' (sent as they are in ``ce-id``). ``start`` is what a
    POST starts with up to the id, ``rests`` what follows ce-time's digits up to the
    content-length value, for the request and the response."""
    import numpy as np

    n = len(rids)
    if n < MIN_BATCH:
        return None
    joined = "".join(rids)
    k = len(rids[0])
    if (len(joined) != n * k or not joined.isascii() or not joined.isprintable()
            or "%" in joined or '"' in joined or len(set(map(len, rids))) != 1):
        return None
    stamps = _stamps(np.fromiter(whens, dtype=np.float64, count=n))
    if stamps is None:
        return None
    # <start><id>\r\nce-time: <date><digits>: a fixed-width row per prediction
    then = b"\r\nce-time: "
    rows = np.empty((n, len(start) + k + len(then) + stamps.shape[1]), dtype=np.uint8)
    rows[:, :len(start)] = np.frombuffer(start, dtype=np.uint8)
    rows[:, len(start):len(start) + k] = np.frombuffer(joined.encode(), dtype=np.uint8
                                                       ).reshape(n, k)
    at = len(start) + k
    rows[:, at:at + len(then)] = np.frombuffer(then, dtype=np.uint8)
    rows[:, at + len(then):] = stamps
    heads = _rows(rows)
    lengths = list(map(len, requests)), list(map(len, responses))
    table = _LENGTHS
    if max(max(lengths[0]), max(lengths[1])) < len(table):
        request_lengths = list(map(table.__getitem__, lengths[0]))
        response_lengths = list(map(table.__getitem__, lengths[1]))
    else:
        request_lengths = [b"%d\r\n\r\n" % m for m in lengths[0]]
        response_lengths = [b"%d\r\n\r\n" % m for m in lengths[1]]
    pieces: list[bytes] = [b""] * (8 * n)
    pieces[0::8] = pieces[4::8] = heads
    pieces[1::8] = [rests[0]] * n
    pieces[2::8] = request_lengths
    pieces[3::8] = requests
    pieces[5::8] = [rests[1]] * n
    pieces[6::8] = response_lengths
    pieces[7::8] = responses
    return pieces
