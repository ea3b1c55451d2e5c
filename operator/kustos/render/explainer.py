"""ExplainerSpec -> the explainer sidecar in its target's pods, and the report ConfigMap.

Pure: no I/O. The controller finds the ExplainerSpec that targets a ModelDeployment and
hands both here; the ModelDeployment render applies the returned Attachments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kustos.api.v1alpha1 import ExplainerSpecSpec, ModelDeploymentSpec
from kustos.api.v1alpha1.explainerspec import LimeSpec
from kustos.config import OperatorConfig

from .attachments import Attachments
from .meta import COMPONENT, MODEL_DIGEST, SPEC_HASH, child_meta, spec_hash
from .modeldeployment import model_file_name, serves_tls, service_url
from .runtimes import MODEL_DIR
from .sidecars import (
    EXPLAIN_PORT,
    SCRATCH,
    data_source,
    duration_seconds,
    scratch_volume,
    sidecar_attachments,
    sidecar_container,
)

CONTAINER = "explainer"
PORT_NAME = "explain"
TMP_VOLUME = "explainer-tmp"
DATA_VOLUME = "explainer-data"
SERVER_URL = f"http://127.0.0.1:{EXPLAIN_PORT}"
REPORT_KEY = "report.json"
ANNOTATION = "kustos.dev/explainer"
DIGEST_ENV = "KUSTOS_MODEL_DIGEST"


def model_name(md_name: str, md: ModelDeploymentSpec) -> str:
    return md.model.name or md_name


def endpoint(md_name: str, namespace: str, md: ModelDeploymentSpec,
             config: OperatorConfig) -> str:
    """Where the target's Service serves explanations (KServe V1 :explain)."""
    return (f"{service_url(md_name, namespace, config, serves_tls(md))}/v1/models/"
            f"{model_name(md_name, md)}:explain")


def explain_args(spec: ExplainerSpecSpec, md_name: str, md: ModelDeploymentSpec,
                 background_uri: str) -> list[str]:
    """`kustos explain` arguments, as CONTRACTS.md fixes them."""
    args = [
        "explain",
        # The stable model: the file the fetch init container verified and the server loads.
        "--model", f"{MODEL_DIR}/{model_file_name(md.model.uri)}",
        "--format", md.model.format,
        "--name", model_name(md_name, md),
    ]
    if md.model.digest:
        # Each track's own digest (the pod annotation the render sets per track): the
        # canary's pods hold the canary's model.
        args += ["--digest", f"$({DIGEST_ENV})"]
    args += ["--method", spec.method, "--background-uri", background_uri]
    if spec.method == "lime":
        args += ["--lime-samples", str((spec.lime or LimeSpec()).num_samples)]
    if spec.background.digest:
        args += ["--background-digest", spec.background.digest]
    args += ["--max-samples", str(spec.background.max_samples)]
    if spec.feature_names:
        args += ["--feature-names", ",".join(spec.feature_names)]
    interval = duration_seconds(spec.global_.interval) if spec.global_ else 0
    args += ["--global-interval", f"{interval:g}",
             "--top-k", str(spec.global_.top_k if spec.global_ else 10),
             "--host", "0.0.0.0", "--port", str(EXPLAIN_PORT)]
    return args


def attachments(es: Mapping[str, Any], md_body: Mapping[str, Any],
                config: OperatorConfig) -> Attachments:
    """The explainer sidecar and the server's --explainer-url for the target's pods."""
    spec = ExplainerSpecSpec.model_validate(es["spec"])
    md = ModelDeploymentSpec.model_validate(md_body["spec"])
    uri, volumes, mounts = data_source(spec.background.uri, DATA_VOLUME)
    container = sidecar_container(
        CONTAINER, config.images.explain, explain_args(spec, md_body["metadata"]["name"], md, uri),
        EXPLAIN_PORT, PORT_NAME, config.sidecars.explain_resources,
        [{"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
         {"name": TMP_VOLUME, "mountPath": SCRATCH}, *mounts])
    container["env"] = [{"name": DIGEST_ENV, "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{MODEL_DIGEST}']"}}}]
    return sidecar_attachments(
        container, md.model, uri,
        (scratch_volume(TMP_VOLUME, config.sidecars.scratch_size), *volumes),
        {ANNOTATION: es["metadata"]["name"]}, explainer_url=SERVER_URL)


def report_name(es_name: str) -> str:
    return f"{es_name}-explanations"


# Report fields that change on every run even when the results do not.
VOLATILE = ("computedAt", "durationSeconds")


def report_configmap(es: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """The full global report, owned by the ExplainerSpec (status keeps only the top-k).

    Its spec-hash covers the results only, not when or how fast they were computed, so a
    recomputation that finds the same importances writes nothing."""
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_meta(es, report_name(es["metadata"]["name"]),
                               {COMPONENT: "explanations"}),
        "data": {REPORT_KEY: json.dumps(report, sort_keys=True, indent=1)},
    }
    results = {k: v for k, v in report.items() if k not in VOLATILE}
    essence = {**manifest, "data": {REPORT_KEY: json.dumps(results, sort_keys=True)}}
    manifest["metadata"]["annotations"] = {SPEC_HASH: spec_hash(essence)}
    return manifest
