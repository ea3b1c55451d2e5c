"""AWS credentials for `kustos fetch`: the standard provider chain, standard library only.

The order is the one the AWS SDKs use, cut to what a pod can have:

1. static keys: a mounted credentials directory (one file per variable, a Secret), then
   the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN);
2. web identity: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN -> STS
   AssumeRoleWithWebIdentity (IRSA and any OIDC-federated projected token);
3. container credentials: AWS_CONTAINER_CREDENTIALS_FULL_URI / _RELATIVE_URI with
   AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE) (EKS Pod Identity, ECS);
4. instance metadata, IMDSv2 only (token PUT, then GET), unless AWS_EC2_METADATA_DISABLED.

None configured means anonymous requests (a public bucket). Temporary credentials are
cached by :class:`CredentialChain` and fetched again shortly before they expire; files
(the projected token, the container token file, the credentials directory) are re-read on
every load so that rotated tokens are picked up. Secrets never appear in a repr, a log
line or an exception message: errors name the provider, the HTTP status and AWS's error
code only.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import ssl
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

# Every setting read from the environment or, as files, from the credentials directory.
SETTING_NAMES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS",
    "AWS_CA_BUNDLE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_DISABLED",
)
# Refresh temporary credentials this long before they expire (the SDKs use 10-15 min).
REFRESH_MARGIN = 600.0
STS_VERSION = "2011-06-15"
ECS_HOST = "http://169.254.170.2"
IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_TIMEOUT = 1.0  # the SDKs' default: a pod off EC2 must not wait long here
IMDS_TOKEN_TTL = "21600"
# Hosts a plain-http container credentials URI may name (the SDKs' allow-list).
CONTAINER_HTTP_HOSTS = ("169.254.170.2", "169.254.170.23", "fd00:ec2::23")
MAX_BODY = 1 << 20


class CredentialsError(Exception):
    """A configured provider failed. The message names no secret."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, repr=False)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None
    expiration: float | None = None  # epoch seconds; None: static, never expires
    source: str = "static"

    def __repr__(self) -> str:  # never leak secrets into logs or tracebacks
        exp = "" if self.expiration is None else f", expiration={self.expiration:.0f}"
        temporary = self.session_token is not None
        return f"Credentials(source={self.source!r}, temporary={temporary}{exp})"

    def expires_within(self, seconds: float, now: float) -> bool:
        return self.expiration is not None and now >= self.expiration - seconds


def load_settings(env: Mapping[str, str] | None = None,
                  credentials_dir: str | None = None, prefix: str = "") -> dict[str, str]:
    """The AWS_* settings: the environment, overridden by files of a credentials directory
    (a mounted Secret: one file per variable). With ``prefix`` only the variables named
    PREFIX + AWS_* are read, the prefix taken off: a second set of settings in the same
    environment (a BatchInference's input Secret, given as envFrom with that prefix next
    to the output's unprefixed AWS_*)."""
    start = prefix + "AWS_"
    values = {k[len(prefix):]: v for k, v in (os.environ if env is None else env).items()
              if k.startswith(start) and v}
    if credentials_dir:
        for name in SETTING_NAMES:
            path = Path(credentials_dir, name)
            if path.is_file():
                text = path.read_text().strip()
                if text:
                    values[name] = text
    return values


def region_of(settings: Mapping[str, str]) -> str | None:
    return settings.get("AWS_REGION") or settings.get("AWS_DEFAULT_REGION")


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Like the SDKs' AWS_CA_BUNDLE: the bundle replaces the system trust store."""
    if not ca_bundle:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except FileNotFoundError:
        raise CredentialsError(f"CA bundle {ca_bundle} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise CredentialsError(f"cannot load CA bundle {ca_bundle}: "
                               f"{getattr(exc, 'reason', None) or type(exc).__name__}") from None


# ------------------------------------------------------------------------------ HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def request(method: str, url: str, *, timeout: float, what: str,
            headers: Mapping[str, str] | None = None, body: bytes | None = None,
            context: ssl.SSLContext | None = None) -> Response:
    """One small request to a credentials endpoint. ``what`` names it in errors (the URL
    may carry nothing secret, but the message stays short and the same for all)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout,
                                           context=context or ssl.create_default_context())
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    else:
        raise CredentialsError(f"{what}: unsupported URL scheme {parts.scheme!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read(MAX_BODY)
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    except (OSError, http.client.HTTPException) as exc:
        raise CredentialsError(f"{what}: {_describe(exc)}", transient=True) from None
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _parse_time(value: str, what: str) -> float:
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CredentialsError(f"{what}: unreadable Expiration") from None


def is_loopback(host: str) -> bool:
    """localhost or a loopback address (where plain http leaves nothing on the wire)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------- providers


class Provider(Protocol):
    name: str

    def load(self) -> Credentials | None:
        """Credentials, None when this provider is not configured; CredentialsError when
        it is configured and fails."""


@dataclass
class StaticProvider:
    settings: Mapping[str, str] = field(repr=False)
    name: str = "static"

    def load(self) -> Credentials | None:
        key, secret = self.settings.get("AWS_ACCESS_KEY_ID"), self.settings.get(
            "AWS_SECRET_ACCESS_KEY")
        if not (key and secret):
            return None
        return Credentials(key, secret, self.settings.get("AWS_SESSION_TOKEN"), None, self.name)


def sts_endpoint(settings: Mapping[str, str]) -> str:
    """The regional STS endpoint (the SDKs' default since 2022), or an override."""
    override = settings.get("AWS_ENDPOINT_URL_STS") or settings.get("AWS_ENDPOINT_URL")
    if override:
        return override.rstrip("/")
    region = region_of(settings)
    if not region:
        return "https://sts.amazonaws.com"
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://sts.{region}.{suffix}"


@dataclass
class WebIdentityProvider:
    settings: Mapping[str, str] = field(repr=False)
    timeout: float = 10.0
    context: ssl.SSLContext | None = None
    clock: Callable[[], float] = time.time
    name: str = "web-identity"

    def load(self) -> Credentials | None:
        token_file = self.settings.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        role = self.settings.get("AWS_ROLE_ARN")
        if not (token_file and role):
            return None
        what = "web identity (STS AssumeRoleWithWebIdentity)"
        try:  # re-read every time: the kubelet rotates the projected token
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise CredentialsError(f"web identity: cannot read the token file {token_file}: "
                                   f"{exc.strerror or type(exc).__name__}") from None
        if not token:
            raise CredentialsError(f"web identity: the token file {token_file} is empty")
        session = self.settings.get("AWS_ROLE_SESSION_NAME") or (
            f"kustos-fetch-{int(self.clock() * 1000)}")
        form = urllib.parse.urlencode({
            "Action": "AssumeRoleWithWebIdentity", "Version": STS_VERSION,
            "RoleArn": role, "RoleSessionName": session, "WebIdentityToken": token,
        }).encode()
        resp = request("POST", sts_endpoint(self.settings) + "/", timeout=self.timeout,
                       what=what, body=form, context=self.context,
                       headers={"content-type": "application/x-www-form-urlencoded",
                                "accept": "application/xml"})
        if resp.status != 200:
            code = _xml_text(resp.body, "Code")
            transient = resp.status >= 500 or code in ("IDPCommunicationError", "Throttling")
            raise CredentialsError(
                f"{what}: HTTP {resp.status}" + (f" {code}" if code else ""), transient=transient)
        return Credentials(
            _required(_xml_text(resp.body, "AccessKeyId"), what),
            _required(_xml_text(resp.body, "SecretAccessKey"), what),
            _required(_xml_text(resp.body, "SessionToken"), what),
            _parse_time(_required(_xml_text(resp.body, "Expiration"), what), what),
            self.name,
        )


def _xml_text(body: bytes, tag: str) -> str | None:
    """The text of the first element named ``tag`` in any namespace."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag == tag or el.tag.endswith("}" + tag):
            return (el.text or "").strip()
    return None


def _required(value: str | None, what: str) -> str:
    if not value:
        raise CredentialsError(f"{what}: incomplete credentials in the response")
    return value


@dataclass
class ContainerProvider:
    settings: Mapping[str, str] = field(repr=False)
    timeout: float = 5.0
    context: ssl.SSLContext | None = None
    name: str = "container"

    def url(self) -> str | None:
        relative = self.settings.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        if relative:
            return ECS_HOST + "/" + relative.lstrip("/")
        full = self.settings.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        if not full:
            return None
        parts = urllib.parse.urlsplit(full)
        host = (parts.hostname or "").strip("[]")
        if parts.scheme == "https":
            return full
        if parts.scheme == "http" and (host in CONTAINER_HTTP_HOSTS or is_loopback(host)):
            return full
        raise CredentialsError("container credentials: AWS_CONTAINER_CREDENTIALS_FULL_URI must "
                               "be https, or http to loopback or the ECS/EKS link-local hosts")

    def load(self) -> Credentials | None:
        url = self.url()
        if url is None:
            return None
        what = "container credentials"
        headers: dict[str, str] = {"accept": "application/json"}
        token_file = self.settings.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        if token_file:  # the file wins over the variable, re-read for rotation
            try:
                headers["authorization"] = Path(token_file).read_text().strip()
            except OSError as exc:
                raise CredentialsError(f"{what}: cannot read the token file {token_file}: "
                                       f"{exc.strerror or type(exc).__name__}") from None
        elif token := self.settings.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"):
            headers["authorization"] = token
        if any(c in headers.get("authorization", "") for c in "\r\n"):
            raise CredentialsError(f"{what}: the authorization token has a line break")
        resp = request("GET", url, timeout=self.timeout, what=what, headers=headers,
                       context=self.context)
        if resp.status != 200:
            raise CredentialsError(f"{what}: HTTP {resp.status}", transient=resp.status >= 500)
        return _from_json(resp.body, what, self.name)


def _from_json(body: bytes, what: str, source: str) -> Credentials:
    try:
        doc = json.loads(body)
    except ValueError:
        raise CredentialsError(f"{what}: the response is not JSON") from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"{what}: the response is not a JSON object")
    if doc.get("Code", "Success") != "Success":
        raise CredentialsError(f"{what}: {str(doc.get('Code'))[:64]}")
    expiration = doc.get("Expiration")
    return Credentials(
        _required(doc.get("AccessKeyId"), what),
        _required(doc.get("SecretAccessKey"), what),
        doc.get("Token") or None,
        _parse_time(expiration, what) if isinstance(expiration, str) else None,
        source,
    )


@dataclass
class InstanceMetadataProvider:
    settings: Mapping[str, str] = field(repr=False)
    timeout: float = IMDS_TIMEOUT
    name: str = "instance-metadata"

    def load(self) -> Credentials | None:
        if self.settings.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
            return None
        base = (self.settings.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                or IMDS_ENDPOINT).rstrip("/")
        what = "instance metadata (IMDSv2)"
        try:
            tok = request("PUT", base + "/latest/api/token", timeout=self.timeout, what=what,
                          headers={"x-aws-ec2-metadata-token-ttl-seconds": IMDS_TOKEN_TTL})
        except CredentialsError:
            return None  # no metadata service here (not on EC2, or blocked): not configured
        if tok.status != 200 or not tok.body:
            return None
        headers = {"x-aws-ec2-metadata-token": tok.body.decode("ascii", "replace").strip()}
        path = base + "/latest/meta-data/iam/security-credentials/"
        roles = request("GET", path, timeout=self.timeout, what=what, headers=headers)
        if roles.status == 404:
            return None  # an instance without a role
        if roles.status != 200:
            raise CredentialsError(f"{what}: HTTP {roles.status}", transient=roles.status >= 500)
        role = roles.body.decode("utf-8", "replace").strip().splitlines()[0:1]
        if not role:
            return None
        resp = request("GET", path + urllib.parse.quote(role[0]), timeout=self.timeout,
                       what=what, headers=headers)
        if resp.status != 200:
            raise CredentialsError(f"{what}: HTTP {resp.status}", transient=resp.status >= 500)
        return _from_json(resp.body, what, self.name)


# ---------------------------------------------------------------------------- chain


@dataclass
class CredentialChain:
    """The first provider that is configured wins. Static keys are read on every call (a
    rotated Secret is seen at once); temporary credentials are kept until
    ``REFRESH_MARGIN`` seconds before they expire, then loaded again."""

    providers: list[Provider]
    clock: Callable[[], float] = time.time
    margin: float = REFRESH_MARGIN
    _cached: Credentials | None = field(default=None, repr=False)

    def get(self) -> Credentials | None:
        now = self.clock()
        if self._cached is not None and not self._cached.expires_within(self.margin, now):
            return self._cached
        for provider in self.providers:
            creds = provider.load()
            if creds is not None:
                self._cached = creds if creds.expiration is not None else None
                return creds
        self._cached = None
        return None


def default_chain(settings: Mapping[str, str], *, context: ssl.SSLContext | None = None,
                  clock: Callable[[], float] = time.time) -> CredentialChain:
    return CredentialChain([
        StaticProvider(settings),
        WebIdentityProvider(settings, context=context, clock=clock),
        ContainerProvider(settings, context=context),
        InstanceMetadataProvider(settings),
    ], clock=clock)
