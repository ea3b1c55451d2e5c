"""Vault/OpenBao Transit for encrypted models: make, unwrap and rewrap data keys.

Transit keeps the key-encryption key; Kustos only ever holds a data key (in memory, as a
``bytearray`` it overwrites after use) and its wrapped form ``vault:vN:...``. The login
is the one the operator's Vault code uses (kustos.vault.client): Kubernetes auth with a
ServiceAccount token (in a pod: the projected token of the model's own ServiceAccount),
or a Vault token from a file (a Vault agent sink, or an operator's token for `kustos
encrypt`). Errors are :class:`kustos.vault.client.VaultError` with a condition-style
reason; their messages carry Vault's error strings, never a token or key material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import hvac
import hvac.exceptions
import requests

from kustos.vault.client import (
    PERMISSION_DENIED,
    SEALED,
    VAULT_ERROR,
    Login,
    VaultError,
    _client,
    _errors,
    _login,
    _transport,
)

KEY_NOT_FOUND = "TransitKeyNotFound"
UNWRAP_FAILED = "DataKeyUnwrapFailed"


@dataclass(frozen=True)
class Auth:
    """How to get a Vault token: Kubernetes auth (``login`` + the ServiceAccount token in
    ``jwt_file``) or a ready token in ``token_file``."""

    address: str
    login: Login | None = None
    jwt_file: str | None = None
    token_file: str | None = None
    namespace: str | None = None
    ca_cert: str | None = None
    timeout: float = 10.0


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().strip()
    except OSError as exc:
        raise VaultError("LoginFailed", f"cannot read the {what} file {path}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    if not value:
        raise VaultError("LoginFailed", f"the {what} file {path} is empty")
    return value


@contextlib.contextmanager
def session(auth: Auth) -> Iterator[hvac.Client]:
    """A logged-in client; a token it logged in for is revoked afterwards."""
    login = auth.login or Login(address=auth.address, role="", namespace=auth.namespace,
                                ca_cert=auth.ca_cert, timeout=auth.timeout)
    client = _client(login)
    logged_in = False
    try:
        try:
            if auth.token_file:
                client.token = _read_secret_file(auth.token_file, "Vault token")
            elif auth.login is not None and auth.jwt_file:
                _login(client, auth.login, _read_secret_file(auth.jwt_file,
                                                             "ServiceAccount token"))
                logged_in = True
            else:
                raise VaultError("LoginFailed", "no Vault credentials: give a role and a "
                                 "ServiceAccount token file, or a Vault token file")
            yield client
        finally:
            if logged_in:
                with contextlib.suppress(hvac.exceptions.VaultError, requests.RequestException):
                    client.auth.token.revoke_self()
    except requests.RequestException as err:
        raise _transport(err, auth.address) from None
    finally:
        client.token = ""
        client.adapter.close()


def _refused(err: hvac.exceptions.VaultError, mount: str, key: str, action: str) -> VaultError:
    path = f"{mount}/{action}/{key}"
    if isinstance(err, hvac.exceptions.Forbidden):
        return VaultError(PERMISSION_DENIED, f"the Vault token's policies do not allow "
                          f"{path} (the policy needs capabilities [\"update\"] on it)")
    if isinstance(err, hvac.exceptions.VaultDown):
        return VaultError(SEALED, f"Vault is sealed or unavailable: {_errors(err)}")
    text = _errors(err)
    if isinstance(err, hvac.exceptions.InvalidPath) or "not found" in text:
        return VaultError(KEY_NOT_FOUND, f"no Transit key {key!r} at {mount}/ ({text})")
    if action == "decrypt":
        return VaultError(UNWRAP_FAILED, f"Transit key {key!r} refused to unwrap the data "
                          f"key (wrapped by another key, or a key version below the "
                          f"key's min_decryption_version): {text}")
    return VaultError(VAULT_ERROR, f"{path}: {text}")


def _key(b64: str) -> bytearray:
    try:
        raw = bytearray(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError):
        raise VaultError(VAULT_ERROR, "Transit returned a data key that is not base64"
                         ) from None
    if len(raw) != 32:
        n = len(raw)
        raw[:] = b"\x00" * n
        raise VaultError(VAULT_ERROR, f"Transit returned a {n * 8}-bit data key, "
                         "expected 256")
    return raw


def new_data_key(client: hvac.Client, mount: str, key: str) -> tuple[bytearray, str]:
    """A fresh 256-bit data key and its wrapped form (transit/datakey/plaintext/KEY)."""
    try:
        response = client.secrets.transit.generate_data_key(
            name=key, key_type="plaintext", bits=256, mount_point=mount)
    except hvac.exceptions.VaultError as err:
        raise _refused(err, mount, key, "datakey/plaintext") from None
    data = response["data"]
    return _key(data["plaintext"]), str(data["ciphertext"])


def unwrap(client: hvac.Client, mount: str, key: str, wrapped: str) -> bytearray:
    """The data key of ``wrapped`` (transit/decrypt/KEY)."""
    try:
        response = client.secrets.transit.decrypt_data(
            name=key, ciphertext=wrapped, mount_point=mount)
    except hvac.exceptions.VaultError as err:
        raise _refused(err, mount, key, "decrypt") from None
    return _key(response["data"]["plaintext"])


def rewrap(client: hvac.Client, mount: str, key: str, wrapped: str) -> str:
    """``wrapped`` re-encrypted with the key's newest version (transit/rewrap/KEY); the
    data key never leaves Vault."""
    try:
        response = client.secrets.transit.rewrap_data(
            name=key, ciphertext=wrapped, mount_point=mount)
    except hvac.exceptions.VaultError as err:
        raise _refused(err, mount, key, "rewrap") from None
    return str(response["data"]["ciphertext"])
