"""The shipped monitoring against a real Prometheus: a `prometheus` process (built by
hack/prometheus.sh) discovers the model pods on the real node through the API server
(kubernetes_sd) with the scrape jobs prometheus-operator would generate from
manifests/monitoring/podmonitor.yaml and from the chart's ServiceMonitor, loads the
chart's alert rules, and scrapes real `kustos serve`, explainer and drift containers and
the chart's operator pod while predictions, explanations and drifting traffic go through
the model's Service. Every Grafana dashboard query, its variables substituted as Grafana
does, must then return data through Prometheus' HTTP API, and alerts are evaluated by
Prometheus' own rule engine on the scraped series.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import REPO
from conftest import OPERATOR_LOGS, free_port, stop_process, wait_for, wait_ready
from promjobs import MONITORING, label_key, podmonitor_jobs, prometheus_binary
from realpods import (
    BC,
    IRIS_V1,
    IRIS_V2,
    ChartOperator,
    breast_cancer_with_sidecars,
    cluster_ip,
    feedback_routed,
    live_pods,
    post_json,
    real_model,
    rolled_out,
    upload_model,
    v2_request,
)

# The first test also waits for the chart, the model pods and their sidecars.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
pytest_plugins = ["realpods"]

RULES = REPO / "charts" / "kustos" / "files" / "prometheus-rules.yaml"
SCRAPE_INTERVAL = 5
# Grafana's $__rate_interval with a data source scrape interval of 15s (its default): 4x.
RATE_INTERVAL = "1m"


def operator_job(kubeconfig: Path, op: ChartOperator) -> dict[str, Any]:
    """The chart's ServiceMonitor (metrics.serviceMonitor.enabled) as a scrape job: the
    metrics Service's endpoints, port "metrics", job = the Service's name."""
    selector = {"app.kubernetes.io/name": "kustos", "app.kubernetes.io/instance": op.release}
    return {
        "job_name": f"serviceMonitor/{op.system_ns}/{op.release}/0",
        "metrics_path": "/metrics",
        "kubernetes_sd_configs": [{"role": "endpointslice", "kubeconfig_file": str(kubeconfig),
                                   "namespaces": {"names": [op.system_ns]}}],
        "relabel_configs": [
            *[{"action": "keep",
               "source_labels": [f"__meta_kubernetes_service_label_{label_key(k)}"],
               "regex": re.escape(v)} for k, v in selector.items()],
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
             "regex": "metrics"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
            {"target_label": "endpoint", "replacement": "metrics"},
        ]}


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.time)

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{time.time():.3f}",
            step=str(SCRAPE_INTERVAL))["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active


@pytest.fixture(scope="module")
def prometheus(kubeconfig: Path, chart_operator: ChartOperator,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL}s",
                   "scrape_timeout": f"{SCRAPE_INTERVAL - 1}s",
                   "evaluation_interval": f"{SCRAPE_INTERVAL}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [*podmonitor_jobs(kubeconfig, chart_operator.models_ns),
                           *podmonitor_jobs(kubeconfig, chart_operator.models_ns,
                                            "podmonitor-truth.yaml"),
                           operator_job(kubeconfig, chart_operator)],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    OPERATOR_LOGS.mkdir(parents=True, exist_ok=True)
    log_path = OPERATOR_LOGS / "prometheus-test.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [str(binary), f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        cwd=tmp, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for("prometheus ready", ready, timeout=120)
        yield prom
    finally:
        stop_process(proc, timeout=30, kill_timeout=10)


@dataclass
class Workload:
    namespace: str
    started: float
    bc_ip: str
    rows: list[list[float]]
    shifted: list[list[float]]
    labels: list[int]  # the shifted rows' true classes
    sent: int = 0

    def traffic(self) -> None:
        """One round of what a dashboard shows: V2, V1 and Seldon predictions (shifted
        rows, so the drift sidecar sees drift), a malformed request (4xx), an explanation,
        and the V2 rows' labels (with a `group` for the fairness slices)."""
        start = self.sent % len(self.shifted)
        rows = self.shifted[start:start + 20]
        labels = self.labels[start:start + 20]
        rid = f"w-{self.sent}"
        self.sent += len(rows)
        flat = [v for r in rows for v in r]
        status, body = post_json(self.bc_ip, "/v2/models/bc/infer", {"id": rid, "inputs": [{
            "name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
            "data": flat}]})
        assert status == 200, body
        status, body = post_json(self.bc_ip, "/v2/models/bc/feedback", {"labels": [
            {"id": rid, "row": i, "label": label, "metadata": {"group": "ab"[i % 2]}}
            for i, label in enumerate(labels)]})
        assert 200 <= status < 300, body
        status, body = post_json(self.bc_ip, "/v1/models/bc:predict",
                                 {"instances": self.rows[:2]})
        assert status == 200, body
        status, body = post_json(self.bc_ip, "/api/v1.0/predictions",
                                 {"data": {"ndarray": self.rows[:1]}})
        assert status == 200, body
        status, body = post_json(self.bc_ip, "/v2/models/bc/infer", {"inputs": "nope"})
        assert 400 <= status < 500, body
        status, body = post_json(self.bc_ip, "/v1/models/bc:explain",
                                 {"instances": self.rows[:1]}, timeout=60)
        assert status == 200, body


@pytest.fixture(scope="module")
def workload(chart_operator: ChartOperator, model_store: dict[str, str],
             prometheus: Prometheus) -> Iterator[Workload]:
    """bc: a model with a working explainer and drift sidecar, served drifting traffic, and
    a ground-truth monitor (with a fairness slice) fed labels. iris: an explainer whose
    background digest is wrong (explainer errors). nocreds: a ModelDeployment whose
    credentials Secret is missing (reconcile errors). tampered: a model whose fetch init
    container fails (a serving pod Prometheus cannot scrape). ro: a gated rollout whose
    candidate answers 500, rolled back at its first canary step."""
    from sklearn.datasets import load_breast_cancer

    kube, ns = chart_operator.kube, chart_operator.models_ns
    started = time.time()
    # with a global report once, at start (the run-time panel)
    bc = breast_cancer_with_sidecars("bc", ns, model_store,
                                     **{"global": {"interval": "24h", "topK": 5}})
    bc[2]["spec"]["groundTruth"] = {
        "task": "classification", "window": "1h", "minSamples": 20,
        # far from what the test's rows give: nothing pages for bc but the drift
        "thresholds": {"minAccuracy": 0.05},
        "fairness": {"sensitiveFeatures": [{"name": "group", "source": "label"}],
                     "minSliceSize": 5, "maxAccuracyGap": 1.0}}
    docs: list[dict[str, Any]] = [
        *bc,
        real_model("iris", ns, IRIS_V1, model_store[IRIS_V1], replicas=1),
        {"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
         "metadata": {"name": "iris", "namespace": ns},
         "spec": {"targetRef": {"name": "iris"}, "method": "shap-tree",
                  "background": {"uri": f"{BC}/background.csv",
                                 "digest": model_store[f"{BC}/reference.csv"]}}},
        real_model("tampered", ns, IRIS_V1, model_store[IRIS_V2], replicas=1),
    ]
    nocreds = real_model("nocreds", ns, IRIS_V1, model_store[IRIS_V1], replicas=1)
    nocreds["spec"]["model"]["credentialsSecretRef"] = {"name": "no-such-secret"}
    docs.append(nocreds)
    for doc in docs:
        kube.apply(doc)
    try:
        wait_ready(kube, "bc", ns, timeout=600)

        def sidecars_running() -> bool:
            pods = live_pods(kube, "bc", ns)
            names = {c["name"] for p in pods for c in p["status"].get("containerStatuses") or []
                     if c.get("ready")}
            return len(pods) == 1 and {"server", "explainer", "drift"} <= names

        wait_for("bc's server, explainer and drift containers ready", sidecars_running,
                 timeout=600, interval=2)
        wait_for("bc's ground-truth monitor Ready", lambda: (
            d := kube.get("deployment", "bc-truth", ns))
            and (d.get("status") or {}).get("readyReplicas") == 1, timeout=300)
        rolled_out(kube, "bc", ns)
        feedback_routed(cluster_ip(kube, "bc", ns), "bc")  # the workload posts labels
        roll_back_a_candidate(chart_operator, model_store)
        x, y = load_breast_cancer(return_X_y=True)
        shifted = x.copy()
        shifted[:, 0] += 3 * x[:, 0].std()
        yield Workload(ns, started, cluster_ip(kube, "bc", ns), x[:4].tolist(),
                       shifted.tolist(), [int(v) for v in y])
    finally:
        kube.run("delete", "md,explainerspec,driftmonitor", "--all", "-n", ns,
                 "--wait=false", check=False)


def roll_back_a_candidate(chart_operator: ChartOperator, store: dict[str, str]) -> None:
    """ro: iris version 1, then a version 2 whose every answer is a 500 (complex class
    labels it cannot encode) under a gated rollout; predictions through the Service until
    the error-rate gate rolls it back (the operator's kustos_rollout_* series)."""
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    kube, ns = chart_operator.kube, chart_operator.models_ns
    x, y = load_iris(return_X_y=True)
    bug = DecisionTreeClassifier(random_state=0).fit(x, y)
    bug.classes_ = np.array([0j, 1j, 2j])
    bug_uri, bug_digest = upload_model(f"prom-{uuid.uuid4().hex[:6]}/bug/model.skops", bug)
    rollout = {"steps": [{"weight": 50, "duration": "10m"}],
               "analysis": {"interval": "10s", "minSamples": 20, "onInconclusive": "wait",
                            "maxInconclusive": "10m",
                            "thresholds": {"maxErrorRateIncrease": 0.02}}}
    md = real_model("ro", ns, IRIS_V1, store[IRIS_V1], replicas=2,
                    rollout=rollout)
    kube.apply(md)
    wait_ready(kube, "ro", ns, timeout=300)

    def phase() -> str | None:
        got = kube.get("md", "ro", ns) or {}
        return ((got.get("status") or {}).get("rollout") or {}).get("phase")

    wait_for("ro's rollout Idle", lambda: phase() == "Idle", timeout=120)
    md["spec"]["model"].update(version="2", uri=bug_uri, digest=bug_digest, format="sklearn")
    kube.apply(md)
    ip = cluster_ip(kube, "ro", ns)

    def rolled_back() -> bool:
        for row in x[::15].tolist():  # 10 rows a look, some to the candidate
            with contextlib.suppress(OSError):
                post_json(ip, "/v2/models/ro/infer", v2_request([row]))
        return phase() == "RolledBack"

    wait_for("ro's candidate rolled back on error rate", rolled_back, timeout=600,
             interval=1)


def grafana_expr(expr: str, namespace: str, since: float) -> str:
    """The query as Grafana sends it: namespace = the test's (a plain name: Grafana escapes
    only regex metacharacters, and a PromQL string refuses "\\-"), model = All (its
    allValue ".*"), $__range = the time since the workload started."""
    span = max(60, int(time.time() - since) + SCRAPE_INTERVAL)
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", f"{span}s")
            .replace("$namespace", namespace).replace("$model", ".*"))


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    out = [(f"{p['title']} [{t['refId']}]", t["expr"])
           for p in dash["panels"] for t in p.get("targets", [])]
    out += [(f"annotation {a['name']}", a["expr"]) for a in dash["annotations"]["list"]]
    return out


def has_values(result: list[dict[str, Any]]) -> bool:
    """A range result with at least one number (histogram_quantile over no requests is
    NaN: Grafana draws nothing)."""
    return any(not math.isnan(float(v)) for s in result for _, v in s.get("values") or [])


def test_prometheus_scrapes_every_port_the_podmonitor_names(
        prometheus: Prometheus, workload: Workload, chart_operator: ChartOperator) -> None:
    def up_targets() -> set[tuple[str, str]] | None:
        seen = {(t["labels"].get("pod", "").rsplit("-", 2)[0], t["labels"].get("endpoint", ""))
                for t in prometheus.targets() if t["health"] == "up"}
        want = {("bc", "http"), ("bc", "explain"), ("bc", "drift")}
        return seen if want <= seen and any(e == "metrics" for _, e in seen) else None

    seen = wait_for("bc's three ports and the operator scraped", up_targets, timeout=120)
    # kustos serve's own `endpoint` label survives prometheus-operator's `endpoint` target
    # label (the PodMonitor's honorLabels): the queries on endpoint=~"v2_infer|..." match.
    workload.traffic()
    infer = wait_for("bc's v2_infer requests scraped", lambda: prometheus.query(
        f'kustos_requests_total{{namespace="{workload.namespace}", model="bc", '
        f'endpoint="v2_infer", code="200"}}'), timeout=60)
    assert "exported_endpoint" not in infer[0]["metric"], infer
    # The scraped series carry the PodMonitor's labels and the model's own.
    ready = prometheus.query(f'kustos_model_ready{{namespace="{workload.namespace}", '
                             f'model="bc"}}')
    assert ready and ready[0]["metric"]["container"] == "server", ready
    assert ready[0]["metric"]["job"] == f"{workload.namespace}/kustos-models"
    drift = prometheus.query(f'kustos_drift_ready{{namespace="{workload.namespace}"}}')
    assert drift and drift[0]["metric"]["container"] == "drift", (drift, seen)
    ops = prometheus.query(
        f'kustos_operator_peering_active{{namespace="{chart_operator.system_ns}"}}')
    assert ops and ops[0]["value"][1] == "1", ops


def test_every_dashboard_query_returns_data(prometheus: Prometheus, workload: Workload) -> None:
    queries = dashboard_queries()
    assert len(queries) > 40, len(queries)

    def missing() -> list[str]:
        workload.traffic()
        out = []
        for title, expr in queries:
            query = grafana_expr(expr, workload.namespace, workload.started)
            try:
                if not has_values(prometheus.query_range(query, workload.started)):
                    out.append(f"{title}: {query}")
            except urllib.error.HTTPError as err:  # a query Prometheus refuses
                out.append(f"{title}: HTTP {err.code} {err.read()[:300]!r}: {query}")
        return out

    last: list[list[str]] = [[]]

    def all_answered() -> bool:
        last[0] = missing()
        return not last[0]

    try:
        wait_for("every dashboard query to return data", all_answered, timeout=600,
                 interval=2)
    except AssertionError:
        raise AssertionError("dashboard queries without data:\n" + "\n".join(last[0])
                             + f"\n(sent {workload.sent} shifted rows; "
                             f"Prometheus log {prometheus.log_path})") from None


def test_template_variables_list_the_models(prometheus: Prometheus, workload: Workload) -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    values: dict[str, list[str]] = {}
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var.get("definition", ""))
        if m:
            match = m.group(1).replace("$namespace", workload.namespace)
            values[var["name"]] = prometheus.api(f"label/{m.group(2)}/values",
                                                 **{"match[]": match})
    assert workload.namespace in values["namespace"], values
    assert {"bc", "iris"} <= set(values["model"]), values


def test_alerts_evaluated_on_the_scraped_series(prometheus: Prometheus,
                                                workload: Workload) -> None:
    """Prometheus' rule engine, on what it scraped: bc's drifting traffic fires
    KustosDriftDetected with the model's labels, and nothing pages for bc otherwise."""
    def firing() -> list[dict[str, Any]]:
        workload.traffic()
        return prometheus.query(f'ALERTS{{alertname="KustosDriftDetected", '
                                f'alertstate="firing", namespace="{workload.namespace}"}}')

    alerts = wait_for("KustosDriftDetected firing", firing, timeout=600, interval=2)
    assert [a["metric"]["model"] for a in alerts] == ["bc"], alerts
    assert alerts[0]["metric"]["severity"] == "warning"
    others = prometheus.query(f'ALERTS{{model="bc", alertname!="KustosDriftDetected", '
                              f'namespace="{workload.namespace}"}}')
    assert others == [], others


def test_a_pod_stuck_fetching_its_model_is_seen_down(prometheus: Prometheus,
                                                     workload: Workload) -> None:
    """tampered's fetch init container refuses the model (wrong digest), so its server never
    exports kustos_model_ready; its http target is down and KustosModelServerDown is
    active for that pod only (pending, or firing once the module has run 10 minutes)."""
    ns = workload.namespace
    down = wait_for("tampered's server target down", lambda: prometheus.query(
        f'up{{namespace="{ns}", pod=~"tampered-.*", container="server"}} == 0'), timeout=120)
    assert prometheus.query(f'kustos_model_ready{{namespace="{ns}", model="tampered"}}') == []
    stuck = {d["metric"]["pod"] for d in down}

    def active() -> list[dict[str, Any]] | None:
        # A pod still starting is pending too, until its server answers a scrape.
        alerts = prometheus.query(f'ALERTS{{alertname="KustosModelServerDown", '
                                  f'namespace="{ns}"}}')
        return alerts if {a["metric"]["pod"] for a in alerts} == stuck else None

    pending = wait_for(f"KustosModelServerDown active for {sorted(stuck)} only", active,
                       timeout=180)
    assert all(a["metric"]["alertstate"] in {"pending", "firing"} for a in pending), pending
    assert [a["metric"]["severity"] for a in pending] == ["warning"] * len(pending)
