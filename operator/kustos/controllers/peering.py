"""Is this operator process the active peer? For the background loops kopf does not pause.

With `kustos run --peering NAME`, kopf pauses its handlers on every replica but the one
with the highest priority. The sidecar collection (controllers/sidecars.py) and the Vault
refresh (controllers/vault.py) are asyncio tasks of their own, outside kopf's handlers, so
they ask :meth:`Peering.is_active` before each round. It reads the peering object kopf
maintains (``ClusterKopfPeering`` NAME when cluster-wide, ``KopfPeering`` NAME in every
watched namespace otherwise) and applies kopf's own rule (kopf/_core/engines/peering.py): a
replica acts when no other live peer has a priority >= its own (kopf pauses tied peers
too). Two deliberate differences, both on the safe side: a replica whose own keep-alive is
not (yet) in the object does not act, so no one acts before the others can see it; and
when the object cannot be read, or is missing in a watched namespace (kopf stays paused
then as well), the replica does not act. A reading is cached for CACHE_SECONDS, and a
replica that wins acts only CACHE_SECONDS later, when the one it displaces has stepped down.

Only kopf's public interface is used: ``kopf.run(identity=..., memo=...)`` and the peering
object's documented status format. The identity kopf writes into that object is ours
(:func:`own_identity`), so both sides name this process the same way; the namespace globs
are resolved by our own :func:`match_namespace` / :func:`exact_namespaces`, which follow
kopf's documented ``--namespace`` syntax (tests/unit/test_kopf_contract.py pins both).
The state lives in one :class:`Peering` per process, kept in kopf's operator-wide memo
(``memo.peering``, set by controllers/run.py); :func:`active_check` hands its
``is_active`` to the loops' threads.
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from kustos import metrics
from kustos.k8s import client
from kustos.k8s.client import ApiError

log = logging.getLogger(__name__)

# How long one reading of the peering object is trusted: the lag of a take-over and of
# stepping down when a higher-priority replica appears, against one GET per watched
# namespace every few seconds.
CACHE_SECONDS = 3.0
DEFAULT_LIFETIME = 60  # kopf's Peer default, when an entry names none

# What makes a --namespace pattern more than one exact name (kopf's docs: ",*?!").
_PATTERN_CHARS = frozenset(",*?!")


def own_identity() -> str:
    """This process's name in the peering object: ``kustos@HOST/PID/RANDOM``.

    Unique per process: the host name (the pod's name in a cluster) tells where it runs,
    the pid and 6 random hex digits tell apart two processes on one host and a container
    restarted in the same pod, whose predecessor's entry may still look alive; a new
    process must never mistake that entry for its own keep-alive. Given to kopf.run as
    ``identity=``, so kopf's keep-alives and :meth:`Peering.is_active` agree."""
    return f"kustos@{socket.gethostname() or 'localhost'}/{os.getpid()}/{secrets.token_hex(3)}"


def match_namespace(name: str, pattern: str) -> bool:
    """Does namespace ``name`` match one ``--namespace`` pattern, as kopf reads it?

    Kopf's documented syntax (docs/scopes.rst): a pattern is comma-separated globs
    (spaces around them ignored) with ``*`` and ``?`` (kopf matches them with fnmatch, so
    ``[...]`` works as well, here too); a glob starting with ``!`` excludes. The first
    glob is decisive: a name it does not match does not match the pattern at all; a
    leading exclusion implies a ``*`` before it. Among the globs after the first, the
    rightmost one that matches wins (included, or excluded with ``!``); none matching
    leaves the first glob's verdict. So ``myapp-*,!*-pr-*,*-pr-123`` matches
    ``myapp-live`` and ``myapp-pr-123`` but neither ``myapp-pr-456`` nor
    ``otherapp-pr-123``."""
    globs = [glob.strip() for glob in pattern.split(",")]
    if globs[0].startswith("!"):
        globs.insert(0, "*")
    if not fnmatch.fnmatchcase(name, globs[0]):
        return False
    for glob in reversed(globs[1:]):
        excluding = glob.startswith("!")
        if fnmatch.fnmatchcase(name, glob.lstrip("!") if excluding else glob):
            return not excluding
    return True


def exact_namespaces(patterns: Iterable[str]) -> set[str]:
    """The patterns that name one namespace each (none of ``,*?!`` in them): what kopf
    watches, assuming they exist, when it may not list namespaces."""
    return {pattern for pattern in patterns if not _PATTERN_CHARS & set(pattern)}


def _parse_time(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    when = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def decide(peers: Mapping[str, Any], identity: str, priority: int,
           now: datetime.datetime | None = None) -> bool:
    """Kopf's decision on one peering object's ``status`` ({identity: {priority, lifetime,
    lastseen}}): True when this peer's own entry is alive and no other live peer has a
    priority >= ``priority``. An entry that cannot be read counts as a live rival."""
    now = now or datetime.datetime.now(datetime.UTC)
    me_alive = False
    for peer, info in peers.items():
        try:
            if not isinstance(info, Mapping):
                raise TypeError("not an object")
            prio = int(info.get("priority", 0))
            lifetime = datetime.timedelta(seconds=int(info.get("lifetime", DEFAULT_LIFETIME)))
            lastseen = _parse_time(info.get("lastseen"))
        except (TypeError, ValueError, OverflowError):
            if peer == identity:
                continue
            return False
        # As kopf: no lastseen means seen now; dead once lastseen + lifetime has passed.
        alive = lastseen is None or lastseen + lifetime > now
        if peer == identity:
            me_alive = alive
        elif alive and prio >= priority:
            return False
    return me_alive


class Peering:
    """Who this process is in peering ``name`` (None: standalone, always active), and
    whether its background loops act now. One per process (``memo.peering``); thread-safe:
    the loops call :meth:`is_active` from their own threads."""

    def __init__(self, name: str | None, priority: int, *, clusterwide: bool,
                 namespaces: Collection[str], identity: str | None = None) -> None:
        self.name = name
        self.priority = priority
        self.clusterwide = clusterwide
        self.namespaces: tuple[str, ...] = tuple(namespaces)
        #: The identity to give kopf.run, so both name this process the same way.
        self.identity = identity or own_identity()
        self._lock = threading.Lock()
        self._cached: tuple[float, bool] | None = None  # (monotonic time, kopf's rule: act)
        self._won_at = 0.0  # monotonic time the rule last turned to "act"
        self._last: bool | None = None  # what is_active last answered
        metrics.PEERING_ACTIVE.set(1 if name is None else 0)

    def _namespaces(self) -> list[str]:
        """The namespaces kopf keeps a KopfPeering in: the watched ones, globs resolved."""
        exact = sorted(exact_namespaces(self.namespaces))
        if len(exact) == len(self.namespaces):
            return exact
        try:
            items = client.list_objects("Namespace")
        except ApiError as err:
            if err.status != 403:
                raise
            return exact  # kopf's fallback without permission to list namespaces
        return sorted(str(ns["metadata"]["name"]) for ns in items
                      if not ns["metadata"].get("deletionTimestamp")
                      and any(match_namespace(ns["metadata"]["name"], p)
                              for p in self.namespaces))

    def _evaluate(self, name: str) -> bool:
        bodies: list[tuple[str | None, dict[str, Any] | None]]
        # One kind per mode, as the RBAC rules grant it: rbac.PEERING_CLUSTER / _NAMESPACED.
        kind = "ClusterKopfPeering" if self.clusterwide else "KopfPeering"
        try:
            if self.clusterwide:
                bodies = [(None, client.get(kind, name))]
            else:
                bodies = [(ns, client.get(kind, name, ns)) for ns in self._namespaces()]
        except Exception as err:  # fail safe: unknown means standby, whatever the cause
            log.warning("peering %s unreadable, background loops wait: %s: %s", name,
                        type(err).__name__, err)
            return False
        for ns, body in bodies:
            if body is None:
                log.debug("peering %s missing%s", name, f" in {ns}" if ns else "")
                return False
            if not decide(body.get("status") or {}, self.identity, self.priority):
                return False
        return True

    def is_active(self) -> bool:
        """Should this process's background loops act now? Always when standalone."""
        name = self.name
        if name is None:
            return True
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= CACHE_SECONDS:
                won = self._evaluate(name)
                if won and not (self._cached and self._cached[1]):
                    self._won_at = now
                self._cached = (now, won)
            # Act only once the peer this one displaces has had a full reading to step
            # down: its cached "active" is at most CACHE_SECONDS old.
            active = self._cached[1] and now - self._won_at >= CACHE_SECONDS
            if active != self._last:
                log.info("peering %s: this replica (priority %d) is %s", name, self.priority,
                         "active: background loops run" if active
                         else "standby: background loops wait")
                metrics.PEERING_ACTIVE.set(1 if active else 0)
                self._last = active
            return active


def active_check(memo: object) -> Callable[[], bool]:
    """What a background loop asks before each round: ``memo.peering.is_active`` from
    kopf's operator-wide memo (run.py puts the process's :class:`Peering` there); always
    True (standalone) when the memo holds none, e.g. when handlers start without run.py."""
    found = getattr(memo, "peering", None)
    return found.is_active if isinstance(found, Peering) else _always


def _always() -> bool:
    return True
