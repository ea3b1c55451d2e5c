"""The PodMonitor keeps the labels kustos serve puts on its series.

prometheus-operator adds target labels to every scraped series (namespace, pod, container,
endpoint = the port name, job, instance, service). A metric label of the same name is
renamed exported_<name> unless the endpoint sets honorLabels; kustos serve's `endpoint`
(v2_infer, ...) is such a label, and the dashboard and alerts select on it.
tests/integration/test_prometheus_live.py shows the same with a real Prometheus.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prometheus_client import Counter, Gauge, Histogram

from kustos.runtime.server import metrics as server_metrics

PODMONITOR = Path(__file__).resolve().parents[2] / "manifests" / "monitoring" / "podmonitor.yaml"
TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "job", "instance", "service"}


def test_serving_port_honors_kustos_serve_labels() -> None:
    labels: set[str] = set()
    for value in vars(server_metrics).values():
        if isinstance(value, Counter | Gauge | Histogram):
            labels.update(value._labelnames)  # no public accessor
    clashing = labels & TARGET_LABELS
    assert clashing == {"endpoint"}, clashing  # the reason honorLabels is needed at all
    pm = yaml.safe_load(PODMONITOR.read_text())
    endpoints = {ep["port"]: ep for ep in pm["spec"]["podMetricsEndpoints"]}
    assert endpoints["http"].get("honorLabels") is True, endpoints["http"]
