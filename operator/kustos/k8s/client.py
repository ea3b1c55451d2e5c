"""The one place that talks to the Kubernetes API: apply, list, delete, status, events.

Plain HTTPS (urllib3) with explicit paths, so that every request (and every write) is
visible here and counted in the operator's metrics; kustos.k8s.config finds the server
and the credentials.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from kustos import metrics

from . import config
from .resources import resource

FIELD_MANAGER = "kustos"
TIMEOUT = urllib3.Timeout(total=60)
# Connection errors are retried for every verb, read errors for idempotent ones only
# (urllib3's defaults, as the official client had); redirects are not followed, so
# credentials never go to another host.
RETRIES = urllib3.Retry(total=3, redirect=False)

_api: Api | None = None


class Api:
    """The API server: its config and a thread-safe pool of keep-alive connections."""

    def __init__(self, cfg: config.Config) -> None:
        url = urllib3.util.parse_url(cfg.server)
        if url.scheme not in ("http", "https") or not url.host:
            raise config.ConfigError(f"server {cfg.server!r} is not an http(s) URL")
        self.config = cfg
        self._origin = f"{url.scheme}://{url.netloc}"
        self._prefix = (url.path or "").rstrip("/")  # a server behind a path (a proxy)
        # As many keep-alive connections as threads that may call at once (kopf's
        # handler workers, the refreshes and loops run via asyncio.to_thread).
        self._pools = urllib3.PoolManager(num_pools=4, maxsize=32, **cfg.tls())
        # Watches hold their connection for minutes: their own pool, so they never take
        # the request threads' connections.
        self._streams = urllib3.PoolManager(num_pools=4, maxsize=64, **cfg.tls())

    def __repr__(self) -> str:
        return f"Api({self.config.server!r})"

    def request(self, method: str, path: str, query: list[tuple[str, Any]], body: bytes | None,
                headers: Mapping[str, str], *, stream: urllib3.Timeout | None = None,
                ) -> urllib3.BaseHTTPResponse:
        """One request; ``stream``: a long-lived streamed response (a watch) with that
        timeout, whose body the caller reads and releases."""
        target = self._prefix + path + (f"?{urlencode(query, quote_via=quote)}" if query else "")
        credentials = self.config.credentials
        pools = self._pools if stream is None else self._streams
        for attempt in (0, 1):
            # After a 401, once: the token file may have rotated, the exec token expired.
            auth = credentials.auth(refresh=attempt > 0)
            pool_kw = {"cert_file": auth.cert[0], "key_file": auth.cert[1]} if auth.cert else {}
            pool = pools.connection_from_url(self._origin, pool_kwargs=pool_kw)
            response = pool.urlopen(method, target, body=body, headers={**headers, **auth.headers},
                                    timeout=stream or TIMEOUT, retries=RETRIES, redirect=False,
                                    preload_content=stream is None)
            if response.status != 401 or attempt or not credentials.refreshable:
                break
            response.drain_conn()
            response.release_conn()
        return response


def api() -> Api:
    """The shared connection: in-cluster config, else the current kubeconfig."""
    global _api
    if _api is None:
        _api = Api(config.load())
    return _api


class ApiError(Exception):
    """An API request failed; ``status`` is the HTTP status, ``reason`` the API's reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def resource_of(path: str) -> str:
    """The resource a request path names: its plural, and a subresource after a slash
    (/api/v1/namespaces/ns/pods/p/status -> pods/status)."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]  # after the group version
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return "unknown"
    return "/".join([rest[0], *rest[2:3]])


def _error(status: int, raw: bytes | None) -> ApiError:
    reason, message = "Unknown", f"HTTP {status}"
    try:
        err = json.loads(raw or b"{}")
        reason = err.get("reason") or reason
        message = err.get("message") or message
    except (TypeError, ValueError, AttributeError):
        pass
    return ApiError(status, reason, message)


def _call(method: str, path: str, *, body: Any = None, query: list[tuple[str, Any]] | None = None,
          content_type: str = "application/json") -> Any:
    if method != "GET":
        metrics.API_WRITES.labels(verb=method, resource=resource_of(path)).inc()
    # JSON is YAML too: apply patches go out as JSON text.
    payload = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    response = api().request(
        method, path, query or [], payload.encode() if payload is not None else None,
        {"Accept": "application/json", "Content-Type": content_type, "User-Agent": "kustos"})
    raw, status = response.data, response.status
    if status >= 300:
        raise _error(status, raw)
    return json.loads(raw) if raw else {}


def served_resources(group_version: str) -> list[str] | None:
    """The resources (plurals, subresources too) the API serves in ``group_version``
    (e.g. gateway.networking.k8s.io/v1), from discovery; None when it serves no such
    group version."""
    try:
        found = _call("GET", f"/apis/{group_version}")
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return [str(r.get("name")) for r in found.get("resources") or []]


def apply(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side apply ``manifest`` as field manager ``kustos`` (forcing conflicts: we own
    what we render)."""
    res = resource(manifest["kind"])
    meta = manifest["metadata"]
    path = res.path(meta["name"], meta.get("namespace"))
    result: dict[str, Any] = _call(
        "PATCH", path, body=dict(manifest),
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        content_type="application/apply-patch+yaml")
    return result


def get(kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        obj: dict[str, Any] = _call("GET", resource(kind).path(name, namespace))
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return obj


def _selector(labels: Mapping[str, str] | None) -> list[tuple[str, Any]]:
    return [("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items()))] if labels else []


def list_objects(kind: str, namespace: str | None = None,
                 labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    return list_with_version(kind, namespace, labels)[0]


def list_with_version(kind: str, namespace: str | None = None,
                      labels: Mapping[str, str] | None = None, *, page: int | None = None,
                      keep: Callable[[dict[str, Any]], Any] | None = None,
                      ) -> tuple[list[Any], str]:
    """The objects and the list's resourceVersion (where a watch of them starts).
    ``page``: list in pages of that many (one consistent snapshot: the continue token
    pins it), each object reduced by ``keep`` before the next page is read, so a listing
    of thousands is never held whole."""
    query = _selector(labels) + ([("limit", page)] if page else [])
    found: list[Any] = []
    token = None
    while True:
        result = _call("GET", resource(kind).collection(namespace),
                       query=query + ([("continue", token)] if token else []))
        items: list[dict[str, Any]] = result.get("items", [])
        found.extend(items if keep is None else (keep(item) for item in items))
        meta = result.get("metadata") or {}
        token = meta.get("continue")
        if not token:
            return found, str(meta.get("resourceVersion") or "")


def current_version(kind: str, namespace: str | None = None,
                    labels: Mapping[str, str] | None = None) -> str:
    """The resourceVersion a watch of these objects starts from to see only what changes
    from now on (a LIST of one: its version is the whole collection's)."""
    result = _call("GET", resource(kind).collection(namespace),
                   query=[*_selector(labels), ("limit", 1)])
    return str((result.get("metadata") or {}).get("resourceVersion") or "")


def watch(kind: str, namespace: str | None, labels: Mapping[str, str] | None,
          resource_version: str, timeout_seconds: int) -> urllib3.BaseHTTPResponse:
    """Open a watch of ``kind`` from ``resource_version``: the streamed response, one JSON
    event per line (kustos.k8s.watch reads it). The API server ends it after
    ``timeout_seconds``; bookmarks keep the version current meanwhile."""
    query = [*_selector(labels), ("watch", "true"), ("resourceVersion", resource_version),
             ("allowWatchBookmarks", "true"), ("timeoutSeconds", timeout_seconds)]
    response = api().request(
        "GET", resource(kind).collection(namespace), query, None,
        {"Accept": "application/json", "User-Agent": "kustos"},
        stream=urllib3.Timeout(connect=15, read=timeout_seconds + 30))
    if response.status >= 300:
        raw = response.read()
        response.release_conn()
        raise _error(response.status, raw)
    return response


def delete(kind: str, name: str, namespace: str | None, uid: str) -> None:
    """Delete one object, only if it is still the one we saw (uid precondition)."""
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
            "preconditions": {"uid": uid}}
    try:
        _call("DELETE", resource(kind).path(name, namespace), body=body)
    except ApiError as err:
        if err.status not in (404, 409):
            raise


def patch_status(kind: str, name: str, namespace: str | None, status: Mapping[str, Any],
                 resource_version: str | None = None) -> dict[str, Any]:
    """Merge-patch the status subresource; with ``resource_version`` only if the object is
    still at that version (else ApiError 409), so a status computed from a stale read never
    overwrites a newer one."""
    path = resource(kind).path(name, namespace) + "/status"
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    result: dict[str, Any] = _call("PATCH", path, body=body,
                                   content_type="application/merge-patch+json")
    return result


def apply_status(kind: str, name: str, namespace: str | None, status: Mapping[str, Any],
                 manager: str, resource_version: str) -> dict[str, Any]:
    """Server-side apply ``status`` to the status subresource as field manager ``manager``:
    the fields (and map-list entries, such as conditions by type) it names become that
    manager's, those it applied before and leaves out now are removed, and every other
    manager's fields stay as they are. Only while the object is at ``resource_version``
    (else ApiError 409)."""
    res = resource(kind)
    meta: dict[str, Any] = {"name": name, "resourceVersion": resource_version}
    if namespace:
        meta["namespace"] = namespace
    body = {"apiVersion": res.api_version, "kind": kind, "metadata": meta,
            "status": dict(status)}
    result: dict[str, Any] = _call(
        "PATCH", res.path(name, namespace) + "/status", body=body,
        query=[("fieldManager", manager), ("force", "true")],
        content_type="application/apply-patch+yaml")
    return result


def json_patch_status(kind: str, name: str, namespace: str | None,
                      ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON patch (RFC 6902) of the status subresource; its ``test`` operations make it
    conditional (ApiError 422 when one fails)."""
    result: dict[str, Any] = _call("PATCH", resource(kind).path(name, namespace) + "/status",
                                   body=ops, content_type="application/json-patch+json")
    return result


def patch(kind: str, name: str, namespace: str | None, body: Mapping[str, Any],
          resource_version: str | None = None) -> dict[str, Any]:
    """Merge-patch an object (a user's action such as `kustos rollback`, never a child);
    with ``resource_version`` only if the object is still at that version (else 409)."""
    payload: dict[str, Any] = dict(body)
    if resource_version:
        payload["metadata"] = {**payload.get("metadata", {}), "resourceVersion": resource_version}
    result: dict[str, Any] = _call("PATCH", resource(kind).path(name, namespace), body=payload,
                                   content_type="application/merge-patch+json")
    return result


def create(manifest: Mapping[str, Any], dry_run: bool = False) -> dict[str, Any]:
    """Create an object; ``dry_run`` runs admission (webhooks included) and stores nothing."""
    res = resource(manifest["kind"])
    result: dict[str, Any] = _call(
        "POST", res.collection(manifest["metadata"].get("namespace")), body=dict(manifest),
        query=[("dryRun", "All")] if dry_run else None)
    return result


def create_token(service_account: str, namespace: str, audience: str,
                 seconds: int = 600) -> str:
    """A short-lived token of a ServiceAccount for ``audience`` (TokenRequest API). The
    caller must never log or store it."""
    path = resource("ServiceAccount").path(service_account, namespace) + "/token"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": seconds}}
    result = _call("POST", path, body=body)
    return str(result["status"]["token"])
