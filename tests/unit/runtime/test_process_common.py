"""kustos.runtime.process: the pieces `kustos serve`, `kustos explain` and `kustos drift`
share (flags, usage problems, listening), and that it stays free of heavy imports."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest

from kustos.runtime import process
from kustos.runtime.drift.cli import build_parser as drift_parser
from kustos.runtime.explain.cli import build_parser as explain_parser
from kustos.runtime.server.cli import build_parser as serve_parser
from kustos.runtime.server.http import HttpServer


def test_listen_flags_keep_each_process_defaults() -> None:
    serve = serve_parser().parse_args(["--model", "m.skops", "--name", "iris"])
    explain = explain_parser().parse_args(["--model", "m", "--name", "n",
                                           "--background-uri", "bg.csv"])
    drift = drift_parser().parse_args(["--detector", "ks", "--reference-uri", "r.csv"])
    assert (serve.host, serve.port) == ("127.0.0.1", 8080)
    assert (explain.host, explain.port) == ("0.0.0.0", 8090)
    assert (drift.host, drift.port) == ("0.0.0.0", 8091)
    assert serve.max_body_bytes == explain.max_body_bytes == drift.max_body_bytes == 16 << 20
    # drift's --log-level has no choices: a value the others refuse still parses
    assert drift_parser().parse_args(["--detector", "ks", "--reference-uri", "r.csv",
                                      "--log-level", "CRITICAL"]).log_level == "CRITICAL"
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["--model", "m", "--name", "n", "--log-level", "CRITICAL"])


def test_parse_reports_the_problem_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    def check(args: object) -> str | None:
        return "--port must be 0..65535"

    assert process.parse(serve_parser(), check, ["--model", "m", "--name", "n"]) is None
    assert capsys.readouterr().err == "kustos serve: --port must be 0..65535\n"
    assert process.parse(serve_parser(), lambda a: None, ["--model", "m", "--name", "n"])


def test_listen_logs_and_returns_none_on_a_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    class Nothing:
        def handle(self, request: object, reply: object) -> None:
            raise AssertionError("no request expected")

    log = logging.getLogger("kustos.test-process")

    async def go() -> tuple[int | None, int | None]:
        first = HttpServer(Nothing(), max_body=1024)  # type: ignore[arg-type]
        second = HttpServer(Nothing(), max_body=1024)  # type: ignore[arg-type]
        bound = await process.listen(first, log, "127.0.0.1", 0, detail=", test")
        assert bound is not None
        taken = await process.listen(second, log, "127.0.0.1", bound)
        await first.shutdown(1.0)
        return bound, taken

    with caplog.at_level(logging.INFO, logger="kustos.test-process"):
        bound, taken = asyncio.run(go())
    assert taken is None and bound
    text = caplog.text
    assert f"listening on 127.0.0.1:{bound} (pid " in text and "), test" in text
    assert f"cannot listen on 127.0.0.1:{bound}" in text


def test_imports_nothing_heavy() -> None:
    # kustos serve imports this before PROMETHEUS_MULTIPROC_DIR is set; the drift venv
    # has no shap or sklearn.
    code = ("import sys, kustos.runtime.process, kustos.runtime.server.cli, "
            "kustos.runtime.drift.cli, kustos.runtime.explain.cli\n"
            "bad = [m for m in ('prometheus_client', 'kubernetes', 'numpy', 'shap', 'sklearn',"
            " 'alibi_detect') if m in sys.modules]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
