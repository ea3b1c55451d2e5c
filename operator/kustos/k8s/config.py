"""Where the Kubernetes API server is and how Kustos authenticates to it.

In a pod: the ServiceAccount's token (re-read as the kubelet rotates it) and CA. Elsewhere:
the current context of the merged kubeconfig, as kubectl reads it, with bearer tokens,
token files, client certificates, basic auth and exec credential plugins. Secrets (tokens,
keys, passwords) never appear in a repr, a log line or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Bound ServiceAccount tokens rotate; client-go re-reads token files at least every minute.
TOKEN_MAX_AGE = 60.0
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
# Refresh an exec credential shortly before it expires, not with the request in flight.
EXPIRY_SKEW = 10.0
# A non-interactive plugin that hangs must not hang a reconcile forever.
EXEC_TIMEOUT = 60.0


class ConfigError(Exception):
    """No usable API configuration. Messages name files and fields, never secrets."""


class NotInCluster(ConfigError):
    """Not running in a pod with a ServiceAccount token."""


@dataclass(frozen=True)
class Auth:
    """What one request carries: headers (the secret part) and client certificate files."""

    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    cert: tuple[str, str] | None = None  # (certificate file, key file)


class TokenFile:
    """A bearer token in a file, re-read when the file changes or is ``max_age`` s old."""

    def __init__(self, path: Path, max_age: float = TOKEN_MAX_AGE) -> None:
        self.path = path
        self.max_age = max_age
        self._token = ""
        self._stamp: tuple[int, int, int] | None = None
        self._read_at = 0.0

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    def token(self, refresh: bool = False) -> str:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            stale = time.monotonic() - self._read_at >= self.max_age
            if refresh or stale or stamp != self._stamp or not self._token:
                token = self.path.read_text().strip()
                if not token:
                    raise ConfigError(f"token file {self.path} is empty")
                self._token, self._stamp, self._read_at = token, stamp, time.monotonic()
        except (OSError, ConfigError) as err:
            if not self._token:
                raise ConfigError(f"cannot read token file {self.path}: {err}") from None
            # Mid-rotation (the kubelet swaps a symlink): the last token read is still valid.
            log.warning("cannot re-read token file %s (%s); using the last one", self.path, err)
        return self._token


@dataclass(frozen=True)
class _ExecCredential:
    token: str | None = field(repr=False)
    cert: bytes | None = field(repr=False)
    key: bytes | None = field(repr=False)
    expiry: float | None  # epoch seconds; None: until the server says 401


class ExecPlugin:
    """An exec credential plugin (client.authentication.k8s.io v1 and v1beta1)."""

    def __init__(self, spec: Mapping[str, Any], cluster: Mapping[str, Any] | None = None) -> None:
        self.api_version = str(spec.get("apiVersion") or "")
        if self.api_version not in EXEC_API_VERSIONS:
            raise ConfigError(f"exec plugin apiVersion {self.api_version!r} is not one of "
                              f"{', '.join(EXEC_API_VERSIONS)}")
        if not spec.get("command"):
            raise ConfigError("exec plugin without a command")
        self.command = str(spec["command"])
        self.args = [str(a) for a in spec.get("args") or []]
        self._env = {str(e.get("name")): str(e.get("value") or "")
                     for e in spec.get("env") or [] if isinstance(e, dict)}
        self.install_hint = str(spec.get("installHint") or "")
        self.interactive_mode = str(spec.get("interactiveMode") or "IfAvailable")
        self._cluster = dict(cluster or {}) if spec.get("provideClusterInfo") else None
        self._cred: _ExecCredential | None = None

    def __repr__(self) -> str:
        return f"ExecPlugin({self.command!r})"

    def credential(self, refresh: bool = False) -> _ExecCredential:
        """The cached credential until it expires (or ``refresh``, after a 401)."""
        cred = self._cred
        if (refresh or cred is None
                or (cred.expiry is not None and time.time() >= cred.expiry - EXPIRY_SKEW)):
            self._cred = cred = self._run()
        return cred

    def _run(self) -> _ExecCredential:
        name = f"exec plugin {self.command!r}"
        interactive = self.interactive_mode != "Never" and _stdin_is_a_terminal()
        if self.interactive_mode == "Always" and not interactive:
            raise ConfigError(f"{name} needs an interactive terminal")
        spec: dict[str, Any] = {"interactive": interactive}
        if self._cluster is not None:
            spec["cluster"] = self._cluster
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **self._env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        # stderr goes to the user (login prompts, errors); stdout holds the secret.
        try:
            proc = subprocess.run(
                [self.command, *self.args], env=env, stdout=subprocess.PIPE,
                stdin=None if interactive else subprocess.DEVNULL,
                timeout=None if interactive else EXEC_TIMEOUT, check=False)
        except FileNotFoundError:
            hint = f": {self.install_hint.strip()}" if self.install_hint else ""
            raise ConfigError(f"{name} not found{hint}") from None
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{name} did not finish in {EXEC_TIMEOUT:.0f} s") from None
        except OSError as err:
            raise ConfigError(f"{name} cannot run: {err.strerror}") from None
        if proc.returncode:
            raise ConfigError(f"{name} failed with exit code {proc.returncode}")
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            raise ConfigError(f"{name} printed no JSON") from None
        if (not isinstance(out, dict) or out.get("kind") != "ExecCredential"
                or out.get("apiVersion") != self.api_version):
            raise ConfigError(f"{name} printed no ExecCredential of {self.api_version}")
        status = out.get("status") or {}
        token = status.get("token") or None
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if bool(cert) != bool(key):
            raise ConfigError(f"{name} returned a client certificate without its key or back")
        if not token and not cert:
            raise ConfigError(f"{name} returned neither a token nor a client certificate")
        expiry = None
        if status.get("expirationTimestamp"):
            try:
                expiry = datetime.fromisoformat(str(status["expirationTimestamp"])).timestamp()
            except ValueError:
                raise ConfigError(f"{name}: bad expirationTimestamp") from None
        return _ExecCredential(token=str(token) if token else None,
                               cert=str(cert).encode() if cert else None,
                               key=str(key).encode() if key else None, expiry=expiry)


def _stdin_is_a_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # closed
        return False


class _PrivateDir:
    """PEM files urllib3 can only load from disk: a 0700 temp dir, 0600 files, removed at
    exit (or when its owner is collected)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="kustos-k8s-"))
        weakref.finalize(self, shutil.rmtree, self.path, True)
        self._count = 0

    def write(self, data: bytes) -> str:
        self._count += 1
        path = self.path / f"{self._count}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return str(path)


class Credentials:
    """A user's credentials. ``auth()`` is thread-safe and refreshes what can expire; exec
    plugins win over tokens, tokens over basic auth (as client-go does)."""

    def __init__(self, *, token: str | None = None, token_file: TokenFile | None = None,
                 basic: tuple[str, str] | None = None,
                 cert: tuple[str | bytes, str | bytes] | None = None,
                 plugin: ExecPlugin | None = None) -> None:
        """``cert`` is (certificate, key), each a file path (str) or PEM data (bytes)."""
        self._token = token
        self._token_file = token_file
        self._basic = basic
        self._plugin = plugin
        self._lock = threading.Lock()
        self._dir: _PrivateDir | None = None
        self._cert: tuple[str, str] | None = None
        self._plugin_cert: tuple[bytes, tuple[str, str]] | None = None
        if cert:
            c, k = cert
            self._cert = (c if isinstance(c, str) else self._write(c),
                          k if isinstance(k, str) else self._write(k))

    def __repr__(self) -> str:
        kinds = [name for name, value in (("token", self._token), ("basic", self._basic),
                                          ("cert", self._cert)) if value]
        kinds += [repr(source) for source in (self._token_file, self._plugin) if source]
        return f"Credentials({', '.join(kinds) or 'anonymous'})"

    @property
    def refreshable(self) -> bool:
        """Whether a 401 may be cured by reading the credentials again."""
        return self._plugin is not None or (self._token_file is not None and not self._token)

    def _write(self, data: bytes) -> str:
        if self._dir is None:
            self._dir = _PrivateDir()
        return self._dir.write(data)

    def auth(self, refresh: bool = False) -> Auth:
        with self._lock:
            headers: dict[str, str] = {}
            cert = self._cert
            if self._plugin:
                cred = self._plugin.credential(refresh)
                if cred.token:
                    headers["Authorization"] = f"Bearer {cred.token}"
                if cred.cert and cred.key:
                    cert = self._plugin_files(cred.cert, cred.key)
            if "Authorization" not in headers:
                token = self._token or (self._token_file.token(refresh)
                                        if self._token_file else None)
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                elif self._basic:
                    pair = base64.b64encode(":".join(self._basic).encode()).decode()
                    headers["Authorization"] = f"Basic {pair}"
            return Auth(headers, cert)

    def _plugin_files(self, cert: bytes, key: bytes) -> tuple[str, str]:
        if self._plugin_cert is None or self._plugin_cert[0] != cert + key:
            old = self._plugin_cert
            self._plugin_cert = (cert + key, (self._write(cert), self._write(key)))
            # The files before the previous ones: no request can still be opening them.
            if old and self._dir:
                for stale in self._dir.path.glob("*.pem"):
                    if str(stale) not in (*old[1], *self._plugin_cert[1], *(self._cert or ())):
                        stale.unlink(missing_ok=True)
        return self._plugin_cert[1]


@dataclass(frozen=True)
class Config:
    """An API server and how to reach it."""

    server: str
    credentials: Credentials
    ca_file: str | None = None
    ca_data: str | None = field(default=None, repr=False)  # PEM
    insecure: bool = False
    tls_server_name: str | None = None

    def tls(self) -> dict[str, Any]:
        """urllib3 pool keywords for the server's TLS."""
        if self.insecure:
            return {"cert_reqs": "CERT_NONE"}
        kw: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        if self.ca_file:
            kw["ca_certs"] = self.ca_file
        if self.ca_data:
            kw["ca_cert_data"] = self.ca_data
        if self.tls_server_name:
            kw["server_hostname"] = self.tls_server_name
        return kw


def in_cluster(sa_dir: Path = SERVICE_ACCOUNT_DIR,
               environ: Mapping[str, str] = os.environ) -> Config:
    """The pod's ServiceAccount: NotInCluster outside a pod."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise NotInCluster("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    for path in (token, ca):
        if not path.is_file():
            raise NotInCluster(f"{path} does not exist")
    token_file = TokenFile(token)
    token_file.token()  # fail now, not at the first request
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    return Config(f"https://{host}:{port}", Credentials(token_file=token_file), ca_file=str(ca))


def kubeconfig_paths(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """$KUBECONFIG's files in order, else ~/.kube/config."""
    value = environ.get("KUBECONFIG", "")
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


@dataclass
class _Kubeconfig:
    current_context: str | None = None
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)


# Paths in a kubeconfig are relative to the file that holds them.
_PATH_FIELDS = {"clusters": ("certificate-authority",),
                "users": ("client-certificate", "client-key", "tokenFile")}


def _resolve(entry: dict[str, Any], section: str, base: Path) -> dict[str, Any]:
    entry = dict(entry)
    for key in _PATH_FIELDS.get(section, ()):
        if entry.get(key) and not os.path.isabs(str(entry[key])):
            entry[key] = str(base / str(entry[key]))
    command = str((entry.get("exec") or {}).get("command") or "")
    # Only a command with a directory part is a path; a bare name is looked up in $PATH.
    if command and os.path.basename(command) != command and not os.path.isabs(command):
        entry["exec"] = {**entry["exec"], "command": str(base / command)}
    return entry


def _merged(paths: Sequence[Path]) -> _Kubeconfig:
    """kubectl's merge: missing files are skipped, the first file to set a value wins."""
    merged = _Kubeconfig()
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise ConfigError(f"cannot read kubeconfig {path}: {err.strerror}") from None
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            # Not str(err): its snippet of the offending line may hold a token.
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"kubeconfig {path} is not valid YAML{where}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {path} is not a mapping")
        if merged.current_context is None and doc.get("current-context"):
            merged.current_context = str(doc["current-context"])
        base = path.parent.absolute()
        for section, key in (("contexts", "context"), ("clusters", "cluster"),
                             ("users", "user")):
            known: dict[str, dict[str, Any]] = getattr(merged, section)
            for item in doc.get(section) or []:
                if isinstance(item, dict) and item.get("name") and item["name"] not in known:
                    known[str(item["name"])] = _resolve(item.get(key) or {}, section, base)
    return merged


def _b64(value: Any, what: str) -> bytes:
    try:
        # Go's decoder skips line breaks; some tools wrap long values.
        return base64.b64decode("".join(str(value).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what} is not valid base64") from None


def from_kubeconfig(paths: Sequence[Path] | None = None, context: str | None = None) -> Config:
    """The current (or the named) context of the merged kubeconfig files."""
    paths = list(paths) if paths is not None else kubeconfig_paths()
    kc = _merged(paths)
    where = ", ".join(str(p) for p in paths)
    name = context or kc.current_context
    if not any(p.exists() for p in paths):
        raise ConfigError(f"no kubeconfig: {where} does not exist")
    if not name:
        raise ConfigError(f"no current-context in kubeconfig {where}")
    if name not in kc.contexts:
        raise ConfigError(f"context {name!r} not found in kubeconfig {where}")
    ctx = kc.contexts[name]
    cluster = kc.clusters.get(str(ctx.get("cluster")))
    if cluster is None:
        raise ConfigError(f"cluster {ctx.get('cluster')!r} of context {name!r} not found")
    user: dict[str, Any] = {}
    if ctx.get("user"):
        if str(ctx["user"]) not in kc.users:
            raise ConfigError(f"user {ctx['user']!r} of context {name!r} not found")
        user = kc.users[str(ctx["user"])]
    if not cluster.get("server"):
        raise ConfigError(f"cluster {ctx['cluster']!r} has no server")

    insecure = bool(cluster.get("insecure-skip-tls-verify"))
    ca_file = cluster.get("certificate-authority") or None
    ca_data = (_b64(cluster["certificate-authority-data"], "certificate-authority-data")
               .decode() if cluster.get("certificate-authority-data") else None)
    if insecure and (ca_file or ca_data):
        raise ConfigError(f"cluster {ctx['cluster']!r}: a certificate authority and "
                          "insecure-skip-tls-verify exclude each other")

    def pem(key: str) -> str | bytes | None:
        if user.get(f"{key}-data"):
            return _b64(user[f"{key}-data"], f"{key}-data of user {ctx['user']!r}")
        return str(user[key]) if user.get(key) else None

    cert, key = pem("client-certificate"), pem("client-key")
    if bool(cert) != bool(key):
        raise ConfigError(f"user {ctx['user']!r}: client-certificate and client-key go together")
    for path in (ca_file, cert, key):
        if isinstance(path, str) and not os.path.isfile(path):
            raise ConfigError(f"{path} (in kubeconfig {where}) does not exist")
    if user.get("auth-provider") and not (user.get("exec") or user.get("token")):
        raise ConfigError(f"user {ctx['user']!r}: auth-provider is not supported; "
                          "use an exec credential plugin")
    cluster_info = {"server": cluster["server"], "insecure-skip-tls-verify": insecure,
                    **({"certificate-authority-data": cluster["certificate-authority-data"]}
                       if cluster.get("certificate-authority-data") else {}),
                    **({"tls-server-name": cluster["tls-server-name"]}
                       if cluster.get("tls-server-name") else {})}
    credentials = Credentials(
        token=str(user["token"]) if user.get("token") else None,
        token_file=TokenFile(Path(user["tokenFile"])) if user.get("tokenFile") else None,
        basic=((str(user["username"]), str(user.get("password") or ""))
               if user.get("username") else None),
        cert=(cert, key) if cert and key else None,
        plugin=ExecPlugin(user["exec"], cluster_info) if user.get("exec") else None)
    return Config(str(cluster["server"]).rstrip("/"), credentials, ca_file=ca_file,
                  ca_data=ca_data, insecure=insecure,
                  tls_server_name=cluster.get("tls-server-name") or None)


def load(sa_dir: Path = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] = os.environ) -> Config:
    """In-cluster config, else the current kubeconfig context (as the official client)."""
    try:
        return in_cluster(sa_dir, environ)
    except ConfigError as err:
        try:
            return from_kubeconfig(kubeconfig_paths(environ))
        except ConfigError as err2:
            raise ConfigError(f"{err2} (and not in a cluster: {err})") from None


def current_namespace(environ: Mapping[str, str] = os.environ) -> str | None:
    """The namespace of the kubeconfig's current context, if it sets one."""
    kc = _merged(kubeconfig_paths(environ))
    ctx = kc.contexts.get(kc.current_context or "") or {}
    return str(ctx["namespace"]) if ctx.get("namespace") else None
