"""The Grafana dashboard and the Prometheus rules use only metrics the code exports.

Exported names come from the prometheus_client registry after importing the metric
modules of the operator, of `kustos serve` and of the explainer sidecar. The drift
sidecar's modules import alibi-detect, which lives in an environment of its own (it pins
numpy < 2), so its metric definitions are read from its source instead. Every query is
parsed as PromQL (promql-parser, when installed), and every label a selector matches on
must be one the metric has or one Prometheus' Kubernetes service discovery adds.
promql-parser is optional (`pip install promql-parser`); without it the names are found
by a regex that a test shows agrees with the parser.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import prometheus_client
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
CHART_RULES = REPO / "charts" / "kustos" / "files" / "prometheus-rules.yaml"
PACKAGE = REPO / "operator" / "kustos"
# Importable in the main environment: the operator, kustos serve, the explainer sidecar.
METRIC_MODULES = ("kustos.metrics", "kustos.runtime.server.metrics")
IMPORTABLE_DIRS = ("runtime/explain", "vault")
SOURCE_ONLY_DIRS = ("runtime/drift", "runtime/truth")  # truth: metrics made per monitor
# The processes of one model pod: kustos serve and its two sidecars.
POD_PROCESS_DIRS = ("runtime/server", "runtime/explain", "runtime/drift")
# Labels the scrape adds (kubernetes_sd relabelling, PodMonitor/ServiceMonitor), plus le.
SCRAPE_LABELS = {"namespace", "pod", "container", "job", "instance", "service", "le"}
DRIFT_NAMES = {"kustos_drift_detected", "kustos_drift_p_value", "kustos_drift_distance",
               "kustos_drift_windows_total", "kustos_drift_inputs_dropped_total"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "gauge": ("",), "info": ("_info",),
            "enum": ("",)}
KIND_OF_CLASS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram",
                 "Summary": "summary", "Info": "info", "Enum": "enum"}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_monitoring",
                                                  MONITORING / "gen-monitoring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _add(out: dict[str, set[str]], base: str, kind: str, labels: set[str]) -> None:
    if kind == "counter" and base.endswith("_total"):
        base = base[: -len("_total")]
    for suffix in SUFFIXES[kind]:
        out.setdefault(base + suffix, set()).update(labels)


def _modules_under(rel: str) -> list[str]:
    root = PACKAGE / rel
    return sorted("kustos." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
                  for p in root.rglob("*.py") if "metrics" in p.read_text())


def _from_registry() -> dict[str, set[str]]:
    names = list(METRIC_MODULES)
    for rel in IMPORTABLE_DIRS:
        if (PACKAGE / rel).is_dir():
            names += _modules_under(rel)
    # The default registry, and any registry of its own a module keeps (the explainer's).
    registries = [prometheus_client.REGISTRY]
    for name in names:
        module = importlib.import_module(name)
        registries += [v for v in vars(module).values()
                       if isinstance(v, prometheus_client.CollectorRegistry)
                       and v is not prometheus_client.REGISTRY]
    out: dict[str, set[str]] = {}
    for registry in registries:
        for collector in list(registry._collector_to_names):  # no public way to list them
            labels = set(getattr(collector, "_labelnames", ()))
            describe = getattr(collector, "describe", None)
            for family in (describe() if describe else None) or collector.collect():
                _add(out, family.name, family.type, labels)
    return out


def _from_source(rel: str) -> dict[str, set[str]]:
    """Counter/Gauge/Histogram/... definitions in the source: name and label names."""
    out: dict[str, set[str]] = {}
    root = PACKAGE / rel
    for path in root.rglob("*.py") if root.is_dir() else ():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            cls = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if cls not in KIND_OF_CLASS or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            label_node = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "labelnames"), None)
            labels: set[str] = set()
            if isinstance(label_node, ast.List | ast.Tuple):
                labels = {e.value for e in label_node.elts
                          if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            _add(out, first.value, KIND_OF_CLASS[cls], labels)
    return out


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    out = _from_registry()
    out["up"] = set()  # Prometheus' own series of every scrape target (KustosModelServerDown)
    for rel in SOURCE_ONLY_DIRS:
        for name, labels in _from_source(rel).items():
            out.setdefault(name, set()).update(labels)
    return out


def rule_exprs(path: Path) -> list[tuple[str, str]]:
    doc = yaml.safe_load(path.read_text())
    groups = doc["spec"]["groups"] if "spec" in doc else doc["groups"]
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in groups for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    out += [(a["name"], a["expr"]) for a in dash["annotations"]["list"]]
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+), \w+\)", var.get("definition", ""))
        if m:
            out.append((var["name"], m.group(1)))
    return out


def grafana_free(expr: str) -> str:
    """A Grafana query with its variables replaced, as Grafana sends it."""
    return (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
            .replace("$namespace", ".*").replace("$model", ".*"))


def _selectors_by_regex(expr: str) -> list[tuple[str, set[str]]]:
    """Without promql-parser: every kustos_* name and the labels its {...} matches on."""
    found = []
    for m in re.finditer(r"\b(kustos_[a-z0-9_]+\b|up(?=\{))(\{([^}]*)\})?", expr):
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(3) or ""))
        found.append((m.group(1), labels))
    return found


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, labels it matches on) for every vector selector in ``expr``, from the
    PromQL parser when installed (it also proves the query parses), else by regex."""
    try:
        import promql_parser as parser
    except ImportError:
        return _selectors_by_regex(expr)
    found: list[tuple[str, set[str]]] = []

    def walk(node: Any) -> None:
        if type(node).__name__ == "VectorSelector":
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.append((node.name, labels))
            return
        for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None:
                walk(child)
        for child in getattr(node, "args", None) or ():
            walk(child)

    walk(parser.parse(expr))
    return found


def all_exprs() -> list[tuple[str, str]]:
    return ([("rules:" + n, e) for n, e in rule_exprs(MONITORING / "prometheus-rules.yaml")]
            + [("dashboard:" + n, grafana_free(e)) for n, e in dashboard_exprs()])


@pytest.mark.parametrize(("where", "expr"), all_exprs(), ids=lambda v: str(v)[:60])
def test_every_metric_and_label_is_exported(where: str, expr: str,
                                            exported: dict[str, set[str]]) -> None:
    found = selectors(expr)
    assert found, f"{where}: no metric in {expr}"
    for name, labels in found:
        assert name in exported, f"{where}: {name} is not exported by any Kustos metrics module"
        unknown = labels - exported[name] - SCRAPE_LABELS
        assert not unknown, f"{where}: {name} has no label(s) {sorted(unknown)}"


def test_regex_agrees_with_the_parser() -> None:
    """The regex fallback (used where promql-parser is not installed) finds what the
    parser finds, so the checks above mean the same either way."""
    pytest.importorskip("promql_parser", exc_type=ImportError)
    for _, expr in all_exprs():
        by_parser = sorted((n, sorted(labels)) for n, labels in selectors(expr))
        by_regex = sorted((n, sorted(labels)) for n, labels in _selectors_by_regex(expr))
        assert by_parser == by_regex, expr


def test_drift_sidecar_exports_the_agreed_names(exported: dict[str, set[str]]) -> None:
    missing = DRIFT_NAMES - set(exported)
    assert not missing, f"the drift sidecar does not define {sorted(missing)}"


def test_processes_of_a_pod_export_disjoint_names() -> None:
    """kustos serve, the explainer sidecar and the drift sidecar are scraped from one pod:
    a name two of them export (with different labels) would mix their series."""
    by_process = {rel: set(_from_source(rel)) for rel in POD_PROCESS_DIRS}
    assert "kustos_drift_handoff_dropped_total" in by_process["runtime/server"]
    assert "kustos_explain_forward_duration_seconds_bucket" in by_process["runtime/server"]
    assert "kustos_explain_duration_seconds_bucket" in by_process["runtime/explain"]
    assert "kustos_drift_inputs_dropped_total" in by_process["runtime/drift"]
    for i, a in enumerate(POD_PROCESS_DIRS):
        for b in POD_PROCESS_DIRS[i + 1:]:
            shared = by_process[a] & by_process[b]
            assert not shared, f"{a} and {b} both export {sorted(shared)}"


def test_dashboard_covers_what_operations_need() -> None:
    exprs = " ".join(e for _, e in dashboard_exprs())
    for name in ("kustos_requests_total", "kustos_request_duration_seconds_bucket",
                 "kustos_drift_p_value", "kustos_drift_detected",
                 "kustos_explain_duration_seconds_bucket",
                 "kustos_explain_forward_duration_seconds_bucket",
                 "kustos_drift_handoff_dropped_total", "kustos_drift_inputs_dropped_total",
                 "kustos_operator_reconciles_total",
                 "kustos_operator_reconcile_errors_total"):
        assert name in exprs, name


def test_dashboard_is_a_grafana_dashboard() -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "namespace",
                                                               "model"}


def test_rules_are_a_prometheus_rule_with_the_agreed_alerts() -> None:
    rule = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = {}
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["severity"] in {"critical", "warning", "info"}
            assert r["annotations"]["summary"] and r["annotations"]["description"]
            assert re.fullmatch(r"\d+[smh]", r["for"])
            alerts[r["alert"]] = r
    assert {"KustosModelNotReady", "KustosDriftDetected", "KustosModelErrorRateHigh",
            "KustosSecretSyncFailing", "KustosOperatorReconcileErrors"} <= set(alerts)


def test_generated_files_are_current() -> None:
    gen = _load_generator()
    assert (MONITORING / "grafana-dashboard.json").read_text() == gen.dashboard_json(), \
        "run .venv/bin/python manifests/monitoring/gen-monitoring.py"
    assert CHART_RULES.read_text() == gen.chart_rules(), \
        "run .venv/bin/python manifests/monitoring/gen-monitoring.py"
    chart = yaml.safe_load(CHART_RULES.read_text())
    rule = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    assert chart["groups"] == rule["spec"]["groups"]


def test_operations_doc_lists_every_metric(exported: dict[str, set[str]]) -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    for name in exported:
        if not name.startswith("kustos_"):
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"`{name}`" in doc or f"`{base}`" in doc, f"docs/operations.md lacks {name}"


def test_secret_sync_alert_matches_the_reasons_vault_code_raises() -> None:
    """The operator counts a failed first Vault sync in reconcile_errors_total with the
    VaultError's reason; the alert must name exactly the reasons the code has."""
    rules = dict(rule_exprs(MONITORING / "prometheus-rules.yaml"))
    m = re.search(r'reason=~"([^"]+)"', rules["KustosSecretSyncFailing"])
    assert m is not None
    alerted = set(m.group(1).split("|"))
    client = (PACKAGE / "vault" / "client.py").read_text()
    controller = (PACKAGE / "controllers" / "vault.py").read_text()
    raised = set(re.findall(r'^[A-Z_]+ = "([A-Z][A-Za-z]+)"$', client, re.M))
    raised |= set(re.findall(r'VaultError\("([A-Z][A-Za-z]+)"', controller))
    # NameConflict is the ModelDeployment reconcile's reason too: not a Vault signal.
    raised.discard("NameConflict")
    assert alerted == raised, f"alert {sorted(alerted)} vs code {sorted(raised)}"


def test_the_operator_exports_no_created_series() -> None:
    from prometheus_client import REGISTRY, generate_latest

    from kustos import metrics

    metrics.RECONCILES.labels(kind="ModelDeployment", result="ok").inc()
    text = generate_latest(REGISTRY).decode()
    assert "kustos_operator_reconciles_total{" in text
    assert "_created" not in text
