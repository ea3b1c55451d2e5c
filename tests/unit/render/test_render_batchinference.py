"""The BatchInference render and status: pure functions, checked on their output."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kustos.api.crdgen import KINDS, crd
from kustos.api.v1alpha1 import BatchInferenceSpec, ModelDeploymentSpec
from kustos.api.v1alpha1.modeldeployment import ModelSource
from kustos.config import OperatorConfig
from kustos.render import batchinference as render_bi
from kustos.render.meta import SPEC_HASH
from kustos.render.modeldeployment import render as render_md
from kustos.status import batchinference as status_bi

DIGEST = "sha256:" + "ab" * 32
MODEL = {"version": "3", "uri": "s3://m/iris/model.skops", "digest": DIGEST,
         "credentialsSecretRef": {"name": "store"},
         "signature": {"publicKey": {"name": "keys", "key": "key.pub"}}}
NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": MODEL,
        "input": {"uri": "s3://data/in.csv", "digest": DIGEST,
                  "credentialsSecretRef": {"name": "store"}},
        "output": {"uri": "pvc://results/runs/1"},
        "parallelism": 2, "shards": 4, "chunkSize": 500,
    }
    base.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "BatchInference",
            "metadata": {"name": "score", "namespace": "ml", "uid": "uid-9", "generation": 1},
            "spec": base}


def job_of(b: dict[str, Any]) -> dict[str, Any]:
    spec = BatchInferenceSpec.model_validate(b["spec"])
    assert spec.model is not None
    [job] = render_bi.render(b, spec.model, OperatorConfig(), "score")
    return job


def test_an_indexed_job_owned_by_the_batch_inference() -> None:
    job = job_of(body())
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == ("batch/v1", "Job",
                                                                         "score")
    ref = job["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("BatchInference", "uid-9", True)
    assert len(job["metadata"]["annotations"][SPEC_HASH]) == 32
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"]) == (4, 2)
    assert spec["backoffLimitPerIndex"] == 3 and spec["maxFailedIndexes"] == 0
    assert spec["podReplacementPolicy"] == "Failed"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False


def test_the_model_is_fetched_by_the_model_deployments_own_init_container() -> None:
    """The very container a ModelDeployment's pod fetches and verifies the model with."""
    md = {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "score", "namespace": "ml", "uid": "u", "generation": 1},
          "spec": {"model": MODEL}}
    [deployment] = [c for c in render_md(md, OperatorConfig()) if c["kind"] == "Deployment"]
    want = deployment["spec"]["template"]["spec"]["initContainers"][0]
    pod = job_of(body())["spec"]["template"]["spec"]
    assert pod["initContainers"][0] == want
    assert "--signature-method" in want["args"] and DIGEST in want["args"]
    # its signature key volume comes along
    names = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in want["volumeMounts"]} <= names


def test_the_batch_container_args_and_mounts() -> None:
    pod = job_of(body(input={"uri": "pvc://data/in/x.jsonl", "format": "jsonl",
                             "featureColumns": ["a", "b"], "idColumn": "key"},
                      output={"uri": "pvc://results/out", "format": "jsonl",
                              "predictions": ["predict", "predict_proba"]}))["spec"][
        "template"]["spec"]
    [batch] = pod["containers"]
    args = batch["args"]
    assert args[0] == "batch"
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert flags["--input"] == "/mnt/pvc/data/in/x.jsonl"
    assert flags["--output"] == "/mnt/pvc/results/out"
    assert flags["--chunk-size"] == "500" and flags["--shards"] == "4"
    assert flags["--digest"] == DIGEST and flags["--model"] == "/mnt/models/model.skops"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--feature"] == ["a", "b"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--prediction"] == [
        "predict", "predict_proba"]
    assert "--shard" not in args  # from $JOB_COMPLETION_INDEX
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"data": True, "results": False}
    # a pvc:// input is read in place: no fetch-input container
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
    assert batch["securityContext"]["readOnlyRootFilesystem"] is True


def test_an_s3_input_is_fetched_with_its_digest_and_own_credentials() -> None:
    pod = job_of(body())["spec"]["template"]["spec"]
    fetch = pod["initContainers"][1]
    assert fetch["name"] == "fetch-input"
    assert fetch["args"] == ["fetch", "s3://data/in.csv", "/mnt/data/input.csv",
                             "--digest", DIGEST]
    assert fetch["envFrom"] == [{"secretRef": {"name": "store"}}]
    [batch] = pod["containers"]
    assert "envFrom" not in batch, "the batch container gets no credentials"
    assert {"name": "data", "mountPath": "/mnt/data", "readOnly": True} in batch["volumeMounts"]
    flags = dict(zip(batch["args"][1::2], batch["args"][2::2], strict=False))
    assert flags["--input"] == "/mnt/data/input.csv"
    assert "--input-env-prefix" not in batch["args"]


def in_place(pod: dict[str, Any]) -> None:
    """No copy of the input: no fetch-input container, no data volume."""
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
    assert "data" not in {v["name"] for v in pod["volumes"]}
    [batch] = pod["containers"]
    assert "/mnt/data" not in {m["mountPath"] for m in batch["volumeMounts"]}


def test_an_s3_input_without_digest_is_read_in_place_with_its_own_prefixed_keys() -> None:
    """Each shard reads its part with ranged GETs; the input's Secret reaches the batch
    container under KUSTOS_INPUT_, which `kustos batch --input-env-prefix` reads."""
    pod = job_of(body(input={"uri": "s3://data/in.parquet", "format": "parquet",
                             "credentialsSecretRef": {"name": "store"}}))["spec"][
        "template"]["spec"]
    in_place(pod)
    [batch] = pod["containers"]
    args = batch["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert flags["--input"] == "s3://data/in.parquet"
    assert flags["--input-format"] == "parquet"
    assert flags["--input-env-prefix"] == render_bi.INPUT_ENV_PREFIX == "KUSTOS_INPUT_"
    assert batch["envFrom"] == [{"prefix": "KUSTOS_INPUT_", "secretRef": {"name": "store"}}]
    assert batch["image"] == OperatorConfig().images.explain


def test_input_and_output_keys_stay_apart_in_the_batch_container() -> None:
    pod = job_of(body(input={"uri": "s3://data/in.csv", "credentialsSecretRef": {"name": "in"}},
                      output={"uri": "s3://results/runs/1",
                              "credentialsSecretRef": {"name": "out"}}))["spec"][
        "template"]["spec"]
    in_place(pod)
    [batch] = pod["containers"]
    # The output's keys as AWS_* (its PUTs), the input's under the prefix (its GETs).
    assert batch["envFrom"] == [{"secretRef": {"name": "out"}},
                                {"prefix": "KUSTOS_INPUT_", "secretRef": {"name": "in"}}]
    assert "env" not in batch
    assert not {"in", "out"} & set(batch["args"]), "Secrets only by envFrom"


def test_an_s3_input_without_digest_or_secret_is_never_read_with_the_outputs_keys() -> None:
    """No input Secret: the prefix is still given, so the read finds no keys under it and
    uses what the fetch container had without one (instance metadata, else anonymous),
    never the output's AWS_*."""
    pod = job_of(body(input={"uri": "s3://data/in.csv"},
                      output={"uri": "s3://results/runs/1",
                              "credentialsSecretRef": {"name": "out"}}))["spec"][
        "template"]["spec"]
    in_place(pod)
    [batch] = pod["containers"]
    assert batch["args"][batch["args"].index("--input-env-prefix") + 1] == "KUSTOS_INPUT_"
    assert batch["envFrom"] == [{"secretRef": {"name": "out"}}]
    plain = job_of(body(input={"uri": "s3://data/in.csv"}))["spec"]["template"]["spec"]
    assert "envFrom" not in plain["containers"][0]


def test_an_https_input_is_fetched_with_or_without_a_digest() -> None:
    for digest in ({}, {"digest": DIGEST}):
        pod = job_of(body(input={"uri": "https://files.example/in.csv", **digest,
                                 "credentialsSecretRef": {"name": "store"}}))["spec"][
            "template"]["spec"]
        fetch = pod["initContainers"][1]
        assert fetch["name"] == "fetch-input"
        assert fetch["args"][:3] == ["fetch", "https://files.example/in.csv",
                                     "/mnt/data/input.csv"]
        assert ("--digest" in fetch["args"]) == bool(digest)
        [batch] = pod["containers"]
        assert "--input-env-prefix" not in batch["args"] and "envFrom" not in batch


def test_one_claim_for_input_and_output_is_mounted_once_read_write() -> None:
    pod = job_of(body(input={"uri": "pvc://shared/in.csv"},
                      output={"uri": "pvc://shared/out"}))["spec"]["template"]["spec"]
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert [c["persistentVolumeClaim"] for c in claims] == [
        {"claimName": "shared", "readOnly": False}]


def test_parquet_runs_the_explain_image_and_the_status_says_which() -> None:
    """fastparquet is in kustos-explain only: a run that reads or writes Parquet uses it."""
    config = OperatorConfig()
    plain = job_of(body())
    assert plain["spec"]["template"]["spec"]["containers"][0]["image"] == config.images.kustos
    for change in ({"input": {"uri": "s3://data/in.parquet", "format": "parquet"}},
                   {"output": {"uri": "pvc://results/runs/1", "format": "parquet"}}):
        job = job_of(body(**change))
        [batch] = job["spec"]["template"]["spec"]["containers"]
        assert batch["image"] == config.images.explain, change
        status = status_bi.compute(body(**change), job, [], shards=4, output_uri="x",
                                   model=None, blocked=None, now=NOW)
        assert status["image"] == config.images.explain
    fetch = job_of(body(input={"uri": "s3://data/in.parquet", "format": "parquet",
                               "digest": DIGEST}))["spec"]["template"]["spec"][
        "initContainers"][1]
    assert fetch["args"][:3] == ["fetch", "s3://data/in.parquet", "/mnt/data/input.parquet"]
    [kind] = [k for k in KINDS if k.plural == "batchinferences"]
    assert {"name": "Image", "type": "string", "jsonPath": ".status.image",
            "description": "kustos, or kustos-explain for Parquet", "priority": 1} in kind.columns


def test_an_s3_output_is_passed_as_is_with_its_credentials_to_the_batch_container() -> None:
    pod = job_of(body(output={"uri": "s3://results/runs/1", "format": "parquet",
                              "credentialsSecretRef": {"name": "results-store"}}))[
        "spec"]["template"]["spec"]
    [batch] = pod["containers"]
    flags = dict(zip(batch["args"][1::2], batch["args"][2::2], strict=False))
    assert flags["--output"] == "s3://results/runs/1"
    assert flags["--output-format"] == "parquet"
    assert batch["envFrom"] == [{"secretRef": {"name": "results-store"}}]
    # no claim for the output; the input's keys stay with the input's fetch container
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert pod["initContainers"][1]["envFrom"] == [{"secretRef": {"name": "store"}}]


def test_output_credentials_are_for_s3_only() -> None:
    [kind] = [k for k in KINDS if k.plural == "batchinferences"]
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    [rule] = schema["properties"]["spec"]["properties"]["output"]["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".credentialsSecretRef"
    assert "s3://" in rule["rule"]


def test_the_batch_inference_has_its_own_rule_to_create_its_job() -> None:
    """Review finding: the Job's create came only from the DriftMonitor's rule. Without the
    DriftMonitor's rules the BatchInference controller must still get, create and patch
    (a server-side apply that creates) its Job, in both modes."""
    from kustos import rbac

    for mode, key in (("clusterWide", "clusterRole"), ("namespaced", "role")):
        rules = [r for r in rbac.rule_sets()[mode][key] if "DriftMonitor" not in r.why
                 and "DriftMonitor" not in r.needed_by]
        own = [r for r in rules if "jobs" in r.resources and "BatchInference" in r.why]
        assert own, (mode, "no rule of the BatchInference for its Job")
        verbs = {v for r in own for v in r.verbs}
        assert {"get", "create", "patch"} <= verbs, (mode, verbs)
        assert all(r.api_groups == ("batch",) and not r.resource_names for r in own)


def test_shards_default_to_parallelism_and_the_hash_follows_the_spec() -> None:
    b = body(shards=None, parallelism=3)
    del b["spec"]["shards"]
    assert job_of(b)["spec"]["completions"] == 3
    assert (job_of(body())["metadata"]["annotations"][SPEC_HASH]
            != job_of(body(chunkSize=501))["metadata"]["annotations"][SPEC_HASH])


@pytest.mark.parametrize(("change", "field"), [
    ({"chunkSize": 0}, "chunkSize"),
    ({"parallelism": 101}, "parallelism"),
    ({"output": {"uri": "https://bucket/out"}}, "output.uri"),
    ({"output": {"uri": "s3://B/out"}}, "output.uri"),
    ({"input": {"uri": "s3://d/x.csv", "format": "avro"}}, "input.format"),
    ({"output": {"uri": "pvc://r/o", "format": "orc"}}, "output.format"),
    ({"input": {"uri": "s3://d/x.csv", "digest": "md5:1"}}, "input.digest"),
    ({"output": {"uri": "pvc://r/o", "predictions": ["a b"]}}, "output.predictions.0"),
])
def test_the_models_refuse_bad_fields(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        BatchInferenceSpec.model_validate({**body()["spec"], **change})
    assert field in {".".join(map(str, e["loc"])) for e in err.value.errors()}


def test_cel_rules_name_their_fields() -> None:
    """The rules the API server checks (tests/integration/test_batchinference.py applies
    them); each message names what to fix."""
    [kind] = [k for k in KINDS if k.plural == "batchinferences"]
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_rules = {r["rule"]: r for r in schema["properties"]["spec"]["x-kubernetes-validations"]}
    assert spec_rules["has(self.modelRef) != has(self.model)"]["fieldPath"] == ".modelRef"
    assert spec_rules["self == oldSelf"]["message"].startswith("spec is immutable")
    assert any(r.get("fieldPath") == ".parallelism" for r in spec_rules.values())
    input_rules = schema["properties"]["spec"]["properties"]["input"][
        "x-kubernetes-validations"]
    assert [r["fieldPath"] for r in input_rules] == [".uri", ".idColumn"]
    # the model spec is the ModelDeployment's, with its rules
    ours = dict(schema["properties"]["spec"]["properties"]["model"])
    theirs = dict(crd(KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]["properties"]["model"])
    ours.pop("description"), theirs.pop("description")
    assert ours == theirs and "x-kubernetes-validations" in ours
    assert ModelDeploymentSpec.model_fields["model"].annotation is ModelSource
    assert {c["name"] for c in kind.columns} >= {"Phase", "Done", "Total"}
    assert kind.short_names == ["bi"]


def _pod(index: int, phase: str, message: str, finished: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {status_bi.INDEX_ANNOTATION: str(index)}},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "batch",
                "state": {"terminated": {"message": message, "finishedAt": finished}}}]}}


def _report(rows: int, total: int = 1000) -> str:
    return f'{{"shard":0,"rows":{rows},"rowsTotal":{total},"chunks":1}}'


def test_status_running_then_complete_from_the_shards_reports() -> None:
    b = body()
    job: dict[str, Any] = {"metadata": {"name": "score"},
                           "status": {"startTime": "2026-12-06T09:59:00Z", "active": 2}}
    pods = [_pod(0, "Succeeded", _report(250), "2026-12-06T09:59:10Z"),
            _pod(1, "Running", "", ""),
            _pod(2, "Failed", '{"shard":2,"error":"kustos batch: x.csv: row 9, column a: '
                              'not a number"}', "2026-12-06T09:59:05Z")]
    s = status_bi.compute(b, job, pods, shards=4, output_uri="pvc://results/runs/1",
                          model={"version": "3"}, blocked=None, now=NOW)
    assert (s["phase"], s["rowsDone"], s["rowsTotal"], s["shardsDone"]) == (
        "Running", 250, 1000, 1)
    assert s["rowsPerSecond"] == 25  # 250 rows in the 10 s from start to the shard's end
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Complete"]["status"] == "False"
    assert conds["Failed"]["status"] == "False" and "row 9" in conds["Failed"]["message"]
    job["status"] = {"startTime": "2026-12-06T09:59:00Z",
                     "completionTime": "2026-12-06T09:59:20Z",
                     "conditions": [{"type": "Complete", "status": "True"}]}
    pods = [_pod(i, "Succeeded", _report(250), f"2026-12-06T09:59:{10 + i * 2}Z")
            for i in range(4)]
    done = status_bi.compute({**b, "status": s}, job, pods, shards=4,
                             output_uri="pvc://results/runs/1", model=None, blocked=None,
                             now=NOW)
    assert (done["phase"], done["rowsDone"], done["shardsDone"]) == ("Complete", 1000, 4)
    assert done["completionTime"] == "2026-12-06T09:59:20Z"
    assert done["model"] == {"version": "3"}  # kept from the status
    assert {c["type"]: c["status"] for c in done["conditions"]} == {
        "Ready": "True", "Complete": "True", "Failed": "False"}


def test_status_failed_names_the_shards_error() -> None:
    job = {"metadata": {"name": "score"},
           "status": {"startTime": "2026-12-06T09:59:00Z", "conditions": [
               {"type": "Failed", "status": "True", "reason": "FailedIndexes",
                "lastTransitionTime": "2026-12-06T09:59:30Z"}]}}
    pods = [_pod(1, "Failed", '{"shard":1,"error":"kustos batch: no column a"}',
                 "2026-12-06T09:59:29Z")]
    s = status_bi.compute(body(), job, pods, shards=4, output_uri="pvc://r/o", model=None,
                          blocked=None, now=NOW)
    conds = {c["type"]: c for c in s["conditions"]}
    assert s["phase"] == "Failed" and conds["Failed"]["status"] == "True"
    assert conds["Failed"]["reason"] == "FailedIndexes"
    assert conds["Failed"]["message"] == "kustos batch: no column a"


def test_status_blocked_by_governance_is_pending_not_failed() -> None:
    s = status_bi.compute(body(), None, [], shards=4, output_uri="pvc://r/o", model=None,
                          blocked=status_bi.Blocked("PolicyViolation", "needs approval"),
                          now=NOW)
    conds = {c["type"]: c for c in s["conditions"]}
    assert s["phase"] == "Pending" and "jobName" not in s
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "PolicyViolation")
    assert conds["Failed"]["status"] == "False"
    final = status_bi.compute(body(), None, [], shards=4, output_uri="pvc://r/o", model=None,
                              blocked=status_bi.Blocked("NameConflict", "taken", final=True),
                              now=NOW)
    assert final["phase"] == "Failed"
