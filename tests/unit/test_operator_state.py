"""The operator's state lives in kopf's memo, its background loop is an asyncio task.

Without a cluster: the sidecar collection (controllers/sidecars.py) is exercised with a
fake refresh registered for a test kind (no Kubernetes API involved), governance's
bookkeeping (controllers/governance.py) through its handlers' paths that make no API
call, and run.py's webhook server through the memo its startup handler reads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest

from kustos.controllers import governance, run, sidecars
from kustos.controllers.context import backoff
from kustos.controllers.indexes import ATTACHMENT_INDEX, ChildCache, Lookup

KIND = "TestSidecarKind"
# What kopf hands the startup handlers: every index by name (empty here).
INDEXES: dict[str, Any] = {name: {} for name in ATTACHMENT_INDEX.values()}
LOOKUP = Lookup(INDEXES, ChildCache())


class FakeRefresh:
    """A refresh for KIND: records (namespace, name, thread) and fails for the names in
    ``failing``; ``gate`` (when set) holds each call until it is opened."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.failing: set[str] = set()
        self.gate: threading.Event | None = None
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, namespace: str, name: str, lookup: Lookup) -> None:
        assert lookup is LOOKUP  # the Collector's, from kopf's indexes
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "the gate was never opened"
            with self._lock:
                self.calls.append((namespace, name, threading.current_thread().name))
            if name in self.failing:
                raise RuntimeError(f"{name} is broken")
        finally:
            with self._lock:
                self.running -= 1

    def names(self) -> list[str]:
        with self._lock:
            return [name for _, name, _ in self.calls]


@pytest.fixture
def fake() -> Iterator[FakeRefresh]:
    refresh = FakeRefresh()
    sidecars.register(KIND, refresh)
    try:
        yield refresh
    finally:
        sidecars._REFRESH.pop(KIND, None)


def run_async(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- the sidecar collection -----------------------------------------------------------


def test_a_round_refreshes_every_known_object_in_threads(fake: FakeRefresh) -> None:
    async def test() -> None:
        c = sidecars.Collector(LOOKUP)
        c.seen(KIND, "ns", "a")
        c.seen(KIND, "ns", "b")
        c.seen(KIND, "ns", "a")  # seen again: still one entry
        await c.run_once()
        assert sorted(fake.names()) == ["a", "b"]
        loop_thread = threading.current_thread().name
        assert all(thread != loop_thread for _, _, thread in fake.calls)
        assert all(e.failures == 0 and e.due == 0.0 for e in c.known.values())

    run_async(test)


def test_a_failure_backs_off_that_object_only(fake: FakeRefresh) -> None:
    async def test() -> None:
        c = sidecars.Collector(LOOKUP)
        c.seen(KIND, "ns", "bad")
        c.seen(KIND, "ns", "good")
        fake.failing = {"bad"}
        before = time.monotonic()
        await c.run_once()
        bad = c.known[(KIND, "ns", "bad")]
        assert bad.failures == 1
        assert bad.due >= before + backoff(0)
        await c.run_once()  # still backing off: only the good one again
        assert fake.names().count("bad") == 1
        assert fake.names().count("good") == 2
        bad.due = 0.0  # its retry is due: fails again, twice the delay
        before = time.monotonic()
        await c.run_once()
        assert bad.failures == 2
        assert bad.due >= before + backoff(1) > before + backoff(0)
        fake.failing = set()
        bad.due = 0.0
        await c.run_once()  # recovered: the backoff is gone
        assert (bad.failures, bad.due) == (0, 0.0)

    run_async(test)


def test_deleted_objects_are_dropped_with_their_backoff(fake: FakeRefresh) -> None:
    async def test() -> None:
        c = sidecars.Collector(LOOKUP)
        c.seen(KIND, "ns", "gone")
        fake.failing = {"gone"}
        await c.run_once()
        assert c.known[(KIND, "ns", "gone")].failures == 1
        c.seen(KIND, "ns", "gone", deleted=True)
        assert c.known == {}
        c.seen(KIND, "ns", "gone")  # re-created: a fresh start, no inherited backoff
        assert c.known[(KIND, "ns", "gone")].failures == 0

    run_async(test)


def test_an_object_deleted_while_waiting_for_a_slot_is_skipped(fake: FakeRefresh) -> None:
    async def test() -> None:
        c = sidecars.Collector(LOOKUP, workers=1)
        c.seen(KIND, "ns", "first")
        c.seen(KIND, "ns", "second")
        fake.gate = threading.Event()
        round_ = asyncio.create_task(c.run_once())
        await until(lambda: fake.running == 1)
        c.seen(KIND, "ns", "second", deleted=True)
        fake.gate.set()
        await round_
        assert fake.names() == ["first"]

    run_async(test)


def test_a_few_at_a_time(fake: FakeRefresh) -> None:
    async def test() -> None:
        c = sidecars.Collector(LOOKUP, workers=3)
        for i in range(10):
            c.seen(KIND, "ns", f"o{i}")
        fake.gate = threading.Event()
        round_ = asyncio.create_task(c.run_once())
        await until(lambda: fake.running == 3)
        await asyncio.sleep(0.1)
        assert fake.running == 3  # no fourth one started
        fake.gate.set()
        await round_
        assert len(fake.calls) == 10
        assert fake.most == 3

    run_async(test)


def test_the_task_runs_rounds_until_cancelled(fake: FakeRefresh) -> None:
    async def test() -> None:
        c = sidecars.Collector(LOOKUP)
        c.seen(KIND, "ns", "a")
        c.start(0.02, lambda: True)
        await until(lambda: len(fake.calls) >= 3)
        task = c.task
        assert task is not None
        await c.stop()
        assert task.done() and c.task is None
        calls = len(fake.calls)
        await asyncio.sleep(0.1)
        assert len(fake.calls) == calls

    run_async(test)


def test_a_standby_peer_refreshes_nothing(fake: FakeRefresh) -> None:
    async def test() -> None:
        c = sidecars.Collector(LOOKUP)
        c.seen(KIND, "ns", "a")
        asked: list[str] = []

        def standby() -> bool:
            asked.append(threading.current_thread().name)
            return False

        c.start(0.02, standby)
        await until(lambda: len(asked) >= 3)
        await c.stop()
        assert fake.calls == []
        # The peering check reads the API: never on the event loop.
        assert threading.current_thread().name not in asked

    run_async(test)


def test_a_failing_round_does_not_end_the_task(fake: FakeRefresh) -> None:
    async def test() -> None:
        c = sidecars.Collector(LOOKUP)
        c.seen(KIND, "ns", "a")
        answers = iter([RuntimeError("peering check broke")])

        def active() -> bool:
            err = next(answers, None)
            if err is not None:
                raise err
            return True

        c.start(0.02, active)
        await until(lambda: len(fake.calls) >= 1)
        await c.stop()

    run_async(test)


def test_startup_puts_the_collector_in_the_memo_and_cleanup_stops_it() -> None:
    async def test() -> None:
        memo = kopf.Memo()
        await sidecars.start_collecting(memo=memo, **INDEXES)  # memo: where the cache lives
        found = sidecars.collector(memo)
        assert isinstance(found, sidecars.Collector)
        assert found.lookup.targeting("ExplainerSpec", "ns", "m") == []
        task = found.task
        assert task is not None and not task.done()
        # kopf hands each handler a shallow copy of the operator's memo: the same object.
        assert sidecars.collector(kopf.Memo(memo)) is found
        await sidecars.stop_collecting(memo=memo)
        assert task.done()
        await sidecars.stop_collecting(memo=kopf.Memo())  # nothing started: nothing to do

    run_async(test)


def test_the_event_handlers_keep_the_known_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from kustos.controllers import driftmonitor, explainerspec

    deleted: list[tuple[str, str, str]] = []

    def after_delete(kind: str, body: Any, state: Any) -> None:
        deleted.append((kind, body["metadata"]["name"], threading.current_thread().name))

    monkeypatch.setattr(sidecars, "_deleted", after_delete)

    async def test() -> None:
        memo = kopf.Memo(kustos_sidecars=sidecars.Collector(LOOKUP), kustos_models=object())
        es = {"metadata": {"namespace": "ns", "name": "e"}, "spec": {}}
        dm = {"metadata": {"namespace": "ns", "name": "d"}, "spec": {}}
        await explainerspec.explainerspec_event(body=es, type=None, memo=memo)
        await driftmonitor.driftmonitor_event(body=dm, type="ADDED", memo=memo)
        await driftmonitor.driftmonitor_event(body=dm, type="MODIFIED", memo=memo)
        known = sidecars.collector(memo).known
        assert set(known) == {("ExplainerSpec", "ns", "e"), ("DriftMonitor", "ns", "d")}
        await explainerspec.explainerspec_event(body=es, type="DELETED", memo=memo)
        assert set(known) == {("DriftMonitor", "ns", "d")}
        ((kind, name, thread),) = deleted
        assert (kind, name) == ("ExplainerSpec", "e")
        assert thread != threading.current_thread().name  # re-render: blocking, a thread

    run_async(test)


# --- governance's bookkeeping -------------------------------------------------------------


def test_governance_state_is_in_the_memo_and_pruned_on_deletion() -> None:
    memo = kopf.Memo()
    governance.create_governance_state(memo=memo)
    state = governance.governance(memo)
    assert governance.governance(kopf.Memo(memo)) is state

    key = ("ExplainerSpec", "ns", "e")
    assert state.retarget(key, "iris") is None
    assert state.retarget(key, "iris") == "iris"
    assert state.retarget(key, "wine") == "iris"
    assert state.retarget(key, None) == "wine"  # deleted
    assert state.retarget(key, None) is None

    assert state.respec("p", {"a": 1}) is None
    assert state.respec("p", {"a": 2}) == {"a": 1}
    assert state.respec("p", None) == {"a": 2}
    assert len(state) == 0


def test_namespace_events_rejudge_only_on_a_label_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    judged: list[str] = []
    monkeypatch.setattr(governance, "_rejudge_namespace",
                        lambda namespace, idx: judged.append(namespace))
    memo = kopf.Memo(kustos_governance=governance.Governance())
    idx = {"memo": memo}
    governance.namespace_changed(name="ns", labels={"a": "1"}, type=None, **idx)
    governance.namespace_changed(name="ns", labels={"a": "1"}, type="MODIFIED", **idx)
    assert judged == []  # first sight (the models judge themselves), then no change
    governance.namespace_changed(name="ns", labels={"a": "2"}, type="MODIFIED", **idx)
    assert judged == ["ns"]
    governance.namespace_changed(name="ns", labels={}, type="DELETED", **idx)
    assert len(governance.governance(memo)) == 0
    governance.namespace_changed(name="ns", labels={"a": "3"}, type="ADDED", **idx)
    assert judged == ["ns"]  # re-created: a first sight again


def test_a_deleted_policy_is_forgotten() -> None:
    memo = kopf.Memo(kustos_governance=governance.Governance())
    state = governance.governance(memo)
    state.respec("p", {"namespaceSelector": {"matchLabels": {"x": "y"}}})
    body = {"metadata": {"name": "p"}, "spec": {}}
    governance.policy_changed(body=body, name="p", type="DELETED", memo=memo,
                              kustos_gov_namespaces={})
    assert len(state) == 0


def test_a_model_is_judged_again_only_when_its_spec_or_the_inputs_changed() -> None:
    """Most ModelDeployment events are status writes: they re-judge nothing. A new
    generation, or a change of a policy, a namespace's labels or an attachment's target,
    does. The models seen are kept by namespace (what a policy change re-judges)."""
    state = governance.Governance()
    meta = {"name": "m", "namespace": "ns", "uid": "u", "generation": 1}
    at = state.model_seen(meta, deleted=False)
    assert at is not None
    state.judged("u", at)
    assert state.model_seen(meta, deleted=False) is None          # a status write
    assert state.model_seen({**meta, "generation": 2}, deleted=False) is not None
    state.judged("u", (2, at[1]))
    state.respec("p", {"namespaceSelector": {}})                    # a policy changed
    assert state.model_seen({**meta, "generation": 2}, deleted=False) is not None
    assert state.models() == {"ns": ["m"]} and state.models("other") == {}
    assert state.model_seen(meta, deleted=True) is None
    assert state.models() == {}


# --- run.py: the webhook server goes through the memo -----------------------------------


def test_the_webhook_server_reaches_the_settings_through_the_memo(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")
    args = run.parser().parse_args([
        "--webhook", "--webhook-port", "9555", "--webhook-host", "hook.example",
        "--webhook-cert", str(cert), "--webhook-key", str(key)])
    memo = kopf.Memo()
    assert run._setup_webhook(args, memo) is None
    server = memo.kustos_webhook_server
    assert isinstance(server, kopf.WebhookServer)
    assert (server.port, server.host, server.certfile) == (9555, "hook.example", str(cert))

    settings = kopf.OperatorSettings()
    run.configure(settings=settings, memo=memo)
    assert settings.admission.server is server

    plain = kopf.OperatorSettings()
    run.configure(settings=plain, memo=kopf.Memo())
    assert plain.admission.server is None
    assert not hasattr(run, "_webhook_server")


def test_webhook_flags_that_do_not_go_together() -> None:
    args = run.parser().parse_args(["--webhook", "--webhook-cert", "only.crt"])
    memo = kopf.Memo()
    assert run._setup_webhook(args, memo) == "--webhook-cert and --webhook-key go together"
    assert "kustos_webhook_server" not in memo
