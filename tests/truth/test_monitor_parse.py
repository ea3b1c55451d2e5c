"""What the monitor reads: CloudEvents with V2/V1/Seldon bodies, labels, bulk rows and its
config; each problem a 4xx ProtocolError (or ConfigError) naming the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kustos.runtime.truth import bulk, config, parse
from kustos.runtime.truth.parse import ProtocolError

REQ = {b"ce-type": b"org.kubeflow.serving.inference.request", b"ce-id": b"r1"}
RESP = {b"ce-type": b"org.kubeflow.serving.inference.response", b"ce-id": b"r1",
        b"ce-modelversion": b"4", b"ce-time": b"2026-12-06T10:00:00.5Z"}


def test_binary_and_structured_events() -> None:
    ev = parse.parse_event(RESP, b'{"outputs": []}')
    assert (ev.kind, ev.id, ev.version) == ("response", "r1", "4")
    assert ev.time == pytest.approx(1796551200.5)
    structured = orjson.dumps({"specversion": "1.0", "type": parse.REQUEST_TYPE, "id": "s1",
                               "data": {"inputs": []}})
    ev = parse.parse_event({b"content-type": b"application/cloudevents+json"}, structured)
    assert (ev.kind, ev.id, ev.version) == ("request", "s1", None)


@pytest.mark.parametrize(("headers", "body", "needle"), [
    ({}, b"{}", "ce-type is missing"),
    ({b"ce-type": b"com.example.x", b"ce-id": b"1"}, b"{}", "not an inference"),
    ({b"ce-type": parse.REQUEST_TYPE.encode()}, b"{}", "ce-id"),
    (REQ, b"[1]", "JSON object"),
    (REQ, b"{oops", "malformed JSON"),
    ({**REQ, b"ce-time": b"yesterday"}, b"{}", "ce-time"),
    ({**REQ, b"ce-id": b"x" * 300}, b"{}", "longer than"),
])
def test_event_errors_name_the_problem(headers: dict[bytes, bytes], body: bytes,
                                       needle: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse.parse_event(headers, body)
    assert needle in err.value.message and 400 <= err.value.status < 500


def test_features_by_tensor_name_configured_name_or_position() -> None:
    two = {"inputs": [
        {"name": "age", "datatype": "INT64", "shape": [2], "data": [30, 40]},
        {"name": "sex", "datatype": "BYTES", "shape": [2, 1], "data": ["f", "m"]}]}
    assert parse.request_features(two, ()) == [{"age": 30, "sex": "f"},
                                               {"age": 40, "sex": "m"}]
    one = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2],
                       "data": [1.5, 2.5]}]}
    assert parse.request_features(one, ("a", "b")) == [{"a": 1.5, "b": 2.5}]
    assert parse.request_features(one, ()) == [{"0": 1.5, "1": 2.5}]
    binary = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [3, 2],
                          "parameters": {"binary_data_size": 48}}]}
    assert parse.request_features(binary, ()) == [None, None, None]
    assert parse.request_features({"instances": [{"a": 1, "b": "x"}]}, ()) == \
        [{"a": 1, "b": "x"}]
    assert parse.request_features({"instances": [[1, 2]]}, ("a", "b")) == [{"a": 1, "b": 2}]
    assert parse.request_features({"data": {"names": ["a", "b"], "ndarray": [[1, 2]]}},
                                  ()) == [{"a": 1, "b": 2}]
    with pytest.raises(ProtocolError, match="no V2 'inputs'"):
        parse.request_features({"foo": 1}, ())
    with pytest.raises(ProtocolError, match="different numbers of rows"):
        parse.request_features({"inputs": [
            {"name": "a", "datatype": "FP64", "shape": [2], "data": [1, 2]},
            {"name": "b", "datatype": "FP64", "shape": [1], "data": [1]}]}, ())


def test_predictions_of_every_protocol() -> None:
    v2 = {"model_name": "m", "model_version": "9", "outputs": [
        {"name": "predict_proba", "datatype": "FP64", "shape": [2, 3],
         "data": [0.1, 0.2, 0.7, 0.8, 0.1, 0.1]},
        {"name": "predict", "datatype": "INT64", "shape": [2], "data": [2, 0]}]}
    answers, version = parse.response_predictions(v2, "classification", (), "m")
    assert version == "9"
    assert [(a.label, a.proba, a.classes) for a in answers] == [
        ("2", [0.1, 0.2, 0.7], ["0", "1", "2"]), ("0", [0.8, 0.1, 0.1], ["0", "1", "2"])]
    proba_only = {"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2],
                               "data": [0.25, 0.75]}]}
    answers, _ = parse.response_predictions(proba_only, "classification", ("no", "yes"), "m")
    assert answers[0].label == "yes" and answers[0].classes == ["no", "yes"]
    seldon = {"data": {"names": ["setosa", "versicolor"], "ndarray": [[0.9, 0.1]]},
              "meta": {"requestPath": {"m": "3"}}}
    answers, version = parse.response_predictions(seldon, "classification", (), "m")
    assert (answers[0].label, version) == ("setosa", "3")
    answers, _ = parse.response_predictions({"predictions": [1.0, "2"]}, "classification",
                                            (), "m")
    assert [a.label for a in answers] == ["1", "2"]
    answers, _ = parse.response_predictions({"predictions": [12.5, 3]}, "regression", (), "m")
    assert [a.value for a in answers] == [12.5, 3.0]


@pytest.mark.parametrize(("body", "task", "needle", "status"), [
    ({"outputs": [{"name": "p", "datatype": "FP64", "shape": [1, 2]}]}, "classification",
     "not logged", 422),
    ({"outputs": [{"name": "p", "datatype": "FP64", "shape": [1, 2], "data": [2, -1]}]},
     "classification", "within 0..1", 400),
    ({"outputs": [{"name": "p", "datatype": "FP64", "shape": [1, 3], "data": [1, 2]}]},
     "classification", "shape", 400),
    ({"predictions": "x"}, "classification", "non-empty list", 400),
    ({"predictions": ["a"]}, "regression", "expected a number", 400),
    ({"data": {"ndarray": [[0.5, 0.5]]}}, "regression", "one value per row", 422),
    ({"nothing": 1}, "classification", "no V2 'outputs'", 400),
])
def test_prediction_errors(body: dict[str, object], task: str, needle: str,
                           status: int) -> None:
    with pytest.raises(ProtocolError) as err:
        parse.response_predictions(body, task, (), "m")
    assert needle in err.value.message and err.value.status == status


def test_labels_compare_equal_across_forms() -> None:
    assert {parse.canonical(v, "x") for v in (1, 1.0, "1", " 1.0 ", True - 0)} == {"1"}
    assert parse.canonical("cat", "x") == "cat" and parse.canonical(0.5, "x") == "0.5"
    items = parse.parse_v2_feedback(orjson.dumps({"labels": [
        {"id": "a", "label": 1, "metadata": {"g": "x"}},
        {"id": "b", "label": "dog", "row": 2, "timestamp": "2026-12-06T10:00:00Z"}]}),
        "classification")
    assert [(i.id, i.row, i.label, i.metadata) for i in items] == [
        ("a", 0, "1", {"g": "x"}), ("b", 2, "dog", None)]
    assert items[1].time == pytest.approx(1796551200.0)
    seldon = orjson.dumps({"request": {"meta": {"puid": "req"}},
                           "response": {"meta": {"puid": "p1"}},
                           "truth": {"data": {"names": ["a", "b", "c"],
                                              "ndarray": [[0, 0, 1], [1, 0, 0]]},
                                     "meta": {"tags": {"g": "y"}}}})
    items = parse.parse_seldon_feedback(seldon, None, "classification", ())
    assert [(i.id, i.row, i.label, i.metadata) for i in items] == [
        ("p1", 0, "c", {"g": "y"}), ("p1", 1, "a", {"g": "y"})]
    by_header = orjson.dumps({"truth": {"data": {"tensor": {"shape": [1], "values": [4.5]}}}})
    items = parse.parse_seldon_feedback(by_header, "h1", "regression", ())
    assert (items[0].id, items[0].value) == ("h1", 4.5)


@pytest.mark.parametrize(("doc", "needle"), [
    ({}, "'labels' must be a non-empty list"),
    ({"labels": [{"label": 1}]}, "labels[0].id"),
    ({"labels": [{"id": "a"}]}, "labels[0].label is missing"),
    ({"labels": [{"id": "a", "label": [1]}]}, "labels[0].label"),
    ({"labels": [{"id": "a", "label": ""}]}, "empty label"),
    ({"labels": [{"id": "a", "label": 1, "metadata": {"x": [1]}}]}, "labels[0].metadata"),
    ({"labels": [{"id": "a", "label": 1, "row": -1}]}, "labels[0].row"),
    ({"labels": [{"id": "a", "label": True, "metadata": []}]}, "labels[0].metadata"),
])
def test_v2_feedback_errors(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse.parse_v2_feedback(orjson.dumps(doc), "classification")
    assert needle in err.value.message and err.value.status == 400


def test_seldon_feedback_errors() -> None:
    with pytest.raises(ProtocolError, match="no inference id"):
        parse.parse_seldon_feedback(b'{"truth": {"data": {"ndarray": [1]}}}', None,
                                    "classification", ())
    with pytest.raises(ProtocolError, match="'truth' is missing"):
        parse.parse_seldon_feedback(b'{"response": {"meta": {"puid": "p"}}}', None,
                                    "classification", ())
    with pytest.raises(ProtocolError, match="one-hot"):
        parse.parse_seldon_feedback(b'{"truth": {"data": {"ndarray": [["a", "b"]]}}}', "h",
                                    "classification", ())


def test_bulk_files_count_bad_rows(tmp_path: Path) -> None:
    csv = tmp_path / "l.csv"
    csv.write_text("id,label,row,group\n007,1,,a\n,1,,b\nx,,,c\ny,2,1,d\n")
    loaded = bulk.load_file(csv, "csv", "classification")
    assert [(lb.id, lb.row, lb.label, lb.metadata) for lb in loaded.labels] == [
        ("007", 0, "1", {"group": "a"}), ("y", 1, "2", {"group": "d"})]
    assert (loaded.rows, loaded.bad) == (4, 2) and len(loaded.examples) == 2
    jl = tmp_path / "l.jsonl"
    jl.write_text('{"id": "a", "label": 2.5}\n[1]\n\n{"id": "b", "label": "x"}\n')
    loaded = bulk.load_file(jl, "jsonl", "regression")
    assert [lb.value for lb in loaded.labels] == [2.5] and loaded.bad == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("key,value\n1,2\n")
    with pytest.raises(bulk.BulkError, match="no column"):
        bulk.load_file(bad, "csv", "classification")


@pytest.mark.parametrize(("doc", "needle"), [
    ([], "JSON object"),
    ({}, "model:"),
    ({"model": "m", "task": "ranking"}, "task:"),
    ({"model": "m", "window": "soon"}, "window:"),
    ({"model": "m", "colour": 1}, "unknown field(s) colour"),
    ({"model": "m", "thresholds": {"minAccuracy": "high"}}, "thresholds.minAccuracy"),
    ({"model": "m", "thresholds": {"minSpeed": 1}}, "minSpeed"),
    ({"model": "m", "bulk": [{"uri": "http://x/y.csv"}]}, "bulk[0].uri"),
    ({"model": "m", "bulk": [{"uri": "file:///x/y.txt"}]}, "bulk[0].format"),
    ({"model": "m", "bulk": [{"uri": "s3://b/k.csv", "interval": 0}]}, "bulk[0].interval"),
    ({"model": "m", "maxRows": 0}, "config.maxRows"),
    ({"model": "m", "fairness": {"sensitiveFeatures": [{"name": "g", "source": "x"}]}},
     "sensitiveFeatures[0].source"),
    ({"model": "m", "fairness": {"sensitiveFeatures": [{"name": "g"}],
                                 "maxAccuracyGap": 3}}, "maxAccuracyGap"),
])
def test_config_errors_name_the_field(doc: object, needle: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc)
    assert needle in str(err.value)


def test_config_defaults_and_durations() -> None:
    cfg = config.parse({"model": "m", "window": "1h30m", "retention": "7d",
                        "bulk": [{"uri": "s3://b/daily/", "format": "parquet"}]})
    assert cfg.window_seconds == 5400 and cfg.retention_seconds == 7 * 86400
    assert cfg.bulk[0].interval == 300 and cfg.task == "classification"


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5),
                     st.floats(allow_nan=False, allow_infinity=False, width=32),
                     st.sampled_from(["", "a", "1", "FP64", "BYTES", "INT64", "predict",
                                      "predict_proba", "input-0"]))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["inputs", "outputs", "name", "shape", "datatype",
                                     "data", "instances", "predictions", "ndarray", "tensor",
                                     "values", "names", "meta", "puid", "requestPath",
                                     "labels", "id", "label", "row", "metadata", "truth",
                                     "response", "request", "tags", "model_version",
                                     "timestamp"]), inner, max_size=5)), max_leaves=25)


_tensor = st.fixed_dictionaries({
    "name": st.sampled_from(["predict", "predict_proba", "input-0", "x"]),
    "shape": st.lists(st.integers(-1, 3), max_size=3),
    "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "BOOL", "UINT8", "X"]),
    "data": st.one_of(_json, st.lists(st.one_of(st.integers(-3, 3), st.floats(-2, 2),
                                                st.text(max_size=2)), max_size=9))})
_bodies = st.one_of(
    _json,
    st.fixed_dictionaries({"inputs": st.lists(_tensor, max_size=3)}),
    st.fixed_dictionaries({"outputs": st.lists(_tensor, max_size=3)}),
    st.fixed_dictionaries({"data": st.fixed_dictionaries(
        {"names": _json, "ndarray": st.lists(st.lists(_scalars, max_size=3), max_size=3)})}),
    st.fixed_dictionaries({"predictions": st.lists(st.one_of(
        _scalars, st.lists(st.floats(0, 1), max_size=3)), max_size=3)}))


@settings(max_examples=600, deadline=None)
@given(body=_bodies, task=st.sampled_from(["classification", "regression"]))
def test_any_json_is_parsed_or_refused_with_a_4xx(body: object, task: str) -> None:
    """No body makes the parsers fail with anything but a ProtocolError (a 4xx)."""
    raw = orjson.dumps(body)
    calls = [
        lambda: parse.request_features(body, ("a", "b")) if isinstance(body, dict) else None,
        lambda: parse.response_predictions(body, task, ("x", "y"), "m")
        if isinstance(body, dict) else None,
        lambda: parse.parse_v2_feedback(raw, task),
        lambda: parse.parse_seldon_feedback(raw, "h", task, ("x", "y")),
        lambda: parse.parse_event(REQ, raw),
    ]
    for call in calls:
        try:
            call()
        except ProtocolError as exc:
            assert 400 <= exc.status < 500


def test_grpc_events_as_the_payload_log_encodes_them() -> None:
    """A gRPC prediction reaches the monitor as protobuf JSON: contents (64-bit integers as
    strings, bytes as base64) or raw contents by position."""
    from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb
    from kustos.runtime.server.payload_log import event_data

    req = pb.ModelInferRequest(model_name="m", id="g1")
    t = req.inputs.add(name="input-0", datatype="FP64", shape=[2, 2])
    t.contents.fp64_contents.extend([1.0, 2.0, 3.0, 4.0])
    t = req.inputs.add(name="sex", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"f", b"m"])
    body = orjson.loads(event_data(req, None, frozenset(), "grpc"))
    assert parse.request_features(body, ("a", "b", "sex")) == [
        {"a": 1.0, "b": 2.0, "sex": "f"}, {"a": 3.0, "b": 4.0, "sex": "m"}]
    resp = pb.ModelInferResponse(model_name="m", model_version="3", id="g1")
    o = resp.outputs.add(name="predict", datatype="INT64", shape=[2])
    o.contents.int64_contents.extend([1, 0])
    resp.outputs.add(name="predict_proba", datatype="FP64", shape=[2, 2])
    resp.raw_output_contents.extend([b"", np.asarray([[0.2, 0.8], [0.9, 0.1]]).tobytes()])
    body = orjson.loads(event_data(resp, None, frozenset(), "grpc"))
    answers, version = parse.response_predictions(body, "classification", (), "m")
    assert version == "3"
    assert [(a.label, a.proba) for a in answers] == [("1", [0.2, 0.8]), ("0", [0.9, 0.1])]
