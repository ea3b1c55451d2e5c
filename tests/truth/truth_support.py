"""Helpers for the ground-truth monitor tests: `kustos truth` and `kustos serve` as real
processes on 127.0.0.1, HTTP in and out, a moto S3 server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from loopback_http import metrics, request  # noqa: F401  # the tests import them from here
from motoserver import moto_server
from ports import free_port
from procs import stop, wait_for

KUSTOS = str(Path(sys.executable).parent / "kustos")


def post(port: int, path: str, doc: Any, headers: dict[str, str] | None = None
         ) -> tuple[int, Any]:
    return request(port, "POST", path, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
                   headers)


class Proc:
    """A `kustos` subcommand on 127.0.0.1 with its log in ``workdir``."""

    def __init__(self, workdir: Path, name: str, args: list[str],
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = workdir / f"{name}-{self.port}.log"
        self.proc = subprocess.Popen(
            [KUSTOS, *args, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 90) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.logs()
            with contextlib.suppress(OSError):
                return request(self.port, "GET", "/v2/health/ready")[0] == 200
            return False

        assert wait_for(up, timeout), f"not ready in {timeout}s:\n{self.logs()}"

    def stop(self) -> int:
        return stop(self.proc, 20)


def truth(workdir: Path, config: Path, data_dir: Path, env: dict[str, str] | None = None
          ) -> Proc:
    return Proc(workdir, "truth", ["truth", "--config", str(config), "--data-dir",
                                   str(data_dir)], env)


def serve(workdir: Path, model: Path, name: str, *extra: str) -> Proc:
    return Proc(workdir, "serve", ["serve", "--model", str(model), "--name", name, *extra])


def status(port: int) -> dict[str, Any]:
    code, body = request(port, "GET", "/v1/truth/status")
    assert code == 200, body
    return dict(body)


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """A real moto S3 server on loopback with ``bucket``; the env a client needs."""
    import boto3

    with moto_server() as endpoint:
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing"
                     ).create_bucket(Bucket=bucket)
        yield env


def s3_put(env: dict[str, str], bucket: str, key: str, data: bytes) -> None:
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing"
                 ).put_object(Bucket=bucket, Key=key, Body=data)
