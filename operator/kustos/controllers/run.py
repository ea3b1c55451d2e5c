"""`kustos run`: the operator process (kopf with Kustos' settings)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import kopf
from prometheus_client import start_http_server

from kustos import config as config_mod
from kustos.render.meta import MANAGED, MANAGED_BY

from .context import set_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kustos run", description="Run the Kustos operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; globs as in kopf)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch all namespaces (the default when no --namespace is given)")
    p.add_argument("--config", help="operator config YAML (default: $KUSTOS_CONFIG)")
    p.add_argument("--metrics-bind", default="0.0.0.0", help="address for /metrics")
    p.add_argument("--metrics-port", type=int, default=8080, help="port for /metrics (0: off)")
    p.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                   help="liveness endpoint URL ('' to disable)")
    p.add_argument("--peering", default=None,
                   help="kopf peering name, so that only one of several replicas acts "
                        "(needs the KopfPeering CRDs); standalone when unset")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kopf's own bookkeeping goes to annotations under our prefix, never to status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kustos.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kustos.dev", key="last-handled-configuration")
    # Watch only our own Deployments: the API server filters, so other workloads' churn
    # never reaches the operator.
    settings.watching.label_selectors["apps", "v1", "deployments"] = f"{MANAGED}={MANAGED_BY}"
    # Events are posted deliberately (kustos.k8s.events), not one per log line.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 8


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handler success per object; ours say what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    set_config(config_mod.load(args.config))
    # Handlers register themselves on import.
    from . import modeldeployment  # noqa: F401

    if args.metrics_port:
        try:
            start_http_server(args.metrics_port, addr=args.metrics_bind)
        except OSError as err:
            print(f"kustos run: cannot serve metrics on {args.metrics_bind}:{args.metrics_port}:"
                  f" {err.strerror}", file=sys.stderr)
            return 1
    namespaces = args.namespace
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness or None,
    )
    return 0
