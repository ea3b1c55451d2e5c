"""What the three pod processes share: `kustos serve`, `kustos explain` and `kustos drift`.

Their listen flags, the usage-problem exit, logging, the event loop, stop-on-SIGTERM and
listening. Standard library only: `kustos serve` imports this before it picks
PROMETHEUS_MULTIPROC_DIR (prometheus_client reads it at import), and the drift sidecar's
venv has no shap or sklearn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kustos.runtime.server.http import HttpServer

DEFAULT_MAX_BODY = 16 << 20
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_listen_args(p: argparse.ArgumentParser, host: str, port: int) -> None:
    """--host, --port and --max-body-bytes, with this process's defaults."""
    p.add_argument("--host", default=host, help=f"address to listen on ({host})")
    p.add_argument("--port", type=int, default=port, help=f"port ({port}; 0 picks a free one)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY,
                   help="largest request body accepted (16 MiB)")


def add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default=os.environ.get("KUSTOS_LOG_LEVEL", "info"),
                   choices=("debug", "info", "warning", "error"))


def parse(parser: argparse.ArgumentParser, check: Callable[[argparse.Namespace], str | None],
          argv: list[str]) -> argparse.Namespace | None:
    """The parsed flags, or None after printing what ``check`` finds wrong (exit code 2)."""
    args = parser.parse_args(argv)
    problem = check(args)
    if problem:
        print(f"{parser.prog}: {problem}", file=sys.stderr)
        return None
    return args


def setup_logging(level: str, force: bool = True) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=force)


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(log_level: str, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Logging, uvloop when installed, then ``main()`` to completion; its exit code."""
    setup_logging(log_level)
    install_uvloop()
    return asyncio.run(main())


def stop_event(stop: asyncio.Event | None) -> asyncio.Event:
    """``stop`` as given (tests), else a new event SIGTERM and SIGINT set. In the loop."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def listen(server: HttpServer, log: logging.Logger, host: str, port: int,
                 reuse_port: bool = False, detail: str = "") -> int | None:
    """The bound port (``port`` may be 0), or None after logging why it cannot listen."""
    try:
        bound = await server.start(host, port, reuse_port=reuse_port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        return None
    log.info("listening on %s:%d (pid %d)%s", host, bound, os.getpid(), detail)
    return bound
