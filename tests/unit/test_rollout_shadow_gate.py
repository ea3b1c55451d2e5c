"""The shadow gate end to end on loopback: two real `kustos serve` processes, the stable
mirroring every request to a candidate that flips ~30 % of the predictions; the
controller's scrape of both, its gates and its state machine roll the candidate back at
the shadow gate, while every caller request was answered by the stable."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from unit_support import wait_for

from kustos.api.v1alpha1.rollout import RolloutSpec
from kustos.controllers.rollout import _get
from kustos.rollout import gates, machine, window
from ports import free_port


def post(port: int, path: str, body: object | None, method: str = "POST",
         context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """One request on loopback: over HTTPS with ``context``."""
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
            if context is not None else http.client.HTTPConnection("127.0.0.1", port,
                                                                   timeout=10))
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def serve(model: Path, *extra: str, context: ssl.SSLContext | None = None) -> Iterator[int]:
    """A `kustos serve` child on a free port, ready (checked over HTTPS with ``context``)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kustos.cli", "serve", "--model", str(model),
                             "--name", "iris", "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        with contextlib.suppress(OSError, http.client.HTTPException):
            return post(port, "/v2/health/ready", None, "GET", context)[0] == 200
        return False
    try:
        assert wait_for(ready, 60, 0.1) and proc.poll() is None, proc.communicate()[1][-2000:]
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[list[float]]]:
    import numpy as np
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    flipped = y.copy()
    rows = np.random.default_rng(7).choice(len(y), size=45, replace=False)
    flipped[rows] = (flipped[rows] + 1) % 3
    stable = DecisionTreeClassifier(random_state=0).fit(x, y)
    flip = DecisionTreeClassifier(random_state=0).fit(x, flipped)
    d = Path(tmp_path_factory.mktemp("shadowgate"))
    (d / "stable.skops").write_bytes(skops.io.dumps(stable))
    (d / "flip.skops").write_bytes(skops.io.dumps(flip))
    return d / "stable.skops", d / "flip.skops", [list(map(float, r)) for r in x]


def scrape(port: int) -> window.Sample:
    text = _get(f"http://127.0.0.1:{port}/metrics")
    assert text is not None
    return window.parse(text, "iris")


def test_a_flipping_candidate_fails_the_shadow_gate(
        trees: tuple[Path, Path, list[list[float]]]) -> None:
    stable_model, flip_model, rows = trees
    spec = RolloutSpec.model_validate({
        "shadow": {"duration": "1m", "samplePercent": 100}, "steps": [{"weight": 50}],
        "analysis": {"minSamples": 100, "thresholds": {
            "minAgreement": 0.9, "maxErrorRateIncrease": 0.01}}})
    with serve(flip_model) as candidate, serve(
            stable_model, "--shadow-url", f"http://127.0.0.1:{candidate}",
            "--shadow-percent", "100") as stable:
        before = {"stable": scrape(stable), "candidate": scrape(candidate)}
        answers = []
        for row in rows:
            status, _ = post(stable, "/v2/models/iris/infer", {"inputs": [{
                "name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row}]})
            answers.append(status)
        assert answers == [200] * len(rows)  # every caller answered by the stable
        # the mirror is asynchronous: wait until the stable has compared every row
        assert wait_for(lambda: sum(scrape(stable).shadow_rows.values())
                        - sum(before["stable"].shadow_rows.values()) >= len(rows), 30, 0.2)
        s = window.track_window({"p": before["stable"]}, {"p": scrape(stable)})
        c = window.track_window({"p": before["candidate"]}, {"p": scrape(candidate)})
    found = {g.name: g for g in gates.evaluate(spec.analysis, s, c, "Shadow")}
    agreement = found["agreement"]
    # 45 of 150 labels rotated; the tree reproduces its training labels, so ~30 % differ
    assert agreement.verdict == "fail" and 0.6 <= (agreement.value or 0) <= 0.75, agreement
    assert agreement.samples == len(rows)
    assert found["errorRate"].verdict == "pass" and c.total == len(rows)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    v1, v2 = {"uri": "s3://m/1.skops", "version": "1"}, {"uri": "s3://m/2.skops", "version": "2"}
    st = machine.decide(spec, v2, {"phase": "Idle", "stable": v1}, None, now).status
    out = machine.decide(spec, v2, st, gates.overall(list(found.values())),
                         now + timedelta(seconds=20), failed=gates.failures(list(found.values())))
    assert out.status["phase"] == "RolledBack"
    assert out.notice is not None and out.notice.message.startswith(
        "rolled back at shadow: agreement 0.")


def test_a_candidate_answering_5xx_fails_the_error_rate_gate(
        trees: tuple[Path, Path, list[list[float]]], tmp_path: Path) -> None:
    import numpy as np
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    bug = DecisionTreeClassifier(random_state=0).fit(x, y)
    bug.classes_ = np.array([0j, 1j, 2j])  # loads and warms up; its answers cannot be encoded
    (tmp_path / "bug.skops").write_bytes(skops.io.dumps(bug))
    stable_model, _, rows = trees
    spec = RolloutSpec.model_validate({"steps": [{"weight": 25}], "analysis": {
        "minSamples": 20, "thresholds": {"maxErrorRateIncrease": 0.02}}})
    with serve(stable_model) as stable, serve(tmp_path / "bug.skops") as candidate:
        before = {"s": scrape(stable), "c": scrape(candidate)}
        body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                            "data": rows[0]}]}
        # the canary's share: one request in four to the candidate
        codes = [post(candidate if i % 4 == 0 else stable, "/v2/models/iris/infer", body)[0]
                 for i in range(120)]
        s = window.track_window({"p": before["s"]}, {"p": scrape(stable)})
        c = window.track_window({"p": before["c"]}, {"p": scrape(candidate)})
    assert codes.count(500) == 30 and codes.count(200) == 90
    [gate] = gates.evaluate(spec.analysis, s, c, "Canary")
    # stable 0/90, candidate 30/30: +1.0
    assert (gate.name, gate.verdict, gate.value, gate.samples) == ("errorRate", "fail", 1.0, 30)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    v1, v2 = {"uri": "s3://m/1.skops", "version": "1"}, {"uri": "s3://m/3.skops", "version": "3"}
    st = machine.decide(spec, v2, {"phase": "Idle", "stable": v1}, None, now).status
    out = machine.decide(spec, v2, st, "fail", now + timedelta(seconds=10),
                         failed=gates.failures([gate]))
    assert out.status["phase"] == "RolledBack" and out.notice is not None
    assert out.notice.message == (
        "rolled back at step 1/1 weight 25%: errorRate 1 beyond threshold 0.02 (stable 0, "
        "candidate 1, 30 samples)")
