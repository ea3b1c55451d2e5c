"""A real moto server (the S3/IAM/STS API) on a free loopback port, for the tests that
sign S3 requests themselves: started, waited for, stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from ports import free_port


@contextmanager
def moto_server(unauthenticated_calls: int | None = None) -> Iterator[str]:
    """Its endpoint URL while the block runs. ``unauthenticated_calls``: moto checks the
    SigV4 signature of every request after that many (the test's own set-up calls);
    None: it checks none."""
    port = free_port()
    env = dict(os.environ)
    if unauthenticated_calls is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(unauthenticated_calls)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"moto server did not start (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
