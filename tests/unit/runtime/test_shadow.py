"""The pure parts of shadow traffic and the prediction-value histogram: reading rows out of
V2 / V1 / Seldon answers, comparing them, the batched histogram update, and the pipelined
client against a real loopback HTTP/1.1 server (content-length and chunked answers)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram

from kustos.runtime.server import metrics as m
from kustos.runtime.server.models import SklearnModel
from kustos.runtime.server.shadow import PipelinedClient, agreement, rows, same


def v2(data: list[object], shape: list[int], datatype: str = "INT64") -> bytes:
    return orjson.dumps({"outputs": [{"name": "predict", "datatype": datatype, "shape": shape,
                                      "data": data}]})


def test_rows_of_every_protocol() -> None:
    assert rows("v2", v2([0, 2, 1], [3])) == [0, 2, 1]
    # Probabilities, flat in V2: one argmax per row.
    probs = v2([0.1, 0.7, 0.2, 0.8, 0.1, 0.1], [2, 3], "FP64")
    assert rows("v2", probs) == [("argmax", 1), ("argmax", 0)]
    assert rows("v2", v2([1.5, 2.5], [2, 1], "FP64")) == [1.5, 2.5]
    assert rows("v2", v2(["setosa", "virginica"], [2], "BYTES")) == ["setosa", "virginica"]
    assert rows("v1", b'{"predictions": [0, 1]}') == [0, 1]
    assert rows("v1", b'{"predictions": [[0.2, 0.8], [0.9, 0.1]]}') == [("argmax", 1),
                                                                       ("argmax", 0)]
    assert rows("v1", b'{"predictions": [{"predict": 2, "predict_proba": [0, 0, 1]}]}') == [2]
    assert rows("seldon", b'{"data": {"names": ["t:0"], "ndarray": [1, 0]}}') == [1, 0]
    assert rows("seldon", b'{"data": {"ndarray": [[0.3, 0.7]]}}') == [("argmax", 1)]
    assert rows("seldon", b'{"data": {"tensor": {"shape": [2], "values": [3.0, 4.0]}}}') \
        == [3.0, 4.0]
    # Not readable: an error object, binary tensor data, not JSON.
    assert rows("v2", b'{"error": "no"}') is None
    assert rows("v2", v2([1], [1]), json_length=10) is None
    assert rows("v1", b"\x00garbage") is None


def test_same_and_agreement() -> None:
    assert same(2, 2) and not same(2, 1) and same("a", "a") and not same("a", "b")
    assert same(100.0, 100.05) and not same(100.0, 100.2)  # relative 1e-3
    assert same(0.0, 0.0) and not same(0.0, 1e-6)
    assert same(float("nan"), float("nan")) and not same(float("nan"), 1.0)
    assert not same(True, 1.0)  # a boolean label is not a number
    assert same(("argmax", 1), ("argmax", 1)) and not same(("argmax", 1), ("argmax", 2))
    assert agreement([0, 1, 2], [0, 2, 2]) == (2, 1)
    # Rows only one side has disagree.
    assert agreement([0, 1, 2], [0]) == (1, 2)
    assert agreement([0], [0, 1, 1]) == (1, 2)


def test_observe_many_equals_observe_per_value() -> None:
    registry = CollectorRegistry()
    one = Histogram("one", "per value", buckets=m.VALUE_BUCKETS, registry=registry)
    many = Histogram("many", "batched", buckets=m.VALUE_BUCKETS, registry=registry)
    rng = np.random.default_rng(1)
    batches = [rng.normal(0, 300, 500), rng.random(3), np.array([0.05, 1.0, -1000.0, 1e6]),
               np.array([np.nan, 0.5]), np.array([], dtype=np.float64), rng.random(9)]
    for values in batches:
        for v in values.tolist():
            if v == v:
                one.observe(v)
        m.observe_many(many, values)

    def buckets(name: str) -> dict[str, float]:
        return {s.labels["le"]: s.value for mf in registry.collect() if mf.name == name
                for s in mf.samples if s.name.endswith("_bucket")}

    def total(name: str, suffix: str) -> float:
        return next(s.value for mf in registry.collect() if mf.name == name
                    for s in mf.samples if s.name.endswith(suffix))

    assert buckets("one") == buckets("many") and len(buckets("one")) == len(m.VALUE_BUCKETS) + 1
    assert total("one", "_count") == total("many", "_count") == 500 + 3 + 4 + 1 + 9
    # (no _sum: prometheus_client leaves it out of histograms with negative buckets)


def test_observe_many_takes_lists_and_other_buckets() -> None:
    registry = CollectorRegistry()
    one = Histogram("lat_one", "per value", buckets=m.LATENCY_BUCKETS, registry=registry)
    many = Histogram("lat_many", "batched", buckets=m.LATENCY_BUCKETS, registry=registry)
    rng = np.random.default_rng(2)
    for values in ([0.0005, 0.003], rng.exponential(0.01, 300).tolist(), [20.0] * 9):
        for v in values:
            one.observe(v)
        m.observe_many(many, values, m.LATENCY_BOUNDS)
    samples = {mf.name: {(s.name.rsplit("_", 1)[-1], s.labels.get("le")): s.value
                         for s in mf.samples if not s.name.endswith("_created")}
               for mf in registry.collect()}
    assert samples["lat_one"].keys() == samples["lat_many"].keys()
    for key, value in samples["lat_one"].items():
        assert samples["lat_many"][key] == pytest.approx(value), key


def test_observe_values_picks_the_regression_value_or_the_positive_score() -> None:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
    from sklearn.linear_model import LogisticRegression, Ridge

    def count(name: str) -> float:
        return sum(s.value for mf in m.PREDICTION_VALUE.collect() for s in mf.samples
                   if s.name.endswith("_count") and s.labels["model"] == name)

    Xd, yd = load_diabetes(return_X_y=True)
    reg = SklearnModel(Ridge().fit(Xd, yd), "obs-reg", "1")
    stats = m.RequestMetrics("obs-reg")
    stats.observe_values(reg, reg.predict({"input-0": Xd[:20]}, ("predict",)))
    assert count("obs-reg") == 20

    Xc, yc = load_breast_cancer(return_X_y=True)
    clf = SklearnModel(LogisticRegression(max_iter=5000).fit(Xc, yc), "obs-bin", "1")
    stats = m.RequestMetrics("obs-bin")
    stats.observe_values(clf, clf.predict({"input-0": Xc[:7]}, ("predict",)))
    assert count("obs-bin") == 0  # labels only: the class counter has them
    stats.observe_values(clf, clf.predict({"input-0": Xc[:7]}, ("predict_proba",)))
    assert count("obs-bin") == 7

    Xi, yi = load_iris(return_X_y=True)
    multi = SklearnModel(LogisticRegression(max_iter=1000).fit(Xi, yi), "obs-multi", "1")
    stats = m.RequestMetrics("obs-multi")
    stats.observe_values(multi, multi.predict({"input-0": Xi[:5]}, ("predict_proba",)))
    assert count("obs-multi") == 0  # no positive class among three


def answer(status: int, body: bytes, chunked: bool = False) -> bytes:
    if chunked:
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p)
        return (b"HTTP/1.1 %d X\r\ntransfer-encoding: chunked\r\n\r\n%s0\r\n\r\n"
                % (status, chunks))
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)


def test_pipelined_client_reads_every_answer_in_order() -> None:
    """A loopback server that reads three pipelined requests and answers them in one write
    (content-length, chunked, an error), then closes; the next send reconnects."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while data.count(b"POST ") < 3 or not data.endswith(b"}"):
                    data += conn.recv(65536)
                seen.append(data)
                conn.sendall(answer(200, b'{"a": 1}') + answer(200, b'{"b": 22}', True)
                             + answer(422, b'{"error": "x"}') )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = PipelinedClient(f"http://127.0.0.1:{listener.getsockname()[1]}/base", timeout=10)
    try:
        for _ in range(2):
            reqs = [client.request_bytes(f"/p{i}", b"x-request-id: r%d\r\n" % i, b'{"i": %d}' % i)
                    for i in range(3)]
            got = client.send(reqs)
            assert [(a.status, a.body) for a in got if a is not None] == [
                (200, b'{"a": 1}'), (200, b'{"b": 22}'), (422, b'{"error": "x"}')]
            client.close()
        assert b"POST /base/p1 HTTP/1.1\r\n" in seen[0] and b"x-request-id: r2\r\n" in seen[0]
    finally:
        client.close()
        thread.join(10)
        listener.close()


def test_pipelined_client_without_a_peer_answers_none() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    client = PipelinedClient(f"http://127.0.0.1:{port}", timeout=2)
    assert client.send([client.request_bytes("/x", b"", b"{}")] * 2) == [None, None]
