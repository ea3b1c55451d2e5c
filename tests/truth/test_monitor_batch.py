"""Group commit: events taken into a batch and written by ``flush``; request and response
halves pair in every order, inside a batch and across batches; request features are read
only when a fairness feature comes from the inputs. And a real `kustos truth` answering
pipelined POSTs 202 only once they are stored, labels posted behind them joining all."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from truth_support import post, request, status, truth

from kustos.runtime.server.sender import HttpPoster
from kustos.runtime.truth import config, parse
from kustos.runtime.truth.metrics import TruthMetrics
from kustos.runtime.truth.monitor import Monitor
from kustos.runtime.truth.store import Store
from procs import wait_for

NOW = 1_800_000_000.0
FAIR_INPUT = {"sensitiveFeatures": [{"name": "sex", "source": "input"}]}
HEAD = b"content-type: application/json\r\nce-specversion: 1.0\r\nce-modelversion: 1\r\n"
REQUEST = b"ce-type: org.kubeflow.serving.inference.request\r\n"
RESPONSE = b"ce-type: org.kubeflow.serving.inference.response\r\n"


def monitor(tmp_path: Path, **doc: Any) -> Monitor:
    cfg = config.parse({"model": "m", **doc})
    return Monitor(cfg, Store(tmp_path, cfg.max_rows, cfg.retention_seconds),
                   TruthMetrics("m"))


def v2_request(rid: str, rows: list[list[float]]) -> dict[str, Any]:
    return {"id": rid, "inputs": [{"name": "x", "datatype": "FP64",
                                   "shape": [len(rows), len(rows[0])],
                                   "data": [v for r in rows for v in r]}]}


def v2_response(rid: str, labels: list[int]) -> dict[str, Any]:
    return {"id": rid, "model_version": "1", "outputs": [
        {"name": "predict", "datatype": "INT64", "shape": [len(labels)], "data": labels},
        {"name": "predict_proba", "datatype": "FP64", "shape": [len(labels), 2],
         "data": [v for y in labels for v in ((0.1, 0.9) if y else (0.8, 0.2))]}]}


def event(kind: str, rid: str, body: dict[str, Any]) -> parse.Event:
    return parse.Event(kind, rid, "1", NOW - 1, body)


def test_halves_pair_in_every_order_inside_and_across_batches(tmp_path: Path) -> None:
    mon = monitor(tmp_path, featureNames=["sex", "age"], fairness=FAIR_INPUT)
    rows = {"a": [[0.0, 30.0]], "b": [[1.0, 40.0]], "c": [[1.0, 50.0]], "d": [[0.0, 60.0]]}
    # a: request then response, one batch; b: response then request, one batch.
    assert mon.take(event("request", "a", v2_request("a", rows["a"])), now=NOW) == 1
    assert mon.take(event("response", "a", v2_response("a", [1])), now=NOW) == 1
    assert mon.take(event("response", "b", v2_response("b", [0])), now=NOW) == 1
    assert mon.take(event("request", "b", v2_request("b", rows["b"])), now=NOW) == 1
    # c: the response is written before its request comes; d: the other way round.
    mon.take(event("response", "c", v2_response("c", [1])), now=NOW)
    mon.take(event("request", "d", v2_request("d", rows["d"])), now=NOW)
    assert mon.batched() == 4  # a, b, c and d's request (waiting for its response)
    mon.flush()
    assert mon.batched() == 0
    assert {r.features.get("age") if r.features else None
            for r in mon.store.window(0, features=True)} == {30.0, 40.0, None}
    mon.take(event("request", "c", v2_request("c", rows["c"])), now=NOW)
    mon.take(event("response", "d", v2_response("d", [0])), now=NOW)
    mon.flush()
    got = sorted((r.features["age"], r.label) for r in mon.store.window(0, features=True))
    assert got == [(30.0, "1"), (40.0, "0"), (50.0, "1"), (60.0, "0")]
    assert mon.store.counts()["predictions"] == 4
    # Nothing is left waiting: c's request went to its stored prediction at the flush.
    assert mon.batched() == 0 and not mon._pending


def test_features_are_read_only_for_a_fairness_input(tmp_path: Path) -> None:
    mon = monitor(tmp_path)  # no fairness: request events give their rows, nothing more
    assert mon.take(event("request", "a", v2_request("a", [[1.0, 2.0]] * 3)), now=NOW) == 3
    assert mon.take(event("request", "v1", {"instances": [[1, 2], [3, 4]]}), now=NOW) == 2
    assert mon.take(event("request", "s", {"data": {"ndarray": [[1, 2]]}}), now=NOW) == 1
    mon.take(event("response", "a", v2_response("a", [1, 0, 1])), now=NOW)
    mon.flush()
    assert [r.features for r in mon.store.window(0, features=True)] == [None] * 3
    assert not mon._pending
    # A body with no inputs at all is still refused.
    with pytest.raises(parse.ProtocolError, match="holds no V2 'inputs'"):
        mon.take(event("request", "x", {"id": "x"}), now=NOW)


def test_a_prediction_logged_twice_in_a_batch_is_stored_once(tmp_path: Path) -> None:
    mon = monitor(tmp_path)
    mon.take(event("response", "a", v2_response("a", [1])), now=NOW)
    mon.take(event("response", "a", v2_response("a", [0])), now=NOW)
    mon.flush()
    assert [r.label for r in mon.store.window(0)] == ["0"]


def test_labels_join_a_batch_written_with_them(tmp_path: Path) -> None:
    mon = monitor(tmp_path)
    mon.labels([parse.make_label("early", 0, 1, None, "classification", "t")], "v2",
               now=NOW)
    mon.take(event("response", "early", v2_response("early", [1])), now=NOW)
    mon.flush()
    assert mon.store.counts() == {"predictions": 1, "labels": 1, "joined": 1}
    delay = mon.metrics.registry.get_sample_value("kustos_truth_label_delay_seconds_sum",
                                                  {"model": "m"})
    assert delay == pytest.approx(1.0)  # the label at NOW, the prediction at NOW - 1


def _pairs(start: int, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(start, start + n):
        rid = f"p-{i}"
        common = HEAD + b"ce-id: %s\r\n" % rid.encode()
        out.append((orjson.dumps(v2_request(rid, [[float(i), 1.0]])), common + REQUEST))
        out.append((orjson.dumps(v2_response(rid, [i % 2])), common + RESPONSE))
    return out


@pytest.mark.timeout(120)
def test_pipelined_events_are_stored_before_their_answer(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_bytes(orjson.dumps({"model": "m", "evaluationInterval": "1s",
                                  "minSamples": 1}))
    mon = truth(tmp_path, cfg, tmp_path / "store")
    try:
        mon.wait_ready()
        poster = HttpPoster(f"http://127.0.0.1:{mon.port}/v1/events", timeout=30)
        items = _pairs(0, 300)
        bad_body = (b'{"id": "x"}', HEAD + b"ce-id: x\r\n" + RESPONSE)
        statuses = poster.post_many([*items[:250], bad_body, *items[250:]])
        poster.close()
        assert statuses == [202] * 250 + [400] + [202] * 350
        # More events and then labels for all, pipelined on one connection: every label
        # finds its prediction (the events' batch is written before the labels are).
        labels = orjson.dumps({"labels": [{"id": f"p-{i}", "label": i % 2}
                                          for i in range(320)]})
        with socket.create_connection(("127.0.0.1", mon.port)) as sock:
            head = b"POST /v1/events HTTP/1.1\r\nhost: x\r\n"
            more = _pairs(300, 20)
            wire = b"".join(head + h + b"content-length: %d\r\n\r\n" % len(b) + b
                            for b, h in more)
            wire += (b"POST /v2/models/m/feedback HTTP/1.1\r\nhost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: %d\r\n\r\n" % len(labels) + labels)
            sock.sendall(wire)
            answers = b""
            while answers.count(b"HTTP/1.1 ") < 41 or not answers.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, answers[-500:]
                answers += chunk
        assert answers.count(b"HTTP/1.1 202 ") == 40
        assert answers.endswith(b'{"accepted":320,"joined":320}')
        assert post(mon.port, "/v2/models/m/feedback",
                    {"labels": [{"id": "p-310", "label": 0}]})[1] == \
            {"accepted": 1, "joined": 1}
        assert wait_for(lambda: status(mon.port)["labels"] == 320, 30)
        st = status(mon.port)
        assert (st["predictions"], st["joined"]) == (320, 320)
        code, text = request(mon.port, "GET", "/metrics")
        assert code == 200
        assert 'kustos_truth_events_total{outcome="accepted",type="response"} 320.0' in text
        assert 'kustos_truth_events_total{outcome="invalid",type="response"} 1.0' in text
    finally:
        assert mon.stop() == 0, mon.logs()
