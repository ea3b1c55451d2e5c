"""`kustos rollout`: the status table (pure) and its argument checks."""

from __future__ import annotations

import pytest

from kustos import cli, rollout_cli

MD = {
    "metadata": {"name": "iris", "namespace": "ml"},
    "spec": {"rollout": {"steps": [{"weight": 10}, {"weight": 50}, {"weight": 100}]}},
    "status": {"rollout": {
        "phase": "RolledBack", "steps": 3, "weight": 0,
        "stable": {"version": "1", "uri": "s3://m/v1.skops"},
        "candidate": {"version": "2", "uri": "s3://m/v2.skops"},
        "message": "rolled back at step 1/3 weight 10%: errorRate 0.2 beyond threshold 0.01",
        "lastAnalysis": {"time": "2026-01-01T12:00:00Z", "verdict": "fail", "metrics": {
            "errorRate": {"stable": 0.0, "candidate": 0.2, "value": 0.2, "threshold": 0.01,
                          "samples": 450, "verdict": "fail"},
            "latencyP99": {"threshold": 1.5, "samples": 12, "verdict": "inconclusive",
                           "reason": "12 samples, 100 needed"}}}}},
}


def test_status_shows_phase_models_and_the_gates() -> None:
    text = rollout_cli.describe(MD)
    assert "phase:     RolledBack" in text and "weight:    0%" in text
    assert "stable:    version 1 (s3://m/v1.skops)" in text
    assert "candidate: version 2 (s3://m/v2.skops)" in text
    assert "last analysis 2026-01-01T12:00:00Z: fail" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[-3:]}
    assert rows["errorRate"] == ["errorRate", "0", "0.2", "0.2", "0.01", "450", "fail"]
    assert rows["latencyP99"][1:3] == ["-", "-"]
    assert rows["latencyP99"][-5:] == ["inconclusive", "(12", "samples,", "100", "needed)"]


def test_status_without_a_rollout() -> None:
    plain = {"metadata": {"name": "iris", "namespace": "ml"}, "spec": {}}
    assert rollout_cli.describe(plain) == "ml/iris has no spec.rollout"
    fresh = {**plain, "spec": MD["spec"]}
    assert rollout_cli.describe(fresh) == "ml/iris: no rollout recorded yet"


def test_unknown_subcommand_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["rollout", "retry", "iris"])
    assert exc.value.code == 2
    assert "invalid choice: 'retry'" in capsys.readouterr().err
