"""The peering decision the background loops follow: kopf's rule on the peering object's
status (the highest live priority acts, ties pause everyone), plus: no own entry, no act."""

from __future__ import annotations

import datetime

import kopf
import pytest

from kustos import rbac
from kustos.controllers import peering
from kustos.controllers.peering import decide

NOW = datetime.datetime(2026, 11, 23, 12, 0, 0, tzinfo=datetime.UTC)
ME = "kustos@pod-a/20261123/abc"


def entry(priority: int, ago: float = 5, lifetime: int = 60) -> dict[str, object]:
    """A peer's status entry as kopf writes it (lastseen ``ago`` seconds before NOW)."""
    seen = NOW - datetime.timedelta(seconds=ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_alone_acts() -> None:
    assert decide({ME: entry(10)}, ME, 10, NOW)


def test_highest_acts_and_the_lower_waits() -> None:
    status = {ME: entry(10), "other": entry(5)}
    assert decide(status, ME, 10, NOW)
    assert not decide(status, "other", 5, NOW)


def test_tied_peers_all_wait() -> None:
    status = {ME: entry(7), "other": entry(7)}
    assert not decide(status, ME, 7, NOW)
    assert not decide(status, "other", 7, NOW)


def test_lower_waits_for_a_higher_peer() -> None:
    assert not decide({ME: entry(1), "other": entry(2)}, ME, 1, NOW)


def test_stale_peers_are_ignored() -> None:
    # Its lastseen + lifetime has passed: kopf calls it dead, whatever its priority.
    status = {ME: entry(1), "gone": entry(100, ago=61, lifetime=60)}
    assert decide(status, ME, 1, NOW)
    # Exactly at the deadline it is dead too (kopf: deadline <= now).
    assert decide({ME: entry(1), "gone": entry(100, ago=60, lifetime=60)}, ME, 1, NOW)
    # One second before, it still counts.
    assert not decide({ME: entry(1), "alive": entry(100, ago=59, lifetime=60)}, ME, 1, NOW)


def test_a_peer_without_lastseen_counts_as_seen_now() -> None:
    assert not decide({ME: entry(1), "other": {"priority": 3}}, ME, 1, NOW)
    assert decide({ME: {"priority": 1}}, ME, 1, NOW)


def test_missing_priority_is_kopfs_default_zero() -> None:
    assert decide({ME: entry(1), "other": {"lifetime": 60}}, ME, 1, NOW)
    assert not decide({ME: entry(0), "other": {"lifetime": 60}}, ME, 0, NOW)


def test_without_its_own_live_entry_a_replica_does_not_act() -> None:
    # Before kopf's first keep-alive the others cannot see it yet.
    assert not decide({}, ME, 10, NOW)
    assert not decide({"other": entry(1)}, ME, 10, NOW)
    # Its own entry expired (keep-alives stalled): the others may have taken over.
    assert not decide({ME: entry(10, ago=90)}, ME, 10, NOW)


def test_an_unreadable_rival_entry_fails_safe() -> None:
    assert not decide({ME: entry(10), "other": "garbage"}, ME, 10, NOW)
    assert not decide({ME: entry(10), "other": {"priority": "high"}}, ME, 10, NOW)
    assert not decide({ME: entry(10), "other": {"lastseen": "yesterday"}}, ME, 10, NOW)


def test_z_suffixed_timestamps() -> None:
    seen = (NOW - datetime.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert not decide({ME: entry(1), "other": {"priority": 2, "lastseen": seen}}, ME, 1, NOW)


def test_standalone_is_always_active() -> None:
    standalone = peering.Peering(None, 0, clusterwide=True, namespaces=[])
    assert standalone.identity
    assert standalone.is_active()


def test_the_loops_ask_the_peering_in_kopfs_memo() -> None:
    memo = kopf.Memo()
    # No Peering in the memo (handlers started without run.py): standalone.
    assert peering.active_check(memo)()
    assert peering.active_check(None)()
    memo.peering = peering.Peering("p", 1, clusterwide=True, namespaces=[], identity=ME)
    assert peering.active_check(memo) == memo.peering.is_active


def test_each_peering_keeps_its_own_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two instances (two operators in one test process) never share a reading."""
    now = datetime.datetime.now(datetime.UTC).isoformat()
    statuses = {"a": {ME: {"priority": 2, "lastseen": now}, "x": {"priority": 1}},
                "b": {ME: {"priority": 1, "lastseen": now}, "x": {"priority": 2}}}
    monkeypatch.setattr(peering.client, "get",
                        lambda kind, name, ns=None: {"status": statuses[name]})
    monkeypatch.setattr(peering, "CACHE_SECONDS", 0.0)  # no cache, no take-over delay
    a = peering.Peering("a", 2, clusterwide=True, namespaces=[], identity=ME)
    b = peering.Peering("b", 1, clusterwide=True, namespaces=[], identity=ME)
    assert a.is_active() and not b.is_active()
    statuses["a"]["x"], statuses["b"]["x"] = {"priority": 3}, {"priority": 0}
    assert not a.is_active() and b.is_active()


def test_the_peering_rules_allow_what_is_active_reads() -> None:
    sets = rbac.rule_sets()
    for mode, res in (("clusterWide", "clusterkopfpeerings"), ("namespaced", "kopfpeerings")):
        assert any("kopf.dev" in r.api_groups and res in r.resources and "get" in r.verbs
                   for r in sets[mode]["peering"]), mode
    # Namespaced mode resolves --namespace globs as kopf does.
    assert any("namespaces" in r.resources and "list" in r.verbs
               for rules in sets["namespaced"].values() for r in rules)
