"""Fuzzing: hypothesis on the request parsers, schemathesis on the live server's OpenAPI.

Budgets are bounded (max_examples) so the suite stays fast; the property is always the
same: bad input is refused with a protocol error, never a crash or a 5xx.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import checks

from kustos.runtime.server import seldon, v1, v2
from kustos.runtime.server.models import Model, load_model
from kustos.runtime.server.tensors import DATATYPES, ProtocolError, decode, encode

from .conftest import Models, RunningServer, start_server

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                           max_leaves=20)
tensor = st.fixed_dictionaries(
    {"name": st.text(max_size=4) | st.integers(), "datatype": st.sampled_from(
        [*DATATYPES, "FP8", 3]), "shape": st.lists(st.integers(-2, 5), max_size=4) | json_values,
     "data": json_values},
    optional={"parameters": json_values})
infer_doc = st.fixed_dictionaries(
    {}, optional={"id": json_values, "inputs": st.lists(tensor, max_size=3) | json_values,
                  "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=14)}))
                  | json_values, "parameters": json_values})

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def iris(models: Models) -> Model:
    return load_model(models.iris_lr, "iris")


def full_path(model: Model, body: bytes, kind: str) -> None:
    """Parse, prepare, predict: what the server does, minus the socket."""
    if kind == "v2":
        req = v2.parse_infer(body)
        outputs = v2.select_outputs(model, req.outputs)
        inputs = model.prepare(req.tensors)
    elif kind == "v1":
        inputs = model.prepare(v1.parse_predict(body, model))
        outputs = model.default_outputs
    else:
        inputs = model.prepare(seldon.parse_predict(body, model).tensors)
        outputs = (seldon.output_for(model)[0],)
    if v2.batch_rows(inputs) > 0:
        model.predict(inputs, outputs)


@FUZZ
@given(doc=infer_doc)
def test_v2_parsing_only_raises_protocol_errors(iris: Model, doc: dict[str, Any]) -> None:
    try:
        full_path(iris, json.dumps(doc).encode(), "v2")
    except ProtocolError as exc:
        assert exc.status in (400, 422) and exc.message


@FUZZ
@given(doc=st.fixed_dictionaries({}, optional={"instances": json_values, "inputs": json_values}),
       kind=st.sampled_from(["v1", "seldon"]),
       seldon_doc=st.fixed_dictionaries({}, optional={
           "data": st.fixed_dictionaries({}, optional={
               "ndarray": json_values, "names": json_values,
               "tensor": st.fixed_dictionaries({}, optional={"shape": json_values,
                                                             "values": json_values})}),
           "meta": json_values}))
def test_v1_and_seldon_parsing_only_raise_protocol_errors(
        iris: Model, doc: dict[str, Any], kind: str, seldon_doc: dict[str, Any]) -> None:
    try:
        full_path(iris, json.dumps(doc if kind == "v1" else seldon_doc).encode(), kind)
    except ProtocolError as exc:
        assert exc.status in (400, 422)


@FUZZ
@given(raw=st.binary(max_size=64))
def test_arbitrary_bytes_are_a_400(iris: Model, raw: bytes) -> None:
    for kind in ("v2", "v1", "seldon"):
        try:
            full_path(iris, raw, kind)
        except ProtocolError as exc:
            assert exc.status in (400, 422)


@st.composite
def arrays(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from([d for d in DATATYPES if d != "BYTES"]))
    dtype = DATATYPES[datatype]
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=3)))
    n = int(np.prod(shape))
    if dtype.kind == "b":
        values: list[Any] = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n,
                               max_size=n))
    else:
        width = {2: 16, 4: 32, 8: 64}[dtype.itemsize]
        values = draw(st.lists(st.floats(width=width, allow_nan=False, allow_infinity=False),
                               min_size=n, max_size=n))
    return datatype, np.array(values, dtype=dtype).reshape(shape)


@settings(max_examples=300, deadline=None)
@given(case=arrays(), nested=st.booleans())
def test_encode_decode_round_trip(case: tuple[str, np.ndarray], nested: bool) -> None:
    datatype, arr = case
    out = orjson.loads(orjson.dumps(encode("t", arr), option=orjson.OPT_SERIALIZE_NUMPY))
    assert out["datatype"] == datatype and out["shape"] == list(arr.shape)
    data = arr.tolist() if nested else out["data"]
    back = decode(data, tuple(out["shape"]), datatype, "t")
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_bytes_round_trip() -> None:
    arr = decode([["a", "é"], ["", "x y"]], (2, 2), "BYTES", "t")
    assert arr.dtype == object and arr.tolist() == [["a", "é"], ["", "x y"]]
    assert encode("t", arr)["data"] == ["a", "é", "", "x y"]
    with pytest.raises(ProtocolError):
        decode([1, 2], (2,), "BYTES", "t")


# --------------------------------------------------------------------- schemathesis


@pytest.fixture(scope="module")
def live(models: Models) -> Iterator[RunningServer]:
    server = start_server(models.iris_lr, "iris", "--model-version", "2",
                          "--max-body-bytes", "65536")
    yield server
    server.shutdown()


CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance, checks.negative_data_rejection]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_openapi_fuzz_no_server_errors(live: RunningServer, mode: Any) -> None:
    """Every operation of the served document, valid and invalid data (schemathesis'
    pytest plugin does not run on pytest 9 yet, so the operations are driven here)."""
    api = schemathesis.openapi.from_url(f"{live.url}/v2/docs/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 20
    statuses: list[int] = []
    for operation in operations:
        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call_and_validate(base_url=live.url, checks=CHECKS)
            statuses.append(response.status_code)

        try:
            run()
        except Unsatisfiable:
            # Nothing to negate (a GET without parameters): only positive data exists.
            assert mode == schemathesis.GenerationMode.NEGATIVE and operation.method == "get"
    seen = collections.Counter(statuses)
    assert seen[400] > 0 and (mode == schemathesis.GenerationMode.NEGATIVE or seen[200] > 0)
    assert len(statuses) > 100 and max(statuses) < 500


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_empty_data_with_an_overflowing_shape_is_a_400(datatype: str) -> None:
    """Found by the fuzzer: a shape with a 0 has no elements, but numpy still refuses one
    whose other dimensions multiply past its limit (that was a 500)."""
    with pytest.raises(ProtocolError, match="too large") as err:
        decode([], (1774, 12943, 2**40, 2**40, 0), datatype, "inputs[0]")
    assert err.value.status == 400
