"""governance.namespace_policies.policies_for, the one read of the policies that apply in
a namespace (the admission webhook's and the BatchInference gate's), against a small HTTP
server in the test that answers the API server's GovernancePolicy LIST and Namespace GET."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from kustos.api.v1alpha1 import BatchInferenceSpec
from kustos.controllers.batchinference import Blocked, resolve
from kustos.governance.namespace_policies import policies_for
from kustos.k8s import client, config
from kustos.k8s.client import ApiError
from loopback_http import loopback_server

POLICIES = "/apis/kustos.dev/v1alpha1/governancepolicies"


@dataclass
class Cluster:
    """What the server holds: policies, namespaces (name -> labels), and a status to
    answer the policy LIST with instead (403: no RBAC)."""

    policies: list[dict[str, Any]] = field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    list_status: int = 200
    paths: list[str] = field(default_factory=list)


def policy(name: str, selector: dict[str, Any] | None = None, enforcement: str = "Deny",
           deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T10:00:00Z"
    spec: dict[str, Any] = {"enforcement": enforcement, "requireOwner": True}
    if selector is not None:
        spec["namespaceSelector"] = selector
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "GovernancePolicy",
            "metadata": meta, "spec": spec}


class FakeApi(BaseHTTPRequestHandler):
    """The API server's answers from the Cluster its server carries."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state: Cluster = self.server.cluster  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        state.paths.append(path)
        name = path.rsplit("/", 1)[1]
        if path == POLICIES and state.list_status != 200:
            self._answer(state.list_status, {"kind": "Status", "code": state.list_status,
                                             "message": "forbidden"})
        elif path == POLICIES:
            self._answer(200, {"kind": "GovernancePolicyList", "metadata": {},
                               "items": state.policies})
        elif path.startswith("/api/v1/namespaces/") and name in state.namespaces:
            self._answer(200, {"kind": "Namespace", "metadata": {
                "name": name, "labels": state.namespaces[name]}})
        else:
            self._answer(404, {"kind": "Status", "code": 404, "message": "not found"})


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with loopback_server(FakeApi) as httpd:
        httpd.cluster = state = Cluster()  # type: ignore[attr-defined]
        cfg = config.Config(f"http://127.0.0.1:{httpd.server_address[1]}",
                            config.Credentials(token="t"))
        monkeypatch.setattr(client, "_api", client.Api(cfg))
        yield state


def names(namespace: str) -> list[str]:
    return [p.name for p in policies_for(namespace)]


def test_no_policies_means_no_namespace_read(cluster: Cluster) -> None:
    assert policies_for("ml") == []
    assert cluster.paths == [POLICIES]


def test_selectors_match_the_namespace_labels_and_its_name(cluster: Cluster) -> None:
    cluster.policies = [
        policy("z-everywhere"),
        policy("team-a", {"matchLabels": {"team": "a"}}, enforcement="Warn"),
        policy("team-b", {"matchLabels": {"team": "b"}}),
        policy("by-name", {"matchLabels": {"kubernetes.io/metadata.name": "ml"}}),
        policy("going", deleting=True),
    ]
    cluster.namespaces = {"ml": {"team": "a"}, "other": {"team": "b"}}
    assert names("ml") == ["by-name", "team-a", "z-everywhere"]  # sorted, Warn included
    assert names("other") == ["team-b", "z-everywhere"]
    # A namespace that cannot be found still has its name label.
    assert names("ml-gone") == ["z-everywhere"]
    cluster.namespaces["ml-gone"] = {}
    cluster.policies.append(policy("gone", {"matchLabels": {
        "kubernetes.io/metadata.name": "ml-gone"}}))
    assert names("ml-gone") == ["gone", "z-everywhere"]


def test_an_unreadable_policy_list_raises(cluster: Cluster) -> None:
    cluster.list_status = 403
    with pytest.raises(ApiError) as exc:
        policies_for("ml")
    assert exc.value.status == 403


def _batch_spec() -> BatchInferenceSpec:
    return BatchInferenceSpec.model_validate({
        "model": {"version": "3", "uri": "s3://m/iris/model.skops"},
        "input": {"uri": "s3://data/in.csv"}, "output": {"uri": "pvc://results/runs/1"}})


def test_the_batch_gate_is_held_by_deny_policies_only(cluster: Cluster) -> None:
    body = {"metadata": {"name": "score", "namespace": "ml"}}
    cluster.namespaces = {"ml": {"team": "a"}}
    cluster.policies = [policy("warn-owner", enforcement="Warn")]
    model, name, account, used = resolve(body, _batch_spec())
    assert (model.uri, name, account, used["version"]) == (
        "s3://m/iris/model.skops", "score", None, "3")
    cluster.policies.append(policy("deny-owner", {"matchLabels": {"team": "a"}}))
    with pytest.raises(Blocked) as exc:
        resolve(body, _batch_spec())
    assert exc.value.blocked.reason == "PolicyViolation"
    assert "deny-owner" in exc.value.blocked.message
    assert "warn-owner" not in exc.value.blocked.message
