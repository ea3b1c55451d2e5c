"""Paired latency: one client alternates requests between servers, request by request.

Comparing separate runs of two servers on a shared machine compares their noise: a stall
from another process lands in one run and not the other, and a p99 is made of such stalls.
Here every "group" sends the same request once to each server, in an order shuffled per
group, on kept-alive connections, and records each request's latency (perf_counter_ns from
before the send to the last byte of the answer). A stall lands on whichever server's
request is in flight, by chance, so it adds noise to both sides alike instead of bias to
one; the p99 of each server is then read from all its samples, and the groups keep the
pairing for the bootstrap.

Two loads: ``alternate`` (one connection per server, each request sent when the last one
answered: a caller's own latency) and ``paced`` (``slots`` such clients at once, each
waiting ``pace`` seconds after every answer, on one selector). The client is plain
sockets, a pre-encoded request and an answer read to its content-length: its own cost is
the same for every server.
"""

from __future__ import annotations

import gc
import random
import selectors
import socket
import time
from array import array
from dataclasses import dataclass

import numpy as np


class AnswerError(RuntimeError):
    """A server answered something other than 200 or closed the connection."""


def post_bytes(port: int, path: str, body: bytes, content_type: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode("latin-1") + body


class Conn:
    """One kept-alive connection and the request it sends again and again."""

    __slots__ = ("buf", "request", "sock")

    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = request
        self.buf = b""

    def answered(self, data: bytes) -> bool:
        """Add ``data`` read from the socket; whether a whole answer is now buffered (it
        is then consumed). Raises AnswerError on a non-200 answer or a closed socket."""
        if not data:
            raise AnswerError("the server closed the connection")
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return False
        if not buf.startswith(b"HTTP/1.1 200 "):
            raise AnswerError(f"answer {buf[:end][:200]!r}")
        head = buf[:end].lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            raise AnswerError("answer without content-length")
        length = int(head[i + 17:].split(b"\r\n", 1)[0])
        if len(buf) < end + 4 + length:
            self.buf = buf
            return False
        self.buf = buf[end + 4 + length:]
        return True

    def exchange(self) -> None:
        """Send the request and read its answer (blocking)."""
        sock = self.sock
        sock.sendall(self.request)
        while not self.answered(sock.recv(65536)):
            pass

    def close(self) -> None:
        self.sock.close()


@dataclass
class Samples:
    """Latencies in nanoseconds, ``lat[m][g]`` for server ``m`` in group ``g`` (groups in
    the order they completed), and the order each group sent in (``order[g * servers +
    j]``: the server of its j-th request)."""

    lat: list[array[int]]
    order: array[int]
    seconds: float

    @property
    def groups(self) -> int:
        return len(self.lat[0])

    def matrix(self) -> np.ndarray:
        """(groups, servers) in milliseconds."""
        return np.stack([np.frombuffer(a, dtype=np.int64) for a in self.lat], axis=1) / 1e6

    def orders(self) -> np.ndarray:
        """(groups, servers): the servers of each group's requests, in the order sent."""
        return np.frombuffer(self.order, dtype=np.int8).reshape(-1, len(self.lat))


def alternate(ports: list[int], request: list[bytes], seconds: float,
              seed: int = 0) -> Samples:
    """One connection per server; each group sends to every server once, one request at
    a time, in a shuffled order."""
    conns = [Conn(p, r) for p, r in zip(ports, request, strict=True)]
    lat = [array("q") for _ in conns]
    sent = array("b")
    order = list(range(len(conns)))
    shuffle = random.Random(seed).shuffle
    clock = time.perf_counter_ns
    gc.disable()  # no collection pause inside a timed request
    try:
        started = clock()
        deadline = started + int(seconds * 1e9)
        while clock() < deadline:
            shuffle(order)
            sent.extend(order)
            for i in order:
                conn = conns[i]
                t0 = clock()
                conn.exchange()
                lat[i].append(clock() - t0)
        return Samples(lat, sent, (clock() - started) / 1e9)
    finally:
        gc.enable()
        for conn in conns:
            conn.close()


class _Slot:
    """One paced client: a connection per server, the current group's order and times."""

    __slots__ = ("busy", "conns", "done", "next_at", "order", "sent_at", "times")

    def __init__(self, conns: list[Conn]) -> None:
        self.conns = conns
        self.order = list(range(len(conns)))
        self.done = 0  # requests of the current group answered
        self.busy = False  # a request in flight
        self.sent_at = 0
        self.next_at = 0
        self.times = [0] * len(conns)


def paced(ports: list[int], request: list[bytes], seconds: float, slots: int = 8,
          pace: float = 0.002, seed: int = 0) -> Samples:
    """``slots`` clients at once, each like ``alternate``'s but waiting ``pace`` seconds
    after every answer (as wrk's delay()); one thread, one selector. A latency includes
    the wait for this loop to notice the answer, alike for every server."""
    rng = random.Random(seed)
    sel = selectors.DefaultSelector()
    clock = time.perf_counter_ns
    pace_ns = int(pace * 1e9)
    lat = [array("q") for _ in ports]
    sent = array("b")
    clients: list[_Slot] = []
    for n in range(slots):
        slot = _Slot([Conn(p, r) for p, r in zip(ports, request, strict=True)])
        for conn in slot.conns:
            sel.register(conn.sock, selectors.EVENT_READ, (slot, conn))
        slot.next_at = clock() + n * pace_ns // slots  # spread the starts over one pace
        clients.append(slot)
    gc.disable()
    try:
        started = clock()
        deadline = started + int(seconds * 1e9)
        in_flight = 0
        while True:
            now = clock()
            wake = None
            for slot in clients:
                if slot.busy or now >= deadline:
                    continue
                if slot.next_at <= now:
                    if slot.done == 0:
                        rng.shuffle(slot.order)
                    conn = slot.conns[slot.order[slot.done]]
                    slot.busy = True
                    slot.sent_at = clock()
                    conn.sock.sendall(conn.request)
                    in_flight += 1
                elif wake is None or slot.next_at < wake:
                    wake = slot.next_at
            if in_flight == 0 and now >= deadline:
                break
            timeout = None if wake is None else max(0.0, (wake - clock()) / 1e9)
            for key, _ in sel.select(timeout):
                slot, conn = key.data
                if not conn.answered(conn.sock.recv(65536)):
                    continue
                done = clock()
                in_flight -= 1
                slot.times[slot.order[slot.done]] = done - slot.sent_at
                slot.busy = False
                slot.next_at = done + pace_ns
                slot.done += 1
                if slot.done == len(ports):
                    for m, t in enumerate(slot.times):
                        lat[m].append(t)
                    sent.extend(slot.order)
                    slot.done = 0
        return Samples(lat, sent, (clock() - started) / 1e9)
    finally:
        gc.enable()
        sel.close()
        for slot in clients:
            for conn in slot.conns:
                conn.close()


# ---------------------------------------------------------------- statistics


def quantiles(ms: np.ndarray, qs: tuple[float, ...] = (50, 90, 99, 99.9)) -> list[float]:
    return [float(v) for v in np.percentile(ms, qs)]


def bootstrap_ratio(base: np.ndarray, other: np.ndarray, q: float, reps: int = 1000,
                    block: int = 1, seed: int = 0) -> tuple[float, float]:
    """95 % interval of percentile(other, q) / percentile(base, q), resampling groups
    (pairs) with replacement; with ``block`` > 1, runs of that many consecutive groups
    (a moving-block bootstrap: noise that lasts longer than one group, a stall over a few
    requests, stays together, which widens the interval honestly)."""
    n = len(base)
    rng = np.random.default_rng(seed)
    block = max(1, min(block, n))
    starts_per_rep = -(-n // block)
    ratios = np.empty(reps)
    offsets = np.arange(block)
    for r in range(reps):
        starts = rng.integers(0, n - block + 1, starts_per_rep)
        idx = (starts[:, None] + offsets).ravel()[:n]
        a, b = np.percentile(base[idx], q), np.percentile(other[idx], q)
        ratios[r] = b / a
    lo, hi = np.percentile(ratios, (2.5, 97.5))
    return float(lo), float(hi)


def by_predecessor(ms: np.ndarray, orders: np.ndarray, q: float = 99
                   ) -> list[list[tuple[float, int]]]:
    """For one-at-a-time samples: ``[x][p]`` = (percentile ``q`` of server x's latencies
    when the request just before was to server p, how many). Work a server does after
    answering (a mirror's batch) lands on the next request, to whichever server: this
    shows where it went."""
    k = ms.shape[1]
    seq = orders.ravel()
    lat = np.take_along_axis(ms, orders.astype(np.intp), axis=1).ravel()
    prev, seq, lat = seq[:-1], seq[1:], lat[1:]
    out: list[list[tuple[float, int]]] = []
    for x in range(k):
        row = []
        for p in range(k):
            sel = lat[(seq == x) & (prev == p)]
            row.append((float(np.percentile(sel, q)) if len(sel) else float("nan"),
                        len(sel)))
        out.append(row)
    return out
