"""The V2 binary tensor data extension on REST, against a real `kustos serve` subprocess:
tritonclient.http with binary inputs and outputs must get what the JSON path gets (FP32,
INT64, FP16, BOOL and BYTES), and malformed binary requests are 400/413 with the V2 error
object. The raw layout itself is checked function by function for every datatype."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kustos.runtime.server.tensors import DATATYPES, ProtocolError, decode_raw, encode_raw

from .conftest import free_port, spawn_cli, stop_process, wait_http_ready

th = pytest.importorskip("tritonclient.http")

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import skops.io as sio
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.datasets import load_breast_cancer, load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    d = tmp_path_factory.mktemp("binary")
    xc, yc = load_breast_cancer(return_X_y=True)
    cancer = LogisticRegression(max_iter=5000).fit(xc, yc)
    sio.dump(cancer, d / "cancer.skops")
    iris = load_iris()
    # Class labels as strings: the predict output is a BYTES tensor.
    names = np.asarray(iris.target_names)[iris.target]
    flowers = LogisticRegression(max_iter=1000).fit(iris.data, names)
    sio.dump(flowers, d / "flowers.skops")
    # A string input: petal length binned into words, one-hot encoded inside the graph.
    words = np.where(iris.data[:, 2:3] < 2.5, "short",
                     np.where(iris.data[:, 2:3] < 5.0, "medium", "long")).astype(object)
    # handle_unknown: the server warms up with an empty string.
    enc = make_pipeline(OneHotEncoder(handle_unknown="ignore"),
                        LogisticRegression(max_iter=1000)).fit(
        words, iris.target)
    onx = to_onnx(enc, initial_types=[("word", StringTensorType([None, 1]))],
                  options={"zipmap": False})
    (d / "words.onnx").write_bytes(onx.SerializeToString())
    return {"dir": d, "cancer_x": xc, "cancer": cancer, "iris_x": iris.data,
            "flowers": flowers, "words": words}


def _serve(model: Path, name: str) -> Iterator[int]:
    port = free_port()
    proc = spawn_cli("serve", "--model", str(model), "--name", name, "--port", str(port),
                     "--host", "127.0.0.1", "--log-level", "warning",
                     "--max-body-bytes", str(MAX_BODY))
    try:
        wait_http_ready(port, proc)
        yield port
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def cancer_port(trained: dict[str, Any]) -> Iterator[int]:
    yield from _serve(trained["dir"] / "cancer.skops", "cancer")


@pytest.fixture(scope="module")
def flowers_port(trained: dict[str, Any]) -> Iterator[int]:
    yield from _serve(trained["dir"] / "flowers.skops", "flowers")


@pytest.fixture(scope="module")
def words_port(trained: dict[str, Any]) -> Iterator[int]:
    yield from _serve(trained["dir"] / "words.onnx", "words")


def _infer(port: int, model: str, x: np.ndarray, datatype: str, binary_in: bool,
           binary_out: bool, outputs: tuple[str, ...], name: str = "input-0") -> Any:
    client = th.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        tensor = th.InferInput(name, list(x.shape), datatype)
        tensor.set_data_from_numpy(x, binary_data=binary_in)
        wanted = [th.InferRequestedOutput(o, binary_data=binary_out) for o in outputs]
        result = client.infer(model, [tensor], outputs=wanted)
        return result
    finally:
        client.close()


def _is_binary(result: Any, name: str) -> bool:
    out = result.get_output(name)
    return "binary_data_size" in out.get("parameters", {}) and "data" not in out


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "FP16", "FP64"])
def test_numeric_binary_equals_json(trained: dict[str, Any], cancer_port: int,
                                    datatype: str) -> None:
    x = trained["cancer_x"][::9]
    x = x.round() if datatype == "INT64" else x
    x = x.astype(DATATYPES[datatype])
    outputs = ("predict", "predict_proba")
    plain = _infer(cancer_port, "cancer", x, datatype, False, False, outputs)
    binary = _infer(cancer_port, "cancer", x, datatype, True, True, outputs)
    for name in outputs:
        assert not _is_binary(plain, name) and _is_binary(binary, name)
        assert np.array_equal(plain.as_numpy(name), binary.as_numpy(name)), name
    expect = trained["cancer"].predict(x.astype(np.float64))
    assert np.array_equal(binary.as_numpy("predict"), expect)
    assert binary.as_numpy("predict").dtype == np.int64


def test_bool_input_binary_equals_json(trained: dict[str, Any], cancer_port: int) -> None:
    x = trained["cancer_x"][:6] > np.median(trained["cancer_x"], axis=0)
    plain = _infer(cancer_port, "cancer", x, "BOOL", False, False, ("predict_proba",))
    binary = _infer(cancer_port, "cancer", x, "BOOL", True, True, ("predict_proba",))
    assert _is_binary(binary, "predict_proba")
    assert np.array_equal(plain.as_numpy("predict_proba"), binary.as_numpy("predict_proba"))


def test_mixed_binary_and_json_outputs(trained: dict[str, Any], cancer_port: int) -> None:
    x = trained["cancer_x"][:4].astype(np.float32)
    client = th.InferenceServerClient(f"127.0.0.1:{cancer_port}")
    try:
        tensor = th.InferInput("input-0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("cancer", [tensor], outputs=[
            th.InferRequestedOutput("predict_proba", binary_data=False),
            th.InferRequestedOutput("predict", binary_data=True)])
        assert not _is_binary(result, "predict_proba") and _is_binary(result, "predict")
        expect = trained["cancer"].predict_proba(x.astype(np.float64))
        assert np.allclose(result.as_numpy("predict_proba"), expect, rtol=1e-12)
        # No outputs named: tritonclient asks for all outputs binary (binary_data_output).
        result = client.infer("cancer", [tensor])
        assert _is_binary(result, "predict")
        assert np.array_equal(result.as_numpy("predict"),
                              trained["cancer"].predict(x.astype(np.float64)))
    finally:
        client.close()


def test_bytes_output(trained: dict[str, Any], flowers_port: int) -> None:
    x = trained["iris_x"][::10]
    plain = _infer(flowers_port, "flowers", x, "FP64", False, False, ("predict",))
    binary = _infer(flowers_port, "flowers", x, "FP64", True, True, ("predict",))
    assert binary.get_output("predict")["datatype"] == "BYTES" and _is_binary(binary, "predict")
    expect = trained["flowers"].predict(x).tolist()
    assert [v.decode() for v in binary.as_numpy("predict")] == expect
    # tritonclient gives JSON BYTES as str and binary BYTES as bytes.
    assert plain.as_numpy("predict").tolist() == expect


def test_bytes_input(trained: dict[str, Any], words_port: int) -> None:
    words = trained["words"][::5]
    x = np.array([[w.encode()] for w in words.reshape(-1)], dtype=object)
    plain = _infer(words_port, "words", x, "BYTES", False, False, ("label", "probabilities"),
                   name="word")
    binary = _infer(words_port, "words", x, "BYTES", True, True, ("label", "probabilities"),
                    name="word")
    assert _is_binary(binary, "label") and _is_binary(binary, "probabilities")
    for name in ("label", "probabilities"):
        assert np.array_equal(plain.as_numpy(name), binary.as_numpy(name)), name
    assert set(binary.as_numpy("label").tolist()) <= {0, 1, 2}
    assert len(set(binary.as_numpy("label").tolist())) > 1


# ----------------------------------------------------------------- malformed requests


def _post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v2/models/cancer/infer", body, headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, orjson.loads(data), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _binary_request(header: dict[str, Any], blob: bytes, length: int | None = None,
                    ) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + blob, {"inference-header-content-length": str(
        len(head) if length is None else length), "content-type": "application/octet-stream"}


def _input(shape: list[int], datatype: str, size: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype,
                        "parameters": {"binary_data_size": size}}]}


def test_malformed_binary_requests_are_400(cancer_port: int) -> None:
    row = np.zeros((1, 30), dtype=np.float32).tobytes()  # 120 bytes
    head = orjson.dumps(_input([1, 30], "FP32", 120))
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("header length beyond the body",
         *_binary_request(_input([1, 30], "FP32", 120), row, len(head) + 500)),
        ("header length not a number", head + row,
         {"inference-header-content-length": "12x"}),
        ("header length zero", head + row, {"inference-header-content-length": "0"}),
        ("header length cuts the JSON",
         *_binary_request(_input([1, 30], "FP32", 120), row, len(head) - 3)),
        ("sizes add up to less than the body",
         *_binary_request(_input([1, 30], "FP32", 120), row + b"\0" * 8)),
        ("size beyond the binary data",
         *_binary_request(_input([1, 30], "FP32", 240), row)),
        ("size does not match shape x datatype",
         *_binary_request(_input([1, 30], "FP32", 116), row[:116])),
        ("size does not match FP64",
         *_binary_request(_input([1, 30], "FP64", 120), row)),
        ("negative size", *_binary_request(_input([1, 30], "FP32", -1), row)),
        ("size not an integer", *_binary_request(_input([1, 30], "FP32", "120"), row)),
        ("binary size without the header", head, {}),
        ("BOOL byte other than 0/1",
         *_binary_request(_input([1, 30], "BOOL", 30), b"\x02" * 30)),
        ("BYTES length prefix truncated",
         *_binary_request(_input([1], "BYTES", 3), b"\x05\x00\x00")),
        ("BYTES element longer than the data",
         *_binary_request(_input([1], "BYTES", 6), b"\x05\x00\x00\x00ab")),
        ("BYTES elements fewer than the shape",
         *_binary_request(_input([2], "BYTES", 6), b"\x02\x00\x00\x00ab")),
        ("data and binary_data_size both", *_binary_request(
            {"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP32",
                         "data": [0.0] * 30, "parameters": {"binary_data_size": 120}}]}, row)),
        ("binary_data not a boolean", *_binary_request(
            {**_input([1, 30], "FP32", 120), "outputs": [
                {"name": "predict", "parameters": {"binary_data": "yes"}}]}, row)),
        ("binary_data_output not a boolean", *_binary_request(
            {**_input([1, 30], "FP32", 120), "parameters": {"binary_data_output": 1}}, row)),
    ]
    for what, body, headers in cases:
        status, answer, _ = _post(cancer_port, body, headers)
        assert status == 400, (what, answer)
        assert isinstance(answer.get("error"), str) and answer["error"], what


def test_a_valid_raw_request_and_its_response_layout(trained: dict[str, Any],
                                                     cancer_port: int) -> None:
    x = trained["cancer_x"][:3].astype(np.float32)
    body, headers = _binary_request(
        {**_input([3, 30], "FP32", x.nbytes), "id": "r1",
         "parameters": {"binary_data_output": True}}, x.tobytes())
    conn = http.client.HTTPConnection("127.0.0.1", cancer_port, timeout=30)
    try:
        conn.request("POST", "/v2/models/cancer/infer", body, headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert resp.getheader("content-type") == "application/octet-stream"
    size = int(resp.getheader("inference-header-content-length") or -1)
    header = orjson.loads(data[:size])
    assert header["id"] == "r1" and header["model_name"] == "cancer"
    (out,) = header["outputs"]
    assert out["name"] == "predict" and out["datatype"] == "INT64" and out["shape"] == [3]
    assert out["parameters"]["binary_data_size"] == len(data) - size == 24
    got = np.frombuffer(data[size:], dtype="<i8")
    assert np.array_equal(got, trained["cancer"].predict(x.astype(np.float64)))


def test_body_limit_applies_to_binary_requests(cancer_port: int) -> None:
    rows = MAX_BODY // 120 + 10
    x = np.zeros((rows, 30), dtype=np.float32)
    body, headers = _binary_request(_input([rows, 30], "FP32", x.nbytes), x.tobytes())
    assert len(body) > MAX_BODY
    status, answer, _ = _post(cancer_port, body, headers)
    assert status == 413 and "error" in answer


# ----------------------------------------------------------------- the raw layout


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_raw_roundtrip_every_numeric_datatype(datatype: str) -> None:
    dtype = DATATYPES[datatype]
    if dtype.kind == "b":
        arr = np.array([[True, False, True], [False, False, True]])
    elif dtype.kind == "f":
        arr = np.array([[0.5, -1.25, 3.0], [1e-3, 7.0, -0.0]], dtype=dtype)
    else:
        info = np.iinfo(dtype)
        arr = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)
    name, raw = encode_raw(arr)
    assert name == datatype and len(raw) == arr.size * dtype.itemsize
    assert raw == arr.astype(dtype.newbyteorder("<")).tobytes()
    back = decode_raw(raw, (2, 3), datatype, "t")
    assert back.dtype == dtype and np.array_equal(back, arr)
    with pytest.raises(ProtocolError):
        decode_raw(raw[:-1], (2, 3), datatype, "t")


def test_raw_bytes_layout() -> None:
    arr = np.array(["ab", "", "héllo"], dtype=object)
    name, raw = encode_raw(arr)
    assert name == "BYTES"
    assert raw == b"\x02\0\0\0ab\0\0\0\0\x06\0\0\0h\xc3\xa9llo"
    assert decode_raw(raw, (3,), "BYTES", "t").tolist() == [b"ab", b"", "héllo".encode()]
    # gRPC's raw_input_contents: UTF-8 elements become str, the others stay bytes.
    _, mixed = encode_raw(np.array(["héllo", b"\xff"], dtype=object))
    assert decode_raw(mixed, (2,), "BYTES", "t", text=True).tolist() == ["héllo", b"\xff"]
    with pytest.raises(ProtocolError, match="more BYTES"):
        decode_raw(raw + b"\0\0\0\0", (3,), "BYTES", "t")
    with pytest.raises(ProtocolError):
        decode_raw(raw, (3,), "STRING", "t")


def test_decoded_raw_arrays_are_aligned_and_owned() -> None:
    from kustos.runtime.server.v2 import parse_infer

    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    for pad in range(8):  # every alignment of the raw part after the JSON header
        head = orjson.dumps({"id": "x" * pad, "inputs": [{
            "name": "a", "shape": [3, 4], "datatype": "FP64",
            "parameters": {"binary_data_size": x.nbytes}}]})
        got = parse_infer(head + x.tobytes(), len(head)).tensors["a"]
        assert got.flags.aligned and got.flags.writeable and np.array_equal(got, x)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64), size=st.integers(-2, 80), cut=st.integers(-5, 5),
       datatype=st.sampled_from(sorted(DATATYPES)), shape=st.lists(st.integers(0, 4),
                                                                  max_size=3))
def test_binary_parsing_only_ever_refuses_with_a_protocol_error(
        raw: bytes, size: int, cut: int, datatype: str, shape: list[int]) -> None:
    from kustos.runtime.server.v2 import header_length, parse_infer

    head = orjson.dumps({"inputs": [{"name": "a", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": size}}],
                         "parameters": {"binary_data_output": True}})
    body = head + raw
    try:
        length = header_length(str(len(head) + cut).encode(), len(body))
        request = parse_infer(body, length)
    except ProtocolError as exc:
        assert exc.status == 400 and exc.message
        return
    (tensor,) = request.tensors.values()
    assert list(tensor.shape) == shape and request.any_binary
