"""spec.rollout / status.rollout of a ModelDeployment: gated progressive delivery.

A change of spec.model makes the new model the candidate; the model recorded in
status.rollout.stable keeps serving until every gate of every step has passed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import Duration, KModel, validations

RolloutPhase = Literal["Idle", "Shadow", "Canary", "Paused", "Promoted", "RolledBack"]
Verdict = Literal["pass", "fail", "inconclusive"]


class ShadowSpec(KModel):
    """Mirror a sample of live requests to the candidate before it takes any traffic."""

    duration: Duration = "5m"
    """How long the shadow phase analyses mirrored traffic before the first canary step."""
    sample_percent: int = Field(default=100, ge=1, le=100)
    """Share of the stable's requests copied to the candidate (asynchronously: the caller
    never waits for the candidate)."""


class RolloutStep(KModel):
    """One canary step: the candidate's share of traffic and how long it is analysed."""

    weight: int = Field(ge=1, le=100)
    """The candidate's traffic share in percent (1..100)."""
    duration: Duration = "5m"
    """How long the step lasts; its gates are judged at the end (and at every analysis
    interval for a failure)."""


class Thresholds(KModel):
    """The gates: candidate compared with stable over the same window. Unset: not gated."""

    max_error_rate_increase: float | None = Field(default=None, ge=0, le=1)
    """Candidate error rate (5xx share) minus the stable's, absolute (0.01 = one point)."""
    max_latency_p99_ratio: float | None = Field(default=None, gt=0)
    """Candidate p99 latency divided by the stable's."""
    max_prediction_divergence: float | None = Field(default=None, ge=0)
    """Divergence of the predicted-class distributions (method: psi or js)."""
    divergence_method: Literal["psi", "js"] = "psi"
    """psi: population stability index (smoothed); js: Jensen-Shannon divergence (base 2,
    0..1)."""
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    """Shadow phase: share of mirrored rows on which the candidate agreed with the stable."""
    max_drift_score: float | None = Field(default=None, ge=0)
    """Input drift score of the candidate's traffic (a DriftMonitor targeting the model)."""
    require_no_drift: bool = False
    """Fail when the DriftMonitor targeting the model reports drift."""
    min_accuracy_ratio: float | None = Field(default=None, gt=0)
    """Candidate accuracy on ground truth divided by the stable's (a DriftMonitor with
    groundTruth targeting the model)."""
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    """Stable accuracy minus candidate accuracy, absolute."""
    max_fairness_gap_increase: float | None = Field(default=None, ge=0, le=1)
    """Candidate's largest fairness gap minus the stable's (ground-truth fairness slices)."""


class AnalysisSpec(KModel):
    """How each phase is judged."""

    model_config = validations(
        ("!has(self.maxInconclusive) || self.onInconclusive == 'wait'",
         "spec.rollout.analysis.maxInconclusive applies to onInconclusive wait",
         ".maxInconclusive"),
    )

    interval: Duration = "30s"
    """How often the pods' metrics are scraped and the gates judged."""
    min_samples: int = Field(default=100, ge=1, le=100000000)
    """Requests (rows for distributions) each track needs in the window before a gate can
    pass or fail; fewer: inconclusive."""
    thresholds: Thresholds = Field(default_factory=Thresholds)
    """The gates."""
    on_inconclusive: Literal["wait", "rollback", "promote"] = "wait"
    """At the end of a step with a gate still inconclusive: wait (extend the step),
    rollback, or promote (go on)."""
    max_inconclusive: Duration | None = None
    """With wait: roll back when a step has been inconclusive this long past its
    duration."""


class RolloutSpec(KModel):
    """Gated progressive delivery: a new spec.model goes through shadow (optional), the
    canary steps, then is promoted; a failed gate rolls it back."""

    model_config = validations(
        # strictly increasing: sorted and no weight twice (Kubernetes' CEL list library)
        ("self.steps.map(s, s.weight).isSorted()"
         " && self.steps.all(a, self.steps.exists_one(b, b.weight == a.weight))",
         "spec.rollout.steps weights must be strictly increasing (e.g. 10, 50, 100)",
         ".steps"),
    )

    shadow: ShadowSpec | None = None
    """Mirror traffic to the candidate first; no shadow phase when unset."""
    steps: list[RolloutStep] = Field(min_length=1, max_length=16)
    """The canary steps, weights strictly increasing (e.g. 10, 50, 100)."""
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    """The gates and how they are judged."""


class RolloutModel(KModel):
    """A model as the rollout tracks it."""

    uri: str | None = None
    """Where the model file is."""
    digest: str | None = None
    """Its digest."""
    version: str | None = None
    """Its version."""
    format: str | None = None
    """Its format."""


class MetricResult(KModel):
    """One gate of the last analysis."""

    stable: float | None = None
    """The stable track's value (None: not measured)."""
    candidate: float | None = None
    """The candidate's value."""
    value: float | None = None
    """What the threshold is compared with (difference, ratio, divergence, ...)."""
    threshold: float | None = None
    """The threshold."""
    verdict: Verdict | None = None
    """pass, fail or inconclusive."""
    samples: int | None = None
    """The smaller track's sample count in the window."""
    reason: str | None = None
    """Why inconclusive or failed, in words."""


class AnalysisResult(KModel):
    """The last analysis: per gate, and overall."""

    time: datetime | None = None
    """When it ran."""
    verdict: Verdict | None = None
    """fail when any gate failed, pass when all passed, else inconclusive."""
    metrics: dict[str, MetricResult] | None = None
    """Per gate (errorRate, latencyP99, predictionDivergence, agreement, drift,
    accuracy, fairness)."""


class RolloutStatus(KModel):
    """Where the rollout is."""

    phase: RolloutPhase | None = None
    """Idle, Shadow, Canary, Paused, Promoted or RolledBack."""
    step: int | None = None
    """The canary step (1-based) being analysed."""
    steps: int | None = None
    """How many steps the rollout has."""
    weight: int | None = None
    """The candidate's current traffic share in percent."""
    stable: RolloutModel | None = None
    """The model the stable track serves."""
    candidate: RolloutModel | None = None
    """The model being rolled out."""
    step_started_at: datetime | None = None
    """When the current phase or step started."""
    paused_from: Literal["Shadow", "Canary"] | None = None
    """The phase a pause interrupted (resume returns to it)."""
    last_analysis: AnalysisResult | None = None
    """The last analysis."""
    last_action: str | None = None
    """The last manual action consumed (kustos.dev/rollout-action)."""
    message: str | None = None
    """What happened last, in words."""
