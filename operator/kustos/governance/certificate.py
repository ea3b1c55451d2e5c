"""The admission webhook's certificate, owned by the operator (`kustos run --webhook-secret`).

The installation renders no certificate (so a GitOps tool that renders without cluster
access, such as Argo CD, sees the same manifests every time). The operator instead:

- at start, reads the TLS Secret in its namespace; if it is absent, creates it with a new
  CA and a serving certificate for the webhook Service's names. Replicas that start
  together race on the create: the loser (409 AlreadyExists) reads the winner's, so all
  serve one certificate;
- serves with it (one PEM file of key and certificate, rewritten atomically, which kopf's
  webhook server re-reads when it changes);
- keeps the caBundle of the installation's ValidatingWebhookConfiguration equal to the CA
  (a server-side apply of that one field, `--webhook-inject-ca`), retrying until the
  configuration exists and putting it back if something resets it;
- renews the serving certificate (same CA, so the caBundle stays) 30 days before it
  expires, and replaces a Secret that is unusable, with a resourceVersion precondition:
  a replica that loses that race (409 Conflict) takes the winner's.

The key material goes to the Secret and the private file only: never to logs, Events,
status, annotations or exception messages.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from kustos.k8s import client
from kustos.k8s.client import ApiError
from kustos.render.webhook import WEBHOOK_NAME

from . import tls

log = logging.getLogger(__name__)

FIELD_CA = "ca.crt"
FIELD_CA_KEY = "ca.key"
FIELD_CERT = "tls.crt"
FIELD_KEY = "tls.key"
LABELS = {"app.kubernetes.io/name": "kustos", "app.kubernetes.io/part-of": "kustos",
          "app.kubernetes.io/component": "webhook-certificate",
          "app.kubernetes.io/managed-by": "kustos"}
# How often the keeper re-reads the Secret and the configuration, and how soon it retries
# while the configuration is missing (a GitOps sync creates it after the Deployment).
INTERVAL = 30.0
RETRY = 2.0


class CertificateError(Exception):
    """The Secret cannot be read or written; the message names no key material."""


def secret_manifest(name: str, namespace: str, bundle: tls.Bundle) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
            "data": _data(bundle)}


def _data(bundle: tls.Bundle) -> dict[str, str]:
    data = {FIELD_CA: bundle.ca_cert, FIELD_CERT: bundle.cert, FIELD_KEY: bundle.key}
    if bundle.ca_key is not None:
        data[FIELD_CA_KEY] = bundle.ca_key
    return {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}


def from_secret(secret: Mapping[str, Any]) -> tls.Bundle | None:
    """The bundle in a Secret; None when a field is missing or not base64."""
    data = secret.get("data") or {}
    try:
        raw = {k: base64.b64decode(data[k], validate=True)
               for k in (FIELD_CA, FIELD_CERT, FIELD_KEY)}
        ca_key = (base64.b64decode(data[FIELD_CA_KEY], validate=True)
                  if data.get(FIELD_CA_KEY) else None)
    except (KeyError, ValueError, TypeError):
        return None
    return tls.Bundle(raw[FIELD_CA], ca_key, raw[FIELD_CERT], raw[FIELD_KEY])


def _api_error(action: str, where: str, err: ApiError) -> CertificateError:
    # The API server's message about a Secret names the object, never its data.
    return CertificateError(f"cannot {action} Secret {where}: {err.status} {err.reason}: "
                            f"{err.message}")


def ensure(name: str, namespace: str, hosts: list[str], *, now: datetime | None = None,
           _attempts: int = 3) -> tuple[tls.Bundle, str]:
    """The bundle to serve with, from Secret ``namespace/name``: created when absent,
    renewed or replaced when ``tls.assess`` says so. Returns (bundle, what happened:
    "read", "created", "adopted" (another replica created it first), "renewed",
    "replaced", or "updated by another replica")."""
    where = f"{namespace}/{name}"
    for _ in range(_attempts):
        try:
            secret = client.get("Secret", name, namespace)
        except ApiError as err:
            raise _api_error("read", where, err) from None
        if secret is None:
            bundle = tls.issue(hosts, now=now)
            try:
                client.create(secret_manifest(name, namespace, bundle))
            except ApiError as err:
                if err.status == 409:  # another replica created it: take theirs
                    secret = _read_winner(name, namespace)
                    if secret is None:
                        continue
                    found = from_secret(secret)
                    if found is not None and tls.assess(found, hosts, now)[0] == "keep":
                        return found, "adopted"
                    continue
                raise _api_error("create", where, err) from None
            return bundle, "created"
        found = from_secret(secret)
        if found is None:
            action, why = "replace", "a field is missing"
        else:
            action, why = tls.assess(found, hosts, now)
            if action == "keep":
                return found, "read"
        if action == "renew" and found is not None:
            bundle = tls.renew(found, hosts, now=now)
        else:
            bundle = tls.issue(hosts, now=now)
        rv = secret["metadata"]["resourceVersion"]
        try:
            client.patch("Secret", name, namespace, {"data": _data(bundle)},
                         resource_version=rv)
        except ApiError as err:
            if err.status in (404, 409):  # deleted or changed meanwhile: look again
                continue
            raise _api_error("update", where, err) from None
        log.info("webhook certificate in Secret %s %s: %s", where,
                 "renewed" if action == "renew" else "replaced", why)
        return bundle, "renewed" if action == "renew" else "replaced"
    raise CertificateError(f"Secret {where} kept changing while it was being written")


def _read_winner(name: str, namespace: str) -> dict[str, Any] | None:
    try:
        return client.get("Secret", name, namespace)
    except ApiError as err:
        raise _api_error("read", f"{namespace}/{name}", err) from None


def ca_bundle_of(configuration: Mapping[str, Any]) -> str | None:
    for hook in configuration.get("webhooks") or []:
        if hook.get("name") == WEBHOOK_NAME:
            value = (hook.get("clientConfig") or {}).get("caBundle")
            return str(value) if value else None
    return None


def inject_ca(configuration: str, ca_cert: bytes) -> str:
    """Make the caBundle of ValidatingWebhookConfiguration ``configuration`` (rendered by
    the installation) ``ca_cert``: a server-side apply of that one field, only when it
    differs. Returns "missing", "current" or "set"."""
    want = base64.b64encode(ca_cert).decode("ascii")
    current = client.get("ValidatingWebhookConfiguration", configuration)
    if current is None:
        return "missing"
    names = [h.get("name") for h in current.get("webhooks") or []]
    if WEBHOOK_NAME not in names:
        raise CertificateError(f"ValidatingWebhookConfiguration {configuration} has no "
                               f"webhook {WEBHOOK_NAME} (it has {names})")
    if ca_bundle_of(current) == want:
        return "current"
    client.apply({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        # The uid makes the apply fail rather than create a configuration of only this
        # field if the installation's was deleted meanwhile.
        "metadata": {"name": configuration, "uid": current["metadata"]["uid"]},
        "webhooks": [{"name": WEBHOOK_NAME, "clientConfig": {"caBundle": want}}],
    })
    return "set"


class ServingFile:
    """The key and certificate in one PEM file in a private directory (mode 0600),
    replaced atomically so a reader never sees a key of one certificate with another."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or Path(tempfile.mkdtemp(prefix="kustos-webhook-"))
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        self.path = self.directory / "tls.pem"

    def write(self, bundle: tls.Bundle) -> bool:
        """Write the bundle's key and certificate; False when the file already has them."""
        content = bundle.key + bundle.cert
        try:
            if self.path.read_bytes() == content:
                return False
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tls-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True


class Keeper:
    """Keeps the served certificate and the configuration's caBundle current."""

    def __init__(self, secret: str, namespace: str, hosts: list[str],
                 configuration: str | None, files: ServingFile, bundle: tls.Bundle) -> None:
        self.secret, self.namespace, self.hosts = secret, namespace, hosts
        self.configuration = configuration
        self.files = files
        self.bundle = bundle
        self.injected = configuration is None
        self._warned_missing = False

    def tick(self) -> None:
        """One round: the Secret (renewing when due), the file, the caBundle."""
        bundle, what = ensure(self.secret, self.namespace, self.hosts)
        if bundle != self.bundle:
            self.files.write(bundle)
            if bundle.ca_cert != self.bundle.ca_cert:
                self.injected = self.configuration is None
            self.bundle = bundle
            log.info("webhook certificate from Secret %s/%s changed (%s): serving it "
                     "(%s)", self.namespace, self.secret, what, tls.describe(bundle))
        if self.configuration is None:
            return
        result = inject_ca(self.configuration, bundle.ca_cert)
        if result == "missing":
            if not self._warned_missing:
                log.info("ValidatingWebhookConfiguration %s does not exist yet; its caBundle "
                         "is set once it does", self.configuration)
                self._warned_missing = True
            self.injected = False
            return
        if result == "set":
            log.info("caBundle of ValidatingWebhookConfiguration %s set to the webhook CA "
                     "(valid until %s)", self.configuration,
                     f"{tls.expiry(bundle.ca_cert):%Y-%m-%d}")
        self.injected = True
        self._warned_missing = False

    async def loop(self) -> None:
        """Tick every INTERVAL (RETRY while the caBundle is not in place), the blocking
        calls in a thread; an asyncio task of kopf's loop (kustos run starts it at startup
        and cancels it at cleanup)."""
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except (CertificateError, ApiError, OSError, ValueError) as err:
                # CertificateError and ApiError carry the API server's message only.
                log.warning("webhook certificate upkeep failed (retrying): %s", err)
                self.injected = False
            await asyncio.sleep(INTERVAL if self.injected else RETRY)
