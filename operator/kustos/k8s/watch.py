"""LIST then WATCH one kind in one scope, as an informer does, in a thread of its own.

The operator keeps its children (Deployments, Services, ...) and hears of its serving pods
through these rather than through kopf: kopf keeps state and a worker per watched object
and runs a handler task per event, which at 1000 models (4000 children, 1000 pods) made a
restart's resync several times slower and its memory half again larger. A child needs a
line in a cache, not a handler.

Each ``Watch`` lists (``on_list`` gets every object), then watches from the list's
resourceVersion (``on_event`` gets each ADDED / MODIFIED / DELETED), resumes from the last
version it saw when the API server ends the stream, and lists again after 410 Gone or an
error (a watch resumed from a new listing reports no deletion it missed; the listing
does). Errors back off exponentially up to MAX_BACKOFF. ``stop()`` ends it at once (it shuts
the open stream down). Callbacks run in the watch's thread: they must be quick and
thread-safe.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import urllib3

from . import client
from .client import ApiError

log = logging.getLogger(__name__)

SERVER_TIMEOUT = 300  # seconds the API server keeps one watch request open
LIST_PAGE = 250  # objects per page of a listing: bounds what one listing holds at once
MAX_BACKOFF = 30.0

OnList = Callable[[list[Any], float], object]  # objects (kept), when the LIST began
OnEvent = Callable[[str, dict[str, Any]], None]  # type, object


class Gone(Exception):
    """The version to resume from is too old (410): list again."""


class Watch:
    def __init__(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None,
                 on_list: OnList | None, on_event: OnEvent, *,
                 keep: Callable[[dict[str, Any]], Any] | None = None) -> None:
        """``on_list`` None: only changes matter, the objects there are not read (a LIST
        of one gives the version to watch from). ``keep`` reduces each listed object
        (what ``on_list`` gets) while the pages are read."""
        self.kind, self.namespace, self.labels = kind, namespace, dict(labels or {})
        self._on_list, self._on_event, self._keep = on_list, on_event, keep
        self._stopping = threading.Event()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._lock = threading.Lock()
        where = f"in {namespace}" if namespace else "cluster-wide"
        self.name = f"kustos-watch {kind} {where}"
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            response = self._response
        if response is not None:
            response.shutdown()  # unblocks the thread's read
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        version = ""
        while not self._stopping.is_set():
            try:
                on_list = self._on_list
                if not version and on_list is None:
                    version = client.current_version(self.kind, self.namespace, self.labels)
                elif not version and on_list is not None:
                    began = time.monotonic()
                    items, version = client.list_with_version(
                        self.kind, self.namespace, self.labels, page=LIST_PAGE, keep=self._keep)
                    on_list(items, began)
                version = self._follow(version)
                failures = 0
            except Gone:
                version = ""
            except ApiError as err:
                version = ""
                failures += 1
                log.warning("%s: %s (%s); listing again", self.name, err.message, err.status)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
                if self._stopping.is_set():
                    break
                failures += 1
                log.info("%s: stream ended (%s); resuming", self.name, type(err).__name__)
            except Exception:  # a callback's bug must not end the watch for good
                log.exception("%s: failed; listing again", self.name)
                version = ""
                failures += 1
            if failures:
                self._stopping.wait(min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 8)))

    def _follow(self, version: str) -> str:
        """Read one watch request to its end; the version to resume from."""
        response = client.watch(self.kind, self.namespace, self.labels, version,
                                SERVER_TIMEOUT)
        with self._lock:
            self._response = response
        try:
            if self._stopping.is_set():
                return version
            for line in response:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")),
                                   str(obj.get("message")))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._on_event(kind, obj)
            return version
        finally:
            with self._lock:
                self._response = None
            response.release_conn()
