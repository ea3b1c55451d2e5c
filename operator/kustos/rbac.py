"""The operator's RBAC rules: the one place they live.

The Helm chart reads them from ``charts/kustos/files/rbac-rules.yaml``, which this module
writes (``python -m kustos.rbac --write charts/kustos/files/rbac-rules.yaml``; a unit test
fails when the file is stale). ``python -m kustos.rbac --manifests ...`` prints complete
ClusterRole/Role/binding objects for installs without Helm, and the integration tests
bind exactly those to a ServiceAccount and run the real operator as it.

Two modes, as ``kustos run`` has them:

- cluster-wide (``--all-namespaces``): a ClusterRole bound by a ClusterRoleBinding, for
  everything but Secrets. Secret access is a second ClusterRole, bound by a RoleBinding in
  each namespace that hosts models (or cluster-wide, if the installer says so), so that
  the operator cannot read kube-system's Secrets by default.
- namespaced (``--namespace NS``...): a Role + RoleBinding in each watched namespace, plus
  a small ClusterRole for what is cluster-scoped (CRDs, namespaces for kopf's globs,
  GovernancePolicies, the webhook configuration).

Every rule says why it exists. Rules marked ``pending`` were put in for parts that other
work adds (Vault sync, ExplainerSpec/DriftMonitor, governance); drop or narrow them if
the code ends up not using them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUP = "kustos.dev"
RBAC_API = "rbac.authorization.k8s.io/v1"
# The children a ModelDeployment's reconcile server-side applies: listed and watched by
# label (kopf indexes them, controllers/indexes.py), read by name for the name-conflict
# check, applied (an apply that creates needs create too), deleted with a uid
# precondition when no longer rendered.
CHILD_VERBS = ("get", "list", "watch", "create", "patch", "delete")


@dataclass(frozen=True)
class Rule:
    """One PolicyRule with the reason it exists."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    # Which part of Kustos needs it; "pending: ..." for parts still being written.
    needed_by: str = "operator"
    resource_names: tuple[str, ...] = ()

    def manifest(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"apiGroups": list(self.api_groups),
                                "resources": list(self.resources), "verbs": list(self.verbs)}
        if self.resource_names:
            rule["resourceNames"] = list(self.resource_names)
        return rule


# --- In the namespaces where ModelDeployments live (every namespace when cluster-wide) ---
WORKLOAD_RULES: tuple[Rule, ...] = (
    Rule((GROUP,), ("modeldeployments",), ("get", "list", "watch", "patch"),
         "kopf watches ModelDeployments and keeps a failing handler's retries in their "
         "annotations; "
         "the status write re-reads the object"),
    Rule((GROUP,), ("modeldeployments/status",), ("patch",),
         "each concern server-side applies its part of the status subresource"),
    Rule(("apps",), ("deployments",), CHILD_VERBS,
         "the serving Deployments (stable and canary); watched for the status"),
    Rule(("",), ("serviceaccounts", "services"), CHILD_VERBS,
         "a Service per ModelDeployment, and a ServiceAccount (no token mounted) for one "
         "that logs in to Vault or fetches from S3 with webIdentity"),
    Rule(("autoscaling",), ("horizontalpodautoscalers",), CHILD_VERBS,
         "the HPA when spec.autoscaling is set"),
    Rule(("keda.sh",), ("scaledobjects",), CHILD_VERBS,
         "the KEDA ScaledObject instead of the HPA for a requests/s target when the operator "
         "config says autoscaling.requests_backend: keda (watched only then)"),
    Rule(("policy",), ("poddisruptionbudgets",), CHILD_VERBS,
         "the PodDisruptionBudget when there is more than one replica"),
    Rule(("gateway.networking.k8s.io",), ("httproutes",), CHILD_VERBS,
         "the HTTPRoute of a ModelDeployment with spec.gateway, when the cluster serves the "
         "Gateway API (watched only then)"),
    Rule(("networking.k8s.io",), ("networkpolicies",), CHILD_VERBS,
         "the NetworkPolicy of each ModelDeployment's pods"),
    Rule(("",), ("events",), ("create",),
         "Events on real changes (kustos.k8s.events; kopf's own posting is off)"),
    Rule((GROUP,), ("explainerspecs", "driftmonitors"), ("get", "list", "watch", "patch"),
         "kopf watches ExplainerSpecs and DriftMonitors (annotations)",
         "pending: ExplainerSpec/DriftMonitor controllers"),
    Rule((GROUP,), ("explainerspecs/status", "driftmonitors/status"), ("patch",),
         "their status", "pending: ExplainerSpec/DriftMonitor controllers"),
    Rule(("",), ("configmaps",), CHILD_VERBS,
         "an ExplainerSpec's report ConfigMap (a child, synced like a ModelDeployment's)",
         "pending: ExplainerSpec"),
    Rule(("batch",), ("jobs",), ("list", "create"),
         "a DriftMonitor's retraining Job", "pending: DriftMonitor"),
    Rule(("",), ("persistentvolumeclaims",), ("get", "create", "patch"),
         "the ground-truth monitor's store when spec.groundTruth.storage.size is set (read "
         "by name, applied; never deleted by the operator: it goes with its DriftMonitor)"),
    Rule((GROUP,), ("batchinferences",), ("get", "list", "watch", "patch"),
         "kopf watches BatchInferences (a retried reconcile's backoff in annotations); the "
         "status write re-reads the object"),
    Rule((GROUP,), ("batchinferences/status",), ("patch",),
         "a BatchInference's status, from its Job and the Job's pods"),
    Rule(("batch",), ("jobs",), ("get", "create", "patch"),
         "a BatchInference's indexed Job: read by name, created by a server-side apply (a "
         "PATCH that creates, so create too); the spec is immutable, so it is never changed "
         "after"),
    Rule(("",), ("pods",), ("list", "watch"),
         "pod IPs, to read the sidecars' status endpoints; the serving pods' container "
         "states, to say why a rollout is stuck (watch filtered by label)"),
)

# --- Secrets: their own ClusterRole/Role, bound only where models live ---
SECRET_RULES: tuple[Rule, ...] = (
    Rule(("",), ("secrets",), ("get",),
         "spec.model.credentialsSecretRef must exist before the pods can start; "
         "spec.model.registry.credentialsSecretRef holds the model registry's token or "
         "password, read on each poll (a get by name: no list or watch, so Secrets are "
         "never read in bulk)"),
    Rule(("",), ("secrets",), ("create", "patch", "delete"),
         "Vault sync applies and deletes the Secrets it owns", "pending: Vault sync"),
    Rule(("",), ("serviceaccounts/token",), ("create",),
         "a token of the model's ServiceAccount to log in to Vault", "pending: Vault sync"),
)

# --- Cluster-scoped, in both modes ---
CLUSTER_RULES: tuple[Rule, ...] = (
    Rule(("apiextensions.k8s.io",), ("customresourcedefinitions",), ("list", "watch"),
         "kopf notices CRDs added or removed (read-only; without it kopf only warns)"),
    Rule((GROUP,), ("governancepolicies",), ("get", "list", "watch"),
         "kopf indexes the (cluster-scoped) GovernancePolicies; the webhook reads them",
         "pending: governance"),
    Rule((GROUP,), ("governancepolicies/status",), ("patch",),
         "a GovernancePolicy's status", "pending: governance"),
    Rule(("",), ("namespaces",), ("get", "list", "watch"),
         "policies select namespaces by label: kopf indexes namespaces, the webhook reads one",
         "pending: governance"),
)

# --- Cluster-scoped, namespaced mode only ---
NAMESPACED_MODE_CLUSTER_RULES: tuple[Rule, ...] = (
    Rule(("",), ("namespaces",), ("list", "watch"),
         "kopf resolves --namespace globs and notices namespaces that appear"),
)

# --- The admission webhook's certificate, kept by the operator (`kustos run --webhook-secret
# --webhook-inject-ca`, the chart's default). The names are placeholders the chart (and
# manifests()) replace with the installation's Secret and ValidatingWebhookConfiguration.
WEBHOOK_SECRET = "<webhook-secret>"
WEBHOOK_CONFIGURATION = "<webhook-configuration>"
# A Role in the operator's own namespace.
WEBHOOK_SECRET_RULES: tuple[Rule, ...] = (
    Rule(("",), ("secrets",), ("get", "patch"),
         "the webhook's serving certificate: read at start and every 30 s, renewed (patched "
         "with a resourceVersion precondition) before it expires; that one Secret only",
         resource_names=(WEBHOOK_SECRET,)),
    Rule(("",), ("secrets",), ("create",),
         "the certificate's Secret is created when absent; a create cannot be narrowed by "
         "resourceNames (the name is not known to authorization), so this Role is bound in "
         "the operator's namespace only"),
)
# A ClusterRole: the configuration is cluster-scoped.
WEBHOOK_CONFIGURATION_RULES: tuple[Rule, ...] = (
    Rule(("admissionregistration.k8s.io",), ("validatingwebhookconfigurations",),
         ("get", "patch"),
         "the installation's webhook configuration: its caBundle kept equal to the "
         "certificate's CA (a server-side apply of that field); that one configuration only",
         resource_names=(WEBHOOK_CONFIGURATION,)),
)
# Not in the chart: `kustos run --webhook-configuration` registers a configuration of its
# own (the local control plane, `make dev` without the chart).
WEBHOOK_SELF_REGISTRATION = Rule(
    ("admissionregistration.k8s.io",), ("validatingwebhookconfigurations",), ("create", "patch"),
    "`kustos run --webhook-configuration` applies a webhook configuration of its own; an "
    "apply that creates cannot be narrowed by resourceNames (not used by the chart)")

PEERING_CLUSTER = Rule(("kopf.dev",), ("clusterkopfpeerings",), ("get", "list", "watch", "patch"),
                       "kopf peering (only with `kustos run --peering`), cluster-wide")
PEERING_NAMESPACED = Rule(("kopf.dev",), ("kopfpeerings",), ("get", "list", "watch", "patch"),
                          "kopf peering (only with `kustos run --peering`), per namespace")


def rule_sets() -> dict[str, dict[str, tuple[Rule, ...]]]:
    """Every rule set by mode; the file the chart reads has exactly this shape."""
    return {
        "clusterWide": {
            # ClusterRole + ClusterRoleBinding.
            "clusterRole": CLUSTER_RULES + WORKLOAD_RULES,
            # ClusterRole "<name>-secrets": a RoleBinding per namespace that hosts models
            # (or a ClusterRoleBinding when the installer opts in).
            "secrets": SECRET_RULES,
            # Appended to clusterRole when peering is on.
            "peering": (PEERING_CLUSTER,),
        },
        "namespaced": {
            # ClusterRole + ClusterRoleBinding: the cluster-scoped minimum.
            "clusterRole": CLUSTER_RULES + NAMESPACED_MODE_CLUSTER_RULES,
            # Role + RoleBinding in each watched namespace.
            "role": WORKLOAD_RULES + SECRET_RULES,
            # Appended to role when peering is on.
            "peering": (PEERING_NAMESPACED,),
        },
        "webhook": {
            # Role + RoleBinding <name>-webhook in the operator's namespace (either mode).
            "role": WEBHOOK_SECRET_RULES,
            # ClusterRole + ClusterRoleBinding <name>-webhook.
            "clusterRole": WEBHOOK_CONFIGURATION_RULES,
            # Only for `kustos run --webhook-configuration`; the chart never binds it.
            "selfRegistration": (WEBHOOK_SELF_REGISTRATION,),
        },
    }


def _flow(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) if v in ("", "*") else v for v in values) + "]"


def _rule_yaml(rule: Rule, indent: str) -> list[str]:
    tag = "" if rule.needed_by == "operator" else f" [{rule.needed_by}]"
    lines = [f"{indent}# {rule.why}{tag}",
             f"{indent}- apiGroups: {_flow(rule.api_groups)}",
             f"{indent}  resources: {_flow(rule.resources)}",
             f"{indent}  verbs: {_flow(rule.verbs)}"]
    if rule.resource_names:
        lines.append(f"{indent}  resourceNames: {_flow(rule.resource_names)}")
    return lines


def rules_yaml() -> str:
    """The rule sets as commented YAML (the chart's files/rbac-rules.yaml)."""
    lines = ["# Generated by `python -m kustos.rbac --write charts/kustos/files/rbac-rules.yaml`"
             " from operator/kustos/rbac.py. Do not edit by hand.",
             "# Rules tagged [pending: ...] are for parts still being built.",
             "#",
             "# clusterWide.clusterRole  ClusterRole + ClusterRoleBinding",
             "# clusterWide.secrets      ClusterRole <name>-secrets, bound by a RoleBinding in"
             " each namespace that hosts models",
             "#                          (or by a ClusterRoleBinding if the installer opts in)",
             "# namespaced.clusterRole   ClusterRole + ClusterRoleBinding (cluster-scoped"
             " minimum)",
             "# namespaced.role          Role + RoleBinding in each watched namespace",
             "# */peering                appended to clusterRole / role with `kustos run"
             " --peering`",
             "# webhook.role             Role + RoleBinding <name>-webhook in the operator's"
             " namespace, and",
             "# webhook.clusterRole      ClusterRole + ClusterRoleBinding <name>-webhook, when"
             " the operator keeps the",
             "#                          webhook certificate (`kustos run --webhook-secret"
             " --webhook-inject-ca`);",
             f"#                          {WEBHOOK_SECRET} and {WEBHOOK_CONFIGURATION} stand"
             " for the installation's names",
             "# webhook.selfRegistration only for `kustos run --webhook-configuration` (not"
             " bound by the chart)"]
    for mode, sets in rule_sets().items():
        lines.append(f"{mode}:")
        for key, rules in sets.items():
            lines.append(f"  {key}:")
            for rule in rules:
                lines += _rule_yaml(rule, "    ")
    return "\n".join(lines) + "\n"


DOC_BEGIN = "<!-- rbac-rules:begin (generated by python -m kustos.rbac --docs) -->"
DOC_END = "<!-- rbac-rules:end -->"


def rules_markdown() -> str:
    """The rule sets as Markdown tables, for docs/security.md."""
    titles = {("clusterWide", "clusterRole"): "Cluster-wide mode: ClusterRole",
              ("clusterWide", "secrets"): "Cluster-wide mode: Secrets ClusterRole "
                                          "(bound per namespace)",
              ("clusterWide", "peering"): "Cluster-wide mode: with --peering",
              ("namespaced", "clusterRole"): "Namespaced mode: ClusterRole",
              ("namespaced", "role"): "Namespaced mode: Role in each watched namespace",
              ("namespaced", "peering"): "Namespaced mode: with --peering, in each Role",
              ("webhook", "role"): "Webhook certificate kept by the operator: Role in its "
                                   "namespace",
              ("webhook", "clusterRole"): "Webhook certificate kept by the operator: "
                                          "ClusterRole",
              ("webhook", "selfRegistration"): "Only with `kustos run "
                                               "--webhook-configuration` (not in the chart)"}
    out: list[str] = []
    for mode, sets in rule_sets().items():
        for key, rules in sets.items():
            out += [f"**{titles[(mode, key)]}**", "",
                    "| API group | resources | verbs | why | needed by |", "|---|---|---|---|---|"]
            for r in rules:
                groups = ", ".join(g or "core" for g in r.api_groups)
                names = (f" ({', '.join(f'`{n}`' for n in r.resource_names)} only)"
                         if r.resource_names else "")
                out.append(f"| {groups} | {', '.join(r.resources)}{names} | "
                           f"{', '.join(r.verbs)} | {r.why.replace('|', '/')} | "
                           f"{r.needed_by} |")
            out.append("")
    return "\n".join(out)


def with_docs(text: str) -> str:
    """``text`` (docs/security.md) with the block between the markers regenerated."""
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    if not rest:
        raise ValueError(f"no {DOC_BEGIN!r} marker")
    return f"{head}{DOC_BEGIN}\n{rules_markdown()}{DOC_END}{tail}"


def _rules(rules: Iterable[Rule], names: Mapping[str, str] | None = None,
           ) -> list[dict[str, Any]]:
    out = [r.manifest() for r in rules]
    for rule in out:
        if names and "resourceNames" in rule:
            rule["resourceNames"] = [names.get(n, n) for n in rule["resourceNames"]]
    return out


def _subject(sa_namespace: str, sa_name: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}


def _binding(kind: str, name: str, role_kind: str, role: str, subject: dict[str, str],
             namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "kustos"}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": RBAC_API, "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                        "name": role},
            "subjects": [subject]}


def _role(kind: str, name: str, rules: Iterable[Rule], namespace: str | None = None,
          names: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "kustos"}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": RBAC_API, "kind": kind, "metadata": meta,
            "rules": _rules(rules, names)}


@dataclass(frozen=True)
class WebhookCertificate:
    """Where the operator keeps the webhook certificate (`kustos run --webhook-secret`)."""

    namespace: str  # the operator's
    secret: str
    configuration: str  # the ValidatingWebhookConfiguration whose caBundle it keeps


def webhook_manifests(name: str, subject: dict[str, str], cert: WebhookCertificate | None,
                      self_registration: bool = False) -> list[dict[str, Any]]:
    """The Role/ClusterRole (and bindings) ``<name>-webhook`` of the webhook certificate
    and, with ``self_registration``, of `kustos run --webhook-configuration`."""
    sets = rule_sets()["webhook"]
    names = ({WEBHOOK_SECRET: cert.secret, WEBHOOK_CONFIGURATION: cert.configuration}
             if cert else {})
    role = f"{name}-webhook"
    out: list[dict[str, Any]] = []
    if cert:
        out += [_role("Role", role, sets["role"], cert.namespace, names),
                _binding("RoleBinding", role, "Role", role, subject, cert.namespace)]
    cluster_rules = (sets["clusterRole"] if cert else ()) + (
        sets["selfRegistration"] if self_registration else ())
    if cluster_rules:
        out += [_role("ClusterRole", role, cluster_rules, names=names),
                _binding("ClusterRoleBinding", role, "ClusterRole", role, subject)]
    return out


def manifests(*, name: str, sa_namespace: str, sa_name: str,
              namespaces: Sequence[str] = (), secret_namespaces: Sequence[str] = (),
              secrets_all_namespaces: bool = False,
              peering: bool = False, webhook: WebhookCertificate | None = None,
              webhook_self_registration: bool = False) -> list[dict[str, Any]]:
    """Complete RBAC objects for the operator's ServiceAccount.

    Without ``namespaces``: cluster-wide mode; the Secret rules are bound in
    ``secret_namespaces`` only (or everywhere with ``secrets_all_namespaces``). With
    ``namespaces``: namespaced mode, a Role + RoleBinding in each. Either way ``webhook``
    adds the rules of the operator-kept webhook certificate (``<name>-webhook``).
    """
    sets = rule_sets()
    subject = _subject(sa_namespace, sa_name)
    out: list[dict[str, Any]] = webhook_manifests(name, subject, webhook,
                                                  webhook_self_registration)
    if not namespaces:
        cw = sets["clusterWide"]
        rules = cw["clusterRole"] + (cw["peering"] if peering else ())
        out += [_role("ClusterRole", name, rules),
                _binding("ClusterRoleBinding", name, "ClusterRole", name, subject),
                _role("ClusterRole", f"{name}-secrets", cw["secrets"])]
        if secrets_all_namespaces:
            out.append(_binding("ClusterRoleBinding", f"{name}-secrets", "ClusterRole",
                                f"{name}-secrets", subject))
        else:
            out += [_binding("RoleBinding", f"{name}-secrets", "ClusterRole", f"{name}-secrets",
                             subject, ns) for ns in secret_namespaces]
        return out
    nm = sets["namespaced"]
    out += [_role("ClusterRole", name, nm["clusterRole"]),
            _binding("ClusterRoleBinding", name, "ClusterRole", name, subject)]
    role_rules = nm["role"] + (nm["peering"] if peering else ())
    for ns in namespaces:
        out += [_role("Role", name, role_rules, ns),
                _binding("RoleBinding", name, "Role", name, subject, ns)]
    return out


def guard_manifests(*, name: str, sa_namespace: str, sa_name: str,
                    label: str) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy that refuses the operator's writes in namespaces without
    ``label`` (KEY=VALUE), for cluster-wide mode: RBAC cannot say "every namespace but
    kube-system", and a Deployment can use any ServiceAccount and Secret of its namespace.

    Only requests by the operator's ServiceAccount are judged. Events and Kustos' own
    resources stay writable everywhere, so that a ModelDeployment in an unlabelled
    namespace is reported Degraded (with this policy's message) instead of ignored.
    """
    key, sep, value = label.partition("=")
    if not key or not sep:
        raise ValueError(f"guard label must be KEY=VALUE, not {label!r}")
    user = f"system:serviceaccount:{sa_namespace}:{sa_name}"
    policy = f"{name}-namespace-guard"
    meta = {"labels": {"app.kubernetes.io/part-of": "kustos"}}
    api = "admissionregistration.k8s.io/v1"
    return [
        {"apiVersion": api, "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": policy, **meta},
         "spec": {
             "failurePolicy": "Fail",
             "matchConstraints": {"resourceRules": [{
                 "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"],
                 "operations": ["CREATE", "UPDATE", "DELETE"], "scope": "Namespaced"}]},
             "matchConditions": [
                 {"name": "operator", "expression": f"request.userInfo.username == '{user}'"},
                 {"name": "not-kustos-or-events", "expression":
                     f"request.resource.group != '{GROUP}' && !(request.resource.group == ''"
                     " && request.resource.resource == 'events')"},
             ],
             "validations": [{
                 "expression": "false",
                 # 403, not the default 422: the reconcile retries with backoff and
                 # recovers by itself once the namespace is labelled.
                 "reason": "Forbidden",
                 "message": f"the Kustos operator writes only in namespaces labelled {label}",
             }],
         }},
        {"apiVersion": api, "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": policy, **meta},
         "spec": {"policyName": policy, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchExpressions": [
                      {"key": key, "operator": "NotIn", "values": [value]}]}}}},
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kustos.rbac",
        description="Print or write the Kustos operator's RBAC rules.")
    p.add_argument("--write", metavar="PATH",
                   help="write the rule sets YAML (the chart's files/rbac-rules.yaml) to PATH")
    p.add_argument("--manifests", action="store_true",
                   help="print ClusterRole/Role and binding objects instead of the rule sets")
    p.add_argument("--name", default="kustos", help="name of the roles and bindings")
    p.add_argument("--service-account", default="kustos", help="the operator's ServiceAccount")
    p.add_argument("--service-account-namespace", default="kustos-system")
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="namespaced mode: a Role in this namespace (repeatable)")
    p.add_argument("--secret-namespace", action="append", default=[],
                   help="cluster-wide mode: bind the Secret rules in this namespace (repeatable)")
    p.add_argument("--secrets-all-namespaces", action="store_true",
                   help="cluster-wide mode: bind the Secret rules in every namespace")
    p.add_argument("--peering", action="store_true", help="add kopf peering rules")
    p.add_argument("--webhook-secret", metavar="NAME",
                   help="the operator keeps the webhook certificate in Secret NAME of "
                        "--service-account-namespace (kustos run --webhook-secret)")
    p.add_argument("--webhook-inject-ca", metavar="NAME",
                   help="... and the caBundle of ValidatingWebhookConfiguration NAME")
    p.add_argument("--webhook-self-registration", action="store_true",
                   help="rules for kustos run --webhook-configuration")
    p.add_argument("--guard-label", metavar="KEY=VALUE",
                   help="cluster-wide mode: also print a ValidatingAdmissionPolicy that "
                        "refuses the operator's writes in namespaces without this label")
    p.add_argument("--docs", metavar="PATH",
                   help="regenerate the rules tables in PATH (docs/security.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.manifests:
        import yaml

        objs = manifests(name=args.name, sa_namespace=args.service_account_namespace,
                         sa_name=args.service_account, namespaces=args.namespace,
                         secret_namespaces=args.secret_namespace,
                         secrets_all_namespaces=args.secrets_all_namespaces,
                         peering=args.peering, webhook_self_registration=(
                             args.webhook_self_registration),
                         webhook=WebhookCertificate(
                             args.service_account_namespace, args.webhook_secret,
                             args.webhook_inject_ca or "kustos-webhook")
                         if args.webhook_secret else None)
        if args.guard_label:
            objs += guard_manifests(name=args.name, sa_namespace=args.service_account_namespace,
                                    sa_name=args.service_account, label=args.guard_label)
        sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
        return 0
    if args.docs:
        doc = Path(args.docs)
        doc.write_text(with_docs(doc.read_text()))
        return 0
    text = rules_yaml()
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
