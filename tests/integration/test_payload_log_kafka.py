"""Payload logging to a real Kafka broker: `kustos serve --payload-log-kafka` (Kustos' own
minimal producer, operator/kustos/runtime/server/kafka.py) against Apache Kafka's broker
(hack/kafka.sh, started in a tmp dir), read back with Kafka's own ConsoleConsumer.

Needs no cluster: java and the jars of `make tools` (skipped locally without them, a failure
in CI)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka_broker import KafkaBroker, Record, kafka_broker

from ports import free_port

pytestmark = pytest.mark.integration

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
PARTITIONS = 3
EVENTS = 'kustos_payload_log_events_total{{model="iris",outcome="{}"}}'


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with kafka_broker(tmp_path_factory.mktemp("kafka")) as b:
        yield b


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    path = tmp_path_factory.mktemp("model") / "iris.skops"
    sio.dump(LogisticRegression(max_iter=1000).fit(X, y), path)
    return path


class Serve:
    relay_port: int | None = None  # the payload-log relay's, when the server hands over

    def __init__(self, model: Path, *extra: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kustos.cli", "serve", "--model", str(model), "--name",
             "iris", "--port", str(self.port), "--grpc-port", str(free_port()),
             "--log-level", "warning", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"kustos serve exited: {self.stop()[-2000:]}")
            assert time.monotonic() < deadline, "kustos serve not ready in 60s"
            time.sleep(0.1)

    def _ready(self) -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            return self.request("GET", "/v2/health/ready")[0] == 200
        return False

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, None if body is None else orjson.dumps(body),
                         {"content-type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def events(self, outcome: str = "sent") -> float:
        """Counted by the server and, when it hands over to one, its relay."""
        text = self.request("GET", "/metrics")[1].decode()
        if self.relay_port is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.relay_port}/metrics",
                                        timeout=30) as resp:
                text += resp.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(EVENTS.format(outcome)))

    def wait_events(self, outcome: str, count: int, timeout: float = 60) -> None:
        """Until the payload log counted ``count`` events of ``outcome`` (observed)."""
        deadline = time.monotonic() + timeout
        while self.events(outcome) < count:
            assert self.proc.poll() is None, self.stop()[-2000:]
            assert time.monotonic() < deadline, (
                f"{self.events(outcome)} of {count} events {outcome}")
            time.sleep(0.2)

    def predict_v2(self, row: list[float]) -> str:
        status, body, _ = self.request(
            "POST", "/v2/models/iris/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                         "data": [row]}]})
        assert status == 200, body
        return str(orjson.loads(body)["id"])

    def stop(self) -> str:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.communicate(timeout=30)[1].decode(errors="replace")


@contextlib.contextmanager
def relay(sock: Path, *flags: str) -> Iterator[int]:
    """`kustos payload-relay` (the pod's payload-log container) with ``flags``; its port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kustos.cli", "payload-relay", "--socket", str(sock),
         "--host", "127.0.0.1", "--port", str(port), "--name", "iris", "--log-level",
         "warning", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=5)
                break
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "kustos payload-relay not ready in 60s"
            time.sleep(0.1)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        err = proc.communicate(timeout=30)[1].decode(errors="replace")
        assert "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("mode", ["in-process", "relay"])
def test_cloudevents_reach_a_real_broker_and_consumer(broker: KafkaBroker, iris_model: Path,
                                                      mode: str, tmp_path: Path) -> None:
    topic = f"kustos-payloads-{mode}"
    broker.create_topic(topic, PARTITIONS)
    sinks = ("--payload-log-kafka", broker.bootstrap, "--payload-log-topic", topic,
             "--payload-log-namespace", "team-a", "--model-version", "2026-12.3")
    with contextlib.ExitStack() as stack:
        if mode == "relay":  # the pod's payload-log container produces, not the server
            relay_port = stack.enter_context(relay(tmp_path / "relay.sock", *sinks))
            serve = Serve(iris_model, "--payload-log-relay", str(tmp_path / "relay.sock"))
            serve.relay_port = relay_port
        else:
            serve = Serve(iris_model, *sinks)
        check_records(broker, serve, topic)


def check_records(broker: KafkaBroker, serve: Serve, topic: str) -> None:
    """Predictions of every kind through ``serve``; their records at the broker."""
    try:
        # V2 with ids from the body, a header and none (a fresh uuid), and V1: each answer
        # names the inference id the records must be keyed by.
        answered: dict[str, str] = {}
        for i, row in enumerate(ROWS * 3):
            if i % 3 == 0:
                status, body, headers = serve.request(
                    "POST", "/v2/models/iris/infer",
                    {"id": f"pred-{i}", "inputs": [{"name": "input-0", "shape": [1, 4],
                                                    "datatype": "FP64", "data": [row]}]})
                rid = orjson.loads(body)["id"]
                assert rid == f"pred-{i}"
            elif i % 3 == 1:
                status, body, headers = serve.request(
                    "POST", "/v2/models/iris/infer",
                    {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                 "data": [row]}]})
                rid = orjson.loads(body)["id"]
            else:
                status, body, headers = serve.request(
                    "POST", "/v1/models/iris:predict", {"instances": [row]},
                    {"x-request-id": f"v1-{i}"})
                rid = headers["x-request-id"]
                assert rid == f"v1-{i}"
            assert status == 200, body
            answered[rid] = "v2" if i % 3 != 2 else "v1"
        assert len(answered) == len(ROWS) * 3
        # The producer counts an event sent once the broker acknowledged it (acks=all).
        serve.wait_events("sent", 2 * len(answered))
    finally:
        log = serve.stop()
    assert "Traceback" not in log, log[-2000:]

    records = broker.consume(topic, 2 * len(answered))
    by_key: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_key[r.key].append(r)
    # Keys: exactly the ids the clients were answered with; two records each.
    assert set(by_key) == set(answered)
    for rid, protocol in answered.items():
        pair = by_key[rid]
        assert [r.headers["ce_type"] for r in pair] == [REQUEST, RESPONSE], pair
        # One partition per prediction, the request first.
        assert pair[0].partition == pair[1].partition and pair[0].offset < pair[1].offset
        for r in pair:
            h = r.headers
            assert h["ce_id"] == rid and h["ce_specversion"] == "1.0"
            assert h["ce_source"] == "/kustos/team-a/iris/predictor"
            assert h["content-type"] == "application/json"
            assert (h["ce_inferenceservicename"], h["ce_namespace"], h["ce_component"]) == (
                "iris", "team-a", "predictor")
            assert h["ce_modelversion"] == "2026-12.3"
            assert h["ce_time"].endswith("Z") and "T" in h["ce_time"]
        request, response = (orjson.loads(r.value) for r in pair)
        if protocol == "v2":
            assert request["inputs"][0]["data"] in ([row] for row in ROWS)
            assert response["id"] == rid and response["model_name"] == "iris"
            assert response["outputs"][0]["data"][0] in (0, 1, 2)
        else:
            assert request["instances"][0] in ROWS
            assert response["predictions"][0] in (0, 1, 2)
    # With three partitions the keys spread; and each key sits where Kafka's own producer
    # (its default partitioner, murmur2 of the key) puts the same key.
    assert len({by_key[k][0].partition for k in answered}) > 1
    java_topic = f"java-partitioner-{topic}"
    broker.create_topic(java_topic, PARTITIONS)
    broker.produce_keyed(java_topic, [(k, "x") for k in answered])
    java = {r.key: r.partition for r in broker.consume(java_topic, len(answered))}
    assert java == {k: by_key[k][0].partition for k in answered}


def test_the_producer_reconnects_after_the_broker_restarts(broker: KafkaBroker,
                                                           iris_model: Path) -> None:
    """A broker killed (SIGKILL) and started again on the same ports and log dir: the
    predictions meanwhile are answered and their events counted failed; the producer's
    dead connection is dropped, fresh metadata is fetched, and events flow again."""
    topic = "kustos-restart"
    broker.create_topic(topic, PARTITIONS)
    serve = Serve(iris_model, "--payload-log-kafka", broker.bootstrap, "--payload-log-topic",
                  topic, "--payload-log-timeout", "2")
    try:
        before = [serve.predict_v2(row) for row in ROWS]
        serve.wait_events("sent", 2 * len(ROWS))
        broker.kill()
        down = [serve.predict_v2(row) for row in ROWS]
        serve.wait_events("failed", 2 * len(ROWS))
        broker.start()
        # The restarted node leads its partitions again (observed with Kafka's own admin
        # client), so what follows tests the producer's reconnect, not the election.
        deadline = time.monotonic() + 60
        while (leaders := broker.leaders(topic)) != [1] * PARTITIONS:
            assert time.monotonic() < deadline, f"partition leaders after restart: {leaders}"
            time.sleep(0.5)
        after = [serve.predict_v2(row) for row in ROWS]
        serve.wait_events("sent", 4 * len(ROWS))
    finally:
        log = serve.stop()
    assert "Traceback" not in log, log[-2000:]
    records = broker.consume(topic, 4 * len(ROWS))
    keys = [r.key for r in records]
    assert sorted(keys) == sorted(before * 2 + after * 2)
    assert not set(down) & set(keys)


def test_large_payloads_are_produced_in_pieces_the_broker_accepts(broker: KafkaBroker,
                                                                 iris_model: Path) -> None:
    """Twelve predictions of 10,000 rows at once (about 2.7 MB of events, drained in one
    batch) to a one-partition topic: the broker refuses a RecordBatch above its
    message.max.bytes (1 MiB by default), so the producer cuts the delivery in pieces;
    every event is acknowledged and read back whole."""
    from concurrent.futures import ThreadPoolExecutor

    topic = "kustos-large"
    broker.create_topic(topic, 1)
    serve = Serve(iris_model, "--payload-log-kafka", broker.bootstrap, "--payload-log-topic",
                  topic)
    rows = (ROWS * 3334)[:10000]
    try:
        def predict(i: int) -> str:
            status, body, _ = serve.request(
                "POST", "/v2/models/iris/infer",
                {"id": f"big-{i}", "inputs": [{"name": "input-0", "shape": [len(rows), 4],
                                               "datatype": "FP64", "data": rows}]})
            assert status == 200, body[:300]
            return str(orjson.loads(body)["id"])

        with ThreadPoolExecutor(12) as pool:
            ids = list(pool.map(predict, range(12)))
        serve.wait_events("sent", 2 * len(ids), timeout=120)
        assert serve.events("failed") == 0
    finally:
        log = serve.stop()
    assert "Traceback" not in log, log[-2000:]
    records = broker.consume(topic, 2 * len(ids))
    assert sorted(r.key for r in records) == sorted(ids * 2)
    for r in records:
        value = orjson.loads(r.value)
        tensor = value["inputs" if r.headers["ce_type"] == REQUEST else "outputs"][0]
        assert tensor["shape"][0] == len(rows), tensor["shape"]
