"""The whole path: a client POSTs :explain to `kustos serve`, which forwards it to the
`kustos explain` sidecar (as in a pod: --explainer-url http://127.0.0.1:PORT)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from .conftest import Zoo, free_port, request, spawn, stop, wait_for


@pytest.fixture(scope="module")
def server(zoo: Zoo, tree_sidecar: int) -> Iterator[int]:
    port = free_port()
    proc = spawn("serve", "--model", str(zoo.cancer_rf.skops), "--name", "cancer",
                 "--port", str(port), "--log-level", "warning",
                 "--explainer-url", f"http://127.0.0.1:{tree_sidecar}")

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return request(port, "GET", "/v2/health/ready", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        assert wait_for(ready, 60, 0.1), "kustos serve not ready"
        assert proc.poll() is None, stop(proc)[1].decode()[-2000:]
        yield port
    finally:
        stop(proc)


def test_explain_through_the_model_server(zoo: Zoo, server: int) -> None:
    t = zoo.cancer_rf
    rows = t.x[[0, 1, 100, 300]]
    body = {"inputs": [{"name": "input-0", "shape": [4, len(t.names)], "datatype": "FP64",
                        "data": rows.reshape(-1).tolist()}]}
    code, predicted = request(server, "POST", "/v2/models/cancer/infer",
                              {**body, "outputs": [{"name": "predict_proba"}]})
    assert code == 200
    proba = np.array(predicted["outputs"][0]["data"]).reshape(4, 2)

    code, explained = request(server, "POST", "/v2/models/cancer/explain", body)
    assert code == 200, explained
    out = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in explained["outputs"]}
    # The explainer explains exactly what the server predicts, and the parts add up.
    np.testing.assert_allclose(out["output_values"], proba, atol=1e-12)
    np.testing.assert_allclose(out["base_values"] + out["attributions"].sum(axis=1), proba,
                               atol=1e-6)
    assert explained["parameters"]["feature_names"] == t.names

    code, v1 = request(server, "POST", "/v1/models/cancer:explain",
                       {"instances": rows[:1].tolist()})
    assert code == 200 and len(v1["explanations"]) == 1
    first = v1["explanations"][0]["outputs"][1]
    assert first["output_value"] == pytest.approx(proba[0, 1], abs=1e-12)


def test_errors_of_the_sidecar_reach_the_client(server: int) -> None:
    code, body = request(server, "POST", "/v1/models/cancer:explain",
                         {"instances": [[1.0, 2.0]]})
    assert code == 422 and "[-1, 31]" in body["error"]
    code, body = request(server, "POST", "/v2/models/cancer/explain", raw=b"{oops")
    assert code == 400 and "malformed JSON" in body["error"]
