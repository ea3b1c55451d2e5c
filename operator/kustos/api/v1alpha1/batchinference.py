"""BatchInference: predict a whole file with a model, as an indexed Job."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from .common import (
    DIGEST_PATTERN,
    KModel,
    LocalObjectReference,
    ResourceStatus,
    Uri,
    validations,
)
from .modeldeployment import GovernanceSpec, ModelSource, ResourceRequirements

# What `kustos batch` reads and writes. Parquet needs fastparquet, in the kustos-explain
# image only: the Job runs that image when the input or the output is Parquet.
InputFormat = Literal["csv", "jsonl", "parquet"]
OutputFormat = Literal["csv", "jsonl", "parquet"]
BatchPhase = Literal["Pending", "Running", "Complete", "Failed"]

# Output on a PersistentVolumeClaim: pvc://CLAIM/PATH (a directory, created if missing),
# or under an S3 prefix: s3://BUCKET/PREFIX.
OUTPUT_URI_PATTERN = (r"^(pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/\S*"
                      r"|s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/\S*)?)$")
COLUMN_PATTERN = r"^[^\s,\"]+$"
Column = Annotated[str, Field(pattern=COLUMN_PATTERN, max_length=256)]
OutputName = Annotated[str, Field(pattern=r"^[-_.a-zA-Z0-9]+$", max_length=63)]


class BatchInput(KModel):
    """The file to predict on."""

    model_config = validations(
        ("!self.uri.startsWith('file://')",
         "a Job's pod cannot read file:// URIs: use pvc://CLAIM/PATH, s3:// or https://",
         ".uri"),
        ("!has(self.idColumn) || !has(self.featureColumns) || "
         "!(self.idColumn in self.featureColumns)",
         "idColumn must not be one of featureColumns", ".idColumn"),
    )

    uri: Uri
    """Where the file lives: s3://BUCKET/KEY (without digest read in place by each shard
    with ranged GETs; with a digest fetched whole by `kustos fetch` and checked), https://
    (fetched), or pvc://CLAIM/PATH (read in place, mounted read-only)."""
    format: InputFormat = "csv"
    """csv (a header row naming the columns), jsonl (one JSON object per line) or parquet
    (read by row groups; the Job then runs the kustos-explain image, which has
    fastparquet)."""
    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN, max_length=71)
    """sha256 of the file, verified before it is read (s3:// and https:// only): the
    file is then fetched whole into each pod, as a digest covers all its bytes."""
    credentials_secret_ref: LocalObjectReference | None = None
    """A Secret with AWS_* keys for an s3:// or private https:// input: given to the
    input's fetch container, or, for an s3:// input read in place, to the batch container
    as KUSTOS_INPUT_AWS_* (apart from the output's AWS_*)."""
    feature_columns: list[Column] | None = Field(default=None, min_length=1, max_length=10000)
    """The model's input columns, in the model's order; every column but idColumn when
    unset (in file order)."""
    id_column: str | None = Field(default=None, max_length=256, pattern=COLUMN_PATTERN)
    """A column whose value becomes the row's inference id; the row number (from 0, in
    file order) when unset."""


class BatchOutput(KModel):
    """Where the predictions go."""

    model_config = validations(
        ("!has(self.credentialsSecretRef) || self.uri.startsWith('s3://')",
         "credentialsSecretRef is for an s3:// output", ".credentialsSecretRef"),
    )

    uri: str = Field(pattern=OUTPUT_URI_PATTERN, max_length=2048)
    """A directory on a PersistentVolumeClaim, pvc://CLAIM/PATH, or an S3 prefix,
    s3://BUCKET/PREFIX: one file (object) per chunk, part-NNNNNN.csv, written whole, so a
    restarted pod resumes at the first missing chunk."""
    format: OutputFormat = "csv"
    """csv, jsonl or parquet (the Job then runs the kustos-explain image)."""
    credentials_secret_ref: LocalObjectReference | None = None
    """A Secret with AWS_* keys for an s3:// output (given to the batch container)."""
    predictions: list[OutputName] | None = Field(default=None, min_length=1, max_length=8)
    """The model outputs to write (as the inference protocol names them: predict,
    predict_proba, or an ONNX model's outputs); the model's default output when unset."""
    id_column: str = Field(default="inference_id", max_length=63, pattern=r"^[-_.a-zA-Z0-9]+$")
    """Name of the inference-id column in the output."""


class BatchInferenceSpec(KModel):
    """Desired state of a BatchInference. Immutable: create a new one for another run."""

    model_config = validations(
        ("has(self.modelRef) != has(self.model)",
         "set exactly one of modelRef (a ModelDeployment's model) and model", ".modelRef"),
        ("!has(self.governance) || has(self.model)",
         "governance is for an own model; with modelRef the ModelDeployment's applies",
         ".governance"),
        ("!has(self.governance) || self.governance.riskTier != 'high' || "
         "has(self.model.digest)",
         "riskTier high needs a pinned model digest", ".model.digest"),
        ("!has(self.shards) || self.parallelism <= self.shards",
         "parallelism must not exceed shards (the Job's completions)", ".parallelism"),
        ("!has(self.model) || !has(self.model.webIdentity)",
         "webIdentity needs the model's own ServiceAccount: use modelRef to a "
         "ModelDeployment that has it", ".model.webIdentity"),
        ("self == oldSelf", "spec is immutable: create a new BatchInference", None),
    )

    model_ref: LocalObjectReference | None = None
    """A ModelDeployment in the namespace: its model (URI, digest, signature, format,
    credentials) is used, and the run starts only while it is admitted and compliant."""
    model: ModelSource | None = None
    """The model to run, as in a ModelDeployment (fetched and verified the same way)."""
    governance: GovernanceSpec | None = None
    """Owner, risk tier and approval of an own model; the GovernancePolicies with
    enforcement Deny must pass before the Job is created."""
    input: BatchInput
    """The file to predict on."""
    output: BatchOutput
    """Where the predictions go."""
    shards: int | None = Field(default=None, ge=1, le=1000)
    """How many parts the input is split into (the indexed Job's completions; parallelism
    when unset): shard i takes the chunks whose index modulo shards is i. status.rowsDone
    moves per finished shard."""
    parallelism: int = Field(default=1, ge=1, le=100)
    """Pods running at once (the Job's parallelism)."""
    chunk_size: int = Field(default=10000, ge=1, le=1000000)
    """Rows predicted and written at a time (one output file per chunk)."""
    backoff_limit_per_index: int = Field(default=3, ge=0, le=100)
    """Retries of a failed shard (a pod's restart resumes after its last written chunk)."""
    resources: ResourceRequirements | None = None
    """Resources of the batch container; the operator's defaults when unset."""


class BatchModel(KModel):
    """The model a run used."""

    version: str | None = None
    """Model version."""
    digest: str | None = None
    """Model digest."""
    uri: str | None = None
    """Where the model was fetched from."""
    model_deployment: str | None = None
    """The ModelDeployment it came from (spec.modelRef)."""


class BatchInferenceStatus(ResourceStatus):
    """Observed state of a BatchInference. Conditions: Ready (the Job runs: the model is
    admitted and the Job created), Complete, Failed (as a Job's)."""

    phase: BatchPhase | None = None
    """Pending, Running, Complete or Failed."""
    job_name: str | None = None
    """The indexed Job."""
    model: BatchModel | None = None
    """The model the Job runs."""
    shards: int | None = None
    """Shards of the run."""
    shards_done: int | None = None
    """Shards finished."""
    rows_done: int | None = None
    """Rows predicted and written by the finished shards."""
    rows_total: int | None = None
    """Rows in the input (known once a shard has finished)."""
    rows_per_second: int | None = None
    """rowsDone over the time since the Job started (until it finished)."""
    start_time: datetime | None = None
    """When the Job started."""
    completion_time: datetime | None = None
    """When the Job completed or failed."""
    output_uri: str | None = None
    """Where the predictions are (spec.output.uri)."""
    image: str | None = None
    """The image the Job's pods run: the kustos image, or kustos-explain (it has
    fastparquet) when the input or the output is Parquet."""


class BatchInference(KModel):
    """Predict a whole file (CSV, JSONL or Parquet) with a model, in parallel shards,
    resumable."""

    api_version: Literal["kustos.dev/v1alpha1"] = "kustos.dev/v1alpha1"
    kind: Literal["BatchInference"] = "BatchInference"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: BatchInferenceSpec
    status: BatchInferenceStatus | None = None
