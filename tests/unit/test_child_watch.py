"""kustos.k8s.watch and the ChildCache it keeps, against a small HTTP server in the test
that speaks the API server's LIST and WATCH: a watch resumes from the last version it
saw (bookmarks included), lists again after 410 Gone and then forgets what was deleted in
the gap, survives a dropped stream, and stops at once. Reads of the cache wait for the
first listing of their scope."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from kustos.controllers.indexes import ChildCache, NotListedYet
from kustos.k8s import client, config
from kustos.k8s.watch import Watch
from kustos.render.meta import INSTANCE, MANAGED

NS = "ml"


def service(name: str, version: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                         "resourceVersion": str(version),
                         "labels": {INSTANCE: name, MANAGED: "kustos"},
                         "ownerReferences": [{"uid": "owner", "controller": True}]}}


class Script:
    """What the server answers: LISTs in order, and per watch request (by the version it
    starts from) a list of lines to send, then end, or None to hold the stream open."""

    def __init__(self) -> None:
        self.lists: list[tuple[list[dict[str, Any]], str]] = []
        self.watches: dict[str, list[dict[str, Any]] | None] = {}
        self.requests: list[tuple[str, str]] = []  # (list|watch, resourceVersion)
        self.held = threading.Event()
        self.release = threading.Event()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Script]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            if query.get("watch") == ["true"]:
                version = query["resourceVersion"][0]
                script.requests.append(("watch", version))
                lines = script.watches.get(version, [])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in lines or []:
                    data = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                if lines is None:
                    script.held.set()
                    script.release.wait(30)
                with contextlib.suppress(OSError):  # a stopped watch shut the socket
                    self.wfile.write(b"0\r\n\r\n")
                return
            items, version = script.lists.pop(0)
            script.requests.append(("list", version))
            body = json.dumps({"kind": "ServiceList", "metadata": {"resourceVersion": version},
                               "items": items}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    cfg = config.Config(f"http://127.0.0.1:{httpd.server_address[1]}",
                        config.Credentials(token="t"))
    monkeypatch.setattr(client, "_api", client.Api(cfg))
    yield script
    script.release.set()
    httpd.shutdown()
    httpd.server_close()


def names(cache: ChildCache) -> list[str]:
    return sorted(c.name for n in ("a", "b", "c") for c in cache.get("Service", (NS, n)))


def test_a_watch_resumes_lists_again_after_gone_and_forgets_what_the_gap_deleted(
        server: Script) -> None:
    server.lists = [([service("a", 5)], "10"), ([service("b", 11), service("c", 30)], "30")]
    server.watches = {
        "10": [{"type": "ADDED", "object": service("b", 11)},
               {"type": "BOOKMARK", "object": {"kind": "Service",
                                               "metadata": {"resourceVersion": "12"}}}],
        "12": [{"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                            "reason": "Expired"}}],
        "30": None,  # held open until the test stops the watch
    }
    cache = ChildCache()
    cache.expect("Service", None)
    seen: list[tuple[str, str]] = []

    def on_event(type_: str, obj: dict[str, Any]) -> None:
        cache.see("Service", obj, type_ == "DELETED")
        seen.append((type_, obj["metadata"]["name"]))

    watch = Watch("Service", None, {MANAGED: "kustos"},
                  lambda items, began: cache.relist("Service", items, began), on_event)
    watch.start()
    assert server.held.wait(30)
    # a (deleted while the watch was gone, so no event said so) is forgotten by the
    # second listing; c, created in the gap, is found by it
    assert names(cache) == ["b", "c"]
    assert seen == [("ADDED", "b")]
    assert server.requests == [("list", "10"), ("watch", "10"), ("watch", "12"),
                               ("list", "30"), ("watch", "30")]
    started = time.monotonic()
    watch.stop()
    assert time.monotonic() - started < 5
    assert not watch._thread.is_alive()


def test_reads_wait_for_the_first_listing_of_their_scope() -> None:
    cache = ChildCache()
    assert cache.get("Service", (NS, "a")) == []   # nothing expected: nothing to wait for
    cache.expect("Service", NS)
    done: list[list[Any]] = []
    reader = threading.Thread(target=lambda: done.append(cache.get("Service", (NS, "a"))))
    reader.start()
    time.sleep(0.2)
    assert done == [] and reader.is_alive()
    cache.relist("Service", [service("a", 1)], time.monotonic(), NS)
    reader.join(5)
    assert [c.name for c in done[0]] == ["a"]
    # another namespace's scope is not this one's
    assert cache.get("Service", ("other", "a")) == []


def test_a_read_gives_up_when_the_listing_does_not_come(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kustos.controllers import indexes

    monkeypatch.setattr(indexes, "LIST_WAIT", 0.1)
    cache = ChildCache()
    cache.expect("Deployment", None)
    with pytest.raises(NotListedYet):
        cache.get("Deployment", (NS, "a"))


def test_dropping_a_namespace_forgets_its_children() -> None:
    cache = ChildCache()
    cache.expect("Service", NS)
    cache.relist("Service", [service("a", 1)], time.monotonic(), NS)
    other = {**service("x", 1), "metadata": {**service("x", 1)["metadata"],
                                             "namespace": "other", "uid": "uid-x"}}
    cache.see("Service", other)
    cache.drop("Service", NS)
    assert cache.get("Service", (NS, "a")) == []
    assert [c.name for c in cache.get("Service", ("other", "x"))] == ["x"]


def test_what_a_listing_keeps_files_a_child_as_the_whole_body_would() -> None:
    from kustos.controllers.indexes import child_entry, deployment_kept, slim
    from kustos.render.meta import SPEC_HASH

    body = service("a", 3)
    body["metadata"].update(annotations={SPEC_HASH: "h", "other": "x" * 1000},
                            managedFields=[{"manager": "kustos"}], generation=4)
    body["metadata"]["ownerReferences"].append({"uid": "not-controller"})
    body["spec"] = {"replicas": 2, "template": {"metadata": {"annotations": {"v": "1"}},
                                                "spec": {"containers": [{"name": "c"}]}}}
    body["status"] = {"readyReplicas": 2, "observedGeneration": 4}
    for kind in ("Service", "Deployment"):
        keep = deployment_kept if kind == "Deployment" else None
        assert child_entry(kind, slim(kind)(body), keep) == child_entry(kind, body, keep)
    assert "managedFields" not in slim("Deployment")(body)["metadata"]
    assert "spec" not in slim("Service")(body)
