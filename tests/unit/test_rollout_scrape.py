"""What the rollout controller reads of a real `kustos serve` (a child process on
loopback, a model trained here): its /metrics fetched as the controller fetches a pod's,
parsed into prediction counters, and windowed between two scrapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_rollout_shadow_gate import post, serve

from kustos.controllers.rollout import _get
from kustos.rollout import window
from kustos.rollout.window import track_window
from ports import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    path = Path(tmp_path_factory.mktemp("rollout")) / "model.skops"
    path.write_bytes(skops.io.dumps(LogisticRegression(max_iter=500).fit(x, y)))
    with serve(path) as port:
        yield port


def infer(port: int, rows: list[list[float]]) -> int:
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64",
                        "data": [v for r in rows for v in r]}]}
    return post(port, "/v2/models/iris/infer", body)[0]


SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]


def scrape(port: int) -> window.Sample:
    text = _get(f"http://127.0.0.1:{port}/metrics")
    assert text is not None
    return window.parse(text, "iris")


def test_a_real_servers_counters_and_their_window(server: int) -> None:
    before = scrape(server)
    for _ in range(10):
        assert infer(server, [SETOSA, SETOSA, VIRGINICA]) == 200
    for _ in range(3):  # a malformed request: 4xx, counted, no error of the model's
        assert 400 <= post(server, "/v2/models/iris/infer", {"inputs": "x"})[0] < 500
    after = scrape(server)
    w = track_window({"pod": before}, {"pod": after})
    assert w.requests.get("200") == 10
    assert sum(v for code, v in w.requests.items() if code.startswith("4")) == 3
    assert w.errors == 0
    # 30 rows predicted: 20 setosa (class 0), 10 virginica (class 2)
    assert {k: v for k, v in w.classes.items() if v} == {"0": 20.0, "2": 10.0}
    # every request observed once in the latency histogram
    assert max(w.buckets.values()) == 13
    assert window.quantile(0.99, w.buckets) is not None
    assert _get(f"http://127.0.0.1:{free_port()}/metrics") is None  # nobody there
