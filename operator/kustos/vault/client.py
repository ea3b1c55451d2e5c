"""Read KV v2 secrets from Vault (or OpenBao) with hvac, as a Kubernetes workload would.

The caller brings a ServiceAccount token (a TokenRequest token for the model's own
ServiceAccount); Vault checks it with a TokenReview against the API server and maps it to
a role and its policies. Every failure becomes a ``VaultError`` with a reason a condition
can carry; no message ever contains a token or a secret value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions
import requests

from kustos.render.vault import split_kv_path

# Condition reasons, from the most to the least fundamental.
UNREACHABLE = "VaultUnreachable"
SEALED = "VaultSealed"
ROLE_NOT_FOUND = "RoleNotFound"
LOGIN_FAILED = "LoginFailed"
PERMISSION_DENIED = "PermissionDenied"
SECRET_NOT_FOUND = "SecretNotFound"
VAULT_ERROR = "VaultError"


class VaultError(Exception):
    """Reading from Vault failed; ``reason`` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class KvSecret:
    """One KV v2 secret as read: its data and its version."""

    data: Mapping[str, Any]
    version: int


@dataclass(frozen=True)
class Login:
    """Where and as whom to log in."""

    address: str
    role: str
    auth_path: str = "kubernetes"
    namespace: str | None = None
    ca_cert: str | None = None
    timeout: float = 10.0


def _errors(err: hvac.exceptions.VaultError) -> str:
    # Vault's own error strings only: never the response text or the request.
    errors = [str(e) for e in (err.errors or [])][:3]
    return "; ".join(errors)[:300] or type(err).__name__


def _client(login: Login) -> hvac.Client:
    # token="": never pick up a VAULT_TOKEN or ~/.vault-token of the operator's environment.
    return hvac.Client(url=login.address.rstrip("/"), token="", namespace=login.namespace,
                       verify=login.ca_cert or True, timeout=login.timeout)


def _transport(err: Exception, address: str) -> VaultError:
    kind = "timed out" if isinstance(err, requests.Timeout) else "connection failed"
    return VaultError(UNREACHABLE, f"cannot reach Vault at {address}: {kind}")


def _login(client: hvac.Client, login: Login, jwt: str) -> None:
    try:
        client.auth.kubernetes.login(role=login.role, jwt=jwt, mount_point=login.auth_path)
    except hvac.exceptions.VaultDown as err:
        raise VaultError(SEALED, f"Vault is sealed or unavailable: {_errors(err)}") from None
    except hvac.exceptions.InvalidRequest as err:
        text = _errors(err)
        if "role" in text and ("invalid" in text or "not found" in text):
            raise VaultError(ROLE_NOT_FOUND, f"Kubernetes auth role {login.role!r} at "
                             f"auth/{login.auth_path}: {text}") from None
        raise VaultError(LOGIN_FAILED, f"login with role {login.role!r} at "
                         f"auth/{login.auth_path}: {text}") from None
    except hvac.exceptions.InvalidPath:
        raise VaultError(LOGIN_FAILED, f"no auth method mounted at auth/{login.auth_path}"
                         ) from None
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as err:
        raise VaultError(LOGIN_FAILED, f"login with role {login.role!r} denied (is the role "
                         "bound to this ServiceAccount and namespace, with this audience?): "
                         f"{_errors(err)}") from None
    except hvac.exceptions.VaultError as err:
        raise VaultError(LOGIN_FAILED, f"login with role {login.role!r}: {_errors(err)}"
                         ) from None


def _read(client: hvac.Client, path: str) -> KvSecret:
    mount, rest = split_kv_path(path)
    try:
        response = client.secrets.kv.v2.read_secret_version(
            path=rest, mount_point=mount, raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        raise VaultError(SECRET_NOT_FOUND, f"no secret at {path} (or its latest version is "
                         "deleted)") from None
    except hvac.exceptions.Forbidden:
        raise VaultError(PERMISSION_DENIED, f"the role's policies do not allow reading {path}"
                         ) from None
    except hvac.exceptions.VaultDown as err:
        raise VaultError(SEALED, f"Vault is sealed or unavailable: {_errors(err)}") from None
    except hvac.exceptions.VaultError as err:
        raise VaultError(VAULT_ERROR, f"reading {path}: {_errors(err)}") from None
    body = response.get("data") or {}
    data = body.get("data")
    if not isinstance(data, dict):
        raise VaultError(SECRET_NOT_FOUND, f"{path} holds no KV v2 data")
    version = int((body.get("metadata") or {}).get("version") or 0)
    return KvSecret(data=data, version=version)


def read(login: Login, jwt: str, paths: Iterable[str]) -> dict[str, KvSecret]:
    """Log in with ``jwt`` and read each KV v2 path; the Vault token is revoked after."""
    client = _client(login)
    try:
        _login(client, login, jwt)
        try:
            return {path: _read(client, path) for path in dict.fromkeys(paths)}
        finally:
            # Best effort: the token expires with its TTL anyway.
            with contextlib.suppress(hvac.exceptions.VaultError, requests.RequestException):
                client.auth.token.revoke_self()
    except requests.RequestException as err:
        raise _transport(err, login.address) from None
    finally:
        client.adapter.close()
