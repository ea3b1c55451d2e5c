"""The live server, protocol by protocol: KServe V2, KServe V1, Seldon, health, errors."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import Client, Models, RunningServer

ROW = [5.1, 3.5, 1.4, 0.2]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def v2_body(data: object, shape: list[int], datatype: str = "FP64", **extra: object) -> dict:
    return {"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": data}],
            **extra}


# ------------------------------------------------------------------------------ V2


def test_v2_server_and_health(client: Client) -> None:
    assert client.get("/v2/health/live") == (200, {"live": True})
    assert client.get("/v2/health/ready") == (200, {"ready": True})
    status, meta = client.get("/v2")
    assert status == 200 and meta["name"] == "kustos" and "version" in meta


def test_v2_model_metadata_is_derived_from_the_model(client: Client) -> None:
    for path in ("/v2/models/iris", "/v2/models/iris/versions/3"):
        status, meta = client.get(path)
        assert status == 200
        assert meta["name"] == "iris" and meta["versions"] == ["3"]
        assert meta["platform"].startswith("sklearn-")
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
        outs = {o["name"]: o for o in meta["outputs"]}
        assert outs["predict"] == {"name": "predict", "datatype": "INT64", "shape": [-1]}
        assert outs["predict_proba"]["shape"] == [-1, 3]
        assert meta["parameters"]["classes"] == [0, 1, 2]
    assert client.get("/v2/models/iris/ready") == (200, {"name": "iris", "ready": True})
    assert client.get("/v2/models/iris/versions/3/ready")[0] == 200


def test_v2_infer_matches_the_model(client: Client, models: Models) -> None:
    want = models.iris_est.predict(np.array(ROWS)).tolist()
    for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/3/infer"):
        status, body = client.post(path, v2_body(ROWS, [3, 4], id="req-7"))
        assert status == 200, body
        assert body["model_name"] == "iris" and body["model_version"] == "3"
        assert body["id"] == "req-7"
        assert body["outputs"] == [
            {"name": "predict", "datatype": "INT64", "shape": [3], "data": want}]


def test_v2_flat_and_nested_data_are_the_same(client: Client) -> None:
    flat = [x for row in ROWS for x in row]
    a = client.post("/v2/models/iris/infer", v2_body(flat, [3, 4]))
    b = client.post("/v2/models/iris/infer", v2_body(ROWS, [3, 4]))
    assert a[0] == b[0] == 200
    assert a[1].pop("id") != b[1].pop("id")  # each prediction gets its own inference id
    assert a[1] == b[1]


def test_v2_output_selection_and_parameters(client: Client, models: Models) -> None:
    status, body = client.post("/v2/models/iris/infer", v2_body(
        ROWS, [3, 4], parameters={"content_type": "np"},
        outputs=[{"name": "predict_proba"}, {"name": "predict"}]))
    assert status == 200, body
    assert [o["name"] for o in body["outputs"]] == ["predict_proba", "predict"]
    proba = np.array(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
    np.testing.assert_allclose(proba, models.iris_est.predict_proba(np.array(ROWS)))
    assert body["outputs"][0]["datatype"] == "FP64"


@pytest.mark.parametrize("datatype,data", [
    ("FP16", [5.1, 3.5, 1.4, 0.2]), ("FP32", [5.1, 3.5, 1.4, 0.2]), ("FP64", ROW),
    ("INT8", [5, 3, 1, 0]), ("INT16", [5, 3, 1, 0]), ("INT32", [5, 3, 1, 0]),
    ("INT64", [5, 3, 1, 0]), ("UINT8", [5, 3, 1, 0]), ("UINT16", [5, 3, 1, 0]),
    ("UINT32", [5, 3, 1, 0]), ("UINT64", [5, 3, 1, 0]), ("BOOL", [True, False, True, False]),
])
def test_v2_every_numeric_datatype(client: Client, models: Models, datatype: str,
                                   data: list[object]) -> None:
    status, body = client.post("/v2/models/iris/infer", v2_body(data, [1, 4], datatype))
    assert status == 200, body
    x = np.array([data], dtype=float)
    assert body["outputs"][0]["data"] == models.iris_est.predict(x).tolist()


@pytest.mark.parametrize("payload,status,fragment", [
    (b"{not json", 400, "malformed JSON"),
    (b"[1,2]", 400, "JSON object"),
    (b"", 400, "empty"),
    (b'{"inputs": []}', 400, "non-empty"),
    (b'{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[1,2,3]}]}', 400, "needs 8"),
    (b'{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[[1,2,3,4],[1,2]]}]}',
     400, "ragged"),
    (b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP99","data":[1,2,3,4]}]}', 400,
     "unknown datatype"),
    (b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":["1","2","3","4"]}]}',
     400, "must be numbers"),
    (b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"INT8","data":[1,2,3,400]}]}', 400,
     "out of range"),
    (b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"INT32","data":[1.5,2,3,4]}]}', 400,
     "integers"),
    (b'{"inputs":[{"name":"x","shape":[-1,4],"datatype":"FP64","data":[1,2,3,4]}]}', 400,
     "non-negative"),
    (b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}', 422,
     "[-1, 4]"),
    (b'{"inputs":[{"name":"x","shape":[4],"datatype":"FP64","data":[1,2,3,4]}]}', 422,
     "[-1, 4]"),
    (b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP16","data":[1,2,3,70000]}]}', 422,
     "NaN or infinite"),
    (b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"BYTES","data":["a","b","c","d"]}]}',
     422, "takes numbers"),
    (b'{"inputs":[{"name":"x","shape":[0,4],"datatype":"FP64","data":[]}]}', 422, "no rows"),
    (b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}],'
     b'"outputs":[{"name":"nope"}]}', 400, "unknown output"),
    (b'{"id": 5, "inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}]}',
     400, "'id'"),
])
def test_v2_bad_input_gets_a_protocol_error(client: Client, payload: bytes, status: int,
                                            fragment: str) -> None:
    got, body = client.post("/v2/models/iris/infer", raw=payload)
    assert got == status, body
    assert set(body) == {"error"} and fragment in body["error"]


def test_unknown_model_version_and_path_are_404(client: Client) -> None:
    got, body = client.post("/v2/models/other/infer", v2_body(ROW, [1, 4]))
    assert got == 404 and body == {"error": "model 'other' not found"}
    got, body = client.get("/v2/models/iris/versions/9")
    assert got == 404 and "no version '9'" in body["error"]
    got, body = client.post("/v1/models/other:predict", {"instances": [ROW]})
    assert got == 404 and "'other'" in body["error"]
    assert client.get("/nothing/here")[0] == 404


def test_method_not_allowed_is_405_with_allow(client: Client) -> None:
    status, body, headers = client.request("GET", "/v2/models/iris/infer")
    assert status == 405 and "error" in body and headers["allow"] == "POST"
    status, body, headers = client.request("DELETE", "/v2/health/live")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_head_has_headers_but_no_body(client: Client) -> None:
    status, body, headers = client.request("HEAD", "/v2/health/live")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


# ------------------------------------------------------------------------------ V1


def test_v1_predict_and_status(client: Client, models: Models) -> None:
    assert client.get("/v1/models/iris") == (200, {"name": "iris", "ready": True})
    assert client.get("/v1/models") == (200, {"models": ["iris"]})
    status, body = client.post("/v1/models/iris:predict", {"instances": ROWS})
    assert status == 200
    assert body == {"predictions": models.iris_est.predict(np.array(ROWS)).tolist()}


@pytest.mark.parametrize("payload,status", [
    ({"instances": []}, 400), ({"nope": 1}, 400), ({"instances": [[1, 2], [1]]}, 400),
    ({"instances": [[1, 2, 3]]}, 422), ({"instances": [{"a": 1}, [1, 2, 3, 4]]}, 400),
    ({"instances": [["a", "b", "c", "d"]]}, 422),
])
def test_v1_bad_input(client: Client, payload: object, status: int) -> None:
    got, body = client.post("/v1/models/iris:predict", payload)
    assert got == status and "error" in body


# -------------------------------------------------------------------------- Seldon


def test_seldon_ndarray_returns_probabilities_named_by_class(client: Client,
                                                              models: Models) -> None:
    status, body = client.post("/api/v1.0/predictions",
                               {"data": {"names": ["a", "b", "c", "d"], "ndarray": ROWS},
                                "meta": {"puid": "p1"}})
    assert status == 200, body
    assert body["data"]["names"] == ["0", "1", "2"]
    np.testing.assert_allclose(body["data"]["ndarray"],
                               models.iris_est.predict_proba(np.array(ROWS)))
    assert body["meta"]["puid"] == "p1"


def test_seldon_tensor_in_tensor_out_and_single_row(client: Client) -> None:
    status, body = client.post("/api/v1.0/predictions",
                               {"data": {"tensor": {"shape": [1, 4], "values": ROW}}})
    assert status == 200 and body["data"]["tensor"]["shape"] == [1, 3]
    assert abs(sum(body["data"]["tensor"]["values"]) - 1) < 1e-9
    # One row unwrapped, and the form-encoded body of old Seldon clients.
    assert client.post("/api/v1.0/predictions", {"data": {"ndarray": ROW}})[0] == 200
    status, _, _ = client.request("POST", "/api/v1.0/predictions",
                                  raw=b"json=%7B%22data%22%3A%7B%22ndarray%22%3A%5B%5B5.1%2C3.5"
                                      b"%2C1.4%2C0.2%5D%5D%7D%7D",
                                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert status == 200


@pytest.mark.parametrize("payload,status", [
    ({"data": {"ndarray": [[1, 2, 3]]}}, 422), ({"data": {}}, 400), ({"strData": "x"}, 422),
    ({"data": {"tensor": {"shape": [2, 4], "values": [1, 2]}}}, 400),
    ({"data": {"ndarray": [["a", "b", "c", "d"]]}}, 400),
    ({"data": {"names": ["a"], "ndarray": [[1, 2, 3, 4]]}}, 400),
])
def test_seldon_errors_use_seldon_status(client: Client, payload: object, status: int) -> None:
    got, body = client.post("/api/v1.0/predictions", payload)
    assert got == status
    assert body["status"]["status"] == "FAILURE" and body["status"]["code"] == status
    assert body["status"]["info"] and body["status"]["reason"]


def test_seldon_feedback_metadata_health(client: Client) -> None:
    status, body = client.post("/api/v1.0/feedback", {
        "request": {"data": {"ndarray": [ROW]}}, "response": {"data": {"ndarray": [[1, 0, 0]]}},
        "reward": 1.0, "truth": {"data": {"ndarray": [[1, 0, 0]]}}})
    assert status == 200 and body["data"]["ndarray"] == []
    status, body = client.post("/api/v1.0/feedback", {"reward": "lots"})
    assert status == 400 and body["status"]["status"] == "FAILURE"
    status, meta = client.get("/api/v1.0/metadata")
    assert status == 200 and meta["name"] == "iris"
    assert meta["inputs"][0]["schema"]["shape"] == [4]
    assert meta["outputs"][0]["schema"]["names"] == ["0", "1", "2"]
    assert client.get("/api/v1.0/health/status")[0] == 200
    status, body, _ = client.request("GET", "/health/ping")
    assert status == 200 and body == b"pong"


def test_seldon_unknown_path_uses_seldon_error(client: Client) -> None:
    status, body = client.get("/api/v1.0/nothing")
    assert status == 404 and body["status"]["status"] == "FAILURE"


# ------------------------------------------------------------------------- metrics


def test_metrics_count_requests_and_classes(client: Client, iris_server: RunningServer) -> None:
    client.post("/v2/models/iris/infer", v2_body(ROWS, [3, 4]))
    client.post("/v2/models/iris/infer", raw=b"{bad")
    status, text, headers = client.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    lines = text.decode()
    for name in ("kustos_requests_total", "kustos_request_duration_seconds_bucket",
                 "kustos_inflight_requests", "kustos_model_load_seconds",
                 "kustos_predictions_total", "kustos_batch_rows_bucket", "kustos_model_ready"):
        assert name in lines, name

    def value(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines.splitlines()
                   if line.startswith(prefix))

    assert value('kustos_requests_total{code="200",endpoint="v2_infer",model="iris"}') >= 1
    assert value('kustos_requests_total{code="400",endpoint="v2_infer",model="iris"}') >= 1
    assert value('kustos_predictions_total{class="2",model="iris"}') >= 1
    assert value('kustos_model_ready{model="iris",version="3"}') == 1


def test_openapi_document_lists_the_served_paths(client: Client) -> None:
    status, doc = client.get("/v2/docs/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/3/infer",
                 "/v1/models/iris:predict", "/api/v1.0/predictions", "/v2/health/ready"):
        assert path in doc["paths"], path
    assert client.get("/openapi.json") == (status, doc)
