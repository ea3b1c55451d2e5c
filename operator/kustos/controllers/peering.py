"""Is this operator process the active peer? For the background loops kopf does not pause.

With `kustos run --peering NAME`, kopf pauses its handlers on every replica but the one
with the highest priority. The sidecar collection (controllers/sidecars.py) and the Vault
refresh (controllers/vault.py) run in threads of their own, outside kopf's handlers, so
they ask :func:`is_active` before each round. It reads the peering object kopf maintains
(``ClusterKopfPeering`` NAME when cluster-wide, ``KopfPeering`` NAME in every watched
namespace otherwise) and applies kopf's own rule (kopf/_core/engines/peering.py): a
replica acts when no other live peer has a priority >= its own (kopf pauses tied peers
too). Two deliberate differences, both on the safe side: a replica whose own keep-alive is
not (yet) in the object does not act, so no one acts before the others can see it; and
when the object cannot be read, or is missing in a watched namespace (kopf stays paused
then as well), the replica does not act. A reading is cached for CACHE_SECONDS, and a
replica that wins acts only CACHE_SECONDS later, when the one it displaces has stepped down.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kopf._cogs.structs.references import match_namespace, select_specific_namespaces
from kopf._core.engines.peering import Identity, detect_own_id

from kustos import metrics
from kustos.k8s import client
from kustos.k8s.client import ApiError

log = logging.getLogger(__name__)

# How long one reading of the peering object is trusted: the lag of a take-over and of
# stepping down when a higher-priority replica appears, against one GET per watched
# namespace every few seconds.
CACHE_SECONDS = 3.0
DEFAULT_LIFETIME = 60  # kopf's Peer default, when an entry names none


@dataclass(frozen=True)
class Me:
    name: str
    identity: str
    priority: int
    clusterwide: bool
    namespaces: tuple[str, ...]


_ME: Me | None = None
_LOCK = threading.Lock()
_CACHED: tuple[float, bool] | None = None  # (monotonic time, kopf's rule says act)
_WON_AT = 0.0  # monotonic time the rule last turned to "act"
_LAST: bool | None = None  # what is_active last answered


def configure(name: str | None, priority: int, *, clusterwide: bool,
              namespaces: list[str]) -> Identity:
    """Remember who this process is in peering ``name`` (None: standalone, always active);
    the identity to give kopf.run, so both name this process the same way."""
    global _ME, _CACHED, _WON_AT, _LAST
    identity = detect_own_id(manual=False)
    _ME = None if name is None else Me(name, identity, priority, clusterwide, tuple(namespaces))
    _CACHED, _WON_AT, _LAST = None, 0.0, None
    metrics.PEERING_ACTIVE.set(1 if name is None else 0)
    return identity


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


def _namespaces(me: Me) -> list[str]:
    """The namespaces kopf keeps a KopfPeering in: the watched ones, globs resolved."""
    exact = sorted(str(ns) for ns in select_specific_namespaces(me.namespaces))
    if len(exact) == len(me.namespaces):
        return exact
    try:
        items = client.list_objects("Namespace")
    except ApiError as err:
        if err.status != 403:
            raise
        return exact  # kopf's fallback without permission to list namespaces
    return sorted(str(ns["metadata"]["name"]) for ns in items
                  if not ns["metadata"].get("deletionTimestamp")
                  and any(match_namespace(ns["metadata"]["name"], p) for p in me.namespaces))


def _evaluate(me: Me) -> bool:
    bodies: list[tuple[str | None, dict[str, Any] | None]]
    # One kind per mode, as the RBAC rules grant it: rbac.PEERING_CLUSTER / _NAMESPACED.
    kind = "ClusterKopfPeering" if me.clusterwide else "KopfPeering"
    try:
        if me.clusterwide:
            bodies = [(None, client.get(kind, me.name))]
        else:
            bodies = [(ns, client.get(kind, me.name, ns)) for ns in _namespaces(me)]
    except Exception as err:  # fail safe: unknown means standby, whatever the cause
        log.warning("peering %s unreadable, background loops wait: %s: %s", me.name,
                    type(err).__name__, err)
        return False
    for ns, body in bodies:
        if body is None:
            log.debug("peering %s missing%s", me.name, f" in {ns}" if ns else "")
            return False
        if not decide(body.get("status") or {}, me.identity, me.priority):
            return False
    return True


def is_active() -> bool:
    """Should this process's background loops act now? Always when standalone."""
    global _CACHED, _WON_AT, _LAST
    me = _ME
    if me is None:
        return True
    with _LOCK:
        now = time.monotonic()
        if _CACHED is None or now - _CACHED[0] >= CACHE_SECONDS:
            won = _evaluate(me)
            if won and not (_CACHED and _CACHED[1]):
                _WON_AT = now
            _CACHED = (now, won)
        # Act only once the peer this one displaces has had a full reading to step down:
        # its cached "active" is at most CACHE_SECONDS old.
        active = _CACHED[1] and now - _WON_AT >= CACHE_SECONDS
        if active != _LAST:
            log.info("peering %s: this replica (priority %d) is %s", me.name, me.priority,
                     "active: background loops run" if active
                     else "standby: background loops wait")
            metrics.PEERING_ACTIVE.set(1 if active else 0)
            _LAST = active
        return active
