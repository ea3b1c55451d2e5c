"""Why pods do not start, as the kubelet reports it, becomes the Degraded reason."""

from __future__ import annotations

from typing import Any

from test_status import NOW, cond, deployment, md

from kustos.config import OperatorConfig
from kustos.status.modeldeployment import compute
from kustos.status.pods import MAX_MESSAGE, problem

DIGEST_LINE = ("kustos fetch: digest mismatch for s3://models/iris/model.skops: expected "
               "sha256:00aa, got sha256:11bb")


def pod(name: str = "iris-abc", init: list[dict[str, Any]] | None = None,
        containers: list[dict[str, Any]] | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {"metadata": meta, "status": {"initContainerStatuses": init or [],
                                         "containerStatuses": containers or []}}


def fetch_failed(message: str = f"downloading...\n{DIGEST_LINE}\n", where: str = "lastState",
                 code: int = 1) -> dict[str, Any]:
    term = {"terminated": {"exitCode": code, "reason": "Error", "message": message}}
    status: dict[str, Any] = {"name": "fetch-model", "state": {}, "lastState": {}}
    status[where] = term
    if where == "lastState":
        status["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    return status


def test_healthy_and_starting_pods_have_no_problem() -> None:
    starting = pod(init=[{"name": "fetch-model", "state": {"running": {}}}],
                   containers=[{"name": "server", "state": {"waiting": {
                       "reason": "PodInitializing"}}}])
    done = pod(init=[{"name": "fetch-model", "state": {"terminated": {"exitCode": 0}}}],
               containers=[{"name": "server", "state": {"running": {}}}])
    assert problem([starting, done]) is None


def test_fetch_failure_names_the_fetchers_last_line() -> None:
    for where in ("state", "lastState"):
        found = problem([pod(init=[fetch_failed(where=where)])])
        assert found is not None
        assert found.reason == "ModelFetchFailed"
        assert DIGEST_LINE in found.message and "downloading" not in found.message
        assert "iris-abc" in found.message


def test_fetch_failure_without_a_message_gives_the_exit_code() -> None:
    found = problem([pod(init=[fetch_failed(message="", code=3)])])
    assert found is not None and "exit code 3" in found.message


def test_long_messages_are_clipped() -> None:
    found = problem([pod(init=[fetch_failed(message="x" * 5000)])])
    assert found is not None and len(found.message) < MAX_MESSAGE + 100


def test_image_pull_and_config_and_crash_loop() -> None:
    pull = pod(containers=[{"name": "server", "image": "ghcr.io/x/y:1", "state": {"waiting": {
        "reason": "ErrImageNeverPull", "message": 'image "ghcr.io/x/y:1" is not present'}}}])
    found = problem([pull])
    assert found is not None and found.reason == "ImagePullFailed"
    assert "ErrImageNeverPull" in found.message and "ghcr.io/x/y:1" in found.message
    config = pod(containers=[{"name": "server", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "creds" not found'}}}])
    found = problem([config])
    assert found is not None and found.reason == "ContainerConfigError"
    crash = pod(containers=[{"name": "server", "state": {"waiting": {
        "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {
            "exitCode": 2, "message": "kustos serve: cannot load /mnt/models/model.skops"}}}])
    found = problem([crash])
    assert found is not None and found.reason == "ContainerCrashing"
    assert "cannot load" in found.message


def test_terminating_pods_are_ignored_and_the_answer_is_stable() -> None:
    assert problem([pod(init=[fetch_failed()], deleting=True)]) is None
    a = pod("iris-a", init=[fetch_failed(message="first")])
    b = pod("iris-b", init=[fetch_failed(message="second")])
    first, second = problem([b, a]), problem([a, b])
    assert first is not None and first == second and "first" in first.message


def test_pod_failure_makes_a_stuck_rollout_degraded_and_clears_when_done() -> None:
    failure = problem([pod(init=[fetch_failed()])])
    stuck = deployment(2, 0, available=False)
    status, notices = compute(md(), {"iris": stuck}, OperatorConfig(), NOW, pod_failure=failure)
    degraded = cond(status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ModelFetchFailed"
    assert DIGEST_LINE in degraded["message"]
    assert [n.reason for n in notices] == ["ModelFetchFailed"]
    assert notices[0].warning
    assert cond(status, "Ready")["status"] == "False"
    # Once the rollout completes, a stale pod report no longer counts.
    healthy, notices = compute(md(status=status), {"iris": deployment(2, 2)}, OperatorConfig(),
                               NOW, pod_failure=failure)
    assert cond(healthy, "Degraded")["status"] == "False"
    assert [n.reason for n in notices] == ["Recovered"]
