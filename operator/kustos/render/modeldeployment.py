"""ModelDeployment -> Deployment(s), Service, HPA (or KEDA ScaledObject), PDB, and a
ServiceAccount when the model authenticates as itself. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.modeldeployment import CanarySpec, ModelSource
from kustos.config import OperatorConfig
from kustos.registry.resolution import served_spec
from kustos.rollout.tracks import (
    CANDIDATE_SUFFIX,
    effective_spec,
    rollout_status,
    shadow_target,
    shadowing,
)

from . import encryption
from .attachments import NONE, Attachments
from .aws_identity import session_name, web_identity_env, web_identity_mount, web_identity_volume
from .containers import security_context as security_context
from .httproute import render_route, traffic_split
from .keda import render_scaled_object, uses_keda
from .meta import (
    COMPONENT,
    INSTANCE,
    MANAGED,
    MODEL_DIGEST,
    MODEL_VERSION,
    NAME,
    TRACK,
    child_meta,
    with_hash,
)
from .networkpolicy import render_network_policy
from .payload_logging import (
    RELAY_PORT,
    relay_container,
    relay_mount,
    relay_volume,
    relayed,
    server_args,
)
from .runtimes import MODEL_DIR, ServingSpec, runtime_container, runtime_ports, tls_volumes
from .scaling import hpa_behavior
from .signature import SIGNER_ANNOTATION, fetch_signature, signer

PVC_MOUNT = "/mnt/pvc"
NONROOT_UID = 65532
SERVICE_PORT = 80
SERVICE_TLS_PORT = 443
PRESTOP_SECONDS = 5


@dataclass(frozen=True)
class Track:
    """One Deployment of the model: the stable track, or the canary."""

    name: str  # Deployment name
    track: str  # stable | canary
    model: ModelSource
    replicas: int


def selector(instance: str, track: str = "stable") -> dict[str, str]:
    """matchLabels of one track's pods (immutable once a Deployment exists)."""
    return {INSTANCE: instance, COMPONENT: "predictor", TRACK: track}


def selector_string(instance: str, track: str = "stable") -> str:
    return ",".join(f"{k}={v}" for k, v in selector(instance, track).items())


def service_url(name: str, namespace: str, config: OperatorConfig, tls: bool = False) -> str:
    scheme = "https" if tls else "http"  # on the Service's default port: 443 or 80
    return f"{scheme}://{name}.{namespace}.svc.{config.cluster_domain}"


def serves_tls(spec: ModelDeploymentSpec) -> bool:
    return spec.runtime.tls is not None and spec.runtime.kind == "kustos"


def model_file_name(uri: str) -> str:
    """The file name the model gets in the pod; its extension tells the server the format."""
    return posixpath.basename(urlparse(uri).path) or "model"


def fetch_source(uri: str) -> str:
    """What the fetch init container reads: pvc://CLAIM/PATH becomes the mounted path."""
    parsed = urlparse(uri)
    if parsed.scheme == "pvc":
        return f"{PVC_MOUNT}/{parsed.netloc}{parsed.path}"
    return uri


def effective_replicas(spec: ModelDeploymentSpec) -> int:
    """The replica count the pods start from (the HPA's minimum when autoscaling)."""
    return spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas


def split_tracks(name: str, spec: ModelDeploymentSpec) -> list[Track]:
    """The stable track, plus a canary sized to its traffic share of the replicas.

    The Service balances over all pods of both tracks, so the share of requests follows
    the share of pods; the split is as exact as the replica count allows.
    """
    total = effective_replicas(spec)
    if spec.canary is None:
        return [Track(name, "stable", spec.model, total)]
    canary_n = max(1, round(total * spec.canary.traffic_percent / 100)) if total else 0
    stable_n = max(total - canary_n, 1 if total else 0)
    return [
        Track(name, "stable", spec.model, stable_n),
        Track(f"{name}-canary", "canary", _canary_model(spec.model, spec.canary), canary_n),
    ]


def _canary_model(stable: ModelSource, canary: CanarySpec) -> ModelSource:
    return stable.model_copy(update={
        "version": canary.model.version,
        "uri": canary.model.uri,
        "format": canary.model.format or stable.format,
        "digest": canary.model.digest,
        # Verified as spec.model.signature says, against the canary's own bundle.
        "signature": stable.signature.model_copy(update={"uri": canary.model.signature_uri})
        if stable.signature else None,
    })


def bundle_uri(model: ModelSource) -> str | None:
    """Where the model's signature bundle is: signature.uri, else <model uri>.sig."""
    if model.signature is None:
        return None
    if model.signature.uri:
        return model.signature.uri
    parts = urlsplit(model.uri)
    return urlunsplit(parts._replace(path=parts.path + ".sig"))


def pod_security_context() -> dict[str, Any]:
    """The pod's: a non-root user, and files of mounted volumes owned by its group."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "fsGroup": NONROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(spec: ModelDeploymentSpec, config: OperatorConfig) -> dict[str, Any]:
    res = spec.runtime.resources
    if res is None:
        return dict(config.default_resources)
    return {k: v for k, v in (("requests", res.requests), ("limits", res.limits)) if v}


def serving_spec(name: str, spec: ModelDeploymentSpec, model: ModelSource,
                 config: OperatorConfig, attachments: Attachments = NONE) -> ServingSpec:
    """What the runtime container needs, from the resource and the operator config."""
    kind = spec.runtime.kind
    return ServingSpec(
        kind=kind,
        image=spec.runtime.image or str(getattr(config.images, kind, config.images.kustos)),
        model_name=model.name or name,
        model_version=model.version,
        model_file=model_file_name(model.uri),
        model_format=model.format,
        digest=model.digest,
        protocol=spec.runtime.protocol,
        workers=spec.runtime.workers,
        env=tuple(e.wire() for e in spec.runtime.env or ()),
        resources=_resources(spec, config),
        command=tuple(spec.runtime.command or ()),
        args=tuple(spec.runtime.args or ()),
        port=spec.runtime.port,
        drift_url=attachments.drift_url,
        explainer_url=attachments.explainer_url,
        truth_url=attachments.truth_url,
        **_tls_fields(spec),
    )


def _tls_fields(spec: ModelDeploymentSpec) -> dict[str, Any]:
    tls = spec.runtime.tls
    if tls is None or not serves_tls(spec):
        return {}
    ca = tls.client_ca
    client_ca = None
    if ca is not None:
        client_ca = (("Secret", ca.secret_name, ca.key) if ca.secret_name
                     else ("ConfigMap", str(ca.config_map_name), ca.key))
    return {"tls_secret": tls.secret_name, "client_ca": client_ca}


def fetch_container(model: ModelSource, config: OperatorConfig,
                     session: str = "kustos-fetch") -> dict[str, Any]:
    args = ["fetch", fetch_source(model.uri), f"{MODEL_DIR}/{model_file_name(model.uri)}"]
    if model.digest:
        args += ["--digest", model.digest]
    container: dict[str, Any] = {
        "name": "fetch-model",
        "image": config.images.fetch,
        "args": args,
        "resources": dict(config.fetch_resources),
        "securityContext": security_context(),
        # The fetcher's last line says what went wrong; the status shows it (status/pods).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    if urlparse(model.uri).scheme == "pvc":
        claim = urlparse(model.uri).netloc
        container["volumeMounts"].append(
            {"name": "source", "mountPath": f"{PVC_MOUNT}/{claim}", "readOnly": True})
    uri = bundle_uri(model)
    if uri is not None:
        signed = fetch_signature(model, fetch_source(uri))
        container["args"] += signed.args
        container["volumeMounts"] += signed.volume_mounts
    if model.credentials_secret_ref:
        container["envFrom"] = [{"secretRef": {"name": model.credentials_secret_ref.name}}]
    if model.web_identity:
        container["env"] = [*container.get("env", []),
                            *web_identity_env(model.web_identity, session)]
        container["volumeMounts"].append(web_identity_mount())
    return container


def _relayed(spec: ModelDeploymentSpec, attachments: Attachments) -> bool:
    """Whether the pods have the payload-log relay (kustos serve feeds it)."""
    return spec.runtime.kind == "kustos" and relayed(spec.logging, attachments.truth_url)


def render_deployment(body: Mapping[str, Any], spec: ModelDeploymentSpec, track: Track,
                      config: OperatorConfig, autoscaled: bool,
                      attachments: Attachments = NONE) -> dict[str, Any]:
    """The Deployment of one track."""
    name = body["metadata"]["name"]
    sel = selector(name, track.track)
    sspec = serving_spec(name, spec, track.model, config, attachments)
    # spec.logging, a ground-truth monitor: the server hands the predictions to the
    # payload-log relay, which sends them from its own container (payload_logging.py).
    has_relay = _relayed(spec, attachments)
    payload_log, truth_url = spec.logging, attachments.truth_url
    if has_relay:
        sspec = dataclasses.replace(sspec, payload_log_args=server_args(payload_log,
                                                                        truth_url))
    server = runtime_container(sspec)
    server["securityContext"] = security_context()
    server["terminationMessagePolicy"] = "FallbackToLogsOnError"
    # A terminating pod leaves the Service's endpoints while kube-proxy (or a mesh) still
    # routes to it for a moment: keep serving that long before the server drains.
    server.setdefault("lifecycle", {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}})
    server["volumeMounts"] = [
        *server.get("volumeMounts", []),
        {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        *attachments.server_volume_mounts,
        *([relay_mount()] if has_relay else []),
    ]
    if attachments.server_env:
        server["env"] = [*server.get("env", []), *attachments.server_env]
    volumes: list[dict[str, Any]] = [
        {"name": "model", "emptyDir": {"sizeLimit": config.model_volume_size}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        *attachments.volumes,
        *tls_volumes(sspec)[0],
        *([relay_volume()] if has_relay else []),
    ]
    if urlparse(track.model.uri).scheme == "pvc":
        claim = urlparse(track.model.uri).netloc
        volumes.append({"name": "source",
                        "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    if track.model.web_identity:
        volumes.append(web_identity_volume(track.model.web_identity))
    pod_labels = {**sel, MANAGED: "kustos", NAME: "kustos-model"}
    pod_annotations = {
        "kubectl.kubernetes.io/default-container": "server",
        MODEL_VERSION: track.model.version,
    }
    if track.model.digest:
        pod_annotations[MODEL_DIGEST] = track.model.digest
    if track.model.signature is not None:
        pod_annotations[SIGNER_ANNOTATION] = str(signer(track.model.signature))
        volumes += fetch_signature(track.model, "").volumes
    pod_annotations.update(attachments.pod_annotations)
    fetch = fetch_container(track.model, config,
                             session_name(body["metadata"].get("namespace", ""), name))
    # spec.model.encryption: decrypt into memory (render/encryption.py).
    volumes = encryption.apply(fetch, volumes, track.model,
                               spec.secrets.vault if spec.secrets else None, config)
    relay = [] if not has_relay else [relay_container(
        payload_log, truth_url, name, body["metadata"].get("namespace", ""), track.track,
        track.model.version, config.images.kustos, config.sidecars.payload_log_resources,
        PRESTOP_SECONDS)]
    ports = runtime_ports(sspec)
    if ports.metrics is not None:
        # The conventional scrape annotations, for Prometheus set-ups without a PodMonitor.
        pod_annotations.update({"prometheus.io/scrape": "true",
                                "prometheus.io/port": str(ports.metrics),
                                "prometheus.io/path": ports.metrics_path})
        if ports.metrics_scheme != "http":
            pod_annotations["prometheus.io/scheme"] = ports.metrics_scheme
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": sel},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": 600,
        # Never fewer serving pods than asked for during a rollout.
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": pod_labels, "annotations": pod_annotations},
            "spec": {
                **({"serviceAccountName": name} if needs_identity(spec) else {}),
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 30,
                "securityContext": pod_security_context(),
                "initContainers": [fetch, *attachments.init_containers],
                "containers": [server, *relay, *attachments.sidecars],
                "volumes": volumes,
            },
        },
    }
    # With autoscaling an HPA owns .spec.replicas of the track; leave it out.
    if not autoscaled:
        deployment_spec["replicas"] = track.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_meta(body, track.name, {COMPONENT: "predictor", TRACK: track.track}),
        "spec": deployment_spec,
    }


def render_service(body: Mapping[str, Any], tls: bool = False,
                   grpc_port: int | None = None, track: str | None = None,
                   name: str | None = None) -> dict[str, Any]:
    """One Service over both tracks, on port 80 -> the runtime's http port; with TLS
    443 (named https, appProtocol https, which meshes and gateways read) -> https.
    ``track``: over that track's pods only (a shadowing rollout keeps its candidate out
    of the model's Service, and gives it its own, ``name``)."""
    instance = body["metadata"]["name"]
    name = name or instance
    port: dict[str, Any] = {"name": "http", "port": SERVICE_PORT, "targetPort": "http",
                            "protocol": "TCP"}
    if tls:
        port = {"name": "https", "port": SERVICE_TLS_PORT, "targetPort": "https",
                "protocol": "TCP", "appProtocol": "https"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(body, name, {COMPONENT: "predictor"}),
        "spec": {
            "type": "ClusterIP",
            "selector": {INSTANCE: instance, COMPONENT: "predictor",
                         **({TRACK: track} if track else {})},
            "ports": [port, *_grpc_service_ports(grpc_port, tls)],
        },
    }


def _grpc_service_ports(grpc_port: int | None, tls: bool = False) -> list[dict[str, Any]]:
    """The runtime's gRPC port, on the same number; h2c tells meshes and gateways it is
    cleartext HTTP/2. Over TLS no appProtocol (there is no standard name for gRPC over
    TLS; h2c would be wrong): they pass it through as TCP."""
    if grpc_port is None:
        return []
    port: dict[str, Any] = {"name": "grpc", "port": grpc_port, "targetPort": "grpc",
                            "protocol": "TCP"}
    if not tls:
        port["appProtocol"] = "kubernetes.io/h2c"
    return [port]


def needs_identity(spec: ModelDeploymentSpec) -> bool:
    """Does the model log in as itself? Vault (both modes) authenticates the model's own
    ServiceAccount, so it gets one; any other model runs as its namespace's ``default``
    account with no token mounted, which gives its pods no API identity at all (and
    saves a write per model: docs/operator.md, "Writes per model"). A model fetched with
    webIdentity gets one too: its token is what the IAM role's trust policy names."""
    return (spec.secrets is not None and spec.secrets.vault is not None) or (
        spec.model.web_identity is not None)


def render_service_account(body: Mapping[str, Any]) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_meta(body, name),
        "automountServiceAccountToken": False,
    }


def render_hpa(body: Mapping[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """The stable track's HPA."""
    if spec.autoscaling is None:
        return None
    name = body["metadata"]["name"]
    return _hpa(body, spec, name, *autoscaled_bounds(name, spec))


def canary_autoscaled(spec: ModelDeploymentSpec, config: OperatorConfig,
                      gateway_api: bool) -> bool:
    """Whether the canary track scales by itself: when the route's weights split the
    traffic (the canary's load is then its weight's share, whatever its pod count) and
    the operator's HPA scales (a KEDA ScaledObject covers the stable track only)."""
    return (spec.canary is not None and spec.autoscaling is not None
            and traffic_split(spec, gateway_api) == "gateway"
            and not uses_keda(spec.autoscaling, config))


def render_canary_hpa(body: Mapping[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The canary track's HPA (gateway split): from its starting pods up to its weight's
    share of spec.autoscaling.maxReplicas, on the same targets as the stable track."""
    assert spec.autoscaling is not None and spec.canary is not None
    name = body["metadata"]["name"]
    canary = split_tracks(name, spec)[1]
    high = max(canary.replicas,
               -(-spec.autoscaling.max_replicas * spec.canary.traffic_percent // 100))
    return _hpa(body, spec, canary.name, canary.replicas, high)


def _hpa(body: Mapping[str, Any], spec: ModelDeploymentSpec, target: str, low: int,
         high: int) -> dict[str, Any]:
    auto = spec.autoscaling
    assert auto is not None
    metrics: list[dict[str, Any]] = []
    cpu = auto.target_cpu_utilization
    if cpu is None and auto.target_requests_per_second is None:
        cpu = 80
    if cpu is not None:
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}})
    if auto.target_requests_per_second is not None:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": "kustos_requests_per_second"},
            "target": {"type": "AverageValue",
                       "averageValue": str(auto.target_requests_per_second)}}})
    hpa: dict[str, Any] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_meta(body, target),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": metrics,
        },
    }
    behavior = hpa_behavior(auto)
    if behavior:
        hpa["spec"]["behavior"] = behavior
    return hpa


def autoscaled_bounds(name: str, spec: ModelDeploymentSpec) -> tuple[int, int]:
    """The stable track's replica bounds: spec.autoscaling's, less the canary's pods."""
    assert spec.autoscaling is not None
    canary_n = effective_replicas(spec) - split_tracks(name, spec)[0].replicas
    return (max(1, spec.autoscaling.min_replicas - canary_n),
            max(1, spec.autoscaling.max_replicas - canary_n))


def render_autoscaler(body: Mapping[str, Any], spec: ModelDeploymentSpec,
                      config: OperatorConfig) -> dict[str, Any] | None:
    """The HPA, or KEDA's ScaledObject when requests/s go through KEDA (render/keda.py)."""
    if spec.autoscaling is not None and uses_keda(spec.autoscaling, config):
        return render_scaled_object(body, spec.autoscaling, config,
                                    *autoscaled_bounds(body["metadata"]["name"], spec))
    return render_hpa(body, spec)


def render_pdb(body: Mapping[str, Any], spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """Keep all but one pod through voluntary disruptions, when there is more than one."""
    name = body["metadata"]["name"]
    if split_tracks(name, spec)[0].replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_meta(body, name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name, "stable")}},
    }


def _add_args(children: list[dict[str, Any] | None], deployment: str,
              args: list[str]) -> None:
    """Append ``args`` to the server container of the Deployment named ``deployment``."""
    for child in children:
        if child and child["kind"] == "Deployment" and child["metadata"]["name"] == deployment:
            server = child["spec"]["template"]["spec"]["containers"][0]
            server["args"] = [*server.get("args", []), *args]


def render(body: Mapping[str, Any], config: OperatorConfig,
           attachments: Attachments = NONE, gateway_api: bool = False) -> list[dict[str, Any]]:
    """Every child of a ModelDeployment, each with its spec-hash annotation.
    ``gateway_api``: the cluster serves the HTTPRoute CRD (render/httproute.py)."""
    # A models:/ URI is served as status.registry resolved it (the registry controller's
    # contributor holds the render back until it is resolved).
    asked = served_spec(body)
    # spec.rollout: the stable and candidate models as a canary (kustos/rollout/tracks.py)
    spec = effective_spec(asked, rollout_status(body))
    name = body["metadata"]["name"]
    # What the pods mount (the Vault agent's ConfigMap) exists before the pods do: the
    # children are applied in this order.
    children: list[dict[str, Any] | None] = [
        render_service_account(body) if needs_identity(spec) else None,
        *(dict(c) for c in attachments.children)]
    scaled = {"stable": spec.autoscaling is not None,
              "canary": canary_autoscaled(spec, config, gateway_api)}
    children += [render_deployment(body, spec, t, config, scaled[t.track], attachments)
                 for t in split_tracks(name, spec)]
    ports = runtime_ports(serving_spec(name, spec, spec.model, config, attachments))
    shadow = shadowing(asked, rollout_status(body))
    phase = rollout_status(body).get("phase")
    mirroring = phase == "Shadow" or (
        phase == "Paused" and rollout_status(body).get("pausedFrom") == "Shadow")
    if shadow and mirroring and asked.rollout and asked.rollout.shadow \
            and spec.runtime.kind == "kustos":
        _add_args(children, name, shadow_target(  # the stable track mirrors to the candidate
            name, body["metadata"].get("namespace", ""), config.cluster_domain,
            asked.rollout.shadow.sample_percent, spec.runtime.tls))
    if shadow:
        children.append(render_service(body, serves_tls(spec), ports.grpc, "canary",
                                        name + CANDIDATE_SUFFIX))
    # The model's Service keeps to the stable track while the candidate has no live
    # traffic, and after a rollback too: the candidate's pods stay Ready for a moment
    # while they are deleted, and callers must never reach them.
    stable_only = shadow or (asked.rollout is not None and phase == "RolledBack")
    children += [render_service(body, serves_tls(spec), ports.grpc,
                                "stable" if stable_only else None),
                 *render_route(body, spec, gateway_api),
                 render_autoscaler(body, spec, config),
                 render_canary_hpa(body, spec) if scaled["canary"] else None,
                 render_pdb(body, spec)]
    children.append(render_network_policy(body, config, ports, attachments.sidecars,
                                          [RELAY_PORT] if _relayed(spec, attachments) else []))
    return [with_hash(c) for c in children if c is not None]
