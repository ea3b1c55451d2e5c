"""Write grafana-dashboard.json and the chart's copy of the alert rules:

    .venv/bin/python manifests/monitoring/gen-monitoring.py

The dashboard is built here rather than edited in Grafana so every query stays reviewable;
tests/unit/test_monitoring.py fails when the files are stale or use a metric the code
does not export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART_RULES = REPO / "charts" / "kustos" / "files" / "prometheus-rules.yaml"

PREDICT = 'endpoint=~"v2_infer|v1_predict|seldon_predictions"'
EXPLAIN = 'endpoint=~"v1_explain|v2_explain"'
SEL = 'namespace=~"$namespace", model=~"$model"'
RATE = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}


class Layout:
    """Panels left to right, 24 grid columns wide, rows stacked."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def panel(self, title: str, targets: list[tuple[str, str]], *, unit: str = "short",
              kind: str = "timeseries", width: int = 8, description: str = "",
              extra: dict[str, Any] | None = None) -> None:
        if self.x + width > 24:
            self.y += 8
            self.x = 0
        panel: dict[str, Any] = {
            "type": kind, "title": title, "id": self._id(), "datasource": DS,
            "description": description,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                         "legendFormat": legend} for i, (expr, legend) in enumerate(targets)],
        }
        if extra:
            panel.update(extra)
        self.panels.append(panel)
        self.x += width

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def quantiles(metric: str, selector: str, by: str) -> list[tuple[str, str]]:
    legend = " ".join("{{" + label.strip() + "}}" for label in by.split(","))
    return [(f"histogram_quantile({q}, sum by ({by}, le) "
             f"(rate({metric}_bucket{{{selector}}}[{RATE}])))", f"p{int(q * 100)} {legend}")
            for q in (0.5, 0.9, 0.99)]


def share(codes: str) -> str:
    """Share of predictions answered with ``codes``. A model that never answered such a
    code has no series of it: ``or 0 * total`` makes that 0 rather than no data, so a
    healthy model draws a flat line instead of Grafana's "No data"."""
    total = f"sum by (namespace, model) (rate(kustos_requests_total{{{PREDICT}, {SEL}}}[{RATE}]))"
    part = (f"sum by (namespace, model) (rate(kustos_requests_total{{{PREDICT}, {SEL}, "
            f'code=~"{codes}"}}[{RATE}]))')
    return f"({part} or 0 * {total}) / {total}"


def dashboard() -> dict[str, Any]:
    lay = Layout()
    lay.row("Serving")
    lay.panel("Prediction requests/s by model", [(
        f"sum by (namespace, model) (rate(kustos_requests_total{{{PREDICT}, {SEL}}}[{RATE}]))",
        "{{namespace}}/{{model}}")], unit="reqps",
        description="V2 infer, V1 predict and Seldon predictions answered, any status.")
    lay.panel("Prediction latency (p50, p90, p99)", quantiles(
        "kustos_request_duration_seconds", f"{PREDICT}, {SEL}", "model"), unit="s",
        description="From request parsed to response written, in kustos serve.")
    lay.panel("Error rate by model (5xx share)", [
        (share("5.."), "5xx {{model}}"), (share("4.."), "4xx {{model}}")],
        unit="percentunit",
        description="4xx are malformed requests (the client's fault); 5xx are the server's.")
    lay.panel("Requests in flight", [(
        f"sum by (namespace, model) (kustos_inflight_requests{{{SEL}}})", "{{model}}")])
    lay.panel("Model ready (per version)", [(
        f"min by (namespace, model, version) (kustos_model_ready{{{SEL}}})",
        "{{model}} v{{version}}")], extra={"fieldConfig": {
            "defaults": {"unit": "short", "min": 0, "max": 1}, "overrides": []}},
        description="1 when every serving process has its model loaded and warmed up.")
    lay.panel("Model load time", [(
        f"max by (namespace, model, version) (kustos_model_load_seconds{{{SEL}}})",
        "{{model}} v{{version}}")], unit="s",
        description="Seconds to load, verify and warm up the model, per version.")
    lay.panel("Predictions/s by class", [(
        f"sum by (model, class) (rate(kustos_predictions_total{{{SEL}}}[{RATE}]))",
        "{{model}} {{class}}")], unit="short",
        description="Rows predicted by predicted class: a shift here is output drift.")
    lay.panel("Rows per model call (micro-batching)", quantiles(
        "kustos_batch_rows", SEL, "model"), unit="short")
    lay.panel("Requests/s by endpoint and code", [(
        f"sum by (endpoint, code) (rate(kustos_requests_total{{{SEL}}}[{RATE}]))",
        "{{endpoint}} {{code}}")], unit="reqps")

    lay.row("Drift")
    lay.panel("Drift detected", [(
        f"max by (namespace, model) (kustos_drift_detected{{{SEL}}})",
        "{{namespace}}/{{model}}")], kind="state-timeline", width=12,
        description="1 while the latest window differs from the reference data: each band "
                    "is a drift episode.")
    lay.panel("Drift p-value by feature", [(
        f"min by (namespace, model, feature) (kustos_drift_p_value{{{SEL}}})",
        "{{model}} {{feature}}")], width=12, extra={"fieldConfig": {
            "defaults": {"unit": "short", "min": 0, "max": 1}, "overrides": []}},
        description="Per-feature p-value of the latest window (feature \"*\": mmd's "
                    "whole-window test); below the DriftMonitor's pValue counts as drift.")
    lay.panel("Drift episodes started", [(
        f"sum by (namespace, model) (increase(kustos_drift_episodes_total{{{SEL}}}[$__range]))",
        "{{namespace}}/{{model}}")], kind="stat",
        description="Drift episodes that started in the selected time range.")
    lay.panel("Drift distance", [(
        f"max by (namespace, model) (kustos_drift_distance{{{SEL}}})", "{{model}}"),
        (f"max by (namespace, model, feature) (kustos_drift_feature_distance{{{SEL}}})",
         "{{model}} {{feature}}")],
        description="Test statistic of the latest window: overall (mmd's MMD^2, else the "
                    "largest per-feature statistic) and per feature.")
    lay.panel("Drift windows tested/min", [(
        f"sum by (namespace, model) (rate(kustos_drift_windows_total{{{SEL}}}[{RATE}])) * 60",
        "{{namespace}}/{{model}}")], unit="short")
    lay.panel("Window evaluation time (p50, p99)", [
        q for q in quantiles("kustos_drift_evaluation_seconds", SEL, "model")
        if not q[1].startswith("p90")], unit="s")
    lay.panel("Inputs dropped before the drift test/s", [
        (f"sum by (namespace, model, reason) (rate(kustos_drift_handoff_dropped_total"
         f"{{{SEL}}}[{RATE}]))", "{{model}} not sent: {{reason}}"),
        (f"sum by (namespace, model) (rate(kustos_drift_inputs_dropped_total"
         f"{{{SEL}}}[{RATE}]))", "{{model}} not tested (sidecar behind)"),
        (f"sum by (namespace, model) (rate(kustos_drift_handoff_sent_total{{{SEL}}}[{RATE}]))",
         "{{model}} sent")], unit="reqps", width=12,
        description="kustos serve counts requests it could not hand to the sidecar, by "
                    "reason (kustos_drift_handoff_dropped_total); the sidecar counts rows "
                    "it dropped because evaluation fell behind "
                    "(kustos_drift_inputs_dropped_total).")
    lay.panel("Drift sidecar ready, rows in the open window", [
        (f"min by (namespace, model) (kustos_drift_ready{{{SEL}}})", "{{model}} ready"),
        (f"sum by (namespace, model) (kustos_drift_window_rows{{{SEL}}})", "{{model}} rows"),
        (f"sum by (namespace, model) (rate(kustos_drift_inputs_total{{{SEL}}}[{RATE}]))",
         "{{model}} rows/s accepted")], width=12)

    lay.row("Ground truth and fairness")
    lay.panel("Label-joined metrics by version", [(
        f"max by (model, version, metric) (kustos_truth_metric{{{SEL}}})",
        "{{model}} {{version}} {{metric}}")], unit="short",
        description="Accuracy, F1, ROC AUC, log loss, MAE/RMSE of each model version over "
                    "the DriftMonitor's groundTruth window (docs/ground-truth.md).")
    lay.panel("Label coverage", [(
        f"min by (model, version) (kustos_truth_label_coverage{{{SEL}}})",
        "{{model}} {{version}}")], unit="percentunit",
        description="Share of the window's predictions that have a label.")
    lay.panel("Label delay (p50, p90, p99)", quantiles(
        "kustos_truth_label_delay_seconds", SEL, "model"), unit="s",
        description="Time from a prediction to its label.")
    lay.panel("Fairness gaps", [(
        f"max by (model, version, feature, metric) (kustos_fairness_gap{{{SEL}}})",
        "{{model}} {{version}} {{feature}} {{metric}}")], unit="short",
        description="Demographic parity difference, equalized odds difference and accuracy "
                    "gap between the slices of each sensitive feature.")
    lay.panel("Thresholds crossed", [(
        f"max by (model, kind) (kustos_truth_violations{{{SEL}}})", "{{model}} {{kind}}")],
        unit="short", description="Performance and fairness thresholds crossed at the last "
                                  "evaluation (PerformanceDegraded, FairnessViolated).")
    lay.panel("Events and labels received/s", [
        ('sum by (type, outcome) (rate(kustos_truth_events_total{namespace=~"$namespace"}'
         f"[{RATE}]))", "event {{type}} {{outcome}}"),
        ('sum by (source, outcome) (rate(kustos_truth_labels_total{namespace=~"$namespace"}'
         f"[{RATE}]))", "label {{source}} {{outcome}}")], unit="ops",
        description="Prediction CloudEvents and labels (feedback, V2, bulk) the monitors "
                    "took in, by outcome.")

    lay.row("Explanations")
    lay.panel("Explain latency in the explainer sidecar (p50, p90, p99)", quantiles(
        "kustos_explain_duration_seconds", SEL, "model, method"), unit="s",
        description="Time the explainer sidecar (kustos explain) takes to answer, SHAP "
                    "included.")
    lay.panel("Explain latency seen by kustos serve (p50, p90, p99)", quantiles(
        "kustos_explain_forward_duration_seconds", SEL, "model"), unit="s",
        description="Time kustos serve spends forwarding an explain request to the sidecar "
                    "(the client's view).")
    lay.panel("Explain requests/s by code", [(
        f"sum by (model, method, code) (rate(kustos_explain_requests_total{{{SEL}}}[{RATE}]))",
        "{{model}} {{method}} {{code}}")], unit="reqps")
    lay.panel("Explainer errors/s by reason", [(
        f"sum by (model, reason) (rate(kustos_explain_errors_total{{{SEL}}}[{RATE}]))",
        "{{model}} {{reason}}")], unit="ops",
        description="Setup problems (by their status reason), ExplainFailed, GlobalFailed.")
    lay.panel("Explainer ready", [(
        f"min by (namespace, model) (kustos_explain_ready{{{SEL}}})", "{{model}}")],
        extra={"fieldConfig": {"defaults": {"unit": "short", "min": 0, "max": 1},
                               "overrides": []}})
    lay.panel("Global importance run time", [(
        f"max by (namespace, model) (kustos_explain_global_duration_seconds{{{SEL}}})",
        "{{model}}")], unit="s",
        description="Seconds the last global report (mean |SHAP|, permutation importance, "
                    "partial dependence) took.")

    lay.row("Rollouts")
    ro = 'model_namespace=~"$namespace", model=~"$model"'
    lay.panel("Rollout phase", [(
        f"max by (model_namespace, model, phase) (kustos_rollout_phase{{{ro}}}) == 1",
        "{{model}} {{phase}}")], width=6,
        description="The phase of each ModelDeployment's gated rollout (spec.rollout): "
                    "Idle, Shadow, Canary, Paused, Promoted or RolledBack.")
    lay.panel("Canary step and weight", [
        (f"max by (model_namespace, model) (kustos_rollout_step{{{ro}}})", "{{model}} step"),
        (f"max by (model_namespace, model) (kustos_rollout_weight{{{ro}}})",
         "{{model}} weight %")], width=6)
    lay.panel("Gate verdicts/s by metric", [(
        f"sum by (model, metric, verdict) "
        f"(rate(kustos_rollout_analysis_verdicts_total{{{ro}}}[{RATE}]))",
        "{{model}} {{metric}} {{verdict}}")], unit="ops", width=6,
        description="Each analysis judges every configured gate: pass, fail or "
                    "inconclusive (too few samples).")
    lay.panel("Automatic rollbacks", [(
        f"sum by (model_namespace, model) "
        f"(increase(kustos_rollout_rollbacks_total{{{ro}}}[1h]))", "{{model}}")],
        width=6, description="Rollbacks in the last hour; the Warning Event RolledBack "
                             "names the failed gate and its values.")

    lay.row("Operator")
    lay.panel("Reconciles/s by kind and result", [(
        f"sum by (kind, result) (rate(kustos_operator_reconciles_total[{RATE}]))",
        "{{kind}} {{result}}")], unit="ops")
    lay.panel("Reconcile duration (p50, p90, p99)", quantiles(
        "kustos_operator_reconcile_duration_seconds", "", "kind"), unit="s")
    lay.panel("Reconcile errors/s by reason", [(
        f"sum by (kind, reason) (rate(kustos_operator_reconcile_errors_total[{RATE}]))",
        "{{kind}} {{reason}}")], unit="ops",
        description="Each reason is also the object's Degraded condition reason.")
    lay.panel("Kubernetes API writes/s by verb", [(
        f"sum by (verb) (rate(kustos_operator_api_writes_total[{RATE}]))", "{{verb}}")],
        unit="ops", description="Zero when nothing changes: a resync writes nothing.")
    lay.panel("Children applied/s by kind", [(
        f"sum by (kind) (rate(kustos_operator_children_applied_total[{RATE}]))", "{{kind}}")],
        unit="ops", description="Child objects applied because they differed from the render.")

    templating = [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0},
        {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
         "query": "label_values(kustos_model_ready, namespace)",
         "definition": "label_values(kustos_model_ready, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
         "current": {"text": "All", "value": "$__all"}},
        {"name": "model", "label": "Model", "type": "query", "datasource": DS,
         "query": 'label_values(kustos_model_ready{namespace=~"$namespace"}, model)',
         "definition": 'label_values(kustos_model_ready{namespace=~"$namespace"}, model)',
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
         "current": {"text": "All", "value": "$__all"}},
    ]
    annotations = [{
        "name": "Drift episodes", "datasource": DS, "enable": True, "iconColor": "orange",
        "expr": f"max by (namespace, model) (kustos_drift_detected{{{SEL}}}) == 1",
        "step": "60s", "titleFormat": "drift", "textFormat": "{{namespace}}/{{model}}"}]
    return {
        "title": "Kustos", "uid": "kustos-overview", "description":
        "Kustos model serving, drift, explanations and the operator. Generated by "
        "manifests/monitoring/gen-monitoring.py.",
        "tags": ["kustos", "ml"], "timezone": "browser", "schemaVersion": 39, "version": 1,
        "editable": True, "graphTooltip": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": templating}, "annotations": {"list": annotations},
        "panels": lay.panels,
    }


CHART_HEADER = """\
# The rule groups of manifests/monitoring/prometheus-rules.yaml, copied by
# manifests/monitoring/gen-monitoring.py; the chart wraps them in a PrometheusRule when
# metrics.prometheusRule.enabled is set. Do not edit here.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as they are written by hand."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def chart_rules() -> str:
    rule = yaml.safe_load((HERE / "prometheus-rules.yaml").read_text())
    return CHART_HEADER + yaml.dump({"groups": rule["spec"]["groups"]}, Dumper=_Dumper,
                                    sort_keys=False, width=1000)


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> None:
    (HERE / "grafana-dashboard.json").write_text(dashboard_json())
    CHART_RULES.write_text(chart_rules())


if __name__ == "__main__":
    main()
