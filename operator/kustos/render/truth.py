"""DriftMonitor with spec.groundTruth -> the ground-truth monitor's children. Pure: no I/O.

One `kustos truth` Deployment per DriftMonitor (1 replica, Recreate: one writer of the
SQLite store), its config in a ConfigMap, a Service ``<dm>-truth`` the model pods send
their payload CloudEvents and forwarded labels to, a PersistentVolumeClaim when
``storage.size`` is set (else an emptyDir), and a NetworkPolicy. Everything is owned by
the DriftMonitor, so it goes with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kustos.api.v1alpha1 import DriftMonitorSpec, ModelDeploymentSpec
from kustos.api.v1alpha1.driftmonitor import GroundTruthSpec
from kustos.config import OperatorConfig

from .meta import COMPONENT, INSTANCE, child_meta, with_hash
from .modeldeployment import pod_security_context, security_context
from .networkpolicy import NAMESPACE_NAME_LABEL
from .sidecars import data_source

COMPONENT_NAME = "truth"
CONTAINER = "truth"
PORT = 8080
PORT_NAME = "http"
STORE_DIR = "/var/lib/kustos-truth"
CONFIG_DIR = "/etc/kustos-truth"
CONFIG_FILE = "config.json"
STATUS_PATH = "/v1/truth/status"
CONFIG_HASH = "kustos.dev/config-hash"
STORE_VOLUME = "store"
CONFIG_VOLUME = "config"
TMP_VOLUME = "tmp"
# Kinds of the monitor's children, in apply order. The claim is not among the kinds
# the sync deletes (see ``SYNCED_KINDS``): dropping storage.size must not drop the data.
KINDS = ("ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy")
SYNCED_KINDS = ("ConfigMap", "Deployment", "Service", "NetworkPolicy")


def name(dm_name: str) -> str:
    """The monitor's Deployment, Service, ConfigMap and claim name."""
    return f"{dm_name}-truth"


def url(dm: Mapping[str, Any]) -> str:
    """Where the model server sends its CloudEvents and forwards labels."""
    meta = dm["metadata"]
    return f"http://{name(meta['name'])}.{meta['namespace']}.svc:{PORT}"


def labels(dm_name: str) -> dict[str, str]:
    return {INSTANCE: dm_name, COMPONENT: COMPONENT_NAME}


def _model_name(dm: Mapping[str, Any], md: Mapping[str, Any] | None) -> str:
    target = str(dm["spec"]["targetRef"]["name"])
    if md is None:
        return target
    return ModelDeploymentSpec.model_validate(md["spec"]).model.name or target


def _bulk_uri(uri: str, index: int) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """A pvc:// source becomes a read-only mount read as file://."""
    return data_source(uri, f"bulk-{index}")


def config(dm: Mapping[str, Any], md: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `kustos truth --config` document (kustos.runtime.truth.config)."""
    spec = DriftMonitorSpec.model_validate(dm["spec"])
    gt = spec.ground_truth
    assert gt is not None
    doc: dict[str, Any] = {
        "model": _model_name(dm, md),
        "task": gt.task,
        "window": gt.window,
        "minSamples": gt.min_samples,
        "thresholds": gt.thresholds.wire() if gt.thresholds else {},
        "bulk": [{"uri": _bulk_uri(b.uri, i)[0], "format": _format(b.uri, b.format),
                  "interval": b.interval} for i, b in enumerate(gt.bulk or ())],
        "maxRows": gt.max_rows,
        "retention": gt.retention,
    }
    if spec.feature_names:
        doc["featureNames"] = list(spec.feature_names)
    if md is not None:
        version = ModelDeploymentSpec.model_validate(md["spec"]).model.version
        if version:
            doc["defaultVersion"] = version
    if gt.fairness is not None:
        doc["fairness"] = gt.fairness.wire()
    return doc


def _format(uri: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    return uri.rsplit(".", 1)[-1].lower()


def config_text(dm: Mapping[str, Any], md: Mapping[str, Any] | None) -> str:
    return json.dumps(config(dm, md), indent=2, sort_keys=True) + "\n"


def configmap(dm: Mapping[str, Any], md: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = dm["metadata"]
    text = config_text(dm, md)
    return with_hash({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": child_meta(dm, name(meta["name"]), labels(meta["name"])),
        "data": {CONFIG_FILE: text},
    })


def _resources(gt: GroundTruthSpec, cfg: OperatorConfig) -> dict[str, Any]:
    if gt.resources is None:
        return dict(cfg.sidecars.explain_resources)
    return {k: v for k, v in (("requests", gt.resources.requests),
                              ("limits", gt.resources.limits)) if v}


def claim(dm: Mapping[str, Any]) -> dict[str, Any] | None:
    """The store's PersistentVolumeClaim, when storage.size is set."""
    gt = DriftMonitorSpec.model_validate(dm["spec"]).ground_truth
    if gt is None or gt.storage is None or gt.storage.size is None:
        return None
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": gt.storage.size}}}
    if gt.storage.storage_class_name:
        spec["storageClassName"] = gt.storage.storage_class_name
    meta = dm["metadata"]
    return with_hash({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": child_meta(dm, name(meta["name"]), labels(meta["name"])),
        "spec": spec,
    })


def deployment(dm: Mapping[str, Any], md: Mapping[str, Any] | None,
               cfg: OperatorConfig) -> dict[str, Any]:
    """One replica, Recreate (never two writers of the store), the explain image."""
    meta = dm["metadata"]
    gt = DriftMonitorSpec.model_validate(dm["spec"]).ground_truth
    assert gt is not None
    n = name(meta["name"])
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": n}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": cfg.sidecars.scratch_size}},
        ({"name": STORE_VOLUME, "persistentVolumeClaim": {"claimName": n}}
         if gt.storage is not None and gt.storage.size is not None
         else {"name": STORE_VOLUME, "emptyDir": {}}),
    ]
    mounts: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
        {"name": STORE_VOLUME, "mountPath": STORE_DIR},
    ]
    for i, b in enumerate(gt.bulk or ()):
        _, vols, mnts = _bulk_uri(b.uri, i)
        volumes += vols
        mounts += mnts
    probe = {"periodSeconds": 10, "timeoutSeconds": 2}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cfg.images.explain,
        "command": ["kustos"],
        "args": ["truth", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}",
                 "--data-dir", STORE_DIR,
                 "--host", "0.0.0.0", "--port", str(PORT)],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": _resources(gt, cfg),
        "securityContext": security_context(),
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": PORT_NAME},
                           **probe, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": PORT_NAME},
                          **probe, "failureThreshold": 6},
        "volumeMounts": mounts,
    }
    secret = _s3_secret(gt, md)
    if secret is not None:
        # Bulk files next to the model: the model's S3 credentials reach them.
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    pod_labels = {**child_meta(dm, n, labels(meta["name"]))["labels"]}
    return with_hash({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": child_meta(dm, n, labels(meta["name"])),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels(meta["name"])},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                    "prometheus.io/path": "/metrics",
                    # The process reads its config once: a new config is a new pod.
                    CONFIG_HASH: hashlib.sha256(
                        config_text(dm, md).encode()).hexdigest()[:16]}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    })


def _s3_secret(gt: GroundTruthSpec, md: Mapping[str, Any] | None) -> str | None:
    if md is None or not any(b.uri.startswith("s3://") for b in gt.bulk or ()):
        return None
    ref = ModelDeploymentSpec.model_validate(md["spec"]).model.credentials_secret_ref
    return ref.name if ref is not None else None


def service(dm: Mapping[str, Any]) -> dict[str, Any]:
    meta = dm["metadata"]
    return with_hash({
        "apiVersion": "v1", "kind": "Service",
        "metadata": child_meta(dm, name(meta["name"]), labels(meta["name"])),
        "spec": {"selector": labels(meta["name"]),
                 "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME,
                            "protocol": "TCP"}]},
    })


def network_policy(dm: Mapping[str, Any], cfg: OperatorConfig) -> dict[str, Any] | None:
    """Ingress to the monitor: the target's model pods (CloudEvents, forwarded labels) and
    whoever may call the model (labels posted directly) as for the serving port; the
    operator's namespace (status); the monitoring namespaces (/metrics)."""
    settings = cfg.network_policy
    if not settings.enabled:
        return None
    meta = dm["metadata"]
    target = str(dm["spec"]["targetRef"]["name"])
    ports = [{"protocol": "TCP", "port": PORT}]
    clients: dict[str, Any] = {"ports": ports}
    if settings.serving_namespace_selector is not None:
        clients["from"] = [{"podSelector": {}},
                           {"namespaceSelector": dict(settings.serving_namespace_selector)}]
    ingress: list[dict[str, Any]] = [
        clients,
        {"from": [{"podSelector": {"matchLabels": {INSTANCE: target,
                                                   COMPONENT: "predictor"}}}],
         "ports": ports},
        {"from": [{"namespaceSelector": {"matchLabels": {
            NAMESPACE_NAME_LABEL: settings.operator_namespace}}}], "ports": ports},
    ]
    if settings.monitoring_namespace_selector is not None:
        ingress.append({"from": [{"namespaceSelector":
                                  dict(settings.monitoring_namespace_selector)}],
                        "ports": ports})
    return with_hash({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": child_meta(dm, name(meta["name"]), labels(meta["name"])),
        "spec": {"podSelector": {"matchLabels": labels(meta["name"])},
                 "policyTypes": ["Ingress"], "ingress": ingress},
    })


def children(dm: Mapping[str, Any], md: Mapping[str, Any] | None,
             cfg: OperatorConfig) -> list[dict[str, Any]]:
    """Every child of the monitor, in apply order; none without spec.groundTruth."""
    if DriftMonitorSpec.model_validate(dm["spec"]).ground_truth is None:
        return []
    out = [configmap(dm, md)]
    pvc = claim(dm)
    if pvc is not None:
        out.append(pvc)
    out += [deployment(dm, md, cfg), service(dm)]
    policy = network_policy(dm, cfg)
    if policy is not None:
        out.append(policy)
    return out
