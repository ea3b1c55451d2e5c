"""Status owners (pure): each concern's part of a status, and what a writer would remove."""

from __future__ import annotations

import pytest

from kustos.status.owners import StatusOwner

SECRETS = StatusOwner("kustos-secrets", fields=("secrets",), conditions=("SecretsReady",))
ROLL = StatusOwner("kustos-rollout", fields=("replicas", "model"),
                   conditions=("Ready", "Degraded"))


def cond(type_: str, status: str = "True", reason: str = "R") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": "",
            "lastTransitionTime": "2026-12-01T00:00:00Z"}


STATUS = {"replicas": 2, "secrets": {"version": "v1"}, "approval": {"approvedBy": "a"},
          "conditions": [cond("Ready"), cond("SecretsReady"), cond("PolicyCompliant")]}


def test_part_is_only_the_owners_fields_and_conditions() -> None:
    assert SECRETS.part(STATUS) == {"secrets": {"version": "v1"},
                                    "conditions": [cond("SecretsReady")]}
    assert ROLL.part(STATUS) == {"replicas": 2, "conditions": [cond("Ready")]}
    assert SECRETS.part(None) == {"conditions": []}


def test_the_same_part_in_another_order_or_with_nones_compares_equal() -> None:
    want = {"replicas": 2, "model": None, "conditions": [cond("Ready")]}
    assert ROLL.normalise(want) == ROLL.part(STATUS)
    reordered = {"conditions": [cond("Degraded"), cond("Ready")]}
    assert ROLL.normalise(reordered) == ROLL.part({"conditions": [cond("Ready"),
                                                                  cond("Degraded")]})


def test_an_owner_cannot_write_what_it_does_not_own() -> None:
    with pytest.raises(ValueError, match="status fields"):
        SECRETS.normalise({"replicas": 1})
    with pytest.raises(ValueError, match="conditions"):
        SECRETS.normalise({"conditions": [cond("Ready")]})


def test_leftovers_are_the_owners_fields_it_now_leaves_out() -> None:
    want = SECRETS.normalise({"conditions": []})
    assert SECRETS.leftovers(STATUS, want) == (["secrets"], ["SecretsReady"])
    assert ROLL.leftovers(STATUS, ROLL.normalise({"replicas": 2, "conditions": [cond("Ready")]})) \
        == ([], [])
