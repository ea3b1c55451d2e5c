"""The indexes the reconcile reads instead of LISTs (controllers/indexes.py), without a
cluster: what the index handlers keep, how the lookups filter, and a reconcile that finds
everything in the indexes and so sends nothing to the API server but its status check.

The indexes are plain mappings here (key -> list of values, what kopf's Index looks like
to a reader); tests/unit/test_kopf_contract.py pins that kopf fills its own before any
resource handler runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from kustos.config import OperatorConfig
from kustos.controllers import children, indexes, modeldeployment, sidecars
from kustos.controllers.children import NameConflict
from kustos.controllers.indexes import (
    ATTACHMENT_INDEX,
    CHILD_RESOURCES,
    Child,
    ChildCache,
    Lookup,
    attachment_entry,
    child_entry,
)
from kustos.k8s import client
from kustos.k8s.resources import MODEL_CHILD_KINDS, resource
from kustos.render import modeldeployment as render_md
from kustos.render.attachments import NONE
from kustos.render.keda import model_child_kinds
from kustos.render.meta import INSTANCE, MANAGED, SPEC_HASH

NS, NAME, UID = "ml", "iris", "uid-iris"


def md(name: str = NAME, uid: str = UID) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 1},
            "spec": {"model": {"version": "1", "uri": "s3://b/model.skops",
                               "digest": "sha256:" + "c" * 64}, "replicas": 1}}


def child_body(kind: str, name: str, owner_uid: str = UID, instance: str = NAME,
               spec_hash: str | None = "h", uid: str | None = None) -> dict[str, Any]:
    return {"apiVersion": resource(kind).api_version, "kind": kind,
            "metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{kind}-{name}",
                         "labels": {INSTANCE: instance, MANAGED: "kustos"},
                         "annotations": {SPEC_HASH: spec_hash} if spec_hash else {},
                         "ownerReferences": [{"uid": owner_uid, "controller": True,
                                              "kind": "ModelDeployment", "name": instance}]}}


class Indexes(dict[str, dict[Any, list[Any]]]):
    """kopf's attachment indexes as a reader sees them, fed through the real index
    handlers' bodies, and the children cache as the watch handlers feed it."""

    def __init__(self) -> None:
        super().__init__({name: {} for name in ATTACHMENT_INDEX.values()})
        self.cache = ChildCache()

    def add_child(self, body: dict[str, Any]) -> None:
        self.cache.see(body["kind"], body)

    def add_attachment(self, body: dict[str, Any]) -> None:
        for key, value in (attachment_entry(body) or {}).items():
            self[ATTACHMENT_INDEX[body["kind"]]].setdefault(key, []).append(value)


def lookup_of(idx: Indexes) -> Lookup:
    return Lookup(idx, idx.cache)


class Api:
    """kustos.k8s.client's calls, recorded; GET answers from ``objects``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

        def get(kind: str, name: str, namespace: str | None = None) -> Any:
            self.calls.append(("get", kind, name))
            return self.objects.get((kind, name))

        def apply(manifest: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(("apply", manifest["kind"], manifest["metadata"]["name"]))
            return {**manifest, "metadata": {**manifest["metadata"], "uid": "new"}}

        def delete(kind: str, name: str, namespace: str | None, uid: str) -> None:
            self.calls.append(("delete", kind, f"{name}@{uid}"))

        def list_objects(kind: str, namespace: str | None = None, labels: Any = None) -> Any:
            self.calls.append(("list", kind, ""))
            return []

        for fn in (get, apply, delete, list_objects):
            monkeypatch.setattr(client, fn.__name__, fn)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield Api(monkeypatch)


# --- what the index handlers keep ---------------------------------------------------------


def test_every_model_child_kind_is_watched_as_its_resource() -> None:
    keda = OperatorConfig.model_validate({"autoscaling": {
        "requests_backend": "keda", "prometheus_address": "http://prometheus:9090"}})
    for kind in model_child_kinds(keda):
        assert kind in CHILD_RESOURCES, f"{kind} is a child kind but is not watched"
    for kind, (group, version, plural) in CHILD_RESOURCES.items():
        res = resource(kind)
        assert res.api_version == (f"{group}/{version}" if group else version), kind
        assert res.plural == plural, kind


def test_a_child_is_kept_small_under_its_namespace_and_instance() -> None:
    body = child_body("Service", NAME, spec_hash="abc")
    body["spec"] = {"ports": [{"port": 80}]}
    assert child_entry("Service", body) == {
        (NS, NAME): Child("Service", NAME, "uid-Service-iris", UID, "abc")}
    unlabelled = child_body("Service", "x")
    del unlabelled["metadata"]["labels"][INSTANCE]
    assert child_entry("Service", unlabelled) is None
    orphan = child_body("Service", "y")
    orphan["metadata"]["ownerReferences"][0]["controller"] = False
    assert next(iter(child_entry("Service", orphan).values())).owner == ""  # type: ignore[union-attr]


def test_a_deployment_keeps_what_the_status_reads_and_no_pod_template() -> None:
    body = child_body("Deployment", NAME)
    body["metadata"]["generation"] = 3
    body["spec"] = {"replicas": 2, "template": {
        "metadata": {"annotations": {"kustos.dev/model-version": "2"}},
        "spec": {"containers": [{"name": "server", "image": "x"}]}}}
    body["status"] = {"readyReplicas": 2}
    (child,) = child_entry("Deployment", body, indexes.deployment_kept).values()  # type: ignore[union-attr]
    assert child.kept == {"metadata": {"name": NAME, "generation": 3},
                          "spec": {"replicas": 2, "template": {"metadata": {
                              "annotations": {"kustos.dev/model-version": "2"}}}},
                          "status": {"readyReplicas": 2}}


def test_an_attachment_is_kept_under_its_target_without_status() -> None:
    es = {"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
          "metadata": {"name": "e", "namespace": NS, "uid": "u", "creationTimestamp": "t",
                       "managedFields": [{"manager": "x"}]},
          "spec": {"targetRef": {"name": NAME}, "background": {"uri": "s3://b/bg"}},
          "status": {"conditions": []}}
    ((key, kept),) = attachment_entry(es).items()  # type: ignore[union-attr]
    assert key == (NS, NAME)
    assert kept["spec"] == es["spec"] and "status" not in kept
    assert kept["metadata"] == {"name": "e", "namespace": NS, "uid": "u",
                                "creationTimestamp": "t"}
    assert attachment_entry({**es, "spec": {}}) is None


def test_the_lookup_refuses_indexes_kopf_did_not_provide() -> None:
    with pytest.raises(ValueError, match=ATTACHMENT_INDEX["DriftMonitor"]):
        Lookup({k: v for k, v in Indexes().items() if k != ATTACHMENT_INDEX["DriftMonitor"]},
               ChildCache())


def test_the_cache_follows_changes_and_deletions() -> None:
    cache = ChildCache()
    body = child_body("Service", NAME, spec_hash="a", uid="s1")
    cache.see("Service", body)
    cache.see("Service", child_body("Service", NAME, spec_hash="b", uid="s1"))
    assert [c.spec_hash for c in cache.get("Service", (NS, NAME))] == ["b"]
    relabelled = child_body("Service", NAME, instance="wine", uid="s1")
    cache.see("Service", relabelled)
    assert cache.get("Service", (NS, NAME)) == []
    assert len(cache.get("Service", (NS, "wine"))) == 1
    cache.see("Service", relabelled, deleted=True)
    assert cache.get("Service", (NS, "wine")) == [] and len(cache) == 0


# --- the lookups ------------------------------------------------------------------------------


def test_children_are_those_of_this_owner_instance_and_kinds() -> None:
    idx = Indexes()
    idx.add_child(child_body("Service", NAME))
    idx.add_child(child_body("Deployment", NAME))
    idx.add_child(child_body("Deployment", f"{NAME}-canary"))
    idx.add_child(child_body("Service", NAME, owner_uid="a-former-iris", uid="old"))  # gone iris
    idx.add_child(child_body("Service", "wine", instance="wine", owner_uid="uid-wine"))
    lookup = lookup_of(idx)
    assert set(lookup.children(NS, NAME, UID, ["Service", "Deployment"])) == {
        ("Service", NAME), ("Deployment", NAME), ("Deployment", f"{NAME}-canary")}
    assert set(lookup.children(NS, NAME, UID, ["Deployment"])) == {
        ("Deployment", NAME), ("Deployment", f"{NAME}-canary")}
    assert lookup.children("other", NAME, UID, MODEL_CHILD_KINDS) == {}
    assert set(lookup.children(NS, "wine", "uid-wine", ["Service"])) == {("Service", "wine")}


def test_models_reads_the_deployments_from_the_index() -> None:
    idx = Indexes()
    dep = child_body("Deployment", NAME)
    dep["status"] = {"readyReplicas": 1}
    idx.add_child(dep)
    idx.add_child(child_body("Deployment", NAME, owner_uid="someone-else", uid="other"))
    models = modeldeployment.Models(lookup_of(idx))
    found = models.deployments(NS, NAME, UID)
    assert list(found) == [NAME] and found[NAME]["status"] == {"readyReplicas": 1}
    assert models.deployments(NS, "wine", "uid-wine") == {}


def attachment(kind: str, name: str, target: str, created: str,
               deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"u-{name}",
                            "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "now"
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": kind, "metadata": meta,
            "spec": {"targetRef": {"name": target}}}


def test_the_wired_attachment_is_the_oldest_live_one_targeting_the_model() -> None:
    idx = Indexes()
    idx.add_attachment(attachment("ExplainerSpec", "gone", NAME, "2026-01-01", deleting=True))
    idx.add_attachment(attachment("ExplainerSpec", "young", NAME, "2026-03-01"))
    idx.add_attachment(attachment("ExplainerSpec", "old", NAME, "2026-02-01"))
    idx.add_attachment(attachment("ExplainerSpec", "elsewhere", "wine", "2025-01-01"))
    idx.add_attachment(attachment("DriftMonitor", "dm", "wine", "2025-01-01"))
    lookup = lookup_of(idx)
    found = sidecars.for_target("ExplainerSpec", md(), lookup)
    assert found is not None and found["metadata"]["name"] == "old"
    assert sidecars.for_target("DriftMonitor", md(), lookup) is None
    wine = sidecars.for_target("DriftMonitor", md("wine", "uid-wine"), lookup)
    assert wine is not None and wine["metadata"]["name"] == "dm"


def test_refresh_targeting_refreshes_the_ones_targeting_the_model(
        monkeypatch: pytest.MonkeyPatch, api: Api) -> None:
    idx = Indexes()
    for name, target in (("a", NAME), ("b", NAME), ("c", "wine")):
        idx.add_attachment(attachment("ExplainerSpec", name, target, "t"))
    idx.add_attachment(attachment("DriftMonitor", "d", NAME, "t"))
    lookup = lookup_of(idx)
    refreshed: list[tuple[str, str]] = []
    monkeypatch.setattr(sidecars, "_REFRESH", {
        kind: (lambda ns, name, lk, kind=kind: refreshed.append((kind, name)))
        for kind in ("ExplainerSpec", "DriftMonitor")})
    sidecars.refresh_targeting(NAME, NS, lookup, skip="b")
    assert sorted(refreshed) == [("DriftMonitor", "d"), ("ExplainerSpec", "a")]
    assert api.calls == []  # no namespace LIST


def test_the_contributions_come_from_the_index(api: Api) -> None:
    from kustos.controllers import explainerspec  # noqa: F401  (registers its contributor)
    from kustos.controllers.attachments import gather

    idx = Indexes()
    body = md()
    assert gather(body, lookup_of(idx)) == NONE
    es = attachment("ExplainerSpec", "e", NAME, "t")
    es["spec"] = {"targetRef": {"name": NAME}, "background": {"uri": "s3://b/bg.npy"}}
    idx.add_attachment(es)
    got = gather(body, lookup_of(idx))
    assert [c["name"] for c in got.sidecars] == ["explainer"]
    assert got.explainer_url
    assert api.calls == []  # read from the index, not LISTed


# --- the children sync against the index ---------------------------------------------------


def live_from(rendered: list[dict[str, Any]]) -> Indexes:
    """The indexes as kopf fills them once ``rendered`` is in the cluster, owned by md()."""
    idx = Indexes()
    for manifest in rendered:
        body = {**manifest, "metadata": {**manifest["metadata"],
                                          "uid": f"uid-{manifest['kind']}"}}
        idx.add_child(body)
    return idx


def rendered() -> list[dict[str, Any]]:
    return render_md.render(md(), OperatorConfig(), NONE)


def test_nothing_changed_nothing_sent(api: Api) -> None:
    desired = rendered()
    lookup = lookup_of(live_from(desired))
    live = children.known(md(), MODEL_CHILD_KINDS, lookup)
    assert len(live) == len(desired)
    assert children.sync(md(), desired, MODEL_CHILD_KINDS, live) == {}
    assert api.calls == []


def test_a_child_missing_from_the_index_is_read_then_applied(api: Api) -> None:
    desired = rendered()
    idx = live_from([m for m in desired if m["kind"] != "Service"])
    applied = children.sync(md(), desired, MODEL_CHILD_KINDS,
                            children.known(md(), MODEL_CHILD_KINDS, lookup_of(idx)))
    assert api.calls == [("get", "Service", NAME), ("apply", "Service", NAME)]
    assert list(applied) == [("Service", NAME)]


def test_a_child_newer_than_the_index_is_not_applied_again(api: Api) -> None:
    desired = rendered()
    service = next(m for m in desired if m["kind"] == "Service")
    idx = live_from([m for m in desired if m is not service])
    api.objects[("Service", NAME)] = child_body(
        "Service", NAME, spec_hash=service["metadata"]["annotations"][SPEC_HASH])
    children.sync(md(), desired, MODEL_CHILD_KINDS,
                  children.known(md(), MODEL_CHILD_KINDS, lookup_of(idx)))
    assert api.calls == [("get", "Service", NAME)]


def test_a_foreign_object_with_a_childs_name_is_a_conflict(api: Api) -> None:
    desired = rendered()
    idx = live_from([m for m in desired if m["kind"] != "Service"])
    # Labelled like ours but owned by another object: not ours in the index either.
    foreign = child_body("Service", NAME, owner_uid="someone-else", uid="foreign")
    idx.add_child(foreign)
    api.objects[("Service", NAME)] = foreign
    with pytest.raises(NameConflict, match="Service iris exists and is not owned"):
        children.sync(md(), desired, MODEL_CHILD_KINDS,
                      children.known(md(), MODEL_CHILD_KINDS, lookup_of(idx)))
    assert ("apply", "Service", NAME) not in api.calls
    assert ("delete", "Service", f"{NAME}@foreign") not in api.calls


def test_a_changed_child_is_applied_without_a_read(api: Api) -> None:
    desired = rendered()
    idx = live_from(desired)
    dep = next(m for m in desired if m["kind"] == "Deployment")
    idx.add_child(child_body("Deployment", dep["metadata"]["name"], spec_hash="older",
                             uid="uid-Deployment"))
    children.sync(md(), desired, MODEL_CHILD_KINDS,
                  children.known(md(), MODEL_CHILD_KINDS, lookup_of(idx)))
    assert api.calls == [("apply", "Deployment", dep["metadata"]["name"])]


def test_an_owned_child_no_longer_rendered_is_deleted_by_uid(api: Api) -> None:
    desired = rendered()
    idx = live_from(desired)
    idx.add_child(child_body("HorizontalPodAutoscaler", NAME, uid="uid-hpa"))
    idx.add_child(child_body("HorizontalPodAutoscaler", "not-mine", owner_uid="other"))
    children.sync(md(), desired, MODEL_CHILD_KINDS,
                  children.known(md(), MODEL_CHILD_KINDS, lookup_of(idx)))
    assert api.calls == [("delete", "HorizontalPodAutoscaler", f"{NAME}@uid-hpa")]


def test_a_kind_without_an_index_is_listed(api: Api) -> None:
    lookup = lookup_of(Indexes())
    children.known(md(), ["Job", "Service"], lookup)
    assert api.calls == [("list", "Job", "")]


# --- a whole reconcile against the indexes ------------------------------------------------


def test_a_resumed_reconcile_of_an_unchanged_model_lists_and_applies_nothing(
        monkeypatch: pytest.MonkeyPatch, api: Api) -> None:
    written: list[dict[str, Any]] = []

    def write_status(body: Any, deployments: dict[str, Any], *_: Any, **kw: Any) -> None:
        assert kw.get("current") is body  # compared with kopf's body: no GET either
        written.append(deployments)

    monkeypatch.setattr(modeldeployment, "write_status", write_status)
    desired = rendered()
    idx = live_from(desired)
    dep_name = next(m for m in desired if m["kind"] == "Deployment")["metadata"]["name"]
    # The Deployment as the watch shows it, with its controller's status.
    dep = child_body("Deployment", dep_name, uid="uid-Deployment", spec_hash=next(
        m for m in desired if m["kind"] == "Deployment")["metadata"]["annotations"][SPEC_HASH])
    dep["status"] = {"readyReplicas": 1}
    idx.add_child(dep)
    state = modeldeployment.Models(lookup_of(idx))
    modeldeployment._reconcile(md(), 0, state)
    assert api.calls == []
    assert [d[dep_name]["status"] for d in written] == [{"readyReplicas": 1}]
    done = state.reconciled(UID)
    assert done is not None and done.generation == 1 and done.failure is None


def test_events_before_this_process_reconciled_the_model_schedule_no_refresh() -> None:
    """At start-up kopf lists every ModelDeployment (and the child watches every
    Deployment): the resumed reconcile writes their status, so those events must not each
    cost a refresh (a GET)."""
    import asyncio

    async def test() -> None:
        state = modeldeployment.Models(lookup_of(Indexes()))
        body = md()
        dep = child_body("Deployment", NAME)
        modeldeployment.model_changed(state, body, None)
        modeldeployment.deployment_changed(state, "ADDED", dep)
        assert state._due == {}
        state.record(UID, modeldeployment.Reconciled(1))
        modeldeployment.deployment_changed(state, "MODIFIED", dep)
        assert set(state._due) == {(NS, NAME)}
        await state.stop()

    asyncio.run(test())


def test_a_relist_drops_what_the_watch_missed_and_keeps_what_it_told_since() -> None:
    """A watch restarted from a new listing reports no deletion it missed: the re-list
    finds those, but what the watch said after the LIST began stands."""
    cache = ChildCache()
    gone = child_body("Service", "gone")            # deleted during an outage: no event
    kept = child_body("Service", "kept")
    cache.see("Service", gone)
    cache.see("Service", kept)
    began = time.monotonic()
    fresh = child_body("Service", "fresh")          # created after the LIST began
    cache.see("Service", fresh)
    cache.see("Service", kept, deleted=True)        # deleted after the LIST began
    missed = child_body("Service", "missed")        # in the LIST, never seen by the watch
    changed = cache.relist("Service", [kept, missed], began)
    names = sorted(c.name for c in cache.get("Service", (NS, NAME)))
    assert names == ["fresh", "missed"]
    assert changed == 2
    # a second re-list with nothing new changes nothing
    assert cache.relist("Service", [missed, fresh], time.monotonic()) == 0
    assert sorted(c.name for c in cache.get("Service", (NS, NAME))) == ["fresh", "missed"]


def test_a_relist_updates_a_stale_entry_and_leaves_other_kinds_alone() -> None:
    cache = ChildCache()
    cache.see("Service", child_body("Service", NAME, spec_hash="old"))
    cache.see("NetworkPolicy", child_body("NetworkPolicy", NAME))
    assert cache.relist("Service", [child_body("Service", NAME, spec_hash="new")],
                        time.monotonic()) == 1
    assert [c.spec_hash for c in cache.get("Service", (NS, NAME))] == ["new"]
    assert [c.name for c in cache.get("NetworkPolicy", (NS, NAME))] == [NAME]




def test_a_new_objects_first_status_waits_a_moment_for_its_rollout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose pods are ready within FIRST_STATUS_GRACE gets one status write
    (Ready), not Progressing first; one that already has a status, or whose grace is
    over, or that failed, is written at once."""
    written: list[Any] = []
    monkeypatch.setattr(modeldeployment, "write_status",
                        lambda *args, **kwargs: written.append(args))
    from kustos.render.meta import MODEL_DIGEST, MODEL_VERSION
    from kustos.status.modeldeployment import Failure

    idx = Indexes()
    dep = child_body("Deployment", NAME)   # no status yet: the rollout is under way
    model = md()["spec"]["model"]
    dep["spec"] = {"replicas": 1, "template": {"metadata": {"annotations": {
        MODEL_VERSION: model["version"], MODEL_DIGEST: model["digest"]}}}}
    idx.add_child(dep)
    state = modeldeployment.Models(lookup_of(idx))
    state.record(UID, modeldeployment.Reconciled(1))
    wait = modeldeployment.refresh_status(md(), state)
    assert wait is not None and 0 < wait <= modeldeployment.FIRST_STATUS_GRACE
    assert written == []
    with_status = {**md(), "status": {"observedGeneration": 1}}
    assert modeldeployment.refresh_status(with_status, state) is None and len(written) == 1
    state.record(UID, modeldeployment.Reconciled(1, at=time.monotonic() - 60))
    assert modeldeployment.refresh_status(md(), state) is None and len(written) == 2
    failed = modeldeployment.Reconciled(1, Failure("ApiError", "x"))
    state.record(UID, failed)
    assert modeldeployment.refresh_status(md(), state) is None and len(written) == 3
