"""The one place that talks to the Kubernetes API: apply, list, delete, status, events.

A thin layer over the official client's ApiClient with explicit paths, so that every
request (and every write) is visible here and counted in the operator's metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from kustos import metrics

from .resources import resource

FIELD_MANAGER = "kustos"

_api: ApiClient | None = None


def api() -> ApiClient:
    """A shared ApiClient: in-cluster config, else the current kubeconfig."""
    global _api
    if _api is None:
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        _api = ApiClient()
    return _api


class ApiError(Exception):
    """An API request failed; ``status`` is the HTTP status, ``reason`` the API's reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def _call(method: str, path: str, *, body: Any = None, query: list[tuple[str, Any]] | None = None,
          content_type: str = "application/json") -> Any:
    if method != "GET":
        metrics.API_WRITES.labels(verb=method).inc()
    client = api()
    # JSON is YAML too: apply patches go out as JSON text; the client encodes JSON types.
    payload = json.dumps(body) if "yaml" in content_type and not isinstance(body, str) else body
    _, url, headers, _, _ = client.param_serialize(
        method, path, query_params=query or [],
        header_params={"Accept": "application/json", "Content-Type": content_type},
        auth_settings=["BearerToken"])
    try:
        response = client.call_api(method, url, header_params=headers, body=payload,
                                   _request_timeout=60)
        raw = response.read()  # type: ignore[no-untyped-call]
        status = response.status
    except ApiException as exc:
        raw, status = exc.body, exc.status or 0
    if status >= 400:
        reason, message = "Unknown", f"HTTP {status}"
        try:
            err = json.loads(raw or b"{}")
            reason = err.get("reason") or reason
            message = err.get("message") or message
        except (TypeError, ValueError):
            pass
        raise ApiError(status, reason, message)
    return json.loads(raw) if raw else {}


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


def list_objects(kind: str, namespace: str | None = None,
                 labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    query: list[tuple[str, Any]] = []
    if labels:
        query.append(("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items())))
    result = _call("GET", resource(kind).collection(namespace), query=query)
    items: list[dict[str, Any]] = result.get("items", [])
    return items


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


def create(manifest: Mapping[str, Any]) -> dict[str, Any]:
    res = resource(manifest["kind"])
    result: dict[str, Any] = _call(
        "POST", res.collection(manifest["metadata"].get("namespace")), body=dict(manifest))
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
