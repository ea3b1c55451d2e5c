"""DriftMonitor: alibi-detect drift detection on a ModelDeployment's inputs, and the
ground-truth monitor (label-joined accuracy and fairness per model version)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from .common import (
    DataSource,
    Duration,
    KModel,
    LocalObjectReference,
    ResourceStatus,
    validations,
)
from .modeldeployment import QUANTITY_PATTERN, ResourceRequirements

Detector = Literal["ks", "chisquare", "tabular", "mmd", "cvm-online"]


class WindowSpec(KModel):
    """Which served inputs are tested together."""

    size: int = Field(default=500, ge=10, le=100000)
    """Rows per window."""
    max_age: Duration = "10m"
    """A window that is not full after this long is tested anyway (if it has enough rows)."""


class RetrainJobSpec(KModel):
    """A batch/v1 Job created once per drift episode."""

    cooldown: Duration = "24h"
    """Minimum time between two retraining Jobs."""
    template: dict[str, Any] = Field(
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """A batch/v1 JobTemplateSpec (metadata and spec)."""


class OnDriftSpec(KModel):
    """What happens when drift is detected."""

    event: bool = True
    """Post an Event when drift starts and ends."""
    retrain_job: RetrainJobSpec | None = None
    """Create a retraining Job."""


# Where bulk label files are read from: a local path of the monitor's pod, S3, or a
# PersistentVolumeClaim (mounted read-only).
BULK_URI_PATTERN = r"^(file:///|s3://|pvc://)\S+$"
_SUFFIX = r"\\.(csv|parquet|jsonl)$"


class TruthThresholds(KModel):
    """Bounds per model version; a version that crosses one (with at least minSamples
    labelled predictions in the window) sets PerformanceDegraded."""

    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    """Classification: lowest acceptable accuracy."""
    min_precision: float | None = Field(default=None, ge=0, le=1)
    """Classification: lowest acceptable precision (macro over classes)."""
    min_recall: float | None = Field(default=None, ge=0, le=1)
    """Classification: lowest acceptable recall (macro over classes)."""
    min_f1: float | None = Field(default=None, ge=0, le=1)
    """Classification: lowest acceptable F1 (macro over classes)."""
    min_roc_auc: float | None = Field(default=None, ge=0, le=1)
    """Classification with probabilities: lowest acceptable ROC AUC."""
    max_log_loss: float | None = Field(default=None, ge=0)
    """Classification with probabilities: highest acceptable log loss."""
    max_mae: float | None = Field(default=None, ge=0)
    """Regression: highest acceptable mean absolute error."""
    max_rmse: float | None = Field(default=None, ge=0)
    """Regression: highest acceptable root mean squared error."""
    min_coverage: float | None = Field(default=None, ge=0, le=1)
    """Lowest acceptable share of the window's predictions that have a label."""


class BulkSource(KModel):
    """A file (or a prefix of files, ending in /) of labels, polled on an interval; each
    file is loaded once. Columns: id, label; other columns are label metadata."""

    model_config = validations(
        ("has(self.format) || self.uri.matches('" + _SUFFIX + "')",
         "bulk format must be set when the uri does not end in .csv, .parquet or .jsonl",
         ".format"),
        ("!has(self.format) || !self.uri.matches('" + _SUFFIX + "') || "
         "self.uri.endsWith('.' + self.format)",
         "bulk format does not match the uri's suffix", ".format"),
    )

    uri: str = Field(pattern=BULK_URI_PATTERN, max_length=2048)
    """file:///PATH, s3://BUCKET/KEY or pvc://CLAIM/PATH; a uri ending in / is a prefix."""
    format: Literal["csv", "parquet", "jsonl"] | None = None
    """csv | parquet | jsonl; from the uri's suffix when unset."""
    interval: Duration = "1h"
    """How often the source is looked at for new files."""


class TruthStorage(KModel):
    """Where the monitor's SQLite store lives."""

    size: str | None = Field(default=None, max_length=64, pattern=QUANTITY_PATTERN)
    """Size of a PersistentVolumeClaim for the store; unset: an emptyDir (lost when the
    monitor's pod is replaced)."""
    storage_class_name: str | None = Field(default=None, max_length=253)
    """StorageClass of that claim; the cluster's default when unset."""


class SensitiveFeature(KModel):
    """A feature the model's outcomes are sliced by."""

    name: str = Field(min_length=1, max_length=253)
    """Input feature name (one of featureNames, or a key of the request's parameters), or
    a label metadata column."""
    source: Literal["input", "label"] = "input"
    """input: from the logged request; label: from the label's metadata."""


class FairnessSpec(KModel):
    """Per-slice metrics and gaps (fairlearn) over sensitive features."""

    sensitive_features: list[SensitiveFeature] = Field(min_length=1, max_length=16)
    """The features to slice by."""
    max_demographic_parity_difference: float | None = Field(default=None, ge=0, le=1)
    """Highest acceptable difference in selection rate between slices."""
    max_equalized_odds_difference: float | None = Field(default=None, ge=0, le=1)
    """Highest acceptable equalized odds difference (TPR/FPR gaps) between slices."""
    max_accuracy_gap: float | None = Field(default=None, ge=0, le=1)
    """Highest acceptable difference in accuracy between slices."""
    min_slice_size: int = Field(default=30, ge=1, le=1000000)
    """Slices with fewer labelled predictions are reported but left out of the gaps."""
    positive_label: str | None = Field(default=None, max_length=253)
    """The class counted as positive for selection rate, TPR and FPR. Unset: 1 for 0/1
    labels, the larger of two labels; with more classes the rate gaps are left out
    (accuracy gaps remain)."""


class OnDegradedSpec(KModel):
    """What happens when a threshold is crossed."""

    event: bool = True
    """Post a Warning Event when PerformanceDegraded or FairnessViolated turns True (and
    a Normal one when it clears)."""
    retrain_job: bool = False
    """Create a retraining Job from spec.onDrift.retrainJob's template (same cooldown)."""


class GroundTruthSpec(KModel):
    """Join served predictions with labels that arrive later; metrics per model version.

    One `kustos truth` Deployment per DriftMonitor (see docs/ground-truth.md)."""

    model_config = validations(
        ("self.task == 'regression' || !has(self.thresholds) || "
         "(!has(self.thresholds.maxMae) && !has(self.thresholds.maxRmse))",
         "thresholds maxMae and maxRmse need task regression", ".thresholds"),
        ("self.task == 'classification' || !has(self.thresholds) || "
         "(!has(self.thresholds.minAccuracy) && !has(self.thresholds.minPrecision) && "
         "!has(self.thresholds.minRecall) && !has(self.thresholds.minF1) && "
         "!has(self.thresholds.minRocAuc) && !has(self.thresholds.maxLogLoss))",
         "thresholds minAccuracy, minPrecision, minRecall, minF1, minRocAuc and maxLogLoss "
         "need task classification",
         ".thresholds"),
        ("self.task == 'classification' || !has(self.fairness)",
         "fairness needs task classification", ".fairness"),
    )

    task: Literal["classification", "regression"] = "classification"
    """classification | regression: which metrics are computed."""
    window: Duration = "1h"
    """Metrics cover the predictions of this trailing window."""
    min_samples: int = Field(default=100, ge=1, le=10000000)
    """Labelled predictions a version needs in the window before thresholds apply."""
    thresholds: TruthThresholds | None = None
    """Bounds that set PerformanceDegraded."""
    bulk: list[BulkSource] | None = Field(default=None, max_length=16)
    """Label files to load (besides labels posted to the feedback endpoints)."""
    storage: TruthStorage | None = None
    """The store's volume."""
    retention: Duration = "168h"
    """Predictions and labels older than this are deleted from the store."""
    max_rows: int = Field(default=1000000, ge=1000, le=100000000)
    """At most this many predictions are kept (oldest deleted first)."""
    fairness: FairnessSpec | None = None
    """Fairness slices and thresholds (sets FairnessViolated)."""
    on_degraded: OnDegradedSpec = Field(default_factory=OnDegradedSpec)
    """Actions when a threshold is crossed."""
    resources: ResourceRequirements | None = None
    """Compute resources of the monitor's container; the operator config's default
    (that of the explainer) when unset."""


class DriftMonitorSpec(KModel):
    """Desired state of a DriftMonitor."""

    model_config = validations(
        ("self.detector != 'tabular' || has(self.categoricalFeatures)",
         "detector tabular needs categoricalFeatures", ".categoricalFeatures"),
        ("has(self.reference) || has(self.groundTruth)",
         "set reference (input drift), groundTruth (label-joined metrics) or both",
         ".reference"),
        ("!has(self.groundTruth) || !has(self.groundTruth.onDegraded) || "
         "!has(self.groundTruth.onDegraded.retrainJob) || "
         "!self.groundTruth.onDegraded.retrainJob || "
         "(has(self.onDrift) && has(self.onDrift.retrainJob))",
         "groundTruth.onDegraded.retrainJob needs onDrift.retrainJob (its template)",
         ".groundTruth.onDegraded.retrainJob"),
    )

    target_ref: LocalObjectReference
    """The ModelDeployment whose inputs are monitored (same namespace)."""
    detector: Detector = "ks"
    """ks | chisquare | tabular | mmd | cvm-online."""
    reference: DataSource | None = None
    """Reference data (CSV or .npy, features in model order); input drift is detected
    only when it is set."""
    feature_names: list[str] | None = Field(default=None, max_length=10000)
    """Names of the model's input features, in order."""
    categorical_features: list[int] | None = Field(default=None, max_length=10000)
    """Indices of categorical features (chisquare / tabular)."""
    window: WindowSpec = Field(default_factory=WindowSpec)
    """Test window."""
    p_value: float = Field(default=0.05, gt=0, lt=1)
    """Threshold below which a feature (or the window) counts as drifted."""
    on_drift: OnDriftSpec = Field(default_factory=OnDriftSpec)
    """Actions on drift."""
    ground_truth: GroundTruthSpec | None = None
    """Ground-truth monitoring: accuracy and fairness from labels joined with the served
    predictions."""


class FeaturePValue(KModel):
    """One feature's latest test result."""

    feature: str
    """Feature name."""
    p_value: float | None = None
    """p-value of the latest window."""
    distance: float | None = None
    """Test statistic / distance of the latest window."""


class LastDrift(KModel):
    """The latest drift episode."""

    at: datetime | None = None
    """When drift was detected."""
    features: list[str] | None = None
    """The drifting features."""
    job: str | None = None
    """The retraining Job created for it."""


class LabelDelay(KModel):
    """Time from prediction to label."""

    p50: float | None = None
    """Median, seconds."""
    p95: float | None = None
    """95th percentile, seconds."""


class TruthMetrics(KModel):
    """A version's metrics over the window (those the task and the outputs allow)."""

    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    roc_auc: float | None = None
    log_loss: float | None = None
    mae: float | None = None
    rmse: float | None = None
    estimated_accuracy: float | None = None
    """Estimated before labels arrive (confidence-based), when probabilities exist."""


class FairnessGap(KModel):
    """One sensitive feature's gaps between slices."""

    feature: str
    """The sensitive feature."""
    slices: int | None = None
    """Slices counted in the gaps (at least minSliceSize labelled predictions)."""
    demographic_parity_difference: float | None = None
    equalized_odds_difference: float | None = None
    accuracy_gap: float | None = None


class TruthVersion(KModel):
    """One model version's summary over the window."""

    version: str
    """The served model version."""
    count: int | None = None
    """Labelled predictions in the window."""
    coverage: float | None = None
    """Share of the window's predictions that have a label."""
    label_delay_seconds: LabelDelay | None = None
    """Time from prediction to label."""
    metrics: TruthMetrics | None = None
    """Metrics (unset until there are labelled predictions)."""
    fairness: list[FairnessGap] | None = Field(default=None, max_length=16)
    """Gaps per sensitive feature (with spec.groundTruth.fairness)."""


class TruthViolation(KModel):
    """A threshold a version crosses."""

    version: str
    metric: str
    """accuracy, f1, coverage, ... or feature/gap for fairness."""
    value: float
    threshold: float
    kind: Literal["performance", "fairness"]


class LastDegraded(KModel):
    """The latest performance or fairness episode."""

    at: datetime | None = None
    """When PerformanceDegraded or FairnessViolated turned True."""
    violations: list[str] | None = Field(default=None, max_length=64)
    """What was crossed, as version/metric."""
    job: str | None = None
    """The retraining Job created for it."""


class GroundTruthStatus(KModel):
    """What the ground-truth monitor reports (copied from its /v1/truth/status)."""

    predictions: int | None = None
    """Predictions in the store."""
    labels: int | None = None
    """Labels in the store."""
    joined: int | None = None
    """Predictions with a label."""
    versions: list[TruthVersion] | None = Field(
        default=None, max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["version"]})
    """Per model version (the most recently served first, at most 32)."""
    violations: list[TruthViolation] | None = Field(default=None, max_length=64)
    """Thresholds crossed at the last evaluation."""
    last_evaluation: datetime | None = None
    """When the monitor last computed the metrics."""
    last_degraded: LastDegraded | None = None
    """The latest episode."""


class DriftMonitorStatus(ResourceStatus):
    """Observed state of a DriftMonitor. Conditions: Ready, DriftDetected, Degraded,
    PerformanceDegraded, FairnessViolated."""

    last_check: datetime | None = None
    """When the latest window was tested."""
    windows_evaluated: int | None = None
    """Windows tested so far."""
    feature_p_values: list[FeaturePValue] | None = None
    """Per-feature results of the latest window."""
    last_drift: LastDrift | None = None
    """The latest drift episode."""
    ground_truth: GroundTruthStatus | None = None
    """Ground-truth summary (with spec.groundTruth)."""


class DriftMonitor(KModel):
    """Drift detection on the inputs a ModelDeployment serves."""

    api_version: Literal["kustos.dev/v1alpha1"] = "kustos.dev/v1alpha1"
    kind: Literal["DriftMonitor"] = "DriftMonitor"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: DriftMonitorSpec
    status: DriftMonitorStatus | None = None
