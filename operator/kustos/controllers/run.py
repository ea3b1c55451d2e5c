"""`kustos run`: the operator process (kopf with Kustos' settings)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import secrets
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from prometheus_client import start_http_server

from kustos import config as config_mod
from kustos.k8s import config as k8s_config

from . import handled, peering
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
    p.add_argument("--priority", type=int, default=None,
                   help="peering priority: the highest acts, the others wait (default: random,"
                        " so replicas of one Deployment never tie; kopf pauses all tied peers)")
    p.add_argument("-v", "--verbose", action="store_true")
    hook = p.add_argument_group("admission webhook (GovernancePolicy enforcement)")
    hook.add_argument("--webhook", action="store_true",
                      help="serve the validating admission webhook over HTTPS")
    hook.add_argument("--webhook-port", type=int, default=9443, help="webhook port")
    hook.add_argument("--webhook-bind", default="0.0.0.0", help="webhook listen address")
    hook.add_argument("--webhook-host", action="append", default=[],
                      help="name or IP the API server uses to reach the webhook (repeatable; "
                           "the self-signed certificate's SANs; the first is the URL's host)")
    hook.add_argument("--webhook-cert", help="serving certificate (PEM); self-signed if unset")
    hook.add_argument("--webhook-key", help="private key of --webhook-cert (PEM)")
    hook.add_argument("--webhook-secret", metavar="NAME",
                      help="keep the certificate in TLS Secret NAME (instead of --webhook-cert):"
                           " read at start, created with a new CA and a serving certificate "
                           "for the --webhook-host names when absent, renewed before expiry")
    hook.add_argument("--webhook-secret-namespace", metavar="NS",
                      help="namespace of --webhook-secret (default: $POD_NAMESPACE)")
    hook.add_argument("--webhook-inject-ca", metavar="NAME",
                      help="keep the caBundle of the installation's "
                           "ValidatingWebhookConfiguration NAME equal to --webhook-secret's CA")
    hook.add_argument("--webhook-configuration", metavar="NAME",
                      help="register ValidatingWebhookConfiguration NAME pointing at "
                           "https://HOST:PORT with this certificate (without it, the "
                           "installation provides the configuration)")
    hook.add_argument("--webhook-namespace-selector", metavar="K=V,...",
                      help="namespaces the registered configuration covers (default: all "
                           "but kube-system, kube-public, kube-node-lease)")
    return p


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo | None:
    """kopf's watches use the very configuration kustos.k8s requests with (one loader, one
    token-file reader, one exec-plugin cache): the ServiceAccount by the Service's IP (no
    cluster DNS needed), else the kubeconfig, exec plugins included."""
    from kustos.k8s import client

    try:
        return connection_info(client.api().config)
    except k8s_config.ConfigError as err:
        # No credentials: kopf then stops with LoginError (a raised error would leave its
        # authentication task dead and the operator hanging).
        logging.getLogger("kustos.login").error("no Kubernetes API configuration: %s", err)
        return None


def connection_info(cfg: k8s_config.Config) -> kopf.ConnectionInfo:
    """A kustos.k8s.config.Config as kopf's ConnectionInfo; credentials that can change
    (a rotating token file, an exec plugin) expire so that kopf asks again."""
    auth = cfg.credentials.auth()
    header = auth.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    token = username = password = None
    if scheme == "Bearer":
        token = value
    elif scheme == "Basic":
        username, _, password = base64.b64decode(value).decode().partition(":")
    # As data, not paths: files written from kubeconfig data go with the Config object.
    cert = key = None
    if auth.cert:
        with open(auth.cert[0], "rb") as c, open(auth.cert[1], "rb") as k:
            cert, key = c.read(), k.read()
    expiration = (datetime.now(UTC) + timedelta(seconds=k8s_config.TOKEN_MAX_AGE)
                  if cfg.credentials.refreshable else None)
    return kopf.ConnectionInfo(
        server=cfg.server, ca_path=cfg.ca_file, ca_data=cfg.ca_data,
        insecure=cfg.insecure or None, scheme="Bearer" if token else None, token=token,
        username=username, password=password, certificate_data=cert, private_key_data=key,
        expiration=expiration)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # What kopf remembers of each object in memory, not in annotations: no write per
    # handled change (controllers/handled.py). Its touches go under our prefix.
    handled.install(settings, memo, prefix="kustos.dev")
    # Children and serving pods are not kopf's to watch: controllers/child_watches.py.
    # Events are posted deliberately (kustos.k8s.events), not one per log line.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 8
    # main() puts the webhook server (--webhook) in the operator-wide memo it hands kopf.
    server = getattr(memo, "kustos_webhook_server", None)
    if server is not None:
        settings.admission.server = server


@kopf.on.startup()
async def keep_webhook_certificate(memo: kopf.Memo, **_: Any) -> None:
    """The webhook certificate's upkeep (--webhook-secret), a task of kopf's loop."""
    keeper = getattr(memo, "kustos_webhook_keeper", None)
    if keeper is not None:
        memo.kustos_webhook_keeper_task = asyncio.create_task(keeper.loop())


@kopf.on.cleanup()
async def stop_keeping_webhook_certificate(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "kustos_webhook_keeper_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handler success per object; ours say what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    set_config(config_mod.load(args.config))
    # Handlers register themselves on import.
    from . import (  # noqa: F401
        batchinference,
        driftmonitor,
        explainerspec,
        governance,
        model_events,
        modeldeployment,
        registry,
        rollout,
        vault,
    )

    # kopf's operator-wide memo: what the startup handlers pick up (the peering, the
    # webhook server), each controller's own state added by its startup handler.
    memo = kopf.Memo()
    if args.webhook:
        problem = _setup_webhook(args, memo)
        if problem:
            print(f"kustos run: {problem}", file=sys.stderr)
            return 1

    if args.metrics_port:
        try:
            start_http_server(args.metrics_port, addr=args.metrics_bind)
        except OSError as err:
            print(f"kustos run: cannot serve metrics on {args.metrics_bind}:{args.metrics_port}:"
                  f" {err.strerror}", file=sys.stderr)
            return 1
    namespaces = args.namespace
    priority = args.priority if args.priority is not None else secrets.randbelow(2**31)
    # The background loops outside kopf's handlers check the same peering (peering.py);
    # their startup handlers find it in kopf's operator-wide memo, as ``memo.peering``.
    peers = peering.Peering(args.peering, priority, clusterwide=not namespaces,
                            namespaces=namespaces)
    memo.peering = peers
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness or None,
        priority=priority,
        # Ours (peering.own_identity), so kopf's keep-alives and peering.py name this
        # process alike; kopf's Identity type (a NewType of str) is not exported.
        identity=peers.identity,  # type: ignore[arg-type]
        memo=memo,
    )
    return 0


def _setup_webhook(args: argparse.Namespace, memo: kopf.Memo) -> str | None:
    """Configure the webhook server into ``memo.kustos_webhook_server`` (and register its
    configuration if asked); an error message for a bad combination of flags, or for a
    certificate Secret that cannot be read or created."""
    import os
    from pathlib import Path

    from kustos.governance import certificate, tls, webhook  # noqa: F401  (registers the handler)
    from kustos.k8s import client
    from kustos.render.webhook import parse_selector, render_configuration

    if bool(args.webhook_cert) != bool(args.webhook_key):
        return "--webhook-cert and --webhook-key go together"
    if args.webhook_secret and args.webhook_cert:
        return "--webhook-secret and --webhook-cert exclude each other"
    if args.webhook_inject_ca and not args.webhook_secret:
        return "--webhook-inject-ca needs --webhook-secret"
    hosts = args.webhook_host or ["localhost"]
    ca_bundle: bytes
    if args.webhook_secret:
        namespace = args.webhook_secret_namespace or os.environ.get("POD_NAMESPACE", "")
        if not namespace:
            return "--webhook-secret needs --webhook-secret-namespace (or $POD_NAMESPACE)"
        if not args.webhook_host:
            return "--webhook-secret needs --webhook-host (the names in the certificate)"
        try:
            bundle, what = certificate.ensure(args.webhook_secret, namespace, hosts)
        except (certificate.CertificateError, client.ApiError) as err:
            return f"webhook certificate: {err}"
        files = certificate.ServingFile()
        files.write(bundle)
        logging.getLogger("kustos.webhook").info(
            "webhook certificate from Secret %s/%s (%s): %s, for %s", namespace,
            args.webhook_secret, what, tls.describe(bundle), ", ".join(hosts))
        # One file holds key and certificate: a renewal replaces both at once.
        cert = key = files.path
        ca_bundle = bundle.ca_cert
        # started at kopf's startup, cancelled at its cleanup (keep_webhook_certificate)
        memo.kustos_webhook_keeper = certificate.Keeper(
            args.webhook_secret, namespace, hosts, args.webhook_inject_ca, files, bundle)
    elif args.webhook_cert:
        cert, key = Path(args.webhook_cert), Path(args.webhook_key)
        ca_bundle = cert.read_bytes()
    else:
        cert, key = tls.write_self_signed(hosts)
        ca_bundle = cert.read_bytes()
    # cadata: what kopf would put in a client configuration, never the key file's content.
    memo.kustos_webhook_server = kopf.WebhookServer(
        addr=args.webhook_bind, port=args.webhook_port, host=hosts[0], certfile=str(cert),
        pkeyfile=str(key), cadata=ca_bundle, file_check_interval=10)
    if args.webhook_configuration:
        try:
            selector = (parse_selector(args.webhook_namespace_selector)
                        if args.webhook_namespace_selector else None)
        except ValueError as err:
            return f"--webhook-namespace-selector: {err}"
        host = hosts[0] if ":" not in hosts[0] else f"[{hosts[0]}]"
        client.apply(render_configuration(
            args.webhook_configuration, ca_bundle=ca_bundle,
            url=f"https://{host}:{args.webhook_port}", namespace_selector=selector))
    return None
