"""DriftMonitor -> the drift sidecar in its target's pods, and the retraining Job.

Pure: no I/O.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from kustos.api.v1alpha1 import DriftMonitorSpec, ModelDeploymentSpec
from kustos.config import OperatorConfig

from .attachments import NONE, Attachments
from .meta import COMPONENT, base_labels, owner_reference
from .sidecars import (
    DRIFT_PORT,
    SCRATCH,
    data_source,
    duration_seconds,
    number,
    scratch_volume,
    sidecar_attachments,
    sidecar_container,
)
from .truth import url as truth_url

CONTAINER = "drift"
PORT_NAME = "drift"
TMP_VOLUME = "drift-tmp"
DATA_VOLUME = "drift-data"
INPUTS_URL = f"http://127.0.0.1:{DRIFT_PORT}/v1/inputs"
ANNOTATION = "kustos.dev/drift-monitor"
MONITOR_LABEL = "kustos.dev/drift-monitor"
FEATURES_ANNOTATION = "kustos.dev/drift-features"


def drift_args(spec: DriftMonitorSpec, model_name: str, reference_uri: str) -> list[str]:
    """`kustos drift` arguments, as CONTRACTS.md fixes them."""
    assert spec.reference is not None
    args = ["drift", "--detector", spec.detector, "--reference-uri", reference_uri]
    if spec.reference.digest:
        args += ["--reference-digest", spec.reference.digest]
    args += ["--max-samples", str(spec.reference.max_samples)]
    if spec.feature_names:
        args += ["--feature-names", ",".join(spec.feature_names)]
    if spec.categorical_features:
        args += ["--categorical", ",".join(str(i) for i in spec.categorical_features)]
    args += ["--p-value", number(spec.p_value),
             "--window-size", str(spec.window.size),
             "--window-max-age", number(duration_seconds(spec.window.max_age)),
             "--name", model_name, "--host", "0.0.0.0", "--port", str(DRIFT_PORT)]
    return args


def attachments(dm: Mapping[str, Any], md_body: Mapping[str, Any],
                config: OperatorConfig) -> Attachments:
    """The drift sidecar and the server's --drift-url for the target's pods (with
    spec.reference), and --truth-url (with spec.groundTruth)."""
    spec = DriftMonitorSpec.model_validate(dm["spec"])
    truth = Attachments(truth_url=truth_url(dm)) if spec.ground_truth is not None else NONE
    if spec.reference is None:
        return truth + Attachments(pod_annotations={ANNOTATION: dm["metadata"]["name"]})
    md = ModelDeploymentSpec.model_validate(md_body["spec"])
    uri, volumes, mounts = data_source(spec.reference.uri, DATA_VOLUME)
    container = sidecar_container(
        CONTAINER, config.images.drift,
        drift_args(spec, md.model.name or md_body["metadata"]["name"], uri),
        DRIFT_PORT, PORT_NAME, config.sidecars.drift_resources,
        [{"name": TMP_VOLUME, "mountPath": SCRATCH}, *mounts])
    return truth + sidecar_attachments(
        container, md.model, uri,
        (scratch_volume(TMP_VOLUME, config.sidecars.scratch_size), *volumes),
        {ANNOTATION: dm["metadata"]["name"]}, drift_url=INPUTS_URL)


def job_name(dm_name: str, uid: str, at: str) -> str:
    """A Job name unique per DriftMonitor and episode start, short enough for the
    job-name label Kubernetes puts on the Job's pods (63 characters)."""
    suffix = hashlib.sha256(f"{uid}/{at}".encode()).hexdigest()[:6]
    return f"{dm_name[:48].rstrip('-.')}-retrain-{suffix}"


def retrain_job(dm: Mapping[str, Any], template: Mapping[str, Any], name: str,
                features: Iterable[str]) -> dict[str, Any]:
    """A batch/v1 Job from the JobTemplateSpec, owned by the DriftMonitor."""
    tmeta = template.get("metadata") or {}
    meta = dm["metadata"]
    labels = {**(tmeta.get("labels") or {}), **base_labels(meta["name"]),
              COMPONENT: "retrain", MONITOR_LABEL: meta["name"]}
    annotations = {**(tmeta.get("annotations") or {}),
                   FEATURES_ANNOTATION: ",".join(features)[:1000]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                     "annotations": annotations, "ownerReferences": [owner_reference(dm)]},
        "spec": copy.deepcopy(dict(template.get("spec") or {})),
    }
