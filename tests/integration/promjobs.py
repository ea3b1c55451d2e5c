"""Prometheus for the live tests (test_prometheus_live, test_keda_live): the binary
hack/prometheus.sh builds, and the scrape jobs prometheus-operator would generate from the
PodMonitor we ship."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from cluster import REPO, bin_dir, required_binary

MONITORING = REPO / "manifests" / "monitoring"


def promtool_dir() -> Path:
    return Path(os.environ.get("PROMETHEUS_BIN_DIR") or bin_dir())


def prometheus_binary() -> Path:
    return required_binary(promtool_dir() / "prometheus", "hack/prometheus.sh build")


def label_key(name: str) -> str:
    """A Kubernetes label name as kubernetes_sd's meta label suffix."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def podmonitor_jobs(kubeconfig: Path, namespace: str,
                    podmonitor: str = "podmonitor.yaml") -> list[dict[str, Any]]:
    """The scrape jobs prometheus-operator generates from a PodMonitor we ship (the file
    ``podmonitor`` of manifests/monitoring): one per
    podMetricsEndpoint, keeping pods with its matchLabels and the container port of that
    name, labelled namespace/pod/container/endpoint and job "<namespace>/<name>". Only
    ``namespace`` is discovered (the PodMonitor says any namespace; other tests' pods
    are not ours to scrape)."""
    pm = yaml.safe_load((MONITORING / podmonitor).read_text())
    name = pm["metadata"]["name"]
    keep = [{"action": "keep",
             "source_labels": [f"__meta_kubernetes_pod_label_{label_key(k)}",
                               f"__meta_kubernetes_pod_labelpresent_{label_key(k)}"],
             "regex": f"({re.escape(v)});true"}
            for k, v in pm["spec"]["selector"]["matchLabels"].items()]
    jobs = []
    for i, ep in enumerate(pm["spec"]["podMetricsEndpoints"]):
        jobs.append({
            "job_name": f"podMonitor/{namespace}/{name}/{i}",
            "metrics_path": ep["path"],
            "honor_labels": bool(ep.get("honorLabels", False)),
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig),
                                       "namespaces": {"names": [namespace]}}],
            "relabel_configs": [
                {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
                 "regex": "(Failed|Succeeded)"},
                *keep,
                {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                 "regex": ep["port"]},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"],
                 "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"target_label": "job", "replacement": f"{namespace}/{name}"},
                {"target_label": "endpoint", "replacement": ep["port"]},
            ]})
    return jobs
