"""The `kustos` dispatcher: subcommands, help, and `kustos crds` output."""

from __future__ import annotations

import sys

import pytest
import yaml

from kustos import cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name}" in out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["launch"]) == 2
    assert "unknown command 'launch'" in capsys.readouterr().err


def test_crds_prints_all_three(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crds"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert sorted(d["spec"]["names"]["kind"] for d in docs) == [
        "BatchInference", "DriftMonitor", "ExplainerSpec", "GovernancePolicy",
        "ModelDeployment"]


def test_serve_does_not_import_the_api_client() -> None:
    # Data-plane commands stay light: the pods never load the operator's API client
    # (kustos.k8s) or its dependencies.
    import subprocess

    code = ("import sys, kustos.cli, kustos.runtime.server.cli, kustos.runtime.fetch;"
            "print(sorted(m for m in sys.modules if m == 'kopf' or m == 'kubernetes'"
            " or m.startswith('kustos.k8s')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
