"""Payload logging: each sampled prediction's request and response, as CloudEvents.

The events are KServe's inference logger's: types ``org.kubeflow.serving.inference.request``
and ``...response``, ``id`` the inference id (the same in both events and in the response
the client got), extensions ``inferenceservicename``, ``namespace``, ``component``,
``endpoint`` and ``modelversion`` (the served model's version); sent over HTTP in binary
content mode (attributes as ``ce-`` headers, the body as the JSON payload), so a consumer
of KServe's logger reads them unchanged.

Never slows a prediction: ``offer`` draws the sample and appends one tuple of references
(the bodies as already built, nothing copied or encoded) per sink to that sink's bounded
queue (sender.BoundedSender). A full queue drops the newest prediction (both its events
count as ``dropped``). Each sink has its own thread: a stalled sink fills its own queue,
not the others'. A failed POST (no answer, 408, 429 or 5xx) is
retried with exponential backoff; after the last retry its event counts as ``failed``.
Redaction, JSON encoding, timestamps and the CloudEvents framing happen on the sender
thread, a batch at a time, before the events are sent.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import orjson

from kustos.runtime.server import ids
from kustos.runtime.server import metrics as m
from kustos.runtime.server.batch_frame import http_requests, kafka_records
from kustos.runtime.server.kafka import (
    SMALL_VARINTS,
    KafkaError,
    KafkaProducer,
    encode_headers,
    partitions_for,
    varint,
)
from kustos.runtime.server.payload_log_config import PayloadLogConfig
from kustos.runtime.server.sender import BoundedSender, HttpPoster

__all__ = ["PayloadLogConfig", "PayloadLogger", "redact"]

log = logging.getLogger("kustos.serve")
T = TypeVar("T")

REQUEST_TYPE = b"org.kubeflow.serving.inference.request"
RESPONSE_TYPE = b"org.kubeflow.serving.inference.response"
REDACTED = "[redacted]"
# Statuses worth another try: the sink was busy or broken, not refusing the event.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


# One logged prediction: (inference id, kind: "v2" | "v1" | "seldon" | "grpc", request,
# request_json_length, response, response_json_length, unix time of the answer). A plain
# tuple: the request path builds it, and a class's __init__ cost more than the rest of
# the hand-off. A payload is the body as bytes (``json_length`` set when only its first
# bytes are JSON: the V2 binary tensor extension), or a protobuf message (gRPC), encoded
# as JSON on the sender thread.
Exchange = tuple[str, str, Any, int | None, Any, int | None, float]


def redact(value: Any, names: frozenset[str]) -> Any:
    """``value`` with every object field named in ``names`` replaced by "[redacted]", and
    the data of V2 tensors (``inputs``/``outputs`` entries, with their raw gRPC contents)
    and of Seldon ``data.names`` columns so named."""
    if isinstance(value, list):
        return [redact(v, names) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: (REDACTED if k in names else redact(v, names)) for k, v in value.items()}
    for key, raw_key in (("inputs", "raw_input_contents"), ("outputs", "raw_output_contents")):
        tensors = out.get(key)
        if not isinstance(tensors, list):
            continue
        raw = out.get(raw_key)
        for i, tensor in enumerate(tensors):
            if isinstance(tensor, dict) and tensor.get("name") in names:
                for data_key in ("data", "contents"):
                    if data_key in tensor:
                        tensor[data_key] = REDACTED
                if isinstance(raw, list) and i < len(raw):
                    raw[i] = REDACTED
    columns = out.get("names")
    rows = out.get("ndarray")
    if isinstance(columns, list) and isinstance(rows, list) and names.intersection(
            c for c in columns if isinstance(c, str)):
        hidden = {j for j, c in enumerate(columns) if c in names}
        out["ndarray"] = [[REDACTED if j in hidden else v for j, v in enumerate(row)]
                          if isinstance(row, list) else row for row in rows]
    return out


def redact_unnamed(doc: Any, kind: str) -> Any:
    """The model's (only) input sent without its name: V1 rows, Seldon ndarray/tensor."""
    if not isinstance(doc, dict):
        return doc
    if kind == "v1":
        for key in ("instances", "inputs"):
            rows = doc.get(key)
            if isinstance(rows, list) and not all(isinstance(r, dict) for r in rows):
                doc[key] = REDACTED
    elif kind == "seldon" and isinstance(doc.get("data"), dict):
        data = doc["data"]
        if "ndarray" in data and not data.get("names"):
            data["ndarray"] = REDACTED
        if isinstance(data.get("tensor"), dict):
            data["tensor"]["values"] = REDACTED
    return doc


def event_data(payload: Any, json_length: int | None, names: frozenset[str],
               kind: str = "v2", unnamed: bool = False) -> bytes:
    """The JSON the event carries. Binary tensor data is left out (only the JSON header of
    such a body is logged: raw bytes cannot be redacted by name)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        if json_length is None and not names:
            return bytes(payload)
        doc = orjson.loads(bytes(payload[:json_length] if json_length is not None
                                 else payload))
    else:
        from google.protobuf import json_format

        doc = json_format.MessageToDict(payload, preserving_proto_field_name=True)
    if names:
        doc = redact(doc, names)
    if unnamed:
        doc = redact_unnamed(doc, kind)
    return orjson.dumps(doc)


# One event: body, inference id, ce-type, ce-time.
Event = tuple[bytes, str, bytes, bytes]


def _attributes(config: PayloadLogConfig) -> list[tuple[str, str]]:
    c = config
    attrs = [("specversion", "1.0"), ("source", c.source), ("inferenceservicename", c.service),
             ("namespace", c.namespace), ("component", c.component), ("endpoint", c.endpoint)]
    if c.model_version:
        attrs.append(("modelversion", c.model_version))
    return attrs


def plain_columns(batch: list[Exchange]) -> tuple[tuple[str, ...], tuple[bytes, ...],
                                                  tuple[bytes, ...], tuple[float, ...]] | None:
    """The ids, requests, responses and times of a non-empty batch whose bodies are all
    bytes to send as they are (no binary tensor data after the JSON), else None: what
    ``batch_frame`` frames (a column at a time, not a prediction at a time)."""
    if not batch:
        return None
    rids, _, requests, request_lengths, responses, response_lengths, whens = \
        zip(*batch, strict=True)
    n = len(batch)
    if (request_lengths.count(None) != n or response_lengths.count(None) != n
            or set(map(type, requests)) != {bytes} or set(map(type, responses)) != {bytes}):
        return None
    return rids, requests, responses, whens


class HttpTransport:
    """CloudEvents HTTP binding, binary content mode, POSTs pipelined."""

    def __init__(self, url: str, config: PayloadLogConfig) -> None:
        self._poster = HttpPoster(url, config.timeout)
        common = b"".join(b"ce-%s: %s\r\n" % (k.encode(), ids.ce_value(v))
                          for k, v in _attributes(config))
        common += b"content-type: application/json\r\n"
        # Each request is one %-format of a template: the per-event Python is the least.
        # ce-time is "%s" (a whole stamp) in these, "%s.%06dZ" (the second's prefix and
        # the microseconds) in the batch's.
        def template(ce_type: bytes, stamp: bytes) -> bytes:
            return (self._poster.head.replace(b"%", b"%%") + b"ce-id: %s\r\nce-time: "
                    + stamp + b"\r\nce-type: " + ce_type + b"\r\n"
                    + common.replace(b"%", b"%%") + b"content-length: %d\r\n\r\n%s")

        self._templates = {t: template(t, b"%s") for t in (REQUEST_TYPE, RESPONSE_TYPE)}
        # A batch is joined from pieces instead (a bytes %-format of a whole request cost
        # 0.5 us): <start><id><then><second.><ms><us><rest by type><length>\r\n\r\n<body>
        self._start = self._poster.head + b"ce-id: "
        self._rest = {t: b"Z\r\nce-type: " + t + b"\r\n" + common + b"content-length: "
                      for t in (REQUEST_TYPE, RESPONSE_TYPE)}

    def send(self, events: list[Event]) -> list[int | None]:
        templates, encode = self._templates, ids.ce_value
        requests = []
        last, value = "", b""
        for body, rid, ce_type, stamp in events:
            if rid is not last:  # a prediction's two events are neighbours: encode once
                last, value = rid, encode(rid)
            requests.append(templates[ce_type] % (value, stamp, len(body), body))
        return self._poster.send_requests(requests)

    def send_batch(self, batch: list[Exchange], payloads: Payloads, plain: bool
                   ) -> list[int | None]:
        """Frame and send a batch of predictions straight from their tuples: each
        prediction's events, in order (what ``payloads`` makes of it; with ``plain``, a
        prediction whose bodies are bytes as they are is one format of both its events).
        The answers' statuses, one per event."""
        columns = plain_columns(batch) if plain else None
        if columns is not None:
            rids, requests, responses, whens = columns
            framed = http_requests(rids, requests, responses, whens, self._start,
                                   (self._rest[REQUEST_TYPE], self._rest[RESPONSE_TYPE]))
            if framed is not None:
                return self._poster.send_requests(framed, 2 * len(batch))
        start, then, end, encode = self._start, b"\r\nce-time: ", b"\r\n\r\n", ids.ce_value
        rest, req_rest, resp_rest = self._rest, self._rest[REQUEST_TYPE], \
            self._rest[RESPONSE_TYPE]
        digits, small = _DIGITS, len(_DIGITS)
        pieces: list[bytes] = []
        extend = pieces.extend
        events = 0
        second, prefix = -1, b""
        for ex in batch:
            rid, _, request, request_length, response, response_length, when = ex
            now = int(when)
            if now != second:  # strftime once a second
                second = now
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(now)).encode()
            ms, us = divmod(int((when - now) * 1e6), 1000)
            ms_text, us_text = digits[ms], digits[us]
            value = encode(rid)
            if (plain and request_length is None and response_length is None
                    and type(request) is bytes and type(response) is bytes):
                n, m = len(request), len(response)
                extend((start, value, then, prefix, ms_text, us_text, req_rest,
                        digits[n + 1000] if n < small - 1000 else b"%d" % n, end, request,
                        start, value, then, prefix, ms_text, us_text, resp_rest,
                        digits[m + 1000] if m < small - 1000 else b"%d" % m, end, response))
                events += 2
                continue
            for ce_type, body in payloads(ex, True):
                n = len(body)
                extend((start, value, then, prefix, ms_text, us_text, rest[ce_type],
                        digits[n + 1000] if n < small - 1000 else b"%d" % n, end, body))
                events += 1
        return self._poster.send_requests(pieces, events)

    def close(self) -> None:
        self._poster.close()


# "000".."999" (milliseconds, microseconds), then 0..: content-length values without a
# format per event.
_DIGITS = [b"%03d" % i for i in range(1000)] + [b"%d" % i for i in range(1 << 14)]

# What the events of one prediction carry: [(ce-type, body)], from the tuple (and whether
# to count a payload that cannot be encoded as failed).
Payloads = Callable[[Exchange, bool], list[tuple[bytes, bytes]]]


# A broker refuses a RecordBatch above its message.max.bytes (1 MiB by default) whole, and
# a Produce request carries one batch per partition: a delivery is produced in pieces of
# at most this many bytes of records (payloads, headers, keys and record framing, bounded
# from above: ``KafkaTransport.overhead``), under the limit even if all of a piece goes to
# one partition. An event larger than the broker's limit goes alone, is refused, and
# counts as failed after the retries.
MAX_PRODUCE_BYTES = 896 * 1024


def exchange_size(ex: Exchange) -> int:
    """About how many bytes a prediction's two events carry (a gRPC message's JSON is
    about twice its protobuf size)."""
    total = 0
    for payload in (ex[2], ex[4]):
        if isinstance(payload, bytes | bytearray | memoryview):
            total += len(payload)
        else:
            size = getattr(payload, "ByteSize", None)
            total += 2 * int(size()) if callable(size) else 0
    return total


def pieces(items: list[T], sizes: list[int], limit: int) -> list[list[T]]:
    """``items`` in order, cut so that each piece's ``sizes`` add up to at most ``limit``
    (an item larger than that is a piece of its own)."""
    out: list[list[T]] = []
    piece: list[T] = []
    total = 0
    for item, size in zip(items, sizes, strict=True):
        if piece and total + size > limit:
            out.append(piece)
            piece, total = [], 0
        piece.append(item)
        total += size
    if piece:
        out.append(piece)
    return out


_SMALL = SMALL_VARINTS
# An encoded record's start (attributes 0, timestamp delta 0) with its offset delta.
_LEAD = [b"\x00\x00" + SMALL_VARINTS[i] for i in range(len(SMALL_VARINTS))]


class KafkaTransport:
    """CloudEvents Kafka binding, binary content mode: attributes as ``ce_`` record
    headers, the payload as the value, the inference id as the key."""

    def __init__(self, bootstrap: str, topic: str, config: PayloadLogConfig) -> None:
        self._producer = KafkaProducer(bootstrap, topic, config.timeout)
        # The headers every record has, and ce_type's two values, encoded once.
        count, common = encode_headers([(f"ce_{k}", v.encode()) for k, v in
                                        _attributes(config)]
                                       + [("content-type", b"application/json")])
        self._typed = {t: (count + 1, encode_headers([("ce_type", t)])[1] + common)
                       for t in (REQUEST_TYPE, RESPONSE_TYPE)}
        # send_batch's: per type, the header count (with ce_id and ce_time) as a varint
        # and what follows ce_time's microseconds (its "Z", then ce_type and the rest).
        self._after = {t: (varint(n + 2), b"Z" + rest) for t, (n, rest) in self._typed.items()}
        # The bytes of a record beyond its value and the two copies of its id (key and
        # ce_id), at most: length, attributes, timestamp and offset deltas, key and value
        # lengths (3-byte varints each, enough for 2 MiB), the header count and names,
        # ce_time's value, the headers every record has (the longer type's).
        self._overhead = (5 + 2 + 3 + 3 + 3 + 3 + len(b"\x0ace_id") + 3 + len(b"\x0ece_time")
                          + 1 + 27 + max(len(rest) for _, rest in self._typed.values()))

    def size(self, rid: str, body: bytes) -> int:
        """At most how many bytes the record of one event takes in a RecordBatch."""
        return self._overhead + 2 * len(rid) + len(body)

    def send_batch(self, batch: list[Exchange], payloads: Payloads, plain: bool
                   ) -> list[int | None]:
        """Produce a batch of predictions, in pieces of at most MAX_PRODUCE_BYTES of
        records (``_send_piece`` each). The statuses, one per event in
        ``PayloadSink.events`` order; [] when the topic's partitions are not known (the
        caller then goes the per-event way)."""
        both = 2 * self._overhead  # a prediction's two records, beyond values and ids
        sizes = [both + 4 * len(ex[0]) + (len(ex[2]) + len(ex[4]) if type(ex[2]) is bytes
                                          and type(ex[4]) is bytes else exchange_size(ex))
                 for ex in batch]
        if sum(sizes) <= MAX_PRODUCE_BYTES:
            return self._send_piece(batch, payloads, plain)
        statuses: list[int | None] = []
        for piece in pieces(batch, sizes, MAX_PRODUCE_BYTES):
            got = self._send_piece(piece, payloads, plain)
            if not got and not statuses:
                return []
            # partitions unknown for a later piece: its events unanswered, tried again
            statuses += got or [None] * sum(len(payloads(ex, False)) for ex in piece)
        return statuses

    def _send_piece(self, batch: list[Exchange], payloads: Payloads, plain: bool
                    ) -> list[int | None]:
        """Encode a batch of predictions straight from their tuples into one RecordBatch
        per partition (the same bytes ``send`` makes of the batch's events) and produce
        them: ``send_batch``'s statuses."""
        producer = self._producer
        try:
            partitions = producer.partition_count()
        except (KafkaError, OSError) as exc:
            log.debug("payload log: %s", exc)
            return []
        if plain:
            framed = self._frame_plain(batch, partitions)
            if framed is not None:
                return self._produce(*framed)
        keys = [ex[0].encode() for ex in batch]
        # A prediction's two events share its key: one hash per prediction.
        parts = partitions_for(keys, partitions)
        bodies: dict[int, list[bytes]] = {}
        counts: dict[int, int] = {}
        event_parts: list[int] = []
        small, limit, v, after = _SMALL, len(_SMALL), varint, self._after
        lead = _LEAD  # attributes 0, timestamp delta 0, the offset delta
        (req_count, req_rest), (resp_count, resp_rest) = after[REQUEST_TYPE], \
            after[RESPONSE_TYPE]
        digits = _DIGITS
        second, head = -1, b""
        for ex, key, part in zip(batch, keys, parts, strict=True):
            _, _, request, request_length, response, response_length, when = ex
            now = int(when)
            if now != second:  # strftime once a second
                second = now
                date = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(now)).encode()
                head = b"\x0ece_time" + v(len(date) + 7) + date
            ms, us = divmod(int((when - now) * 1e6), 1000)
            k = len(key)
            # What both events of the prediction share: the key with its length, and
            # the headers ce_id and ce_time (up to ce_time's "Z").
            keyed = (small[k] if k < limit else v(k)) + key
            ident = b"".join((b"\x0ace_id", keyed, head, digits[ms], digits[us]))
            fixed = len(keyed) + len(ident)
            pieces = bodies.get(part)
            if pieces is None:
                pieces = bodies[part] = []
            delta = counts.get(part, 0)
            if (plain and request_length is None and response_length is None
                    and type(request) is bytes and type(response) is bytes
                    and delta < limit - 2):
                n, m = len(request), len(response)
                n_len = small[n] if n < limit else v(n)
                m_len = small[m] if m < limit else v(m)
                lead1, lead2 = lead[delta], lead[delta + 1]
                size = fixed + len(lead1) + len(n_len) + n + len(req_count) + len(req_rest)
                size2 = (fixed + len(lead2) + len(m_len) + m + len(resp_count)
                         + len(resp_rest))
                pieces.extend((small[size] if size < limit else v(size), lead1, keyed,
                               n_len, request, req_count, ident, req_rest,
                               small[size2] if size2 < limit else v(size2), lead2,
                               keyed, m_len, response, resp_count, ident, resp_rest))
                counts[part] = delta + 2
                event_parts += (part, part)
                continue
            for ce_type, body in payloads(ex, True):
                count, rest = after[ce_type]
                m = len(body)
                m_len = small[m] if m < limit else v(m)
                d = lead[delta] if delta < limit else b"\x00\x00" + v(delta)
                size = fixed + len(d) + len(m_len) + m + len(count) + len(rest)
                pieces.extend((small[size] if size < limit else v(size), d, keyed, m_len, body,
                               count, ident, rest))
                delta += 1
                event_parts.append(part)
            counts[part] = delta
        return self._produce({part: (pieces, counts[part])
                              for part, pieces in bodies.items() if counts[part]}, event_parts)

    def _frame_plain(self, batch: list[Exchange], partitions: int
                     ) -> tuple[dict[int, tuple[list[bytes], int]], list[int]] | None:
        """``batch_frame.kafka_records`` of a batch whose bodies are bytes to send as
        they are (each partition's records, and the partition of each event), or None."""
        columns = plain_columns(batch)
        (req_count, req_rest), (resp_count, resp_rest) = self._after[REQUEST_TYPE], \
            self._after[RESPONSE_TYPE]
        if columns is None or req_count != resp_count:
            return None
        rids, requests, responses, whens = columns
        n = len(batch)
        framed = kafka_records(rids, requests, responses, whens, partitions, req_count,
                               (req_rest, resp_rest))
        if framed is None:
            return None
        records, parts = framed
        events = [0] * (2 * n)  # a prediction's two events go to its partition
        events[0::2] = events[1::2] = parts
        return records, events

    def _produce(self, records: dict[int, tuple[list[bytes], int]], event_parts: list[int]
                 ) -> list[int | None]:
        """Produce each partition's records (in pieces; a RecordBatch v2 around them); the
        status of each event, from the partition it went to."""
        stamp = int(time.time() * 1000)
        try:
            acked = self._producer.send_batches(records, stamp)
        except (KafkaError, OSError) as exc:
            log.debug("payload log: %s", exc)
            return [None] * len(event_parts)
        if all(acked.values()):
            return [200] * len(event_parts)
        return [200 if acked[part] else None for part in event_parts]

    def send(self, events: list[Event]) -> list[int | None]:
        """Produce events one record each (retries, payloads encoded on this thread), in
        pieces of at most MAX_PRODUCE_BYTES of records; a status per event."""
        sizes = [self.size(e[1], e[0]) for e in events]
        if sum(sizes) <= MAX_PRODUCE_BYTES:
            return self._send_events(events)
        return [status for piece in pieces(events, sizes, MAX_PRODUCE_BYTES)
                for status in self._send_events(piece)]

    def _send_events(self, events: list[Event]) -> list[int | None]:
        records = []
        typed, v = self._typed, varint
        last, when, key, prefix = "", b"", b"", b""
        for body, rid, ce_type, stamp in events:
            if rid is not last or stamp is not when:  # a prediction's two events are
                last, when, key = rid, stamp, rid.encode()  # neighbours: encode once
                # encode_headers([("ce_id", key), ("ce_time", stamp)]), unrolled
                prefix = b"".join((b"\x0ace_id", v(len(key)), key, b"\x0ece_time",
                                   v(len(stamp)), stamp))
            count, rest = typed[ce_type]
            records.append((key, body, (count + 2, prefix + rest)))
        try:
            acked = self._producer.send(records)
        except (KafkaError, OSError) as exc:
            log.debug("payload log: %s", exc)
            return [None] * len(events)
        return [200 if ok else None for ok in acked]

    def close(self) -> None:
        self._producer.close()


Transport = HttpTransport | KafkaTransport


class PayloadSink(BoundedSender[Exchange]):
    """One sink: its queue, its thread, its connection(s)."""

    def __init__(self, transport: Transport, model: str, config: PayloadLogConfig) -> None:
        # Every 200 ms, up to 512 predictions (1024 events) per write: each wake-up of
        # this thread costs the core that serves predictions, and in the server a batch
        # costs a fixed ~1 ms more than its events (its code and tables back into cache
        # after the serving loop ran): 256 every 50 ms cost 6-8 us per logged prediction
        # to Kafka, 512 every 200 ms 4-5; 2048 (in pieces of ~900) 4.9 against 5.0 for
        # 512, within the noise (docs/benchmarks.md), so 512 stays.
        super().__init__("kustos-payload-log", config.queue, flush_interval=0.2,
                         max_batch=512)
        self.config = config
        self.transport = transport
        self.sent = m.PAYLOAD_LOG_EVENTS.labels(model, "sent")
        self.dropped = m.PAYLOAD_LOG_EVENTS.labels(model, "dropped")
        self.failed = m.PAYLOAD_LOG_EVENTS.labels(model, "failed")
        self.retried = m.PAYLOAD_LOG_RETRIES.labels(model)
        # Set when the model's input name is redacted: its unnamed V1/Seldon rows are too.
        self.unnamed = False
        self.start()

    def deliver(self, batch: list[Exchange]) -> None:
        transport = self.transport
        if isinstance(transport, HttpTransport):
            # Framed straight from the tuples; the events as tuples only for a retry.
            statuses = transport.send_batch(batch, self.payloads, not self.config.redact)
            if statuses and None not in statuses and max(cast(list[int], statuses)) < 300:
                self.sent.inc(len(statuses))
                return
            self._send(self.events(batch, False), statuses)
        else:
            statuses = transport.send_batch(batch, self.payloads, not self.config.redact)
            if statuses and None not in statuses:
                self.sent.inc(len(statuses))
                return
            self._send(self.events(batch, False), statuses)

    def payloads(self, ex: Exchange, count: bool = True) -> list[tuple[bytes, bytes]]:
        """A prediction's events as (ce-type, body): redacted and encoded as JSON where
        needed; an event that cannot be encoded is left out (counted as failed)."""
        _, kind, request, request_length, response, response_length, _ = ex
        names = self.config.redact
        out = []
        for ce_type, payload, length, is_request in (
                (REQUEST_TYPE, request, request_length, True),
                (RESPONSE_TYPE, response, response_length, False)):
            if type(payload) is bytes and length is None and not names:
                out.append((ce_type, payload))  # the body as it is: no copy
                continue
            try:
                body = event_data(payload, length, names, kind, self.unnamed and is_request)
            except Exception as exc:  # an unreadable payload: never the sender's end
                if count:
                    log.warning("payload log: cannot encode an event: %s", exc)
                    self.failed.inc()
                continue
            out.append((ce_type, body))
        return out

    def events(self, batch: list[Exchange], count: bool = True) -> list[Event]:
        """The batch's events in the order ``send_batch`` sends them."""
        events: list[Event] = []
        second, prefix = -1, b""
        for ex in batch:
            rid, when = ex[0], ex[6]
            now = int(when)
            if now != second:  # strftime once a second
                second = now
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()
            stamp = b"%s.%06dZ" % (prefix, int((when - now) * 1e6))
            events.extend((body, rid, ce_type, stamp)
                          for ce_type, body in self.payloads(ex, count))
        return events

    def _send(self, events: list[Event], statuses: list[int | None] | None = None) -> None:
        """Send (unless ``statuses`` are the first try's answers); events without an
        answer or with a retryable status are tried again (exponential backoff) up to
        ``retries`` times, then counted as failed."""
        delay = self.config.backoff
        sent = failed = 0
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.retried.inc(len(events))
                self._closing.wait(delay)  # on shutdown: retry without waiting
                delay = min(delay * 2, self.config.max_backoff)
            if attempt or statuses is None or len(statuses) != len(events):
                statuses = self.transport.send(events)
            again = []
            for event, status in zip(events, statuses, strict=True):
                if status is not None and status < 300:
                    sent += 1
                elif status is None or status in RETRY_STATUSES:
                    again.append(event)
                else:
                    failed += 1  # the sink refused this event: another try changes nothing
            events = again
            if not events:
                break
        failed += len(events)
        if sent:
            self.sent.inc(sent)
        if failed:
            self.failed.inc(failed)
            log.debug("payload log: %d event(s) not delivered", failed)

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        if not self._thread.is_alive():
            self.transport.close()


class PayloadLogger:
    """The request path's side: sampling, then one non-blocking hand-off per sink."""

    def __init__(self, config: PayloadLogConfig, model: str) -> None:
        if not config.urls and not config.kafka:
            raise ValueError("payload logging needs at least one sink")
        if not 0.0 <= config.sample <= 1.0:
            raise ValueError("the payload log sample rate must be within 0..1")
        self.config = config
        self.sample = config.sample
        transports: list[Transport] = [HttpTransport(url, config) for url in config.urls]
        if config.kafka and config.kafka_topic:
            transports.append(KafkaTransport(config.kafka, config.kafka_topic, config))
        self.sinks = [PayloadSink(t, model, config) for t in transports]

    def set_input_name(self, name: str) -> None:
        for sink in self.sinks:
            sink.unnamed = name in self.config.redact

    def offer(self, rid: str, kind: str, request: Any, request_json_length: int | None,
              response: Any, response_json_length: int | None = None) -> None:
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        self._enqueue((rid, kind, request, request_json_length, response,
                       response_json_length, time.time()))

    def offer_exchange(self, ex: Exchange) -> None:
        """A prediction as the payload-log relay received it: sampled, then queued."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        self._enqueue(ex)

    def _enqueue(self, ex: Exchange) -> None:
        for sink in self.sinks:
            if not sink.enqueue(ex):
                sink.dropped.inc(2)  # both its events

    def close(self, timeout: float = 2.0) -> None:
        for sink in self.sinks:
            sink.close(timeout)
