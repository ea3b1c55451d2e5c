"""Vault secrets of ModelDeployments: the sync loop and the contribution to the pods.

Sync mode, per ModelDeployment, done by one loop in this module (never by the render):

1. request a short-lived token of the model's own ServiceAccount (TokenRequest, audience
   from the spec or the operator config), log in to Vault's Kubernetes auth method with
   it (Vault checks it with a TokenReview) and read the KV v2 paths;
2. write the values to the Secret ``{name}-vault`` (owned by the ModelDeployment; applied
   here, never through the hashed children sync: a spec-hash would be a hash over the
   values), only when they differ from what is there;
3. record the versions and the sync time in status.secrets and SecretsReady=True: the
   Vault part of the status (VAULT), server-side applied under its own field manager;
4. re-render the ModelDeployment when its pods do not carry the synced version yet: the
   pod template carries a checksum of the versions (render.vault), so the pods roll.

The render only reads status.secrets: until the first sync of the current items is
recorded, the ModelDeployment waits (Progressing, reason Waiting) and no pod is rendered
without its Secret; a failed first sync makes it Degraded with the Vault reason. The loop
picks a new or changed ModelDeployment up at once (its watch events feed the loop's list)
and re-reads Vault every refreshInterval. A failure sets SecretsReady=False with the
reason and leaves the Secret untouched; the loop retries with exponential backoff (never
slower than the refresh interval) and the condition recovers by itself.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.modeldeployment import VaultSpec
from kustos.k8s import client, events
from kustos.k8s import status as k8s_status
from kustos.k8s.client import ApiError
from kustos.render import vault as render_vault
from kustos.render import vault_agent as render_vault_agent
from kustos.render.attachments import NONE, Attachments
from kustos.render.meta import with_hash
from kustos.render.modeldeployment import render_service_account
from kustos.status.conditions import get_condition, set_condition, timestamp
from kustos.status.owners import StatusOwner
from kustos.vault import client as vault_client
from kustos.vault.client import Login, VaultError

from .attachments import AttachmentPending, AttachmentProblem, contributor
from .children import owned_by
from .context import config
from .modeldeployment import Models, live_deployments, models, rerender
from .workloop import Entry, ObjectKey, start_in_memo, stop_in_memo

log = logging.getLogger(__name__)
KIND = "ModelDeployment"
SECRETS_READY = "SecretsReady"
MIN_REFRESH = 5.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# The Vault part of a ModelDeployment's status.
VAULT = StatusOwner("kustos-secrets", fields=("secrets",), conditions=(SECRETS_READY,))


def seconds(duration: str) -> float:
    """A Duration ("5m", "1h30m", "500ms") in seconds."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"{duration!r} is not a duration")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def refresh_seconds(vault: VaultSpec) -> float:
    return max(MIN_REFRESH, seconds(vault.refresh_interval))


def _vault(body: Mapping[str, Any]) -> VaultSpec | None:
    return render_vault.vault_spec(ModelDeploymentSpec.model_validate(body["spec"]))


def _address(vault: VaultSpec) -> str:
    """Vault's address: the spec's (if the config allows it) or the config's."""
    settings = config().vault
    address = vault.address or settings.address
    if not address:
        raise VaultError("NoVaultAddress", "no Vault address: set spec.secrets.vault.address "
                         "or the operator config's vault.address")
    allowed = {a.rstrip("/") for a in settings.allowed_addresses or ()}
    if vault.address and settings.allowed_addresses is not None and \
            vault.address.rstrip("/") not in allowed:
        raise VaultError("AddressNotAllowed", f"spec.secrets.vault.address {vault.address} is "
                         "not in the operator config's vault.allowed_addresses")
    return address


def _login(vault: VaultSpec) -> Login:
    settings = config().vault
    address = _address(vault)
    return Login(address=address, role=vault.role, auth_path=vault.auth_path,
                 namespace=vault.namespace, ca_cert=settings.ca_cert, timeout=settings.timeout)


def _service_account(body: Mapping[str, Any]) -> None:
    """The model's ServiceAccount exists and is this ModelDeployment's own: the operator
    mints tokens for no other account. Created here on the first sync (the same manifest,
    hash included, the reconcile applies after), since that sync precedes the children."""
    meta = body["metadata"]
    sa = client.get("ServiceAccount", meta["name"], meta["namespace"])
    if sa is None:
        client.apply(with_hash(render_service_account(body)))
    elif not owned_by(sa, meta["uid"]):
        raise VaultError("NameConflict", f"ServiceAccount {meta['name']} is not owned by this "
                         "ModelDeployment; the operator requests tokens only for its own")


def _token(body: Mapping[str, Any], vault: VaultSpec) -> str:
    meta = body["metadata"]
    audience = vault.audience or config().vault.audience
    try:
        _service_account(body)
        return client.create_token(meta["name"], meta["namespace"], audience)
    except ApiError as err:
        raise VaultError("TokenRequestFailed", f"requesting a token of ServiceAccount "
                         f"{meta['name']}: HTTP {err.status} {err.reason}") from None


def _apply_secret(body: Mapping[str, Any], data: Mapping[str, bytes], version: str) -> bool:
    """Write the Secret when it is missing or differs; True when it was written."""
    meta = body["metadata"]
    manifest = render_vault.render_secret(body, data, version)
    live = client.get("Secret", manifest["metadata"]["name"], meta["namespace"])
    if live is not None:
        if not owned_by(live, meta["uid"]):
            raise VaultError("NameConflict", f"Secret {manifest['metadata']['name']} exists and "
                             "is not owned by this ModelDeployment; rename or delete it")
        same_version = (live["metadata"].get("annotations") or {}).get(
            render_vault.CHECKSUM) == version
        if same_version and (live.get("data") or {}) == manifest["data"]:
            return False
    try:
        client.apply(manifest)
    except ApiError as err:
        # The API server's message could quote the object: say only the status.
        raise VaultError("SecretWriteFailed", f"writing Secret {manifest['metadata']['name']}: "
                         f"HTTP {err.status} {err.reason}") from None
    return True


def _ready(fresh: Mapping[str, Any], ok: bool, reason: str, message: str,
           now: datetime) -> dict[str, Any]:
    was = get_condition(fresh, SECRETS_READY)
    return set_condition([was] if was else [], SECRETS_READY, ok, reason, message,
                         fresh["metadata"].get("generation"), now)[0]


def _describe(versions: Mapping[str, int]) -> str:
    return ", ".join(f"{p} v{v}" for p, v in versions.items())


def record_success(meta: Mapping[str, Any], vault: VaultSpec, versions: Mapping[str, int],
                   version: str) -> None:
    """Write status.secrets and SecretsReady=True; post SecretRotated / SecretsSynced."""
    now = datetime.now(UTC)
    secrets = {
        "version": version,
        "versions": [{"path": p, "version": v} for p, v in versions.items()],
        "secretName": render_vault.secret_name(meta["name"]),
        "lastSync": timestamp(now),
    }
    message = f"{len(vault.items)} item(s) synced from Vault: {_describe(versions)}"
    written = k8s_status.write(
        KIND, meta["name"], meta["namespace"], meta["uid"], VAULT,
        lambda fresh: {"secrets": secrets,
                       "conditions": [_ready(fresh, True, "Synced", message, now)]})
    if written is None or not written.wrote:
        return
    fresh = written.before
    old_versions = render_vault.synced_versions((fresh.get("status") or {}).get("secrets"))
    was = get_condition(fresh, SECRETS_READY) or {}
    if old_versions and old_versions != dict(versions):
        changes = [f"{p} v{old_versions.get(p, '-')} -> v{v}" for p, v in versions.items()
                   if old_versions.get(p) != v]
        events.post(fresh, "SecretRotated", "new Vault secret version(s): "
                    + (", ".join(changes) or _describe(versions)) + "; rolling the pods")
    elif not old_versions:
        events.post(fresh, "SecretsSynced", message)
    if was.get("status") == "False":
        events.post(fresh, "SecretsRecovered", f"Vault sync works again: {message}")


def record_failure(meta: Mapping[str, Any], err: VaultError, post: bool = True) -> None:
    """SecretsReady=False with the reason; status.secrets and the Secret stay as they are.
    A Warning Event when the condition turns False or its reason changes (unless ``post``
    is False: the ModelDeployment's Degraded Event already says it)."""
    now = datetime.now(UTC)

    def update(fresh: dict[str, Any]) -> dict[str, Any]:
        return {"secrets": (fresh.get("status") or {}).get("secrets"),
                "conditions": [_ready(fresh, False, err.reason, err.message, now)]}

    written = k8s_status.write(KIND, meta["name"], meta["namespace"], meta["uid"], VAULT,
                               update)
    if written is None or not written.wrote:
        return
    was = get_condition(written.before, SECRETS_READY) or {}
    if post and (was.get("status") != "False" or was.get("reason") != err.reason):
        events.post(written.before, err.reason, f"Vault sync failed: {err.message}",
                    warning=True)


def due_in(vault: VaultSpec, secrets: Mapping[str, Any] | None) -> float:
    """Seconds until the next sync is due (0: now; always now when the items changed)."""
    last = (secrets or {}).get("lastSync")
    if not last or not render_vault.in_sync(vault, secrets):
        return 0.0
    age = (datetime.now(UTC) - datetime.fromisoformat(last)).total_seconds()
    return max(0.0, refresh_seconds(vault) - age - 0.5)


def sync(body: Mapping[str, Any], *, only_when_due: bool = False) -> None:
    """One sync of a sync-mode ModelDeployment (the loop runs one per object at a time).
    Raises VaultError after recording it as SecretsReady=False."""
    meta = body["metadata"]
    fresh = client.get(KIND, meta["name"], meta["namespace"])
    if fresh is None or fresh["metadata"]["uid"] != meta["uid"]:
        return
    vault = _vault(fresh)
    if vault is None or vault.mode != "sync":
        return
    current = (fresh.get("status") or {}).get("secrets")
    if render_vault.in_sync(vault, current) and \
            (not only_when_due or due_in(vault, current) > 0):
        return
    try:
        login = _login(vault)
        jwt = _token(fresh, vault)
        read = vault_client.read(login, jwt, render_vault.paths(vault))
        del jwt
        try:
            data = render_vault.secret_data(vault, {p: s.data for p, s in read.items()})
        except render_vault.MissingKey as err:
            raise VaultError("KeyNotFound", str(err)) from None
        versions = {p: s.version for p, s in read.items()}
        version = render_vault.checksum(vault, versions)
        _apply_secret(fresh, data, version)
    except VaultError as err:
        log.warning("Vault sync of %s/%s failed: %s", meta["namespace"], meta["name"], err)
        # Before the first sync the ModelDeployment is Degraded with this reason and
        # posts the Event; one Warning per failure, not two.
        record_failure(meta, err, post=bool(current))
        raise
    record_success(meta, vault, versions, version)


def cleanup(body: Mapping[str, Any]) -> None:
    """Sync mode left (injector mode, or no Vault): delete the synced Secret, drop
    status.secrets and SecretsReady."""
    meta = body["metadata"]
    secret = client.get("Secret", render_vault.secret_name(meta["name"]), meta["namespace"])
    if secret is not None and owned_by(secret, meta["uid"]):
        client.delete("Secret", secret["metadata"]["name"], meta["namespace"],
                      secret["metadata"]["uid"])

    k8s_status.write(KIND, meta["name"], meta["namespace"], meta["uid"], VAULT,
                     lambda fresh: {"conditions": []})


def _leftovers(body: Mapping[str, Any]) -> bool:
    """Whether the Vault part of the status is still there (sync mode was left)."""
    return bool((body.get("status") or {}).get("secrets") or get_condition(body, SECRETS_READY))


@contributor
def vault_attachments(body: Mapping[str, Any], _lookup: object = None) -> Attachments:
    """spec.secrets.vault's contribution to the pods (reads only: the loop syncs). In sync
    mode, pods are rendered only once status.secrets describes the current items; until
    then the ModelDeployment waits, or is Degraded with the reason the sync failed."""
    try:
        vault = _vault(body)
    except ValidationError:
        return NONE  # the render reports InvalidSpec
    if vault is None:
        return NONE
    if vault.mode == "injector":
        if (body["spec"].get("model") or {}).get("encryption"):
            # The fetch init container logs in itself (spec.model.encryption): the same
            # address rules as the modes in which Kustos renders the login.
            try:
                _address(vault)
            except VaultError as err:
                raise AttachmentProblem(err.reason, err.message) from None
        return render_vault.attachments(body, config().vault.audience)
    if vault.mode == "agent":
        return _agent_attachments(body, vault)
    secrets = (body.get("status") or {}).get("secrets")
    if not render_vault.in_sync(vault, secrets):
        ready = get_condition(body, SECRETS_READY) or {}
        if ready.get("status") == "False":
            raise AttachmentProblem(str(ready.get("reason") or "VaultError"),
                                    str(ready.get("message") or "the Vault sync failed"))
        raise AttachmentPending("the first Vault sync of spec.secrets.vault.items")
    return render_vault.sync_attachments(body["metadata"]["name"], vault, secrets)


def _agent_attachments(body: Mapping[str, Any], vault: VaultSpec) -> Attachments:
    """Agent mode: the pods talk to Vault themselves; the operator only renders the agent.
    The address follows the same rules as in sync mode (allowed_addresses included)."""
    try:
        address = _address(vault)
    except VaultError as err:
        raise AttachmentProblem(err.reason, err.message) from None
    settings = config()
    return render_vault_agent.agent_attachments(
        body, vault, address, vault.audience or settings.vault.audience,
        settings.images.vault_agent, settings.vault.agent_resources)


def _pods_current(md: Mapping[str, Any]) -> bool:
    """Whether every serving Deployment's pod template carries the synced version."""
    want = ((md.get("status") or {}).get("secrets") or {}).get("version")
    deployments = live_deployments(md["metadata"])
    if not deployments:
        return False
    return all(
        ((d["spec"]["template"]["metadata"].get("annotations") or {})
         .get(render_vault.CHECKSUM)) == want
        for d in deployments.values())


def tick(meta: Mapping[str, Any], state: Models) -> float:
    """Sync one ModelDeployment if it is due (or clean up after it left sync mode), and
    re-render it when its pods do not match; returns seconds until it is due next."""
    md = client.get(KIND, meta["name"], meta["namespace"])
    if md is None or md["metadata"]["uid"] != meta["uid"]:
        return 3600.0
    vault = _vault(md)
    if vault is None or vault.mode != "sync":
        if _leftovers(md):
            cleanup(md)
        return 3600.0
    refresh = refresh_seconds(vault)
    wait = due_in(vault, (md.get("status") or {}).get("secrets"))
    if wait > 0:
        return wait
    try:
        sync(md, only_when_due=True)
    finally:
        # After a failure too: a first sync that failed makes the ModelDeployment Degraded.
        md = client.get(KIND, meta["name"], meta["namespace"])
        if md is not None and md["metadata"]["uid"] == meta["uid"] and not _pods_current(md):
            rerender(meta["name"], meta["namespace"], state)
    return refresh


def _refresh_of(body: Mapping[str, Any]) -> float:
    try:
        vault = _vault(body)
    except (ValidationError, ValueError):
        return 300.0
    return refresh_seconds(vault) if vault else 300.0


def _sync_mode(spec: Mapping[str, Any]) -> bool:
    vault = (spec.get("secrets") or {}).get("vault") or {}
    return bool(vault) and vault.get("mode", "sync") == "sync"


# The refresh is a WorkLoop (controllers/workloop.py, as the sidecar collection), keyed by
# (namespace, name, uid), over the sync-mode ModelDeployments and those that left sync mode
# with something to clean up, fed by their watch events. An entry's backoff is capped at
# the refresh interval; its tag is the generation last seen.
WORKERS = 4
ROUND = 0.5  # seconds between looks at what is due

Target = ObjectKey  # (namespace, name, uid)


def track(memo: Any, body: Mapping[str, Any], type_: str | None) -> None:
    """Keep the list of sync-mode ModelDeployments (the initial listing included, so a
    restarted operator picks up where status.secrets.lastSync says), and of those that
    left sync mode with a Secret and status still to clean up (every ModelDeployment
    event, on kopf's loop: controllers/model_events.py)."""
    entries: dict[Target, Entry] = memo.kustos_vault.entries
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"], meta["uid"])
    live = type_ != "DELETED" and not meta.get("deletionTimestamp")
    if not live or not (_sync_mode(body.get("spec") or {}) or _leftovers(body)):
        entries.pop(key, None)
        return
    try:
        vault = _vault(body)
        wait = due_in(vault, (body.get("status") or {}).get("secrets")) if vault else 0.0
    except (ValidationError, ValueError):
        wait = 0.0
    generation = meta.get("generation")
    entry = entries.get(key)
    if entry is None:
        entries[key] = Entry(due=time.monotonic() + wait, cap=_refresh_of(body),
                             tag=generation)
        return
    entry.cap = _refresh_of(body)
    if entry.tag != generation:  # a new spec (items, mode): look at it now
        entry.tag = generation
        entry.due = min(entry.due, time.monotonic() + wait)


@kopf.on.startup()
async def start_vault_refresh(memo: kopf.Memo, **_: Any) -> None:
    def work(key: Target) -> float:
        namespace, name, uid = key
        return tick({"namespace": namespace, "name": name, "uid": uid}, models(memo))

    start_in_memo(memo, "kustos_vault", work, workers=WORKERS, name="kustos-vault-refresh",
                  interval=ROUND)


@kopf.on.cleanup()
async def stop_vault_refresh(memo: kopf.Memo, **_: Any) -> None:
    await stop_in_memo(memo, "kustos_vault")
