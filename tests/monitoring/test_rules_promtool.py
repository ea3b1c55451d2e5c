"""The shipped alert rules under Prometheus' own rule engine: `promtool check rules` on the
PrometheusRule's groups and the chart's copy, and `promtool test rules` on
manifests/monitoring/tests/rules-test.yaml (synthetic series; every alert fires where it
should, with its labels and annotations, and stays quiet where it should not).

promtool comes from hack/prometheus.sh build (in $KUSTOS_BIN, or $PROMTOOL). Without it the
tests are skipped, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "prometheus-rules.yaml"
CHART_RULES = REPO / "charts" / "kustos" / "files" / "prometheus-rules.yaml"
RULES_TEST = MONITORING / "tests" / "rules-test.yaml"


def _kustos_bin() -> Path:
    out = subprocess.run(["bash", "-c", '. "$1" && printf %s "$KUSTOS_BIN"', "-",
                          str(REPO / "hack" / "versions.sh")],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = os.environ.get("PROMTOOL") or str(_kustos_bin() / "promtool")
    if not (Path(found).is_file() and os.access(found, os.X_OK)):
        found = shutil.which("promtool") or ""
    if not found:
        msg = "promtool not built: run hack/prometheus.sh build"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def run(promtool: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def alerts() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["alert"] for g in doc["spec"]["groups"] for r in g["rules"] if "alert" in r]


def test_check_rules(promtool: str, tmp_path: Path) -> None:
    # The PrometheusRule's spec is what prometheus-operator hands to Prometheus.
    spec = tmp_path / "kustos-rules.yaml"
    spec.write_text(yaml.safe_dump({"groups": yaml.safe_load(RULES.read_text())["spec"]["groups"]}))
    for path in (spec, CHART_RULES):
        proc = run(promtool, "check", "rules", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout, proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test") or []:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for name in alerts():
        assert cases.get(name) == {True, False}, \
            f"{RULES_TEST.name} needs a case where {name} fires and one where it does not"


def test_alert_unit_tests_pass(promtool: str) -> None:
    proc = run(promtool, "test", "rules", str(RULES_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


@pytest.mark.parametrize("alert", alerts())
def test_an_alert_that_never_fires_fails_its_tests(promtool: str, tmp_path: Path,
                                                    alert: str) -> None:
    """The unit tests have teeth: with one alert's expression made never true, promtool
    fails, naming that alert."""
    rules: dict[str, Any] = yaml.safe_load(CHART_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(1) == 0"
    broken = tmp_path / "rules.yaml"
    broken.write_text(yaml.safe_dump(rules))
    test = yaml.safe_load(RULES_TEST.read_text())
    test["rule_files"] = [str(broken)]
    test_file = tmp_path / "rules-test.yaml"
    test_file.write_text(yaml.safe_dump(test))
    proc = run(promtool, "test", "rules", str(test_file))
    assert proc.returncode != 0, proc.stdout
    assert f"alertname: {alert}" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
