"""The Seldon runtime, for real: seldon-core in its own venv, running exactly the container
that `runtime_container()` renders for kind ``seldon``, serving a real sklearn model
through operator/kustos/runtime/seldon_adapter.py.

The first run builds the venv (about a minute); later runs reuse it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import NetnsServer
from rendered import REPO, container_port, local_command, probe_url, site_packages, train_in
from venvs import ensure_venv

from kustos.render.runtimes import (
    SELDON_ADAPTER_MODULE,
    ServingSpec,
    runtime_container,
    runtime_ports,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ADAPTER = REPO / "operator" / "kustos" / "runtime" / "seldon_adapter.py"
START_TIMEOUT = 90


@pytest.fixture(scope="module")
def venv() -> Path:
    path = ensure_venv("seldon")
    # What images/seldon.Dockerfile does: the adapter as a top-level module, copied fresh
    # so the test always runs the working tree's adapter.
    shutil.copyfile(ADAPTER, site_packages(path) / f"{SELDON_ADAPTER_MODULE}.py")
    return path


def _spec(model_file: str, digest: str | None) -> ServingSpec:
    return ServingSpec(kind="seldon", image="kustos-seldon:test", model_name="forest",
                       model_version="3", model_file=model_file, model_format="sklearn",
                       digest=digest)


@pytest.fixture
def start(venv: Path, tmp_path: Path) -> Iterator[Any]:
    servers: list[NetnsServer] = []

    def _start(container: dict[str, Any], model_dir: Path) -> NetnsServer:
        scratch = tmp_path / "scratch"
        scratch.mkdir(exist_ok=True)
        workdir = tmp_path / "workdir"
        workdir.mkdir(exist_ok=True)
        argv, env = local_command(container, venv, model_dir, scratch)
        server = NetnsServer(argv, env, cwd=workdir, log=tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


@pytest.mark.parametrize(("kind", "fmt"), [("forest", "skops"), ("logreg", "joblib")])
def test_rendered_seldon_container_serves_predictions(
    venv: Path, tmp_path: Path, start: Any, kind: str, fmt: str
) -> None:
    model_dir = tmp_path / "models"
    expected = train_in(venv, kind, model_dir, fmt)
    spec = _spec(expected["file"], expected["digest"])
    container = runtime_container(spec)
    assert container["command"] == ["seldon-core-microservice"]

    server = start(container, model_dir)
    server.wait_ready(probe_url(container, "readinessProbe"), START_TIMEOUT)
    status, _ = server.request("GET", probe_url(container, "livenessProbe"))
    assert status == 200

    ports = runtime_ports(spec)
    assert container_port(container, "http") == ports.http == 9000
    base = f"http://127.0.0.1:{ports.http}"
    status, body = server.request("POST", f"{base}/api/v1.0/predictions",
                                  {"data": {"ndarray": expected["rows"]}})
    assert status == 200, body
    assert body["data"]["ndarray"] == expected["predictions"]
    assert len(set(expected["predictions"])) > 1  # the sample really exercises the model

    # One row sent as a flat list is one row, not n_features rows of one feature.
    status, body = server.request("POST", f"{base}/api/v1.0/predictions",
                                  {"data": {"ndarray": expected["rows"][0]}})
    assert status == 200, body
    assert body["data"]["ndarray"] == expected["predictions"][:1]

    # A row of the wrong width is the client's error, reported as such.
    status, body = server.request("POST", f"{base}/api/v1.0/predictions",
                                  {"data": {"ndarray": [[1.0, 2.0]]}})
    assert status >= 400, body

    status, meta = server.request("GET", f"{base}/api/v1.0/metadata")
    assert status == 200, meta
    assert meta["name"] == "forest" and meta["versions"] == ["3"]
    assert meta["platform"] == "sklearn"
    assert meta["inputs"][0]["schema"]["shape"] == [expected["n_features"]]
    assert meta["custom"]["digest"] == expected["digest"]

    assert ports.metrics == 6000
    status, metrics = server.request("GET",
                                     f"http://127.0.0.1:{ports.metrics}{ports.metrics_path}")
    assert status == 200
    # The adapter's own metrics: 8 + 1 rows predicted (the failed request and the
    # probes do not count).
    assert 'kustos_seldon_predict_rows_total{' in metrics
    rows = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("kustos_seldon_predict_rows_total{"))
    assert rows == len(expected["rows"]) + 1
    assert "kustos_seldon_predict_seconds_bucket{" in metrics

    # Read-only root filesystem: nothing written to the working directory.
    assert list((tmp_path / "workdir").iterdir()) == []


def test_seldon_container_refuses_a_model_that_does_not_match_its_digest(
    venv: Path, tmp_path: Path, start: Any
) -> None:
    model_dir = tmp_path / "models"
    expected = train_in(venv, "logreg", model_dir, "joblib")
    wrong = "sha256:" + "0" * 64
    container = runtime_container(_spec(expected["file"], wrong))
    server = start(container, model_dir)
    server.proc.wait(timeout=START_TIMEOUT)
    assert server.proc.returncode != 0
    assert "expected " + wrong in server.output()


def test_seldon_container_refuses_a_pickle_without_digest(
    venv: Path, tmp_path: Path, start: Any
) -> None:
    model_dir = tmp_path / "models"
    expected = train_in(venv, "logreg", model_dir, "joblib")
    container = runtime_container(_spec(expected["file"], None))
    server = start(container, model_dir)
    server.proc.wait(timeout=START_TIMEOUT)
    assert server.proc.returncode != 0
    assert "refusing to unpickle" in server.output()
