"""BatchInference handlers: gate the model, create the indexed Job, report its progress.

The gate is the ModelDeployment's: a modelRef is used only while its ModelDeployment
exists and is not PolicyCompliant=False, and the GovernancePolicies with enforcement Deny
are evaluated on the model (the referenced ModelDeployment's spec, or spec.model with
spec.governance) as the admission webhook evaluates a ModelDeployment. A blocked run is
retried with backoff (an approval or a policy change lets it start). The spec is
immutable (CEL), so the Job is created once and never patched; the operator alone writes
the status, from the Job and its pods, every REFRESH_SECONDS until the run has finished.

That refresh is a WorkLoop (controllers/workloop.py, as the registry polls and the
rollouts) fed by the BatchInference events: not a kopf timer, whose finalizer on every
object would block its deletion (and its namespace's) whenever the operator is not
running. A run is in the loop while status.jobName is set and its phase is neither
Complete nor Failed; finished or deleted runs leave it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kustos.api.v1alpha1 import GROUP, VERSION
from kustos.api.v1alpha1.batchinference import BatchInferenceSpec
from kustos.api.v1alpha1.modeldeployment import ModelSource
from kustos.governance.namespace_policies import policies_for
from kustos.governance.policy import evaluate, summary
from kustos.k8s import client, events
from kustos.k8s import status as k8s_status
from kustos.k8s.client import ApiError
from kustos.registry.resolution import served_spec
from kustos.registry.uri import is_registry_uri
from kustos.render import batchinference as render_bi
from kustos.status import batchinference as status_bi
from kustos.status.conditions import get_condition
from kustos.status.owners import StatusOwner

from . import handled
from .children import owned_by
from .context import backoff, config
from .workloop import Entry, ObjectKey, WorkLoop, live_object, start_in_memo, stop_in_memo

log = logging.getLogger(__name__)
KIND = "BatchInference"
PLURAL = "batchinferences"
OWNER = StatusOwner("kustos-batch", fields=status_bi.FIELDS, conditions=status_bi.CONDITIONS)
REFRESH_SECONDS = 5.0
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


class Blocked(Exception):
    def __init__(self, blocked: status_bi.Blocked) -> None:
        super().__init__(f"{blocked.reason}: {blocked.message}")
        self.blocked = blocked


def resolve(body: Mapping[str, Any], spec: BatchInferenceSpec
            ) -> tuple[ModelSource, str, str | None, dict[str, Any]]:
    """(model, model name, ServiceAccount, status.model) once the gate lets the run
    start; raises Blocked otherwise."""
    namespace = body["metadata"]["namespace"]
    if spec.model_ref is not None:
        ref = spec.model_ref.name
        md = client.get("ModelDeployment", ref, namespace)
        if md is None:
            raise Blocked(status_bi.Blocked("ModelNotFound",
                                            f"ModelDeployment {ref} does not exist"))
        compliant = get_condition(md, "PolicyCompliant")
        if compliant is not None and compliant.get("status") == "False":
            raise Blocked(status_bi.Blocked(
                "PolicyViolation", f"ModelDeployment {ref} is not PolicyCompliant: "
                                   f"{compliant.get('message') or compliant.get('reason')}"))
        judged_spec: Mapping[str, Any] = md.get("spec") or {}
        # A models:/ URI runs the file status.registry resolved it to, as the serving
        # pods do (registry.resolution.served_spec).
        model = served_spec(md).model
        if is_registry_uri(model.uri):
            raise Blocked(status_bi.Blocked(
                "ModelNotResolved", f"ModelDeployment {ref}'s {model.uri} is not resolved "
                                    "in its registry yet (status.registry)"))
        account = ref if model.web_identity else None
        name = ref
    else:
        assert spec.model is not None  # CEL: exactly one of modelRef and model
        model = spec.model
        if is_registry_uri(model.uri):
            raise Blocked(status_bi.Blocked(
                "InvalidSpec", "spec.model.uri: a BatchInference does not resolve models:/ "
                               "URIs itself; use modelRef to a ModelDeployment that does",
                final=True))
        judged_spec = {"model": model.wire(),
                       **({"governance": spec.governance.wire()} if spec.governance else {})}
        account = None
        name = body["metadata"]["name"]
    deny = [p for p in policies_for(namespace) if p.enforcement != "Warn"]
    found = evaluate(judged_spec, deny)
    if found:
        what = f"ModelDeployment {name}" if spec.model_ref else "spec.model"
        raise Blocked(status_bi.Blocked("PolicyViolation", f"{what}: {summary(found)}"))
    for ref_ in (model.credentials_secret_ref, spec.input.credentials_secret_ref,
                 spec.output.credentials_secret_ref):
        if ref_ is not None and client.get("Secret", ref_.name, namespace) is None:
            raise Blocked(status_bi.Blocked("CredentialsNotFound",
                                            f"Secret {ref_.name} does not exist"))
    used = {"version": model.version, "digest": model.digest, "uri": model.uri,
            "modelDeployment": spec.model_ref.name if spec.model_ref else None}
    return model, name, account, {k: v for k, v in used.items() if v is not None}


def _pods(namespace: str, job: str) -> list[dict[str, Any]]:
    return client.list_objects("Pod", namespace, {JOB_NAME_LABEL: job})


def write_status(body: Mapping[str, Any], spec: BatchInferenceSpec | None,
                 job: Mapping[str, Any] | None, blocked: status_bi.Blocked | None = None,
                 model: dict[str, Any] | None = None) -> None:
    meta = body["metadata"]
    pods = _pods(meta["namespace"], job["metadata"]["name"]) if job is not None else []
    shards = render_bi.shards(spec) if spec is not None else 0
    output = spec.output.uri if spec is not None else ""

    wanted: dict[str, Any] = {}

    def update(current: dict[str, Any]) -> dict[str, Any]:
        wanted.clear()
        wanted.update(status_bi.compute(current, job, pods, shards=shards, output_uri=output,
                                        model=model, blocked=blocked, now=datetime.now(UTC)))
        return wanted

    written = k8s_status.write(KIND, meta["name"], meta["namespace"], meta["uid"], OWNER,
                               update, current=dict(body))
    if written is None or not written.wrote:
        return
    before = (written.before.get("status") or {}).get("phase")
    after = wanted.get("phase")
    # One Event per finished run: the status write that records the end posts it (a
    # kill between the two loses the Event, never doubles it).
    if after != before and after in ("Complete", "Failed"):
        failed: dict[str, Any] = next(
            (c for c in wanted.get("conditions") or [] if c["type"] == "Failed"), {})
        message = (f"{wanted.get('rowsDone')} rows predicted to {output}" if after == "Complete"
                   else str(failed.get("message") or "the run failed"))
        events.post(written.before, f"Batch{after}", message, warning=after == "Failed")


def _own_job(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Job, if it exists and is ours; NameConflict-blocked when the name is taken."""
    meta = body["metadata"]
    job = client.get("Job", render_bi.job_name(meta["name"]), meta["namespace"])
    if job is not None and not owned_by(job, meta["uid"]):
        raise Blocked(status_bi.Blocked(
            "NameConflict", f"Job {job['metadata']['name']} exists and is not owned by this "
                            "BatchInference; rename or delete it", final=True))
    return job


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, retry: int, **_: Any) -> None:
    """Create the Job once the model may run; then report."""
    try:
        spec = BatchInferenceSpec.model_validate(body["spec"])
    except ValidationError as err:
        message = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                            for e in err.errors()[:5])
        write_status(body, None, None, status_bi.Blocked("InvalidSpec", message, final=True))
        raise kopf.PermanentError(f"InvalidSpec: {message}") from None
    try:
        job = _own_job(body)
        if job is None:
            model, name, account, used = resolve(body, spec)
            [manifest] = render_bi.render(body, model, config(), name, account)
            log.info("creating Job %s/%s", body["metadata"]["namespace"],
                     manifest["metadata"]["name"])
            job = client.apply(manifest)
            write_status(body, spec, job, model=used)
        else:
            write_status(body, spec, job)
    except Blocked as err:
        write_status(body, spec, None, err.blocked)
        if err.blocked.final:
            raise kopf.PermanentError(str(err)) from None
        # Nothing re-triggers a held run when a policy, an approval or the referenced model
        # changes, so the retry is what notices: capped at 30 s so that a lifted hold
        # starts the run within half a minute.
        raise kopf.TemporaryError(str(err), delay=backoff(retry, base=5.0, cap=30.0)) from None
    except ApiError as err:
        if err.status in (400, 422):
            write_status(body, spec, None, status_bi.Blocked(
                "InvalidChild", f"the API server refused the Job: {err.message}", final=True))
            raise kopf.PermanentError(f"InvalidChild: {err.message}") from None
        raise kopf.TemporaryError(f"ApiError: {err}", delay=backoff(retry)) from None


def running(body: Mapping[str, Any]) -> bool:
    """Started (status.jobName) and not finished: the refresh's work."""
    status = body.get("status") or {}
    return bool(status.get("jobName")) and status.get("phase") not in ("Complete", "Failed")


def refresh(body: Mapping[str, Any]) -> None:
    """Progress from the Job and its pods, until the run has finished (then nothing)."""
    if not running(body):
        return  # finished, or not started: the reconcile writes those
    status = body["status"]
    spec = BatchInferenceSpec.model_validate(body["spec"])
    meta = body["metadata"]
    job = client.get("Job", status["jobName"], meta["namespace"])
    if job is None or not owned_by(job, meta["uid"]):
        return
    write_status(body, spec, job)


# Keyed by (namespace, name, uid): a re-created object of the same name is another run.
Target = ObjectKey  # (namespace, name, uid)
WORKERS = 4
ROUND = 1.0  # seconds between the loop's looks at what is due


def track(memo: Any, body: Mapping[str, Any], type_: str | None) -> None:
    """Keep the list of running BatchInferences; called on kopf's loop for every
    BatchInference event. A run joins REFRESH_SECONDS after it is first seen (as the
    timer's initial delay did: the reconcile has just written its status)."""
    loop: WorkLoop[Target] | None = getattr(memo, "kustos_batch", None)
    if loop is None:
        return
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"], meta["uid"])
    live = type_ != "DELETED" and not meta.get("deletionTimestamp")
    if not live or not running(body):
        loop.entries.pop(key, None)
        return
    if key not in loop.entries:
        loop.entries[key] = Entry(due=time.monotonic() + REFRESH_SECONDS, cap=60.0)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def batch_inference_event(body: kopf.Body, type: str | None, memo: kopf.Memo,
                                **_: Any) -> None:
    if type == "DELETED":
        handled.forget(memo, body["metadata"]["uid"])
    track(memo, body, type)


@kopf.on.startup()
async def start_batch_refresh(memo: kopf.Memo, **_: Any) -> None:
    def work(key: Target) -> float:
        bi = live_object(KIND, key)
        if bi is not None:
            refresh(bi)
        return REFRESH_SECONDS

    start_in_memo(memo, "kustos_batch", work, workers=WORKERS, name="kustos-batch",
                  interval=ROUND)


@kopf.on.cleanup()
async def stop_batch_refresh(memo: kopf.Memo, **_: Any) -> None:
    await stop_in_memo(memo, "kustos_batch")
