"""The MLServer runtime, for real: MLServer 1.7 in its own venv, running exactly the
container `runtime_container()` renders for kind ``mlserver``, answering V2 inference.

The first run builds the venv (about a minute); later runs reuse it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import NetnsServer
from rendered import local_command, probe_url, train_in
from venvs import ensure_venv

from kustos.render.runtimes import ServingSpec, runtime_container, runtime_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

START_TIMEOUT = 120


@pytest.fixture(scope="module")
def venv() -> Path:
    return ensure_venv("mlserver")


@pytest.fixture
def served(venv: Path, tmp_path: Path) -> Iterator[tuple[NetnsServer, ServingSpec, dict[str, Any]]]:
    model_dir = tmp_path / "models"
    expected = train_in(venv, "logreg", model_dir, "joblib")
    spec = ServingSpec(kind="mlserver", image="seldonio/mlserver:1.7.1", model_name="iris",
                       model_version="v2", model_file=expected["file"],
                       model_format="sklearn", digest=expected["digest"])
    container = runtime_container(spec)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    argv, env = local_command(container, venv, model_dir, scratch)
    server = NetnsServer(argv, env, cwd=workdir, log=tmp_path / "server.log")
    try:
        server.wait_ready(probe_url(container, "readinessProbe"), START_TIMEOUT)
        yield server, spec, expected
    finally:
        server.stop()


def test_rendered_mlserver_container_serves_v2_inference(
    served: tuple[NetnsServer, ServingSpec, dict[str, Any]],
) -> None:
    server, spec, expected = served
    container = runtime_container(spec)
    status, _ = server.request("GET", probe_url(container, "livenessProbe"))
    assert status == 200

    ports = runtime_ports(spec)
    base = f"http://127.0.0.1:{ports.http}/v2/models/{spec.model_name}"
    rows = expected["rows"]
    request = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])],
                           "datatype": "FP64", "data": rows}]}
    for url in (f"{base}/infer", f"{base}/versions/{spec.model_version}/infer"):
        status, body = server.request("POST", url, request)
        assert status == 200, body
        assert body["model_name"] == "iris" and body["model_version"] == "v2"
        assert body["outputs"][0]["data"] == expected["predictions"]
    assert len(set(expected["predictions"])) > 1

    status, meta = server.request("GET", base)
    assert status == 200 and meta["name"] == "iris", meta

    assert ports.metrics == 8082
    status, metrics = server.request("GET",
                                     f"http://127.0.0.1:{ports.metrics}{ports.metrics_path}")
    assert status == 200
    # MLServer labels the unversioned route version="None": one request on each route.
    assert 'model_infer_request_success_total{model="iris",version="v2"} 1.0' in metrics
    assert 'model_infer_request_success_total{model="iris",version="None"} 1.0' in metrics


def test_rendered_mlserver_container_writes_nothing_to_its_working_directory(
    served: tuple[NetnsServer, ServingSpec, dict[str, Any]], tmp_path: Path,
) -> None:
    # The pod's root filesystem is read-only: MLServer's defaults would put .metrics and
    # .envs in the working directory; the rendered env moves them under /tmp.
    server, _, _ = served
    assert list((tmp_path / "workdir").iterdir()) == []
    assert server.proc.poll() is None
