"""BatchInference -> one indexed Job. Pure: no I/O.

The pod fetches and verifies the model exactly as a ModelDeployment's pod does (the same
fetch init container, render.modeldeployment) and runs `kustos batch` on its shard
($JOB_COMPLETION_INDEX). The input is read in place when it can be: a pvc:// claim
mounted read-only, or an s3:// object without a digest with ranged GETs (each shard reads
only its part); an input with a digest (checked over all its bytes) and an https:// one
are fetched whole into the pod by a `kustos fetch` init container first. Parquet needs
fastparquet, which only the kustos-explain image has: a run that reads or writes Parquet
runs that image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from kustos.api.v1alpha1.batchinference import BatchInferenceSpec
from kustos.api.v1alpha1.modeldeployment import ModelSource
from kustos.config import OperatorConfig

from .aws_identity import session_name, web_identity_volume
from .meta import (
    COMPONENT,
    INSTANCE,
    MANAGED,
    MODEL_DIGEST,
    MODEL_VERSION,
    NAME,
    child_meta,
    with_hash,
)
from .modeldeployment import (
    PVC_MOUNT,
    fetch_container,
    model_file_name,
    pod_security_context,
    security_context,
)
from .runtimes import MODEL_DIR
from .signature import fetch_signature

COMPONENT_BATCH = "batch"
DATA_DIR = "/mnt/data"
CONTAINER = "batch"
# The input's Secret in the batch container: envFrom with this prefix, read by `kustos
# batch --input-env-prefix`, so its AWS_* never mix with the output's (unprefixed).
INPUT_ENV_PREFIX = "KUSTOS_INPUT_"


def job_name(name: str) -> str:
    return name


def claim_path(uri: str) -> tuple[str, str]:
    """(claim, path inside it) of pvc://CLAIM/PATH."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def reads_s3_in_place(spec: BatchInferenceSpec) -> bool:
    """An s3:// input without a digest: the shards read it with ranged GETs, no copy.
    A digest can only be checked over all the bytes, so that input is fetched whole."""
    return urlparse(spec.input.uri).scheme == "s3" and not spec.input.digest


def input_path(spec: BatchInferenceSpec) -> str:
    """Where the batch container reads the input: the mounted claim, the s3:// object
    itself, or the fetched copy."""
    if urlparse(spec.input.uri).scheme == "pvc":
        claim, path = claim_path(spec.input.uri)
        return f"{PVC_MOUNT}/{claim}/{path}"
    if reads_s3_in_place(spec):
        return spec.input.uri
    return f"{DATA_DIR}/input.{spec.input.format}"


def output_path(spec: BatchInferenceSpec) -> str:
    """The mounted claim's directory, or the s3:// prefix as given."""
    if urlparse(spec.output.uri).scheme == "s3":
        return spec.output.uri
    claim, path = claim_path(spec.output.uri)
    return f"{PVC_MOUNT}/{claim}/{path}".rstrip("/")


def uses_parquet(spec: BatchInferenceSpec) -> bool:
    return "parquet" in (spec.input.format, spec.output.format)


def image(spec: BatchInferenceSpec, config: OperatorConfig) -> str:
    """The batch container's image: kustos-explain (fastparquet) for Parquet, else kustos."""
    return config.images.explain if uses_parquet(spec) else config.images.kustos


def shards(spec: BatchInferenceSpec) -> int:
    return spec.shards or spec.parallelism


def _claims(spec: BatchInferenceSpec) -> dict[str, bool]:
    """The claims the batch container mounts: name -> read-only."""
    claims: dict[str, bool] = {}
    if urlparse(spec.output.uri).scheme == "pvc":
        out_claim, _ = claim_path(spec.output.uri)
        claims[out_claim] = False
    if urlparse(spec.input.uri).scheme == "pvc":
        in_claim, _ = claim_path(spec.input.uri)
        claims.setdefault(in_claim, True)
    return claims


def _fetch_input(spec: BatchInferenceSpec, config: OperatorConfig) -> dict[str, Any] | None:
    """An https:// input, or an s3:// one with a digest, is fetched (and its digest
    checked) into the pod; a pvc:// or digest-less s3:// input is read in place."""
    if urlparse(spec.input.uri).scheme == "pvc" or reads_s3_in_place(spec):
        return None
    args = ["fetch", spec.input.uri, input_path(spec)]
    if spec.input.digest:
        args += ["--digest", spec.input.digest]
    container: dict[str, Any] = {
        "name": "fetch-input",
        "image": config.images.fetch,
        "args": args,
        "resources": dict(config.fetch_resources),
        "securityContext": security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.input.credentials_secret_ref:
        container["envFrom"] = [{"secretRef": {"name": spec.input.credentials_secret_ref.name}}]
    return container


def batch_args(spec: BatchInferenceSpec, model: ModelSource, model_name: str) -> list[str]:
    """The exact `kustos batch` arguments of the batch container."""
    args = ["batch",
            "--model", f"{MODEL_DIR}/{model_file_name(model.uri)}",
            "--name", model.name or model_name,
            "--model-version", model.version,
            "--format", model.format]
    if model.digest:
        args += ["--digest", model.digest]
    args += ["--input", input_path(spec), "--input-format", spec.input.format]
    if reads_s3_in_place(spec):
        # Always, with or without an input Secret: the output's AWS_* never read the input.
        args += ["--input-env-prefix", INPUT_ENV_PREFIX]
    for column in spec.input.feature_columns or ():
        args += ["--feature", column]
    if spec.input.id_column:
        args += ["--id-field", spec.input.id_column]
    args += ["--output", output_path(spec), "--output-format", spec.output.format,
             "--id-column", spec.output.id_column]
    for output in spec.output.predictions or ():
        args += ["--prediction", output]
    args += ["--chunk-size", str(spec.chunk_size), "--shards", str(shards(spec)), "--quiet"]
    return args


def _batch_env_from(spec: BatchInferenceSpec) -> list[dict[str, Any]]:
    """The batch container's Secrets: an s3:// output's keys as AWS_* (it PUTs the parts
    itself), a digest-less s3:// input's as KUSTOS_INPUT_AWS_* (it reads the input)."""
    env_from: list[dict[str, Any]] = []
    if spec.output.credentials_secret_ref:
        env_from.append({"secretRef": {"name": spec.output.credentials_secret_ref.name}})
    if reads_s3_in_place(spec) and spec.input.credentials_secret_ref:
        env_from.append({"prefix": INPUT_ENV_PREFIX,
                         "secretRef": {"name": spec.input.credentials_secret_ref.name}})
    return env_from


def _resources(spec: BatchInferenceSpec, config: OperatorConfig) -> dict[str, Any]:
    res = spec.resources
    if res is None:
        return dict(config.default_resources)
    return {k: v for k, v in (("requests", res.requests), ("limits", res.limits)) if v}


def render_job(body: Mapping[str, Any], spec: BatchInferenceSpec, model: ModelSource,
               config: OperatorConfig, model_name: str,
               service_account: str | None = None) -> dict[str, Any]:
    """The indexed Job. ``model``: spec.model, or the referenced ModelDeployment's
    (``model_name`` its name, ``service_account`` its account for webIdentity)."""
    name = body["metadata"]["name"]
    namespace = body["metadata"].get("namespace", "")
    claims = _claims(spec)
    mounts: list[dict[str, Any]] = [
        {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "model", "emptyDir": {"sizeLimit": config.model_volume_size}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    for i, (claim, read_only) in enumerate(sorted(claims.items())):
        mounts.append({"name": f"claim-{i}", "mountPath": f"{PVC_MOUNT}/{claim}",
                       "readOnly": read_only})
        volumes.append({"name": f"claim-{i}", "persistentVolumeClaim": {
            "claimName": claim, "readOnly": read_only}})
    # The model's own claim, for the fetch container (as in a ModelDeployment's pod).
    if urlparse(model.uri).scheme == "pvc":
        volumes.append({"name": "source", "persistentVolumeClaim": {
            "claimName": urlparse(model.uri).netloc, "readOnly": True}})
    if model.signature is not None:
        volumes += fetch_signature(model, "").volumes
    if model.web_identity:
        volumes.append(web_identity_volume(model.web_identity))
    init = [fetch_container(model, config, session_name(namespace, model_name))]
    fetch_input = _fetch_input(spec, config)
    if fetch_input is not None:
        init.append(fetch_input)
        volumes.append({"name": "data", "emptyDir": {}})
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    batch = {
        "name": CONTAINER,
        "image": image(spec, config),
        "args": batch_args(spec, model, model_name),
        "resources": _resources(spec, config),
        "securityContext": security_context(),
        # The last line of `kustos batch` (its report, or the error) stays in the pod's
        # status: the operator sums the shards' reports from there.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    env_from = _batch_env_from(spec)
    if env_from:
        batch["envFrom"] = env_from
    annotations = {MODEL_VERSION: model.version}
    if model.digest:
        annotations[MODEL_DIGEST] = model.digest
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "initContainers": init,
        "containers": [batch],
        "volumes": volumes,
    }
    if service_account:
        pod_spec = {"serviceAccountName": service_account, **pod_spec}
    labels = {COMPONENT: COMPONENT_BATCH}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_meta(body, job_name(name), labels),
        "spec": {
            "completionMode": "Indexed",
            "completions": shards(spec),
            "parallelism": spec.parallelism,
            # A failed shard is retried alone; the run fails once one shard is out of
            # retries (its rows would never be written).
            "backoffLimitPerIndex": spec.backoff_limit_per_index,
            "maxFailedIndexes": 0,
            # A shard's next pod starts once the last one is gone: never two writers.
            "podReplacementPolicy": "Failed",
            "template": {
                "metadata": {
                    "labels": {INSTANCE: name, COMPONENT: COMPONENT_BATCH, MANAGED: "kustos",
                               NAME: "kustos-batch"},
                    "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER,
                                    **annotations},
                },
                "spec": pod_spec,
            },
        },
    }


def render(body: Mapping[str, Any], model: ModelSource, config: OperatorConfig,
           model_name: str, service_account: str | None = None) -> list[dict[str, Any]]:
    """The children of a BatchInference (the Job), with their spec-hash annotation."""
    spec = BatchInferenceSpec.model_validate(body["spec"])
    return [with_hash(render_job(body, spec, model, config, model_name, service_account))]
