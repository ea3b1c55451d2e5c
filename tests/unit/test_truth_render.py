"""The ground-truth monitor's children and the model server's --truth-url: pure render,
and the API's rules for spec.groundTruth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from kustos.api.crdgen import KINDS, crd
from kustos.api.v1alpha1 import DriftMonitorSpec
from kustos.config import NetworkPolicySettings, OperatorConfig
from kustos.render import drift as render_dm
from kustos.render import truth
from kustos.render.meta import SPEC_HASH
from kustos.render.modeldeployment import render
from kustos.runtime.truth.config import parse as parse_truth_config

MD = {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
      "metadata": {"name": "iris", "namespace": "ml", "uid": "md-uid", "generation": 1},
      "spec": {"model": {"uri": "s3://models/iris/model.skops", "version": "v3",
                         "name": "iris-clf", "credentialsSecretRef": {"name": "s3-creds"}},
               "runtime": {"kind": "kustos"}}}


def dm(ground_truth: dict[str, Any] | None = None, reference: bool = False,
       **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kustos.dev/v1alpha1", "kind": "DriftMonitor",
        "metadata": {"name": "watch", "namespace": "ml", "uid": "dm-uid", "generation": 1},
        "spec": {"targetRef": {"name": "iris"}, **spec}}
    if ground_truth is not None:
        body["spec"]["groundTruth"] = ground_truth
    if reference:
        body["spec"]["reference"] = {"uri": "file:///ref.csv"}
    return body


def by_kind(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in items}


GT = {"task": "classification", "window": "30m", "minSamples": 50,
      "thresholds": {"minAccuracy": 0.9, "minCoverage": 0.5},
      "bulk": [{"uri": "s3://labels/daily/", "format": "parquet", "interval": "10m"},
               {"uri": "pvc://labels-claim/drop/labels.csv"}],
      "fairness": {"sensitiveFeatures": [{"name": "sex", "source": "label"}],
                   "maxAccuracyGap": 0.1, "minSliceSize": 20}}


def test_children_without_storage() -> None:
    kinds = [m["kind"] for m in truth.children(dm(GT), MD, OperatorConfig())]
    assert kinds == ["ConfigMap", "Deployment", "Service", "NetworkPolicy"]
    assert truth.children(dm(reference=True), MD, OperatorConfig()) == []


def test_deployment_is_one_recreated_restricted_replica() -> None:
    cfg = OperatorConfig()
    d = by_kind(truth.children(dm(GT), MD, cfg))["Deployment"]
    assert d["metadata"]["name"] == "watch-truth" and d["metadata"]["namespace"] == "ml"
    owner = d["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("DriftMonitor", "dm-uid", True)
    assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustos"
    assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"}
    pod = d["spec"]["template"]
    assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    assert c["image"] == cfg.images.explain
    assert c["command"] == ["kustos"] and c["args"][:3] == [
        "truth", "--config", "/etc/kustos-truth/config.json"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["resources"] == cfg.sidecars.explain_resources
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/kustos-truth"]]
    # The pvc:// bulk source is mounted read-only and given to the monitor as a file.
    claim_vol = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claim_vol[0]["persistentVolumeClaim"] == {"claimName": "labels-claim",
                                                     "readOnly": True}
    # S3 bulk files: the model's credentials.
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert SPEC_HASH in d["metadata"]["annotations"]


def test_storage_size_makes_a_claim_mounted_at_the_store() -> None:
    gt = {**GT, "storage": {"size": "2Gi", "storageClassName": "fast"}}
    out = by_kind(truth.children(dm(gt), MD, OperatorConfig()))
    pvc = out["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "watch-truth"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    spec = out["Deployment"]["spec"]["template"]["spec"]
    store = next(v for v in spec["volumes"] if v["name"] == truth.STORE_VOLUME)
    assert store["persistentVolumeClaim"] == {"claimName": "watch-truth"}
    # The claim is applied but never deleted by the sync.
    assert "PersistentVolumeClaim" not in truth.SYNCED_KINDS


def test_config_is_what_kustos_truth_accepts() -> None:
    cm = by_kind(truth.children(dm(GT, featureNames=["a", "b", "c", "d"]), MD,
                                OperatorConfig()))["ConfigMap"]
    doc = json.loads(cm["data"]["config.json"])
    parsed = parse_truth_config(doc)  # the runtime's own parser: no field it refuses
    assert parsed.model == "iris-clf" and parsed.default_version == "v3"
    assert parsed.window_seconds == 1800 and parsed.min_samples == 50
    assert parsed.thresholds == {"minAccuracy": 0.9, "minCoverage": 0.5}
    assert [(b.uri, b.format) for b in parsed.bulk] == [
        ("s3://labels/daily/", "parquet"),
        ("file:///mnt/pvc/labels-claim/drop/labels.csv", "csv")]
    assert parsed.feature_names == ("a", "b", "c", "d")
    assert parsed.fairness is not None
    assert doc["fairness"]["maxAccuracyGap"] == 0.1
    assert doc["fairness"]["sensitiveFeatures"] == [{"name": "sex", "source": "label"}]
    # A config change rolls the pod (the process reads its config once).
    other = {**GT, "thresholds": {"minAccuracy": 0.8}}
    a = by_kind(truth.children(dm(GT), MD, OperatorConfig()))["Deployment"]
    b = by_kind(truth.children(dm(other), MD, OperatorConfig()))["Deployment"]
    key = truth.CONFIG_HASH
    assert (a["spec"]["template"]["metadata"]["annotations"][key]
            != b["spec"]["template"]["metadata"]["annotations"][key])


def test_service_and_network_policy() -> None:
    out = by_kind(truth.children(dm(GT), MD, OperatorConfig()))
    svc = out["Service"]
    assert svc["metadata"]["name"] == "watch-truth"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http",
                                     "protocol": "TCP"}]
    assert svc["spec"]["selector"] == truth.labels("watch")
    pol = out["NetworkPolicy"]["spec"]
    assert pol["podSelector"]["matchLabels"] == truth.labels("watch")
    froms = [f for rule in pol["ingress"] for f in rule.get("from", [])]
    # The target's model pods reach the monitor; so do the operator and monitoring.
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "iris",
                                            "app.kubernetes.io/component": "predictor"}}} \
        in froms
    assert {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "kustos-system"}}} in froms
    off = OperatorConfig(network_policy=NetworkPolicySettings(enabled=False))
    assert "NetworkPolicy" not in by_kind(truth.children(dm(GT), MD, off))


def test_truth_url_reaches_kustos_serve_args() -> None:
    att = render_dm.attachments(dm(GT), MD, OperatorConfig())
    assert att.truth_url == "http://watch-truth.ml.svc:8080"
    assert att.sidecars == () and att.drift_url is None  # no reference: no drift sidecar
    both = render_dm.attachments(dm(GT, reference=True), MD, OperatorConfig())
    assert both.truth_url == att.truth_url and both.drift_url == render_dm.INPUTS_URL
    assert [s["name"] for s in both.sidecars] == ["drift"]
    assert render_dm.attachments(dm(reference=True), MD, OperatorConfig()).truth_url is None
    deployment = by_kind(render(MD, OperatorConfig(), attachments=att))["Deployment"]
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    i = server["args"].index("--truth-url")
    assert server["args"][i + 1] == "http://watch-truth.ml.svc:8080"


@pytest.mark.parametrize(("spec", "field"), [
    ({"targetRef": {"name": "iris"},
      "groundTruth": {"fairness": {"sensitiveFeatures": [{"name": "s"}],
                                   "maxAccuracyGap": 1.5}}}, "maxAccuracyGap"),
    ({"targetRef": {"name": "iris"},
      "groundTruth": {"bulk": [{"uri": "https://x/labels.csv"}]}}, "uri"),
    ({"targetRef": {"name": "iris"},
      "groundTruth": {"thresholds": {"minAccuracy": 2}}}, "minAccuracy"),
])
def test_pydantic_bounds(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        DriftMonitorSpec.model_validate(spec)


def dm_crd() -> dict[str, Any]:
    return crd(next(k for k in KINDS if k.model.__name__ == "DriftMonitor"))


def _rules(schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["rule"], r["message"]) for r in schema.get("x-kubernetes-validations", [])]


def test_crd_rules_name_the_field() -> None:
    spec = dm_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]
    assert "reference" not in spec.get("required", [])
    messages = [m for _, m in _rules(spec)]
    assert any("reference" in m and "groundTruth" in m for m in messages)
    assert any("onDrift.retrainJob" in m for m in messages)
    gt = spec["properties"]["groundTruth"]
    gt_messages = " | ".join(m for _, m in _rules(gt))
    assert "maxMae" in gt_messages and "task regression" in gt_messages
    assert "fairness needs task classification" in gt_messages
    bulk = gt["properties"]["bulk"]["items"]
    assert any("format" in m for _, m in _rules(bulk))
    fair = gt["properties"]["fairness"]["properties"]
    assert fair["maxDemographicParityDifference"]["maximum"] == 1
    assert fair["maxDemographicParityDifference"]["minimum"] == 0
    status = dm_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["status"]["properties"]
    versions = status["groundTruth"]["properties"]["versions"]
    assert versions["x-kubernetes-list-map-keys"] == ["version"]


def test_args_are_what_kustos_truth_parses() -> None:
    from kustos.runtime.truth.cli import build_parser

    d = by_kind(truth.children(dm(GT), MD, OperatorConfig()))["Deployment"]
    args = d["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "truth"
    parsed = build_parser().parse_args(args[1:])
    assert parsed.config == "/etc/kustos-truth/config.json"
    assert parsed.data_dir == truth.STORE_DIR and parsed.port == truth.PORT
