"""Explainer and drift sidecars in the ModelDeployment render: pure functions only."""

from __future__ import annotations

import json
from typing import Any

from kustos.config import OperatorConfig
from kustos.render import drift, explainer
from kustos.render import modeldeployment as render_md
from kustos.render.meta import SPEC_HASH, spec_hash
from kustos.render.sidecars import active_for, duration_seconds

DIGEST = "sha256:" + "ab" * 32
CFG = OperatorConfig.model_validate(
    {"images": {"explain": "reg/explain:1", "drift": "reg/drift:1"}})


def md(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"version": "3", "uri": "s3://m/iris/model.joblib",
                                      "digest": DIGEST, "name": "iris-clf"}, "replicas": 2}
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "md-uid"}, "spec": body}


def es(name: str = "iris-x", created: str = "2026-11-23T10:00:00Z", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"targetRef": {"name": "iris"}, "method": "shap-kernel",
                            "background": {"uri": "https://data.example/bg.csv",
                                           "digest": DIGEST, "maxSamples": 50},
                            "featureNames": ["a", "b", "c", "d"],
                            "global": {"interval": "1h30m", "topK": 3}}
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ExplainerSpec",
            "metadata": {"name": name, "namespace": "ml", "uid": f"{name}-uid",
                         "creationTimestamp": created}, "spec": body}


def dm(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"targetRef": {"name": "iris"}, "detector": "chisquare",
                            "reference": {"uri": "pvc://datasets/iris/ref.npy"},
                            "categoricalFeatures": [1, 3], "pValue": 0.01,
                            "window": {"size": 200, "maxAge": "5m"}}
    body.update(spec)
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
            "metadata": {"name": "iris-drift", "namespace": "ml", "uid": "dm-uid"},
            "spec": body}


def pod_spec(children: list[dict[str, Any]], name: str = "iris") -> dict[str, Any]:
    dep = next(c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == name)
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == name)


def test_duration_seconds() -> None:
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("10m") == 600
    assert duration_seconds("500ms") == 0.5


def test_explainer_sidecar_and_server_flag() -> None:
    att = explainer.attachments(es(), md(), CFG)
    children = render_md.render(md(), CFG, att)
    spec = pod_spec(children)
    side = container(spec, "explainer")
    server = container(spec, "server")
    assert side["image"] == "reg/explain:1" and side["command"] == ["kustos"]
    args = side["args"]
    assert args[0] == "explain"
    pairs = dict(zip(args[1::2], args[2::2], strict=False))
    assert pairs["--model"] == "/mnt/models/model.joblib"
    assert pairs["--format"] == "sklearn" and pairs["--name"] == "iris-clf"
    # The digest of the pod's own track, through the downward API.
    assert pairs["--digest"] == "$(KUSTOS_MODEL_DIGEST)"
    assert side["env"] == [{"name": "KUSTOS_MODEL_DIGEST", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['kustos.dev/model-digest']"}}}]
    dep = next(c for c in children if c["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["annotations"]["kustos.dev/model-digest"] == \
        DIGEST
    assert pairs["--background-digest"] == DIGEST
    assert pairs["--method"] == "shap-kernel"
    assert pairs["--background-uri"] == "https://data.example/bg.csv"
    assert pairs["--max-samples"] == "50" and pairs["--feature-names"] == "a,b,c,d"
    assert pairs["--global-interval"] == "5400" and pairs["--top-k"] == "3"
    assert pairs["--port"] == "8090"
    assert server["args"][server["args"].index("--explainer-url") + 1] == "http://127.0.0.1:8090"
    assert "--drift-url" not in server["args"]
    # Same restricted securityContext as the server; readiness never depends on the
    # background data (the liveness endpoint); /tmp is its own emptyDir.
    assert side["securityContext"] == server["securityContext"]
    assert side["readinessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert side["resources"] == CFG.sidecars.explain_resources
    mounts = {m["mountPath"]: m for m in side["volumeMounts"]}
    assert mounts["/mnt/models"]["readOnly"] is True and mounts["/tmp"]["name"] == "explainer-tmp"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["explainer-tmp"]
    annotations = next(c for c in children if c["kind"] == "Deployment")[
        "spec"]["template"]["metadata"]["annotations"]
    assert annotations["kustos.dev/explainer"] == "iris-x"


def test_no_global_interval_means_off() -> None:
    body = es()
    del body["spec"]["global"]
    args = explainer.attachments(body, md(), CFG).sidecars[0]["args"]
    assert args[args.index("--global-interval") + 1] == "0"


def test_drift_sidecar_with_pvc_reference() -> None:
    att = drift.attachments(dm(), md(), CFG)
    spec = pod_spec(render_md.render(md(), CFG, att))
    side = container(spec, "drift")
    server = container(spec, "server")
    args = side["args"]
    pairs = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[0] == "drift" and side["image"] == "reg/drift:1"
    assert pairs["--detector"] == "chisquare"
    assert pairs["--reference-uri"] == "file:///mnt/pvc/datasets/iris/ref.npy"
    assert "--reference-digest" not in pairs
    assert pairs["--categorical"] == "1,3" and pairs["--p-value"] == "0.01"
    assert pairs["--window-size"] == "200" and pairs["--window-max-age"] == "300"
    assert pairs["--name"] == "iris-clf" and pairs["--port"] == "8091"
    assert server["args"][server["args"].index("--drift-url") + 1] == \
        "http://127.0.0.1:8091/v1/inputs"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["drift-data"]["persistentVolumeClaim"] == {"claimName": "datasets",
                                                             "readOnly": True}
    mounts = {m["name"]: m for m in side["volumeMounts"]}
    assert mounts["drift-data"] == {"name": "drift-data", "mountPath": "/mnt/pvc/datasets",
                                    "readOnly": True}
    assert side["securityContext"] == server["securityContext"]


def test_both_sidecars_and_canary_track() -> None:
    body = md(canary={"trafficPercent": 50, "model": {"version": "4",
                                                       "uri": "s3://m/iris/model.joblib"}})
    att = explainer.attachments(es(), body, CFG) + drift.attachments(dm(), body, CFG)
    children = render_md.render(body, CFG, att)
    for name in ("iris", "iris-canary"):
        spec = pod_spec(children, name)
        assert [c["name"] for c in spec["containers"]] == ["server", "explainer", "drift"]
        server = container(spec, "server")
        assert "--explainer-url" in server["args"] and "--drift-url" in server["args"]


def test_render_is_stable_and_changes_with_the_spec() -> None:
    a = render_md.render(md(), CFG, explainer.attachments(es(), md(), CFG))
    b = render_md.render(md(), CFG, explainer.attachments(es(), md(), CFG))
    c = render_md.render(md(), CFG, explainer.attachments(es(method="shap-tree"), md(), CFG))
    dep = next(x for x in a if x["kind"] == "Deployment")
    assert spec_hash(dep) == spec_hash(next(x for x in b if x["kind"] == "Deployment"))
    assert spec_hash(dep) != spec_hash(next(x for x in c if x["kind"] == "Deployment"))


def test_active_for_picks_the_oldest_and_skips_deleting() -> None:
    first, second = es("b-first", "2026-11-23T09:00:00Z"), es("a-second", "2026-11-23T10:00:00Z")
    other = es("other", "2026-11-23T08:00:00Z", targetRef={"name": "wine"})
    assert active_for("iris", [second, other, first]) is first
    first["metadata"]["deletionTimestamp"] = "2026-11-23T11:00:00Z"
    assert active_for("iris", [second, other, first]) is second
    assert active_for("nothing", [first, second]) is None


def test_report_configmap_is_owned_by_the_explainerspec() -> None:
    report = {"meanAbsAttribution": {"a": 0.5}, "computedAt": "2026-11-23T10:00:00Z",
              "durationSeconds": 0.2}
    cm = explainer.report_configmap(es(), report)
    assert cm["metadata"]["name"] == "iris-x-explanations"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "iris-x-uid"
    assert json.loads(cm["data"]["report.json"]) == report
    # The same results computed again later hash the same (nothing to write); new
    # results do not.
    again = explainer.report_configmap(es(), {**report, "computedAt": "2026-11-23T11:00:00Z",
                                              "durationSeconds": 0.3})
    other = explainer.report_configmap(es(), {**report, "meanAbsAttribution": {"a": 0.6}})
    h = cm["metadata"]["annotations"][SPEC_HASH]
    assert again["metadata"]["annotations"][SPEC_HASH] == h
    assert other["metadata"]["annotations"][SPEC_HASH] != h


def test_retrain_job_from_template() -> None:
    template = {"metadata": {"labels": {"team": "ml"}},
                "spec": {"backoffLimit": 1, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "train", "image": "reg/train:1"}]}}}}
    name = drift.job_name("iris-drift", "dm-uid", "2026-11-23T12:00:00Z")
    assert name.startswith("iris-drift-retrain-") and len(name) <= 63
    assert name != drift.job_name("iris-drift", "dm-uid", "2026-11-23T12:00:01Z")
    assert len(drift.job_name("x" * 253, "u", "t")) <= 63
    job = drift.retrain_job(dm(), template, name, ["b", "d"])
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "dm-uid"
    assert job["metadata"]["labels"]["team"] == "ml"
    assert job["metadata"]["labels"][drift.MONITOR_LABEL] == "iris-drift"
    assert job["metadata"]["annotations"][drift.FEATURES_ANNOTATION] == "b,d"
    assert job["spec"] == template["spec"] and job["spec"] is not template["spec"]
