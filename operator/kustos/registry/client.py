"""A typed client of MLflow's Model Registry REST API (2.0), on urllib3.

Only what resolving a ``models:/`` URI needs: a model version by alias or number, and its
artifact location (``model-versions/get-download-uri``). Credentials (a bearer token or a
user and password) are held in a request header built once; no message, exception or
``repr`` ever carries them. Every failure is a ``RegistryError`` with a CamelCase reason
a condition can carry.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3

from .uri import ModelRef

# Condition reasons.
UNREACHABLE = "RegistryUnreachable"
UNAUTHORIZED = "RegistryUnauthorized"
NOT_FOUND = "ModelVersionNotFound"
REGISTRY_ERROR = "RegistryError"

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts"


class RegistryError(Exception):
    """Talking to the registry failed; ``reason`` is a CamelCase condition reason."""

    reason = REGISTRY_ERROR

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class NotFound(RegistryError):
    """No such registered model, alias or version."""

    reason = NOT_FOUND


class Unauthorized(RegistryError):
    """The registry refused the credentials (401) or the access (403)."""

    reason = UNAUTHORIZED


class Unreachable(RegistryError):
    """No answer: connection refused, DNS, TLS, timeout, or a 5xx."""

    reason = UNREACHABLE


@dataclass(frozen=True)
class Credentials:
    """A bearer token, or a user and password (HTTP basic, as MLflow's basic-auth app)."""

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def header(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None and self.password is not None:
            pair = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    @staticmethod
    def from_secret_data(data: Mapping[str, str]) -> Credentials:
        """From a Secret's decoded data: ``token``, or ``username`` and ``password``."""
        if data.get("token"):
            return Credentials(token=data["token"].strip())
        if data.get("username") and data.get("password") is not None:
            return Credentials(username=data["username"].strip(), password=data["password"])
        raise RegistryError("the registry credentials Secret needs a 'token' key, or "
                            "'username' and 'password'", reason="RegistryCredentialsInvalid")


@dataclass(frozen=True)
class ModelVersion:
    """A model version as the registry describes it (the fields Kustos uses)."""

    name: str
    version: str
    source: str
    run_id: str | None
    status: str | None
    tags: Mapping[str, str]
    aliases: tuple[str, ...]

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ModelVersion:
        tags = {str(t.get("key")): str(t.get("value", "")) for t in data.get("tags") or []}
        return ModelVersion(
            name=str(data.get("name", "")), version=str(data.get("version", "")),
            source=str(data.get("source") or ""), run_id=data.get("run_id") or None,
            status=data.get("status"), tags=tags,
            aliases=tuple(str(a) for a in data.get("aliases") or ()))


class RegistryClient:
    """One registry at ``url`` (scheme://host[:port][/prefix]), with optional credentials."""

    def __init__(self, url: str, credentials: Credentials | None = None, *,
                 connect_timeout: float = 5.0, read_timeout: float = 15.0,
                 ca_certs: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"registry URL {url!r} must be http(s)://HOST[:PORT]",
                                reason="InvalidRegistryUrl")
        if parts.username or parts.password:
            raise RegistryError("put registry credentials in credentialsSecretRef, not in "
                                "the URL", reason="InvalidRegistryUrl")
        self.url = url.rstrip("/")
        self._headers = {"Accept": "application/json",
                         **(credentials or Credentials()).header()}
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            # Connection errors only: a 4xx/5xx answer is final for this poll.
            retries=urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=0,
                                  backoff_factor=0.2, raise_on_status=False),
            ca_certs=ca_certs)

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r})"

    def _get(self, path: str, params: Mapping[str, str], api: str = API) -> dict[str, Any]:
        where = f"{self.url}{api}/{path}"
        try:
            resp = self._pool.request("GET", f"{where}?{urlencode(params)}",
                                      headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(f"registry {self.url} unreachable: "
                              f"{type(exc).__name__}") from None
        body = resp.data
        try:
            answer = json.loads(body) if body else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        said = str(answer.get("message") or "")[:300]
        code = str(answer.get("error_code") or "")
        if resp.status == 200:
            return answer
        what = f"{path} {_describe(params)}"
        if resp.status in (401, 403):
            raise Unauthorized(f"registry {self.url} refused {what}: HTTP {resp.status}"
                               + (" (credentials rejected)" if resp.status == 401
                                  else " (permission denied)"))
        # A missing alias is a 400 INVALID_PARAMETER_VALUE "... alias X not found".
        if resp.status == 404 or code == "RESOURCE_DOES_NOT_EXIST" or (
                code == "INVALID_PARAMETER_VALUE" and "not found" in said.lower()):
            raise NotFound(f"{what}: not found in registry {self.url}"
                           + (f" ({said})" if said else ""))
        if resp.status >= 500:
            raise Unreachable(f"registry {self.url} answered HTTP {resp.status} to {what}")
        raise RegistryError(f"registry {self.url} answered HTTP {resp.status} to {what}"
                            + (f": {code} {said}" if code or said else ""))

    def health(self) -> bool:
        """Whether ``/health`` answers 200 (the tracking server's liveness endpoint)."""
        try:
            return self._pool.request("GET", f"{self.url}/health",
                                      headers=self._headers).status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def model_version(self, ref: ModelRef) -> ModelVersion:
        """The version an alias points to, or a version by number."""
        if ref.alias:
            answer = self._get("registered-models/alias",
                               {"name": ref.name, "alias": ref.alias})
        else:
            answer = self._get("model-versions/get",
                               {"name": ref.name, "version": str(ref.version)})
        data = answer.get("model_version")
        if not isinstance(data, dict):
            raise RegistryError(f"registry {self.url} answered without a model_version "
                                f"for {ref}")
        return ModelVersion.from_json(data)

    def download_uri(self, name: str, version: str) -> str:
        """Where the version's artifacts are (runs:/ and models:/ sources resolved by the
        server): s3://..., file:///..., mlflow-artifacts:/... ."""
        answer = self._get("model-versions/get-download-uri",
                           {"name": name, "version": version})
        uri = answer.get("artifact_uri")
        if not isinstance(uri, str) or not uri:
            raise RegistryError(f"registry {self.url} gave no artifact_uri for "
                                f"{name} version {version}")
        return uri


    def list_proxied(self, path: str) -> list[str]:
        """The files directly under ``path`` of a proxied artifact store (the server's
        ``mlflow-artifacts`` endpoint; ``path`` as in ``mlflow-artifacts:/PATH``)."""
        answer = self._get("artifacts", {"path": path.strip("/")}, api=ARTIFACTS_API)
        return [str(f.get("path", "")).rsplit("/", 1)[-1] for f in answer.get("files") or []
                if isinstance(f, dict) and not f.get("is_dir")]


def _describe(params: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in params.items())
