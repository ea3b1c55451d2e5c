"""Status owners on the real API server: concurrent writers of one ModelDeployment's status
(the rollout, the Vault sync, governance) never drop each other's fields or conditions.

The writers are kustos.k8s.status.write with the operator's own owners, run from threads
against one object in a namespace no operator watches, so only these writers act.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Kube, model_deployment

from kustos.controllers.governance import POLICY
from kustos.controllers.vault import VAULT
from kustos.k8s import client, config
from kustos.k8s import status as k8s_status
from kustos.status.modeldeployment import ROLLOUT
from kustos.status.owners import StatusOwner

ROUNDS = 12
KIND = "ModelDeployment"


def cond(type_: str, ok: bool, reason: str, n: int) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": f"round {n}", "lastTransitionTime": "2026-12-01T00:00:00Z",
            "observedGeneration": 1}


def rollout_part(n: int) -> dict[str, Any]:
    return {"observedGeneration": 1, "replicas": n, "readyReplicas": n,
            "conditions": [cond("Ready", n % 2 == 0, "Available", n),
                           cond("Progressing", False, "RolloutComplete", n),
                           cond("Degraded", False, "AsExpected", n)]}


def vault_part(n: int) -> dict[str, Any]:
    return {"secrets": {"version": f"v{n}", "secretName": "m-vault"},
            "conditions": [cond("SecretsReady", n % 3 != 0, "Synced", n)]}


def policy_part(n: int) -> dict[str, Any]:
    return {"approval": {"approvedBy": f"reviewer-{n}", "ticket": f"RISK-{n}"},
            "conditions": [cond("PolicyCompliant", True, "Compliant", n)]}


PARTS = [(ROLLOUT, rollout_part), (VAULT, vault_part), (POLICY, policy_part)]


@pytest.fixture
def unwatched(kube: Kube, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A namespace outside the test operator's pattern, and kustos.k8s pointed at the
    local cluster."""
    monkeypatch.setattr(client, "_api", client.Api(config.from_kubeconfig([kubeconfig])))
    name = f"unwatched-{uuid.uuid4().hex[:6]}"
    kube.create_namespace(name)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


def _md(kube: Kube, ns: str) -> dict[str, Any]:
    kube.apply(model_deployment("m", ns))
    md = client.get(KIND, "m", ns)
    assert md is not None
    return md


def test_concurrent_owners_never_drop_each_others_conditions(kube: Kube,
                                                             unwatched: str) -> None:
    uid = _md(kube, unwatched)["metadata"]["uid"]
    start = threading.Barrier(len(PARTS))
    conflicts = {owner.manager: 0 for owner, _ in PARTS}
    errors: list[BaseException] = []
    real_apply = client.apply_status

    def counting_apply(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return real_apply(*args, **kwargs)
        except client.ApiError as err:
            if err.status == 409:
                conflicts[args[4]] += 1
            raise

    def writer(owner: StatusOwner, part: Any) -> None:
        try:
            start.wait(30)
            for n in range(1, ROUNDS + 1):
                written = k8s_status.write(KIND, "m", unwatched, uid, owner,
                                           lambda fresh, n=n: part(n))
                assert written is not None and written.wrote
                # Right after its own write, this owner's part is exactly what it wrote,
                # whatever the others did meanwhile.
                stored = client.get(KIND, "m", unwatched)
                assert stored is not None
                assert owner.part(stored["status"]) == owner.normalise(part(n))
        except BaseException as err:  # surfaced in the test's thread below
            errors.append(err)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client, "apply_status", counting_apply)
        threads = [threading.Thread(target=writer, args=p) for p in PARTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert not errors, errors[0]
    final = client.get(KIND, "m", unwatched)
    assert final is not None
    status = final["status"]
    # Every owner's last word is there, all five condition types side by side.
    for owner, part in PARTS:
        assert owner.part(status) == owner.normalise(part(ROUNDS)), owner.manager
    assert {c["type"] for c in status["conditions"]} == {
        "Ready", "Progressing", "Degraded", "SecretsReady", "PolicyCompliant"}
    managers = {m["manager"] for m in final["metadata"]["managedFields"]
                if m.get("subresource") == "status"}
    assert {"kustos-rollout", "kustos-secrets", "kustos-policy"} <= managers
    # How often the resourceVersion guard made a writer read again: printed, not asserted
    # (whether the threads interleave is the scheduler's; 2 to 4 each in the runs seen).
    print(f"conflicts retried: {conflicts}")


def test_an_owner_removes_only_its_own_and_what_an_older_manager_left(kube: Kube,
                                                                      unwatched: str) -> None:
    md = _md(kube, unwatched)
    uid = md["metadata"]["uid"]
    # As an older Kustos left it: one merge patch (another field manager) with the Vault
    # part and the rollout's part in one list.
    legacy = {**vault_part(1), **{k: v for k, v in rollout_part(1).items() if k != "conditions"}}
    legacy["conditions"] = vault_part(1)["conditions"] + rollout_part(1)["conditions"]
    client.patch_status(KIND, "m", unwatched, legacy)
    # Governance adds its part; the Vault sync is left (sync mode ended): it removes its own.
    k8s_status.write(KIND, "m", unwatched, uid, POLICY, lambda fresh: policy_part(1))
    written = k8s_status.write(KIND, "m", unwatched, uid, VAULT, lambda fresh: {"conditions": []})
    assert written is not None and written.wrote
    status = (client.get(KIND, "m", unwatched) or {})["status"]
    assert "secrets" not in status
    assert {c["type"] for c in status["conditions"]} == {
        "Ready", "Progressing", "Degraded", "PolicyCompliant"}
    assert status["replicas"] == 1 and status["approval"]["ticket"] == "RISK-1"
    # Nothing left to change: no write.
    again = k8s_status.write(KIND, "m", unwatched, uid, VAULT, lambda fresh: {"conditions": []})
    assert again is not None and not again.wrote
