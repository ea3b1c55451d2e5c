"""The operator's RBAC rules: generated file up to date, least privilege, and covering every
API call the operator's code makes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kustos import rbac
from kustos.k8s.resources import MODEL_CHILD_KINDS, resource

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "charts" / "kustos" / "files" / "rbac-rules.yaml"
PACKAGE = REPO / "operator" / "kustos"

# kustos.k8s.client function -> the verbs it needs on the kind's resource.
CLIENT_VERBS = {"get": ("get",), "list_objects": ("list",), "apply": ("create", "patch"),
                "delete": ("delete",), "create": ("create",), "patch": ("patch",)}


def allows(rules: Iterable[rbac.Rule], group: str, res: str, verb: str) -> bool:
    return any(group in r.api_groups and res in r.resources and verb in r.verbs
               and not r.resource_names for r in rules)


def all_rules(mode: str) -> list[rbac.Rule]:
    return [r for rules in rbac.rule_sets()[mode].values() for r in rules]


def group_of(kind: str) -> str:
    api = resource(kind).api_version
    return api.split("/")[0] if "/" in api else ""


def test_generated_file_is_current() -> None:
    assert RULES_FILE.is_file(), "run: python -m kustos.rbac --write " + str(RULES_FILE)
    assert RULES_FILE.read_text() == rbac.rules_yaml(), (
        "charts/kustos/files/rbac-rules.yaml is stale; regenerate it with "
        "`python -m kustos.rbac --write charts/kustos/files/rbac-rules.yaml`")


def test_security_doc_tables_are_current() -> None:
    doc = (REPO / "docs" / "security.md").read_text()
    assert rbac.with_docs(doc) == doc, (
        "the RBAC tables in docs/security.md are stale; regenerate them with "
        "`python -m kustos.rbac --docs docs/security.md`")
    assert "| core | secrets | get |" in doc


def test_file_parses_to_the_rule_sets() -> None:
    parsed = yaml.safe_load(rbac.rules_yaml())
    expected = {mode: {key: [r.manifest() for r in rules] for key, rules in sets.items()}
                for mode, sets in rbac.rule_sets().items()}
    assert parsed == expected


def test_no_wildcards_and_no_privilege_escalation() -> None:
    for mode in ("clusterWide", "namespaced", "webhook"):
        for r in all_rules(mode):
            assert "*" not in r.api_groups + r.resources + r.verbs, r
            assert not {"escalate", "bind", "impersonate", "deletecollection",
                        "update"} & set(r.verbs), r
            assert not {"pods/exec", "pods/attach", "pods/portforward", "nodes",
                        "nodes/proxy", "clusterroles", "clusterrolebindings", "roles",
                        "rolebindings", "users", "groups", "certificatesigningrequests",
                        "mutatingwebhookconfigurations", "persistentvolumes"} & set(r.resources)
            # Pods are read, never created: the Deployments' ReplicaSets create them.
            if "pods" in r.resources:
                assert set(r.verbs) <= {"get", "list", "watch"}, r


def test_secrets_are_never_read_in_bulk_nor_bound_cluster_wide() -> None:
    for mode in ("clusterWide", "namespaced", "webhook"):
        for r in all_rules(mode):
            if "secrets" in r.resources:
                assert not {"list", "watch"} & set(r.verbs), r
    cw = rbac.rule_sets()["clusterWide"]
    assert not any("secrets" in r.resources or "serviceaccounts/token" in r.resources
                   for r in cw["clusterRole"]), "Secrets have their own, per-namespace role"
    assert allows(cw["secrets"], "", "secrets", "get")


def test_namespace_listing_only_for_globs_and_governance() -> None:
    # kopf lists namespaces to resolve --namespace globs (namespaced mode only); the
    # governance part indexes their labels. Nothing else reads namespaces.
    for mode in ("clusterWide", "namespaced"):
        for r in all_rules(mode):
            if "namespaces" in r.resources:
                assert set(r.verbs) <= {"get", "list", "watch"}, r
                assert r.needed_by == "pending: governance" or mode == "namespaced", r
    assert allows(rbac.NAMESPACED_MODE_CLUSTER_RULES, "", "namespaces", "list")


def test_every_child_kind_is_covered() -> None:
    for mode, key in (("clusterWide", "clusterRole"), ("namespaced", "role")):
        rules = rbac.rule_sets()[mode][key]
        for kind in MODEL_CHILD_KINDS:
            for verb in rbac.CHILD_VERBS:
                assert allows(rules, group_of(kind), resource(kind).plural, verb), \
                    (mode, kind, verb)


# The webhook certificate's calls have rules of their own (rule_sets()["webhook"]).
CERTIFICATE = PACKAGE / "governance" / "certificate.py"


def _client_calls(only: Path | None = None) -> set[tuple[str, str]]:
    """(function, kind) of every client call with a literal kind in the operator package
    (but the webhook certificate's), or in the file ``only``."""
    calls: set[tuple[str, str]] = set()
    # Status writes go through kustos.k8s.status.write (a read, then an apply of the
    # status subresource), directly or through the sidecars' refresh_with.
    pattern = re.compile(r"(?:client\.(get|list_objects|delete|create|patch)"
                         r"|k8s_status\.(write)|sidecars\.(refresh_with))\(\s*(\"?\w+)")
    for path in [only] if only else PACKAGE.rglob("*.py"):
        if "runtime" in path.parts or (only is None and path == CERTIFICATE):
            continue  # the pods' processes, not the operator
        text = path.read_text()
        # Module constants such as KIND = "ModelDeployment".
        consts = dict(re.findall(r"^([A-Z_]+) = \"(\w+)\"$", text, re.MULTILINE))
        for *fns, arg in pattern.findall(text):
            kind = arg[1:] if arg.startswith('"') else consts.get(arg)
            fn = next(f for f in fns if f)
            if kind:
                calls.add(("status_write", kind) if fn in ("write", "refresh_with")
                          else (fn, kind))
        # children.sync(owner, desired, ["Kind", ...]): list, get, apply, delete.
        for kinds in re.findall(r"\bsync\(.*\[((?:\"\w+\",?\s*)+)\]\)", text):
            for kind in re.findall(r"\"(\w+)\"", kinds):
                calls |= {(fn, kind) for fn in ("list_objects", "get", "apply", "delete")}
    return calls


def test_every_literal_client_call_is_allowed() -> None:
    calls = _client_calls()
    assert ("status_write", "ModelDeployment") in calls and ("get", "Secret") in calls
    assert ("status_write", "DriftMonitor") in calls
    assert ("apply", "ConfigMap") in calls, "children.sync calls with literal kinds"
    for mode in ("clusterWide", "namespaced"):
        rules = all_rules(mode)
        for fn, kind in calls:
            res, group = resource(kind).plural, group_of(kind)
            if fn == "status_write":
                assert allows(rules, group, f"{res}/status", "patch"), (mode, fn, kind)
                assert allows(rules, group, res, "get"), (mode, fn, kind)
                continue
            for verb in CLIENT_VERBS[fn]:
                assert allows(rules, group, res, verb), (mode, fn, kind, verb)
    # Events through kustos.k8s.events, tokens through client.create_token.
    for mode in ("clusterWide", "namespaced"):
        assert allows(all_rules(mode), "", "events", "create")
        if "def create_token" in (PACKAGE / "k8s" / "client.py").read_text():
            assert allows(all_rules(mode), "", "serviceaccounts/token", "create")


def test_the_webhook_certificate_gets_exactly_its_one_secret_and_configuration() -> None:
    """`kustos run --webhook-secret --webhook-inject-ca`: get/patch of one Secret and one
    configuration by name, create of Secrets (not narrowable) in its own namespace only."""
    sets = rbac.rule_sets()["webhook"]
    named = {(r.resources, r.verbs, r.resource_names) for r in sets["role"] + sets["clusterRole"]
             if r.resource_names}
    assert named == {(("secrets",), ("get", "patch"), (rbac.WEBHOOK_SECRET,)),
                     (("validatingwebhookconfigurations",), ("get", "patch"),
                      (rbac.WEBHOOK_CONFIGURATION,))}
    unnamed = [r for r in sets["role"] + sets["clusterRole"] if not r.resource_names]
    assert [(r.resources, r.verbs) for r in unnamed] == [(("secrets",), ("create",))]
    assert unnamed[0] in sets["role"], "create only by a Role in the operator's namespace"
    # What kustos.governance.certificate calls (get and patch by name, create, apply of the
    # caBundle = a patch of the existing configuration: the uid in the body forbids a create).
    text = CERTIFICATE.read_text()
    assert set(re.findall(r"\bclient\.(\w+)\(", text)) == {"get", "create", "patch", "apply"}
    assert _client_calls(CERTIFICATE) == {("get", "Secret"), ("patch", "Secret"),
                                          ("get", "ValidatingWebhookConfiguration")}
    assert 'client.create(secret_manifest(' in text and '"uid": current["metadata"]["uid"]' in text
    # Nowhere else: the chart's main roles no longer carry webhook configuration rights.
    for mode in ("clusterWide", "namespaced"):
        assert not any("validatingwebhookconfigurations" in r.resources for r in all_rules(mode))


def test_webhook_manifests_name_the_installations_objects() -> None:
    cert = rbac.WebhookCertificate("ops", "k-webhook-cert", "k-webhook")
    objs = _by_kind(rbac.manifests(name="k", sa_namespace="ops", sa_name="op", webhook=cert))
    role = next(r for r in objs["Role"] if r["metadata"]["name"] == "k-webhook")
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"][0]["resourceNames"] == ["k-webhook-cert"]
    cluster_role = next(r for r in objs["ClusterRole"] if r["metadata"]["name"] == "k-webhook")
    assert cluster_role["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"],
                                      "resources": ["validatingwebhookconfigurations"],
                                      "verbs": ["get", "patch"],
                                      "resourceNames": ["k-webhook"]}]
    assert {b["metadata"]["name"] for b in objs["RoleBinding"] + objs["ClusterRoleBinding"]} \
        >= {"k-webhook"}
    plain = rbac.manifests(name="k", sa_namespace="ops", sa_name="op")
    assert not [o for o in plain if o["metadata"]["name"] == "k-webhook"]
    selfreg = _by_kind(rbac.manifests(name="k", sa_namespace="ops", sa_name="op",
                                      webhook_self_registration=True))
    assert [r["rules"] for r in selfreg["ClusterRole"] if r["metadata"]["name"] == "k-webhook"] \
        == [[{"apiGroups": ["admissionregistration.k8s.io"],
              "resources": ["validatingwebhookconfigurations"], "verbs": ["create", "patch"]}]]


def test_kopf_watches_are_allowed() -> None:
    for mode, key in (("clusterWide", "clusterRole"), ("namespaced", "role")):
        rules = rbac.rule_sets()[mode][key]
        for group, res in (("kustos.dev", "modeldeployments"), ("apps", "deployments")):
            for verb in ("list", "watch"):
                assert allows(rules, group, res, verb), (mode, res, verb)
        # kopf's progress annotations are patches of the object itself.
        assert allows(rules, "kustos.dev", "modeldeployments", "patch")


def _by_kind(objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_cluster_wide_manifests_bind_secrets_per_namespace() -> None:
    objs = _by_kind(rbac.manifests(name="k", sa_namespace="ops", sa_name="op",
                                   secret_namespaces=["ml", "ml2"]))
    assert [o["metadata"]["name"] for o in objs["ClusterRole"]] == ["k", "k-secrets"]
    (crb,) = objs["ClusterRoleBinding"]
    assert crb["roleRef"]["name"] == "k"
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "op", "namespace": "ops"}]
    assert sorted(b["metadata"]["namespace"] for b in objs["RoleBinding"]) == ["ml", "ml2"]
    assert {b["roleRef"]["name"] for b in objs["RoleBinding"]} == {"k-secrets"}
    everywhere = _by_kind(rbac.manifests(name="k", sa_namespace="ops", sa_name="op",
                                         secrets_all_namespaces=True))
    assert sorted(b["roleRef"]["name"] for b in everywhere["ClusterRoleBinding"]) == \
        ["k", "k-secrets"]
    assert "RoleBinding" not in everywhere


def test_namespaced_manifests_have_a_role_per_namespace() -> None:
    objs = _by_kind(rbac.manifests(name="k", sa_namespace="ops", sa_name="op",
                                   namespaces=["a", "b"], peering=True))
    assert sorted(r["metadata"]["namespace"] for r in objs["Role"]) == ["a", "b"]
    role = objs["Role"][0]["rules"]
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]} in role
    assert any(r["resources"] == ["kopfpeerings"] for r in role)
    (cluster_role,) = objs["ClusterRole"]
    assert not any("deployments" in r["resources"] for r in cluster_role["rules"])
    plain = _by_kind(rbac.manifests(name="k", sa_namespace="ops", sa_name="op",
                                    namespaces=["a"]))
    assert not any(r["resources"] == ["kopfpeerings"] for r in plain["Role"][0]["rules"])


def test_cli_writes_and_prints(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "files" / "rules.yaml"
    assert rbac.main(["--write", str(out)]) == 0
    assert out.read_text() == rbac.rules_yaml()
    assert rbac.main(["--manifests", "-n", "a"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {d["kind"] for d in docs} == {"ClusterRole", "ClusterRoleBinding", "Role",
                                          "RoleBinding"}


def test_guard_judges_only_the_operator_and_spares_kustos_resources() -> None:
    policy, binding = rbac.guard_manifests(name="k", sa_namespace="ops", sa_name="op",
                                           label="kustos.dev/models=on")
    conditions = {c["name"]: c["expression"] for c in policy["spec"]["matchConditions"]}
    assert conditions["operator"] == \
        "request.userInfo.username == 'system:serviceaccount:ops:op'"
    assert "'kustos.dev'" in conditions["not-kustos-or-events"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["scope"] == "Namespaced", "cluster-scoped writes are RBAC's business"
    assert policy["spec"]["validations"][0]["reason"] == "Forbidden"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {"matchExpressions": [
        {"key": "kustos.dev/models", "operator": "NotIn", "values": ["on"]}]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        rbac.guard_manifests(name="k", sa_namespace="ops", sa_name="op", label="novalue")


def test_cli_prints_the_guard(capsys: Any) -> None:
    assert rbac.main(["--manifests", "--guard-label", "a=b"]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds[-2:] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
