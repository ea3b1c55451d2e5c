"""The operator's RBAC rules (kustos.rbac) on the real API server.

The rules are bound to a fresh ServiceAccount; a SubjectAccessReview checks what it
may and may not do, and the real operator, running with that ServiceAccount's token,
takes a ModelDeployment to Ready: the rules are sufficient, not just a list.

The namespaces here do not start with the session prefix, so the session's own operator
(which watches only prefixed namespaces) never acts on them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import OPERATOR_LOGS, Kube, Operator, wait_for

from kustos import rbac

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "0123456789abcdef" * 4
MD = "modeldeployments.kustos.dev"
CHILDREN = ("deployments.apps", "services", "serviceaccounts",
            "horizontalpodautoscalers.autoscaling", "poddisruptionbudgets.policy",
            "networkpolicies.networking.k8s.io")

# What the operator's code does in a namespace with models, read from controllers/ and
# k8s/ (verb, resource, subresource). The rules must allow each.
CODE_NEEDS: list[tuple[str, str, str]] = [
    *[(v, MD, "") for v in ("get", "list", "watch", "patch")],
    ("patch", MD, "status"),
    ("watch", "deployments.apps", ""),
    *[(v, kind, "") for kind in CHILDREN for v in rbac.CHILD_VERBS],
    ("create", "events", ""),
    ("get", "secrets", ""),
    ("create", "serviceaccounts", "token"),
    ("list", "pods", ""),
    *[(v, "configmaps", "") for v in rbac.CHILD_VERBS],
    *[(v, r, "") for r in ("explainerspecs.kustos.dev", "driftmonitors.kustos.dev")
      for v in ("get", "list", "watch", "patch")],
    ("patch", "explainerspecs.kustos.dev", "status"),
    ("patch", "driftmonitors.kustos.dev", "status"),
    ("list", "jobs.batch", ""),
    ("create", "jobs.batch", ""),
]
CLUSTER_NEEDS: list[tuple[str, str, str]] = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("get", "governancepolicies.kustos.dev", ""),
    ("list", "governancepolicies.kustos.dev", ""),
    ("get", "namespaces", ""), ("list", "namespaces", ""), ("watch", "namespaces", ""),
    ("watch", "governancepolicies.kustos.dev", ""),
    ("patch", "governancepolicies.kustos.dev", "status"),
]
# What it must never be able to do, in a namespace it serves models in.
NEVER_IN_NAMESPACE: list[tuple[str, str, str]] = [
    ("create", "pods", "exec"), ("get", "pods", "exec"), ("create", "pods", "portforward"),
    ("create", "pods", "attach"), ("create", "pods", ""), ("delete", "pods", ""),
    ("list", "secrets", ""), ("watch", "secrets", ""), ("deletecollection", "secrets", ""),
    ("*", "*", ""), ("*", "deployments.apps", ""), ("*", MD, ""), ("*", "secrets", ""),
    ("delete", MD, ""), ("update", MD, ""), ("deletecollection", "deployments.apps", ""),
    ("create", "roles.rbac.authorization.k8s.io", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", ""),
    ("escalate", "roles.rbac.authorization.k8s.io", ""),
    ("bind", "roles.rbac.authorization.k8s.io", ""),
    ("impersonate", "serviceaccounts", ""),
    # the ground-truth monitor's claim is created (owned by its DriftMonitor, collected
    # with it), never deleted by the operator: its store is the users' labelled data
    ("delete", "persistentvolumeclaims", ""), ("deletecollection", "persistentvolumeclaims", ""),
    ("update", "persistentvolumeclaims", ""),
]
NEVER_CLUSTER: list[tuple[str, str, str]] = [
    ("get", "nodes", ""), ("list", "nodes", ""), ("get", "nodes", "proxy"),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
    ("bind", "clusterroles.rbac.authorization.k8s.io", ""),
    ("impersonate", "users", ""), ("impersonate", "groups", ""),
    ("impersonate", "serviceaccounts", ""),
    ("create", "namespaces", ""), ("delete", "namespaces", ""),
    ("deletecollection", "namespaces", ""), ("patch", "namespaces", ""),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", ""),
    # the chart's operator keeps the caBundle of its own configuration (get and patch by
    # name, rbac.WEBHOOK_CONFIGURATION_RULES); it registers none of its own
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", ""),
    ("delete", "validatingwebhookconfigurations.admissionregistration.k8s.io", ""),
    ("create", "certificatesigningrequests.certificates.k8s.io", ""),
    ("create", "persistentvolumes", ""),
    ("create", "governancepolicies.kustos.dev", ""),
    ("patch", "clusterkopfpeerings.kopf.dev", ""),  # peering is off unless asked for
    ("*", "*", ""),
]


@dataclass
class Env:
    kube: Kube
    uid: str
    operator_ns: str
    models_ns: str  # where models run (Secrets bound here in cluster-wide mode)
    other_ns: str


@pytest.fixture(scope="module")
def env(kube: Kube) -> Iterator[Env]:
    uid = uuid.uuid4().hex[:6]
    e = Env(kube, uid, f"rbac-{uid}-op", f"rbac-{uid}-a", f"rbac-{uid}-b")
    for ns in (e.operator_ns, e.models_ns, e.other_ns):
        kube.create_namespace(ns)
    yield e
    kube.run("delete", "clusterrole,clusterrolebinding,validatingadmissionpolicybinding,"
             "validatingadmissionpolicy", "-l", f"kustos-rbac-test={uid}",
             check=False)
    for ns in (e.operator_ns, e.models_ns, e.other_ns):
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def bind(e: Env, sa: str, **kwargs: Any) -> str:
    """Create ServiceAccount ``sa`` in the operator namespace and bind the rules from
    kustos.rbac to it; returns its user name."""
    e.kube.run("create", "serviceaccount", sa, "-n", e.operator_ns)
    objs = rbac.manifests(name=f"kustos-test-{e.uid}-{sa}", sa_namespace=e.operator_ns,
                          sa_name=sa, **kwargs)
    for obj in objs:
        obj["metadata"]["labels"]["kustos-rbac-test"] = e.uid
    e.kube.apply({"apiVersion": "v1", "kind": "List", "items": objs})
    return f"system:serviceaccount:{e.operator_ns}:{sa}"


def can_i(kube: Kube, who: str, verb: str, resource: str, sub: str = "",
          namespace: str | None = None) -> bool:
    """The authorizer's answer for ``who`` (a SubjectAccessReview, not `kubectl auth
    can-i`, which resolves the resource through discovery and so says no for the kind
    of a CRD that is not installed, such as KEDA's ScaledObject)."""
    plural, _, group = resource.partition(".")
    attributes = {"verb": verb, "group": group, "resource": plural, "subresource": sub}
    if namespace:
        attributes["namespace"] = namespace
    # the groups the API server gives an authenticated ServiceAccount
    groups = ["system:authenticated"]
    if who.startswith("system:serviceaccount:"):
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{who.split(':')[2]}"]
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": who, "groups": groups, "resourceAttributes": attributes}}
    out = kube.run("create", "-f", "-", "-o", "json", input=json.dumps(review), check=False)
    assert out.returncode == 0, out.stderr
    return bool(json.loads(out.stdout)["status"].get("allowed"))


def answers(kube: Kube, who: str, checks: list[tuple[str, str, str]],
            namespace: str | None) -> dict[tuple[str, str, str], bool]:
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = pool.map(lambda c: can_i(kube, who, *c, namespace=namespace), checks)
        return dict(zip(checks, results, strict=True))


def from_rules(rules: tuple[rbac.Rule, ...]) -> list[tuple[str, str, str]]:
    """Every (verb, resource.group, subresource) a rule set grants."""
    out = []
    for r in rules:
        for group in r.api_groups:
            for res in r.resources:
                base, _, sub = res.partition("/")
                name = f"{base}.{group}" if group else base
                out += [(verb, name, sub) for verb in r.verbs]
    return out


def assert_all(got: dict[tuple[str, str, str], bool], want: bool, where: str) -> None:
    wrong = [c for c, ok in got.items() if ok != want]
    assert not wrong, f"{where}: expected {'yes' if want else 'no'} for {wrong}"


def test_cluster_wide_rules(env: Env) -> None:
    who = bind(env, "cw", secret_namespaces=[env.models_ns])
    sets = rbac.rule_sets()["clusterWide"]
    namespaced = [c for c in from_rules(sets["clusterRole"]) if c not in CLUSTER_NEEDS]
    # Everything the code uses, in the models' namespace and in any other (cluster-wide).
    assert_all(answers(env.kube, who, CODE_NEEDS + namespaced, env.models_ns), True,
               env.models_ns)
    without_secrets = [c for c in CODE_NEEDS if c[1] != "secrets" and c[2] != "token"]
    assert_all(answers(env.kube, who, without_secrets, env.other_ns), True, env.other_ns)
    assert_all(answers(env.kube, who, CLUSTER_NEEDS, None), True, "cluster")
    # Secrets only where models are, never in kube-system nor any other namespace.
    for ns in ("kube-system", env.other_ns, "default"):
        assert not can_i(env.kube, who, "get", "secrets", namespace=ns), ns
        assert not can_i(env.kube, who, "create", "serviceaccounts", "token", namespace=ns), ns
    assert_all(answers(env.kube, who, NEVER_IN_NAMESPACE, env.models_ns), False, env.models_ns)
    assert_all(answers(env.kube, who, NEVER_CLUSTER, None), False, "cluster")


def test_namespaced_rules_act_only_in_their_namespace(env: Env) -> None:
    who = bind(env, "ns", namespaces=[env.models_ns])
    sets = rbac.rule_sets()["namespaced"]
    needs = CODE_NEEDS + from_rules(sets["role"])
    assert_all(answers(env.kube, who, needs, env.models_ns), True, env.models_ns)
    assert_all(answers(env.kube, who, needs, env.other_ns), False, env.other_ns)
    assert_all(answers(env.kube, who, needs, "kube-system"), False, "kube-system")
    # Nothing namespaced across all namespaces.
    for verb, res, _ in (("list", MD, ""), ("list", "deployments.apps", ""),
                         ("get", "secrets", "")):
        out = env.kube.run("auth", "can-i", verb, res, "-A", f"--as={who}", check=False)
        assert out.stdout.strip() == "no", (verb, res)
    assert_all(answers(env.kube, who, CLUSTER_NEEDS, None), True, "cluster")
    assert_all(answers(env.kube, who, NEVER_IN_NAMESPACE, env.models_ns), False, env.models_ns)
    assert_all(answers(env.kube, who, NEVER_CLUSTER, None), False, "cluster")


def token_kubeconfig(e: Env, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``sa`` with a real token."""
    token = e.kube.run("create", "token", sa, "-n", e.operator_ns,
                       "--duration=1h").stdout.strip()
    admin = yaml.safe_load(e.kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
              "users": [{"name": sa, "user": {"token": token}}],
              "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
              "current-context": sa}
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def model_deployment(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"version": "1", "uri": "s3://models/iris/model.skops",
                                      "digest": DIGEST, "credentialsSecretRef": {"name": "s3"}},
                            "governance": {"owner": "rbac-test", "riskTier": "high"}}
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def wait_ready(kube: Kube, name: str, ns: str, generation: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = kube.get("md", name, ns)
        st = (md or {}).get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions") or []}
        if (st.get("observedGeneration") == generation
                and conds.get("Ready", {}).get("status") == "True"
                and conds.get("Progressing", {}).get("status") == "False"):
            return md
        return None
    result: dict[str, Any] = wait_for(f"md/{name} Ready at generation {generation}", check,
                                      timeout=120)
    return result


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_real_operator_runs_with_only_these_rules(env: Env, tmp_path: Path, mode: str) -> None:
    sa = f"op-{mode[0]}"
    if mode == "cluster-wide":
        who = bind(env, sa, secret_namespaces=[env.models_ns])
    else:
        who = bind(env, sa, namespaces=[env.models_ns])
    kc = token_kubeconfig(env, sa, tmp_path / "kubeconfig")
    whoami = env.kube.run("--kubeconfig", str(kc), "auth", "whoami", "-o", "json")
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == who
    env.kube.run("create", "secret", "generic", "s3", "-n", env.models_ns,
                 "--from-literal=AWS_ACCESS_KEY_ID=test", check=False)
    name = f"rbac-{mode}"
    op = Operator(kc)
    op.log_path = OPERATOR_LOGS / f"operator-rbac-{env.uid}-{mode}.log"
    # A ModelDeployment with every child: autoscaling (HPA), two replicas (PDB),
    # credentials (the Secret check), the NetworkPolicy, Events.
    env.kube.apply(model_deployment(name, env.models_ns,
                                    autoscaling={"minReplicas": 2, "maxReplicas": 3}))
    op.start(namespaces=[env.models_ns])
    try:
        md = wait_ready(env.kube, name, env.models_ns, 1)
        assert md["status"]["readyReplicas"] == 2
        kinds = {o["kind"] for o in env.kube.list(",".join(CHILDREN), env.models_ns,
                                                   f"app.kubernetes.io/instance={name}")}
        assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler",
                         "PodDisruptionBudget", "NetworkPolicy"}
        # Removing autoscaling deletes the HPA and (one replica) the PDB: the delete verbs.
        # A new version posts an Event: the events verb.
        env.kube.run("patch", "md", name, "-n", env.models_ns, "--type=json", "-p",
                     '[{"op":"remove","path":"/spec/autoscaling"},'
                     '{"op":"add","path":"/spec/replicas","value":1},'
                     '{"op":"replace","path":"/spec/model/version","value":"2"}]')
        wait_ready(env.kube, name, env.models_ns, 2)
        wait_for("the ModelVersionChanged Event", lambda: any(
            e["reason"] == "ModelVersionChanged"
            for e in env.kube.events(env.models_ns, name)), timeout=60)
        wait_for("HPA and PDB deleted", lambda: {o["kind"] for o in env.kube.list(
            ",".join(CHILDREN), env.models_ns, f"app.kubernetes.io/instance={name}")} ==
            {"Deployment", "Service", "NetworkPolicy"}, timeout=60)
    finally:
        op.stop()
        env.kube.run("delete", "md", name, "-n", env.models_ns, "--wait=false", check=False)
    log = op.log_path.read_text()
    # the message after the timestamp, whose milliseconds may read 403 too
    messages = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", line)
                for line in log.splitlines()]
    refused = [m for m in messages
               if re.search(r"\b403\b", m) or "forbidden" in m.lower()]
    assert not refused, "the operator was refused something:\n" + "\n".join(refused[:10])
    conds = md["status"]["conditions"]
    assert not any(c["type"] == "Degraded" and c["status"] == "True" for c in conds), conds


def test_guard_keeps_the_operator_out_of_unlabelled_namespaces(env: Env,
                                                               tmp_path: Path) -> None:
    """Cluster-wide RBAC lets the operator create Deployments in kube-system too; the
    ValidatingAdmissionPolicy from kustos.rbac.guard_manifests refuses its writes in every
    namespace without the opt-in label."""
    sa = "guarded"
    bind(env, sa, secret_namespaces=[env.models_ns])
    label = f"kustos-guard-{env.uid}"
    guard = rbac.guard_manifests(name=f"kustos-test-{env.uid}", sa_namespace=env.operator_ns,
                                 sa_name=sa, label=f"{label}=on")
    for obj in guard:
        obj["metadata"]["labels"]["kustos-rbac-test"] = env.uid
    env.kube.apply({"apiVersion": "v1", "kind": "List", "items": guard})
    env.kube.run("label", "namespace", env.models_ns, f"{label}=on")
    kc = token_kubeconfig(env, sa, tmp_path / "kubeconfig")
    message = f"writes only in namespaces labelled {label}=on"

    def as_operator(*args: str) -> Any:
        return env.kube.run("--kubeconfig", str(kc), *args, check=False)

    # RBAC allows this Deployment in kube-system; the policy (once the API server has
    # loaded it) refuses it. A server-side dry run: nothing is created either way.
    def refused_in_kube_system() -> bool:
        out = as_operator("create", "deployment", "probe", "--image=busybox", "-n",
                          "kube-system", "--dry-run=server")
        return out.returncode != 0 and message in out.stderr
    wait_for("the guard policy in force", refused_in_kube_system, timeout=60)
    out = as_operator("create", "serviceaccount", "probe", "-n", env.other_ns)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    out = as_operator("create", "serviceaccount", "probe", "-n", env.models_ns,
                      "--dry-run=server")
    assert out.returncode == 0, out.stderr

    op = Operator(kc)
    op.log_path = OPERATOR_LOGS / f"operator-rbac-{env.uid}-guard.log"
    inside = model_deployment("guarded-in", env.models_ns)
    del inside["spec"]["model"]["credentialsSecretRef"]
    outside = model_deployment("guarded-out", env.other_ns)
    del outside["spec"]["model"]["credentialsSecretRef"]
    env.kube.apply(inside)
    env.kube.apply(outside)
    op.start(namespaces=[env.models_ns, env.other_ns])
    try:
        wait_ready(env.kube, "guarded-in", env.models_ns, 1)

        def degraded() -> dict[str, Any] | None:
            cond = env.kube.condition("md", "guarded-out", env.other_ns, "Degraded")
            return cond if cond and cond["status"] == "True" else None
        cond = wait_for("guarded-out Degraded", degraded, timeout=60)
        assert cond["reason"] == "Forbidden" and message in cond["message"], cond
        assert not env.kube.list("deployments,serviceaccounts", env.other_ns,
                                 "app.kubernetes.io/instance=guarded-out")
        # Opting the namespace in is enough: the retried reconcile gets through.
        env.kube.run("label", "namespace", env.other_ns, f"{label}=on")
        wait_ready(env.kube, "guarded-out", env.other_ns, 1)
    finally:
        op.stop()
        env.kube.run("delete", "md", "guarded-in", "-n", env.models_ns, "--wait=false",
                     check=False)
        env.kube.run("delete", "md", "guarded-out", "-n", env.other_ns, "--wait=false",
                     check=False)
        env.kube.run("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                     "-l", f"kustos-rbac-test={env.uid}", check=False)
