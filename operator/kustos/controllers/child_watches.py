"""The watches that keep the ChildCache (controllers/indexes.py) and tell the controllers
of their children's and serving pods' changes: plain LIST+WATCH threads
(kustos.k8s.watch), not kopf handlers, one per kind and scope.

Scopes: a cluster-wide operator watches everywhere; one on namespaces watches each exact
namespace from the start and each namespace a glob pattern matches from kopf's
namespace event on (kopf watches namespaces for glob patterns itself). Listeners
(``listen``) are called on kopf's event loop, after the cache has the change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from kustos.k8s.client import ApiError
from kustos.k8s.watch import Watch
from kustos.render.keda import model_child_kinds
from kustos.render.meta import COMPONENT, MANAGED, MANAGED_BY

from .context import config
from .gateway import gateway_api
from .indexes import CHILD_RESOURCES, children_cache, slim
from .peering import exact_namespaces, match_namespace

log = logging.getLogger(__name__)

# Serving pods are watched for their problems only (status.pods.problem): not cached.
POD_LABELS = {MANAGED: MANAGED_BY, COMPONENT: "predictor"}
Listener = Callable[[str, Mapping[str, Any]], None]  # event type, object


class ChildWatches:
    """This process's watches of children and serving pods, in kopf's memo."""

    def __init__(self, memo: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._memo = memo
        self._cache = children_cache(memo)
        self._loop = loop
        self._scopes: dict[str | None, list[Watch]] = {}
        self._listeners: dict[str, list[Listener]] = {}

    def listen(self, kind: str, listener: Listener) -> None:
        """Call ``listener(type, object)`` on kopf's event loop for every event of
        ``kind`` (a child kind, or Pod), not for what a listing finds."""
        self._listeners.setdefault(kind, []).append(listener)

    def watching(self, namespace: str | None) -> bool:
        return namespace in self._scopes

    def start(self, namespace: str | None) -> None:
        """Watch every child kind and the serving pods in ``namespace`` (None: all)."""
        if namespace in self._scopes:
            return
        kinds = [k for k in CHILD_RESOURCES
                 if k in model_child_kinds(config(), gateway_api(self._memo))]
        watches = [self._watch(kind, namespace, {MANAGED: MANAGED_BY}, cached=True)
                   for kind in kinds]
        watches.append(self._watch("Pod", namespace, POD_LABELS, cached=False))
        self._scopes[namespace] = watches
        for watch in watches:
            watch.start()

    def _watch(self, kind: str, namespace: str | None, labels: Mapping[str, str], *,
               cached: bool) -> Watch:
        cache = self._cache

        def on_list(items: list[dict[str, Any]], began: float) -> None:
            changed = cache.relist(kind, items, began, namespace)
            if changed:
                log.info("%s: %d %s objects listed", namespace or "all namespaces",
                         changed, kind)

        def on_event(type_: str, obj: dict[str, Any]) -> None:
            if cached:
                cache.see(kind, obj, deleted=type_ == "DELETED")
            for listener in self._listeners.get(kind, ()):
                self._loop.call_soon_threadsafe(_call, listener, type_, obj)

        if not cached:
            return Watch(kind, namespace, labels, None, on_event)
        cache.expect(kind, namespace)
        return Watch(kind, namespace, labels, on_list, on_event, keep=slim(kind))

    async def stop_scope(self, namespace: str) -> None:
        watches = self._scopes.pop(namespace, [])
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in watches))
        for kind in CHILD_RESOURCES:
            self._cache.drop(kind, namespace)

    async def stop(self) -> None:
        watches = [w for ws in self._scopes.values() for w in ws]
        self._scopes.clear()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in watches))


def _call(listener: Listener, type_: str, obj: Mapping[str, Any]) -> None:
    try:
        listener(type_, obj)
    except ApiError as err:
        log.warning("handling a %s event failed: %s", type_, err.message)
    except Exception:
        log.exception("handling a %s event failed", type_)


def child_watches(memo: Any) -> ChildWatches:
    """This process's ChildWatches, from kopf's memo; created (not started) by the first
    caller, which must run on kopf's event loop (an async startup handler)."""
    found = getattr(memo, "kustos_child_watches", None)
    if found is None:
        found = memo.kustos_child_watches = ChildWatches(memo, asyncio.get_running_loop())
    assert isinstance(found, ChildWatches)
    return found


@kopf.on.startup()
async def start_child_watches(memo: kopf.Memo, **_: Any) -> None:
    watches = child_watches(memo)
    await asyncio.to_thread(gateway_api, memo)  # before start(), off the event loop
    peers = getattr(memo, "peering", None)
    if peers is None or peers.clusterwide:
        watches.start(None)
        return
    for namespace in sorted(exact_namespaces(peers.namespaces)):
        watches.start(namespace)


@kopf.on.cleanup()
async def stop_child_watches(memo: kopf.Memo, **_: Any) -> None:
    watches: ChildWatches | None = getattr(memo, "kustos_child_watches", None)
    if watches is not None:
        await watches.stop()


@kopf.on.event("", "v1", "namespaces")
async def namespace_scope(name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """For glob patterns: watch a namespace's children from when it appears."""
    peers = getattr(memo, "peering", None)
    watches: ChildWatches | None = getattr(memo, "kustos_child_watches", None)
    if peers is None or peers.clusterwide or watches is None:
        return
    exact = exact_namespaces(peers.namespaces)
    if name in exact:
        return
    matched = any(match_namespace(name, pattern) for pattern in peers.namespaces)
    if type == "DELETED" or not matched:
        if watches.watching(name):
            await watches.stop_scope(name)
    elif not watches.watching(name):
        watches.start(name)
