"""What Kustos relies on in kopf, pinned against the installed kopf (pyproject.toml caps its
version; raise the cap only once this passes with the new one).

controllers/peering.py reads the peering objects kopf writes and resolves kopf's
``--namespace`` globs itself, and controllers/run.py hands kopf the identity and the memo.
None of it imports kopf's private modules, so a change in kopf shows up here, not in a
cluster: kopf.run's keywords, the keep-alive kopf really writes (run against a fake API
server that records it), the memo its startup handlers receive, and the documented
namespace-pattern examples. controllers/indexes.py relies on kopf filling every index
from its initial listing before any resource handler runs, and on the indexes a startup
handler receives being the live ones.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
import pytest

from kustos.controllers import peering
from kustos.controllers.peering import Peering, decide, exact_namespaces, match_namespace


def test_kopf_run_takes_the_keywords_run_py_passes() -> None:
    params = inspect.signature(kopf.run).parameters
    for name in ("identity", "priority", "peering_name", "memo", "standalone", "clusterwide",
                 "namespaces", "liveness_endpoint"):
        assert name in params, name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert isinstance(kopf.Memo(), dict)


# kopf's documented examples: docs/scopes.rst and the docstring of its matcher.
@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("some-namespace", "some-namespace", True),
    ("some-namespace", "some-namespace-2", False),
    ("*-pr-123-*", "app-pr-123-x", True),
    ("*-pr-123-*", "app-pr-124-x", False),
    ("!*-pr-123-*", "app-pr-123-x", False),
    ("!*-pr-123-*", "app-live", True),
    ("myapp-*,!*-pr-*,*-pr-123", "myapp-live", True),
    ("myapp-*,!*-pr-*,*-pr-123", "myapp-pr-456", False),
    ("myapp-*,!*-pr-*,*-pr-123", "myapp-pr-123", True),
    ("myapp-*,!*-pr-*,*-pr-123", "otherapp-live", False),
    ("myapp-*,!*-pr-*,*-pr-123", "otherapp-pr-123", False),
    ("myapp-*, !*-pr-*, *pr-123", "myapp-test", True),
    ("myapp-*, !*-pr-*, *pr-123", "myapp-pr-123", True),
    ("myapp-*, !*-pr-*, *pr-123", "myapp-pr-456", False),
    ("myapp-*, !*-pr-*, *pr-123", "otherapp-pr-123", False),
    ("!*-pr-*, *pr-123", "myapp-test", True),
    ("!*-pr-*, *pr-123", "myapp-pr-123", True),
    ("!*-pr-*, *pr-123", "anyapp-anything", True),
    ("!*-pr-*, *pr-123", "otherapp-pr-123", True),
    ("!*-pr-*, *pr-123", "myapp-pr-456", False),
    ("*, !*-pr-*, *pr-123", "otherapp-pr-123", True),
    ("ns-?", "ns-1", True),
    ("ns-?", "ns-12", False),
])
def test_namespace_patterns_as_kopf_documents(pattern: str, name: str, matches: bool) -> None:
    assert match_namespace(name, pattern) is matches


def test_exact_namespaces_are_the_patterns_without_glob_characters() -> None:
    # kopf's fallback without permission to list namespaces: "all namespaces with the
    # ``,*?!`` characters are excluded".
    assert exact_namespaces(["ns1", "ns-*", "!x", "a,b", "ns?", "ns2"]) == {"ns1", "ns2"}
    assert exact_namespaces([]) == set()


def test_own_identities_are_unique_per_process_and_call() -> None:
    one, two = peering.own_identity(), peering.own_identity()
    assert one != two
    assert one.startswith("kustos@")


# A fake API server, just enough for kopf.run in peering mode: discovery, empty lists,
# watches that stay silent, and the peering PATCHes it records.
_GROUPS: dict[str, list[tuple[str, str, bool]]] = {
    "kopf.dev/v1": [("kopfpeerings", "KopfPeering", True),
                    ("clusterkopfpeerings", "ClusterKopfPeering", False)],
    "apiextensions.k8s.io/v1": [
        ("customresourcedefinitions", "CustomResourceDefinition", False)],
}


def _resources(group_version: str, items: list[tuple[str, str, bool]]) -> dict[str, Any]:
    return {"kind": "APIResourceList", "groupVersion": group_version, "resources": [
        {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
         "verbs": ["get", "list", "watch", "patch"]} for name, kind, namespaced in items]}


class FakeApi:
    def __init__(self) -> None:
        self.patches: list[tuple[str, Any]] = []
        self.items: dict[str, list[dict[str, Any]]] = {}  # collection path -> its objects
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def recorded(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self.patches)

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def _reply(self, url: str) -> dict[str, Any]:
        path = urllib.parse.urlsplit(url).path
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/api/v1":
            return _resources("v1", [("namespaces", "Namespace", False),
                                     ("configmaps", "ConfigMap", True)])
        if path == "/apis":
            return {"kind": "APIGroupList", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": "v1"}],
                 "preferredVersion": {"groupVersion": gv, "version": "v1"}} for gv in _GROUPS]}
        for gv, items in _GROUPS.items():
            if path == f"/apis/{gv}":
                return _resources(gv, items)
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
                "items": self.items.get(path, [])}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                if query.get("watch") != ["true"]:
                    self._json(api._reply(self.path))
                    return
                # A watch with no events, open until the test ends (no reconnect loop).
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                api.closing.wait(60)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.wfile.write(b"0\r\n\r\n")

            def do_PATCH(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size) or b"{}")
                with api._lock:
                    api.patches.append((urllib.parse.urlsplit(self.path).path, body))
                self._json({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                            "metadata": {"name": self.path.rsplit("/", 1)[-1],
                                         "resourceVersion": "2"},
                            "status": (body or {}).get("status") or {}})

        return Handler


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi()
    try:
        yield server
    finally:
        server.close()


def _wait(cond: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def _run_kopf(api: FakeApi, *, clusterwide: bool, namespaces: list[str],
              lifetime: int) -> tuple[Peering, list[bool]]:
    """kopf.run as run.py calls it, until its first keep-alives are in and it has stopped
    again: this process's Peering, and what active_check(memo) gave a startup handler."""
    registry = kopf.OperatorRegistry()
    got: list[bool] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api.url)

    @kopf.on.startup(registry=registry)
    def startup(memo: kopf.Memo, **_: Any) -> None:
        # What controllers/vault.py and sidecars.py hand their loops (asyncio tasks).
        got.append(peering.active_check(memo) == memo.peering.is_active)

    settings = kopf.OperatorSettings()
    settings.peering.lifetime = lifetime
    settings.scanning.disabled = True  # exact namespaces: no namespace listing needed
    settings.posting.enabled = False
    peers = Peering("contract", 7, clusterwide=clusterwide, namespaces=namespaces)
    memo = kopf.Memo()
    memo.peering = peers
    stop = threading.Event()
    thread = threading.Thread(target=kopf.run, name="kopf-contract", daemon=True, kwargs={
        "registry": registry, "settings": settings, "stop_flag": stop,
        "clusterwide": clusterwide, "namespaces": namespaces, "standalone": False,
        "peering_name": "contract", "priority": 7, "identity": peers.identity, "memo": memo})
    thread.start()
    try:
        assert _wait(lambda: len(api.recorded()) >= max(1, len(namespaces))), \
            "kopf wrote no keep-alive"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "kopf did not stop"
    return peers, got


@pytest.mark.parametrize(("clusterwide", "namespaces", "paths"), [
    (True, [], ["/apis/kopf.dev/v1/clusterkopfpeerings/contract"]),
    (False, ["ns1", "ns2"], ["/apis/kopf.dev/v1/namespaces/ns1/kopfpeerings/contract",
                             "/apis/kopf.dev/v1/namespaces/ns2/kopfpeerings/contract"]),
])
def test_decide_reads_the_keepalive_kopf_writes(api: FakeApi, clusterwide: bool,
                                                namespaces: list[str],
                                                paths: list[str]) -> None:
    before = datetime.datetime.now(datetime.UTC)
    peers, got = _run_kopf(api, clusterwide=clusterwide, namespaces=namespaces, lifetime=42)
    assert got == [True], "the startup handler did not get run.py's memo"
    patches = api.recorded()
    # The objects peering.py reads: one cluster-wide, else one per watched namespace.
    assert sorted({path for path, _ in patches}) == paths
    for path in paths:
        mine = [body for p, body in patches if p == path]
        # First a keep-alive under our identity; on a graceful stop, its removal.
        first, last = mine[0], mine[-1]
        assert set(first) == {"status"} and set(first["status"]) == {peers.identity}
        entry = first["status"][peers.identity]
        assert entry["priority"] == 7 and entry["lifetime"] == 42
        seen = datetime.datetime.fromisoformat(entry["lastseen"])
        assert seen.tzinfo is not None and before <= seen <= datetime.datetime.now(datetime.UTC)
        assert last == {"status": {peers.identity: None}}

        # decide() on the status as it stands after that keep-alive, with rivals.
        status: dict[str, Any] = dict(first["status"])
        assert decide(status, peers.identity, 7, seen)
        alive = seen + datetime.timedelta(seconds=41)
        assert decide(status, peers.identity, 7, alive)
        # kopf's lifetime is seconds: 42 s later the entry is dead, so is the replica.
        assert not decide(status, peers.identity, 7, seen + datetime.timedelta(seconds=42))
        rival = {"priority": 8, "lifetime": 42, "lastseen": entry["lastseen"]}
        assert not decide({**status, "other": rival}, peers.identity, 7, alive)
        assert decide({**status, "other": rival}, "other", 8, alive)
        assert decide({**status, "other": {**rival, "priority": 6}}, peers.identity, 7, alive)
        assert not decide({**status, "other": {**rival, "priority": 7}}, peers.identity, 7,
                          alive)


def test_indexes_are_filled_before_resource_handlers_and_startup_gets_the_live_ones(
        api: FakeApi) -> None:
    """What controllers/indexes.py relies on: the resumed reconcile after a restart finds
    every child in the indexes (so it applies nothing and lists nothing), and the Lookup
    built by a startup handler reads the same, live, indexes."""
    n = 40
    api.items["/api/v1/configmaps"] = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"cm{i}", "namespace": "ns", "uid": f"u{i}",
                      "resourceVersion": "1", "labels": {"app": "x"}}} for i in range(n)]
    registry = kopf.OperatorRegistry()
    from_startup: list[Any] = []
    seen: list[tuple[int, bool]] = []  # (entries in the index, same object as at startup)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api.url)

    @kopf.index("", "v1", "configmaps", id="contract_children", registry=registry)
    async def contract_children(name: str, namespace: str, **_: Any) -> dict[Any, str]:
        return {(namespace, "x"): name}

    @kopf.on.startup(registry=registry)
    def startup(**kwargs: Any) -> None:
        from_startup.append(kwargs["contract_children"])

    # A resource handler of any kind (an event handler here: it needs no patch of the
    # object); kopf waits for the operator-wide "indexed" state before any of them.
    @kopf.on.event("", "v1", "configmaps", registry=registry)
    def handler(contract_children: Any, **_: Any) -> None:
        seen.append((len(list(contract_children.get(("ns", "x"), []))),
                     contract_children is from_startup[0]))

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.posting.enabled = False
    stop = threading.Event()
    thread = threading.Thread(target=kopf.run, name="kopf-index-contract", daemon=True,
                              kwargs={"registry": registry, "settings": settings,
                                      "stop_flag": stop, "clusterwide": True,
                                      "standalone": True, "memo": kopf.Memo()})
    thread.start()
    try:
        assert _wait(lambda: len(seen) >= n), f"handlers ran for {len(seen)} of {n}"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "kopf did not stop"
    assert len(from_startup) == 1
    assert seen == [(n, True)] * n  # every handler saw the full index, the startup's object
