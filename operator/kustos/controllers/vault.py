"""Vault secrets of ModelDeployments: the sync loop and the contribution to the pods.

Sync mode, per ModelDeployment:

1. request a short-lived token of the model's own ServiceAccount (TokenRequest, audience
   from the spec or the operator config), log in to Vault's Kubernetes auth method with
   it (Vault checks it with a TokenReview) and read the KV v2 paths;
2. write the values to the Secret ``{name}-vault`` (owned by the ModelDeployment; applied
   here, never through the hashed children sync: a spec-hash would be a hash over the
   values), only when they differ from what is there;
3. record the versions and the sync time in status.secrets and SecretsReady=True, with a
   resourceVersion-guarded status write;
4. when the versions changed, re-render the ModelDeployment: its pod template carries a
   checksum of the versions (render.vault), so the pods roll.

The first sync runs inside the ModelDeployment's reconcile (the contributor below), so no
pod is rendered before its Secret exists. A background loop re-reads Vault for each
sync-mode ModelDeployment every refreshInterval. A failure sets SecretsReady=False with
the reason and leaves the Secret untouched; the loop retries with exponential backoff
(never slower than the refresh interval) and the condition recovers by itself.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kustos.api.v1alpha1 import GROUP, VERSION, ModelDeploymentSpec
from kustos.api.v1alpha1.modeldeployment import VaultSpec
from kustos.k8s import client, events
from kustos.k8s.client import ApiError
from kustos.render import vault as render_vault
from kustos.render.attachments import NONE, Attachments
from kustos.render.meta import with_hash
from kustos.render.modeldeployment import render_service_account
from kustos.status.conditions import get_condition, set_condition, timestamp
from kustos.vault import client as vault_client
from kustos.vault.client import Login, VaultError

from . import peering
from .attachments import AttachmentProblem, contributor
from .children import owned_by
from .context import backoff, config

log = logging.getLogger(__name__)
KIND = "ModelDeployment"
SECRETS_READY = "SecretsReady"
MIN_REFRESH = 5.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def seconds(duration: str) -> float:
    """A Duration ("5m", "1h30m", "500ms") in seconds."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"{duration!r} is not a duration")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def refresh_seconds(vault: VaultSpec) -> float:
    return max(MIN_REFRESH, seconds(vault.refresh_interval))


def _lock(uid: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def _vault(body: Mapping[str, Any]) -> VaultSpec | None:
    return render_vault.vault_spec(ModelDeploymentSpec.model_validate(body["spec"]))


def _login(vault: VaultSpec) -> Login:
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


def _update_status(meta: Mapping[str, Any],
                   update: Callable[[dict[str, Any]], dict[str, Any] | None],
                   ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Apply ``update`` (fresh object -> status patch, or None for no change) with a
    resourceVersion-guarded write on a fresh read, retried on conflicts. Returns the object
    as read and the patch written."""
    for _ in range(8):
        fresh = client.get(KIND, meta["name"], meta["namespace"])
        if fresh is None or fresh["metadata"]["uid"] != meta["uid"]:
            return None
        patch = update(fresh)
        if patch is None:
            return None
        try:
            client.patch_status(KIND, meta["name"], meta["namespace"], patch,
                                fresh["metadata"]["resourceVersion"])
        except ApiError as err:
            if err.status == 409:
                continue
            raise
        return fresh, patch
    raise ApiError(409, "Conflict", "status kept changing during the Vault status write")


def _with_ready(fresh: Mapping[str, Any], ok: bool, reason: str, message: str,
                now: datetime) -> list[dict[str, Any]]:
    conds = (fresh.get("status") or {}).get("conditions") or []
    return set_condition(conds, SECRETS_READY, ok, reason, message,
                         fresh["metadata"].get("generation"), now)


def _describe(versions: Mapping[str, int]) -> str:
    return ", ".join(f"{p} v{v}" for p, v in versions.items())


def record_success(meta: Mapping[str, Any], vault: VaultSpec, versions: Mapping[str, int],
                   version: str) -> dict[str, Any] | None:
    """Write status.secrets and SecretsReady=True; post SecretRotated / SecretsSynced.
    Returns the new status.secrets (None when the object is gone)."""
    now = datetime.now(UTC)
    secrets = {
        "version": version,
        "versions": [{"path": p, "version": v} for p, v in versions.items()],
        "secretName": render_vault.secret_name(meta["name"]),
        "lastSync": timestamp(now),
    }
    message = f"{len(vault.items)} item(s) synced from Vault: {_describe(versions)}"

    def update(fresh: dict[str, Any]) -> dict[str, Any] | None:
        return {"secrets": secrets,
                "conditions": _with_ready(fresh, True, "Synced", message, now)}

    written = _update_status(meta, update)
    if written is None:
        return None
    fresh = written[0]
    old = (fresh.get("status") or {}).get("secrets")
    old_versions = render_vault.synced_versions(old)
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
    return secrets


def record_failure(meta: Mapping[str, Any], err: VaultError, post: bool = True) -> None:
    """SecretsReady=False with the reason; status.secrets and the Secret stay as they are.
    A Warning Event when the condition turns False or its reason changes (unless ``post``
    is False: the reconcile's Degraded Event already says it)."""
    now = datetime.now(UTC)

    def update(fresh: dict[str, Any]) -> dict[str, Any] | None:
        was = get_condition(fresh, SECRETS_READY) or {}
        if (was.get("status"), was.get("reason"), was.get("message")) == \
                ("False", err.reason, err.message):
            return None
        return {"conditions": _with_ready(fresh, False, err.reason, err.message, now)}

    written = _update_status(meta, update)
    if written is None:
        return
    was = get_condition(written[0], SECRETS_READY) or {}
    if post and (was.get("status") != "False" or was.get("reason") != err.reason):
        events.post(written[0], err.reason, f"Vault sync failed: {err.message}", warning=True)


def due_in(vault: VaultSpec, secrets: Mapping[str, Any] | None) -> float:
    """Seconds until the next sync is due (0: now; always now when the items changed)."""
    last = (secrets or {}).get("lastSync")
    if not last or not render_vault.in_sync(vault, secrets):
        return 0.0
    age = (datetime.now(UTC) - datetime.fromisoformat(last)).total_seconds()
    return max(0.0, refresh_seconds(vault) - age - 0.5)


def sync(body: Mapping[str, Any], *, only_when_due: bool = False,
         in_reconcile: bool = False) -> dict[str, Any] | None:
    """One sync of a sync-mode ModelDeployment; returns the new status.secrets. Raises
    VaultError after recording it as SecretsReady=False. One sync per object at a time;
    when another one has just synced the current items (the reconcile and the refresh loop
    both start with a new object), its result is used instead of reading Vault again."""
    with _lock(body["metadata"]["uid"]):
        meta = body["metadata"]
        fresh = client.get(KIND, meta["name"], meta["namespace"])
        if fresh is None or fresh["metadata"]["uid"] != meta["uid"]:
            return None
        vault = _vault(fresh)
        if vault is None or vault.mode != "sync":
            return None
        current = (fresh.get("status") or {}).get("secrets")
        if render_vault.in_sync(vault, current) and \
                (not only_when_due or due_in(vault, current) > 0):
            return dict(current or {})
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
            # its reconcile posts the Event; one Warning per failure, not two.
            record_failure(meta, err, post=bool(current) and not in_reconcile)
            raise
        return record_success(meta, vault, versions, version)


def cleanup(body: Mapping[str, Any]) -> None:
    """Sync mode left (injector mode, or no Vault): delete the synced Secret, drop
    status.secrets and SecretsReady."""
    meta = body["metadata"]
    secret = client.get("Secret", render_vault.secret_name(meta["name"]), meta["namespace"])
    if secret is not None and owned_by(secret, meta["uid"]):
        client.delete("Secret", secret["metadata"]["name"], meta["namespace"],
                      secret["metadata"]["uid"])

    def update(fresh: dict[str, Any]) -> dict[str, Any] | None:
        status = fresh.get("status") or {}
        conds = status.get("conditions") or []
        if "secrets" not in status and not any(c.get("type") == SECRETS_READY for c in conds):
            return None
        return {"secrets": None,
                "conditions": [c for c in conds if c.get("type") != SECRETS_READY]}

    _update_status(meta, update)


@contributor
def vault_attachments(body: Mapping[str, Any]) -> Attachments:
    """spec.secrets.vault's contribution to the pods. In sync mode, a sync runs first when
    status.secrets does not describe the current items (first sync, items changed): no
    pod is rendered without its Secret, and a failure makes the ModelDeployment Degraded
    with the Vault reason until the sync succeeds."""
    try:
        vault = _vault(body)
    except ValidationError:
        return NONE  # the render reports InvalidSpec
    status = body.get("status") or {}
    leaving_sync = vault is None or vault.mode != "sync"
    if leaving_sync and ("secrets" in status or get_condition(body, SECRETS_READY)):
        try:
            cleanup(body)
        except ApiError as err:
            log.warning("cleaning up Vault sync of %s failed: %s",
                        body["metadata"]["name"], err.message)
    if vault is None:
        return NONE
    if vault.mode == "injector":
        return render_vault.attachments(body, config().vault.audience)
    secrets = status.get("secrets")
    if not render_vault.in_sync(vault, secrets):
        try:
            secrets = sync(body, in_reconcile=True)
        except VaultError as err:
            raise AttachmentProblem(err.reason, err.message) from None
        except ApiError as err:
            raise AttachmentProblem("ApiError", f"Vault sync status: {err.message}") from None
    return render_vault.sync_attachments(body["metadata"]["name"], vault, secrets)


def _pods_current(md: Mapping[str, Any]) -> bool:
    """Whether every serving Deployment's pod template carries the synced version."""
    from .modeldeployment import live_deployments

    want = ((md.get("status") or {}).get("secrets") or {}).get("version")
    deployments = live_deployments(md["metadata"])
    if not deployments:
        return False
    return all(
        ((d["spec"]["template"]["metadata"].get("annotations") or {})
         .get(render_vault.CHECKSUM)) == want
        for d in deployments.values())


def _rerender(md: Mapping[str, Any]) -> None:
    """Run the ModelDeployment's reconcile so its pods get the new checksum (its errors are
    its own: they land in the ModelDeployment's status)."""
    from .modeldeployment import _reconcile

    try:
        _reconcile(md, 0)
    except (kopf.TemporaryError, kopf.PermanentError) as err:
        log.info("re-render of %s after a Vault sync: %s", md["metadata"]["name"], err)


def tick(meta: Mapping[str, Any]) -> float:
    """Sync one ModelDeployment if it is due; returns seconds until it is due next."""
    md = client.get(KIND, meta["name"], meta["namespace"])
    if md is None or md["metadata"]["uid"] != meta["uid"]:
        return 3600.0
    vault = _vault(md)
    if vault is None or vault.mode != "sync":
        return 3600.0
    refresh = refresh_seconds(vault)
    wait = due_in(vault, (md.get("status") or {}).get("secrets"))
    if wait > 0:
        return wait
    sync(md, only_when_due=True)
    md = client.get(KIND, meta["name"], meta["namespace"])
    if md is not None and md["metadata"]["uid"] == meta["uid"] and not _pods_current(md):
        _rerender(md)
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


# The refresh runs in one background thread (plus a few workers) over an in-memory list
# of the sync-mode ModelDeployments, fed by their watch events, instead of a kopf daemon or
# timer per object: those put a finalizer on every ModelDeployment, which would then block
# its own (or its namespace's) deletion whenever the operator is not running.


@dataclass
class _Entry:
    name: str
    namespace: str
    uid: str
    next_at: float
    refresh: float
    failures: int = 0
    running: bool = False


_ENTRIES: dict[str, _Entry] = {}
_ENTRIES_LOCK = threading.Lock()
_STOP = threading.Event()
WORKERS = 4


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def vault_watch(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Keep the list of sync-mode ModelDeployments (the initial listing included, so a
    restarted operator picks up where status.secrets.lastSync says)."""
    meta = body["metadata"]
    uid = meta["uid"]
    wanted = type != "DELETED" and not meta.get("deletionTimestamp") and \
        _sync_mode(body.get("spec") or {})
    with _ENTRIES_LOCK:
        if not wanted:
            _ENTRIES.pop(uid, None)
            if type == "DELETED":
                with _locks_guard:
                    _locks.pop(uid, None)
            return
        refresh = _refresh_of(body)
        entry = _ENTRIES.get(uid)
        if entry is not None:
            entry.refresh = refresh
            return
        try:
            vault = _vault(body)
            wait = due_in(vault, (body.get("status") or {}).get("secrets")) if vault else 0.0
        except (ValidationError, ValueError):
            wait = 0.0
        _ENTRIES[uid] = _Entry(meta["name"], meta["namespace"], uid,
                               time.monotonic() + wait, refresh)


def _run(entry: _Entry) -> None:
    meta = {"name": entry.name, "namespace": entry.namespace, "uid": entry.uid}
    delay = 5.0
    try:
        delay = tick(meta)
        entry.failures = 0
    except Exception as err:  # one object's trouble never stops the others
        entry.failures += 1
        delay = min(entry.refresh, backoff(entry.failures - 1))
        log.info("Vault sync of %s/%s: retry in %.0fs (%s)", entry.namespace, entry.name,
                 delay, getattr(err, "reason", type(err).__name__))
    finally:
        entry.next_at = time.monotonic() + max(0.5, delay)
        entry.running = False


def _loop(pool: ThreadPoolExecutor, is_active: Callable[[], bool]) -> None:
    while not _STOP.wait(0.5):
        # A standby peer leaves the syncs to the active one; what is due runs on take-over.
        if not is_active():
            continue
        now = time.monotonic()
        with _ENTRIES_LOCK:
            due = [e for e in _ENTRIES.values() if not e.running and e.next_at <= now]
            for entry in due:
                entry.running = True
        for entry in due:
            pool.submit(_run, entry)


@kopf.on.startup()
def start_vault_refresh(memo: kopf.Memo, **_: Any) -> None:
    _STOP.clear()
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="kustos-vault")
    threading.Thread(target=_loop, args=(pool, peering.active_check(memo)),
                     name="kustos-vault-refresh",
                     daemon=True).start()


@kopf.on.cleanup()
def stop_vault_refresh(**_: Any) -> None:
    _STOP.set()
