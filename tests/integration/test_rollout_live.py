"""Gated rollouts with real model servers on the real node (the chart's operator pod):
a good candidate promoted through every step, a candidate that flips ~30 % of the
predictions rolled back in its shadow phase with no caller request failing, and a
candidate with a 5xx bug rolled back at its first canary step on error rate.

The models are trained here on scikit-learn's iris and uploaded to the local S3 store
(hack/model_store.py). A stable DecisionTree memorises iris; the "flip" candidate is a
tree trained on the same rows with 30 % of the labels rotated, so it disagrees with the
stable on about 30 % of iris rows; the "5xx" candidate loads and warms up but cannot
encode its outputs (complex class labels), so every prediction answers 500. The load
sends every iris row in turn through the model's Service while the rollout runs.

Needs the images rebuilt from this tree (kustos serve's --shadow-url and the shadow
counters, the operator's rollout controller)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_for, wait_ready
from realpods import (
    ChartOperator,
    cluster_ip,
    post_json,
    real_model,
    upload_model,
    v2_request,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["realpods"]

STEPS = [{"weight": 25, "duration": "40s"}, {"weight": 50, "duration": "40s"},
         {"weight": 100, "duration": "30s"}]
ANALYSIS = {"interval": "10s", "minSamples": 50, "onInconclusive": "wait",
            "maxInconclusive": "5m",
            "thresholds": {"maxErrorRateIncrease": 0.02, "maxPredictionDivergence": 0.1,
                           "divergenceMethod": "psi", "minAgreement": 0.9}}


def _iris() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x, y



@pytest.fixture(scope="module")
def models(chart_operator: ChartOperator) -> dict[str, tuple[str, str]]:
    """{role: (uri, digest)}: stable, good, flip, bug; trained now, uploaded to the store."""
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    x, y = _iris()
    run = uuid.uuid4().hex[:6]
    stable = DecisionTreeClassifier(random_state=0).fit(x, y)
    good = DecisionTreeClassifier(random_state=1).fit(x, y)
    rng = np.random.default_rng(7)
    flipped = y.copy()
    rows = rng.choice(len(y), size=int(0.3 * len(y)), replace=False)
    flipped[rows] = (flipped[rows] + 1) % 3
    flip = DecisionTreeClassifier(random_state=0).fit(x, flipped)
    agree = float((flip.predict(x) == stable.predict(x)).mean())
    assert 0.6 <= agree <= 0.75, agree  # ~30 % of the rows flipped, as the test says
    bug = DecisionTreeClassifier(random_state=0).fit(x, y)
    bug.classes_ = np.array([0j, 1j, 2j])  # loads, predicts, cannot be encoded: HTTP 500
    return {role: upload_model(f"rollout-{run}/{role}/model.skops", m)
            for role, m in (("stable", stable), ("good", good), ("flip", flip), ("bug", bug))}


class IrisLoad:
    """Every iris row in turn through the Service at a constant rate, from a thread, each
    request on a fresh connection; failures and the versions that answered counted."""

    def __init__(self, host: str, path: str, rate: float = 40, limit: float = 900) -> None:
        self.host, self.path, self.interval, self.limit = host, path, 1.0 / rate, limit
        self.sent = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.rows = [list(map(float, r)) for r in _iris()[0]]

    def __enter__(self) -> IrisLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - start < self.limit:
            row = self.rows[self.sent % len(self.rows)]
            self.sent += 1
            try:
                status, body = post_json(self.host, self.path, v2_request([row]), timeout=10)
                if status != 200:
                    self.failures.append(f"HTTP {status}: {body}")
                else:
                    v = str(body.get("model_version"))
                    self.versions[v] = self.versions.get(v, 0) + 1
            except OSError as err:
                self.failures.append(f"{type(err).__name__}: {err}")
            self._stop.wait(max(0.0, start + self.sent * self.interval - time.monotonic()))


def rollout_md(name: str, ns: str, uri: str, digest: str, version: str,
               shadow: bool = True) -> dict[str, Any]:
    rollout: dict[str, Any] = {"steps": STEPS, "analysis": ANALYSIS}
    if shadow:
        rollout["shadow"] = {"duration": "40s", "samplePercent": 100}
    md = real_model(name, ns, uri, digest, version=version, replicas=4, rollout=rollout)
    md["spec"]["model"]["format"] = "sklearn"
    return md


def rollout_of(chart_operator: ChartOperator, name: str) -> dict[str, Any]:
    md = chart_operator.kube.get("md", name, chart_operator.models_ns) or {}
    return dict((md.get("status") or {}).get("rollout") or {})


def watch_until(chart_operator: ChartOperator, name: str, phases: set[str],
                timeout: float = 600) -> tuple[dict[str, Any], list[tuple[Any, Any]]]:
    """status.rollout once its phase is one of ``phases``, and every (phase, step) seen on
    the way."""
    seen: list[tuple[Any, Any]] = []

    def check() -> dict[str, Any] | None:
        st = rollout_of(chart_operator, name)
        here = (st.get("phase"), st.get("step"))
        if here[0] and (not seen or seen[-1] != here):
            seen.append(here)
        return st if st.get("phase") in phases else None
    st: dict[str, Any] = wait_for(f"md/{name} rollout {phases}", check, timeout=timeout,
                                  interval=1)
    return st, seen


@pytest.fixture
def deployed(chart_operator: ChartOperator,
             models: dict[str, tuple[str, str]]) -> Iterator[list[str]]:
    """Names to delete afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        chart_operator.kube.run("delete", "md", name, "-n", chart_operator.models_ns,
                                "--wait=false", check=False)


def start(chart_operator: ChartOperator, models: dict[str, tuple[str, str]], name: str,
          shadow: bool = True) -> str:
    """The stable model deployed, Ready, recorded as the rollout's stable; its Service IP."""
    kube, ns = chart_operator.kube, chart_operator.models_ns
    kube.apply(rollout_md(name, ns, *models["stable"], version="1", shadow=shadow))
    wait_ready(kube, name, ns, timeout=300)
    watch_until(chart_operator, name, {"Idle"}, timeout=120)
    ip = cluster_ip(kube, name, ns)
    wait_for("the Service answers", lambda: post_json(
        ip, f"/v2/models/{name}/infer", v2_request([[5.1, 3.5, 1.4, 0.2]]))[0] == 200,
        timeout=60)
    return ip


def test_a_good_candidate_is_promoted_through_every_step(
        chart_operator: ChartOperator, models: dict[str, tuple[str, str]],
        deployed: list[str]) -> None:
    kube, ns, name = chart_operator.kube, chart_operator.models_ns, "ro-good"
    deployed.append(name)
    ip = start(chart_operator, models, name)
    with IrisLoad(ip, f"/v2/models/{name}/infer") as load:
        kube.apply(rollout_md(name, ns, *models["good"], version="2"))
        st, seen = watch_until(chart_operator, name, {"Promoted", "RolledBack"}, timeout=900)
    print(f"\ngood candidate: {seen}; {load.sent} requests, {len(load.failures)} failed, "
          f"versions {load.versions}; last analysis {st.get('lastAnalysis')}")
    assert st["phase"] == "Promoted", st
    assert ("Shadow", None) in seen
    assert {step for phase, step in seen if phase == "Canary"} == {1, 2, 3}
    assert st["stable"]["version"] == "2"
    assert load.failures == [], load.failures[:5]
    assert load.versions.get("2", 0) > 0
    md = wait_ready(kube, name, ns, timeout=300)
    assert md["status"]["model"]["version"] == "2"
    assert md["status"]["history"][0]["version"] == "1"


def test_a_candidate_flipping_30_percent_is_rolled_back_in_shadow(
        chart_operator: ChartOperator, models: dict[str, tuple[str, str]],
        deployed: list[str]) -> None:
    kube, ns, name = chart_operator.kube, chart_operator.models_ns, "ro-flip"
    deployed.append(name)
    ip = start(chart_operator, models, name)
    with IrisLoad(ip, f"/v2/models/{name}/infer") as load:
        kube.apply(rollout_md(name, ns, *models["flip"], version="2"))
        st, seen = watch_until(chart_operator, name, {"Promoted", "RolledBack"}, timeout=600)
        after = load.sent
        wait_for("load after the rollback", lambda: load.sent >= after + 100, timeout=60)
    print(f"\nflip candidate: {seen}; {load.sent} requests, {len(load.failures)} failed, "
          f"versions {load.versions}; "
          f"last analysis {st.get('lastAnalysis')}")
    assert st["phase"] == "RolledBack", st
    assert [p for p, _ in seen if p == "Canary"] == [], "rolled back at the first gate"
    gate = st["lastAnalysis"]["metrics"]["agreement"]
    assert gate["verdict"] == "fail" and 0.6 <= gate["value"] <= 0.8, gate
    assert load.failures == [], load.failures[:5]
    assert set(load.versions) == {"1"}  # callers never reached the candidate
    warnings = [e for e in kube.events(ns, name)
                if e["reason"] == "RolledBack" and e["type"] == "Warning"]
    assert warnings and "agreement" in warnings[0]["message"]
    cond = kube.condition("md", name, ns, "Degraded")
    assert cond is not None and cond["reason"] == "RolledBack"


def test_a_candidate_with_a_5xx_bug_is_rolled_back_on_error_rate(
        chart_operator: ChartOperator, models: dict[str, tuple[str, str]],
        deployed: list[str]) -> None:
    kube, ns, name = chart_operator.kube, chart_operator.models_ns, "ro-bug"
    deployed.append(name)
    ip = start(chart_operator, models, name, shadow=False)
    with IrisLoad(ip, f"/v2/models/{name}/infer") as load:
        kube.apply(rollout_md(name, ns, *models["bug"], version="2", shadow=False))
        st, seen = watch_until(chart_operator, name, {"Promoted", "RolledBack"}, timeout=600)
        failed = len(load.failures)
        after = load.sent
        wait_for("load after the rollback", lambda: load.sent >= after + 200, timeout=60)
        # the candidate's pods are gone from the Service a moment after the rollback
        late = load.failures[failed:]
    print(f"\n5xx candidate: {seen}; {load.sent} requests, {failed} failed during the "
          f"step; last analysis {st.get('lastAnalysis')}")
    assert st["phase"] == "RolledBack", st
    assert {step for phase, step in seen if phase == "Canary"} == {1}
    gate = st["lastAnalysis"]["metrics"]["errorRate"]
    assert gate["verdict"] == "fail" and gate["candidate"] > 0.9, gate
    assert failed > 0  # the canary's share of callers saw the bug until the rollback
    assert len(late) <= 20, late[:5]
