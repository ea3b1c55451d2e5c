"""The serving container for each runtime kind: pure, no I/O.

`ServingSpec` is everything a runtime needs, extracted from a ModelDeployment and the
operator config by the Deployment renderer; `runtime_container` turns it into the main
container of the pod (image, command/args, env, ports, probes) and `runtime_ports` says
which container port serves inference and which serves Prometheus metrics, for the
Service, NetworkPolicy and scrape annotations.

Every runtime reads the model from MODEL_DIR, where the fetch init container has written
it after checking its digest. The runtimes' own tests (tests/runtimes/) run exactly what
is rendered here, so keep commands and env honest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Where the fetch init container writes the model inside every serving pod.
MODEL_DIR = "/mnt/models"
HTTP_PORT_NAME = "http"
HTTPS_PORT_NAME = "https"
HEALTH_PORT_NAME = "health"
METRICS_PORT_NAME = "metrics"
GRPC_PORT_NAME = "grpc"
MANAGEMENT_PORT_NAME = "management"
CONTAINER_NAME = "server"

RUNTIME_KINDS = ("kustos", "seldon", "mlserver", "tfserving", "torchserve", "custom")

# The Seldon runtime image puts operator/kustos/runtime/seldon_adapter.py on PYTHONPATH
# under this top-level module name, so that seldon-core never needs the kustos package.
SELDON_ADAPTER_MODULE = "kustos_seldon_adapter"
SELDON_ADAPTER_CLASS = f"{SELDON_ADAPTER_MODULE}.KustosSeldonModel"
SELDON_HTTP_PORT = 9000
SELDON_GRPC_PORT = 5000
SELDON_METRICS_PORT = 6000

MLSERVER_HTTP_PORT = 8080
MLSERVER_GRPC_PORT = 8081
MLSERVER_METRICS_PORT = 8082
MLSERVER_SKLEARN = "mlserver_sklearn.SKLearnModel"

KUSTOS_HTTP_PORT = 8080
# The Open Inference Protocol over gRPC: always served, on the port KServe and MLServer use.
KUSTOS_GRPC_PORT = 8081
# With mTLS: plain HTTP for probes and the scrape only (kustos serve --health-port).
KUSTOS_HEALTH_PORT = 8082  # not 8090/8091: the explainer and drift sidecars in the same pod
# Where the TLS Secret and the client CA are mounted (read-only, updated in place).
TLS_DIR = "/etc/kustos/tls"
CLIENT_CA_DIR = "/etc/kustos/client-ca"

TFSERVING_GRPC_PORT = 8500
TFSERVING_REST_PORT = 8501

TORCHSERVE_INFERENCE_PORT = 8080
TORCHSERVE_MANAGEMENT_PORT = 8081
TORCHSERVE_METRICS_PORT = 8082
# The config.properties shipped in the pytorch/torchserve image: it binds the three APIs
# to 0.0.0.0 (TorchServe's built-in default is 127.0.0.1, unreachable from a Service).
TORCHSERVE_CONFIG = "/home/model-server/config.properties"

# Runtimes that write scratch files get them under /tmp (an emptyDir), so the root
# filesystem can stay read-only.
SCRATCH_DIR = "/tmp"


class RuntimeRenderError(ValueError):
    """The spec cannot be rendered for this runtime (admission should have caught it)."""


@dataclass(frozen=True)
class ServingSpec:
    """What the serving container needs to know, independent of the runtime kind."""

    kind: str  # kustos | seldon | mlserver | tfserving | torchserve | custom
    image: str
    model_name: str
    model_version: str
    model_file: str  # file name inside MODEL_DIR, e.g. "model.skops"
    model_format: str  # sklearn | onnx
    digest: str | None = None
    protocol: str = "v2"
    workers: int = 1
    env: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    drift_url: str | None = None
    explainer_url: str | None = None
    truth_url: str | None = None  # kustos only: the ground-truth monitor (--truth-url)
    # custom runtime only: the user's command/args/port.
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    port: int | None = None
    # kustos only: the kubernetes.io/tls Secret to serve HTTPS from, and the client CA
    # (kind "Secret" or "ConfigMap", name, key) that makes it mutual TLS.
    tls_secret: str | None = None
    client_ca: tuple[str, str, str] | None = None
    # kustos only: the --payload-log-* flags (render/payload_logging.py).
    payload_log_args: tuple[str, ...] = ()

    @property
    def model_path(self) -> str:
        return f"{MODEL_DIR}/{self.model_file}"


@dataclass(frozen=True)
class RuntimePorts:
    """Which container ports a runtime serves on.

    ``http`` takes inference traffic (the Service's target port); ``metrics`` is where
    Prometheus scrapes ``metrics_path`` (it may equal ``http``), None when the runtime
    exposes no Prometheus endpoint as rendered.
    """

    http: int
    metrics: int | None
    metrics_path: str = "/metrics"
    http_name: str = HTTP_PORT_NAME
    extra: tuple[tuple[str, int], ...] = ()  # other (name, port) pairs: grpc, management
    # A gRPC inference port served like ``http``: in the Service and open in the
    # NetworkPolicy to the same clients (kustos serve's; the others stay in ``extra``).
    grpc: int | None = None
    metrics_name: str = METRICS_PORT_NAME  # when metrics is a port of its own
    metrics_scheme: str = "http"  # https when the scrape goes through TLS


def kustos_serve_args(spec: ServingSpec, host: str = "0.0.0.0", port: int = 8080) -> list[str]:
    """The exact `kustos serve` arguments the operator renders (and tests run)."""
    args = [
        "serve",
        "--model", spec.model_path,
        "--name", spec.model_name,
        "--model-version", spec.model_version,
        "--format", spec.model_format,
        "--host", host,
        "--port", str(port),
        "--workers", str(spec.workers),
    ]
    grpc_port = kustos_grpc_port(spec)
    if grpc_port is not None:
        args += ["--grpc-port", str(grpc_port)]
    if spec.digest:
        args += ["--digest", spec.digest]
    if spec.drift_url:
        args += ["--drift-url", spec.drift_url]
    if spec.explainer_url:
        args += ["--explainer-url", spec.explainer_url]
    if spec.truth_url:
        args += ["--truth-url", spec.truth_url]
    args += spec.payload_log_args
    if spec.tls_secret:
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
        if spec.client_ca:
            args += ["--tls-client-ca", f"{CLIENT_CA_DIR}/ca.crt",
                     "--health-port", str(KUSTOS_HEALTH_PORT)]
    return args


def tls_volumes(spec: ServingSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, server volume mounts) for the TLS Secret and client CA. Whole-volume
    mounts, never subPath: the kubelet updates those in place when the Secret changes."""
    if not spec.tls_secret:
        return [], []
    # 0440 with the pod's fsGroup: readable by the server's group, by no one else.
    volumes: list[dict[str, Any]] = [{"name": "tls", "secret": {
        "secretName": spec.tls_secret, "defaultMode": 0o440,
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
    }}]
    mounts: list[dict[str, Any]] = [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}]
    if spec.client_ca:
        kind, name, key = spec.client_ca
        items = [{"key": key, "path": "ca.crt"}]
        source = ({"secret": {"secretName": name, "defaultMode": 0o444, "items": items}}
                  if kind == "Secret" else
                  {"configMap": {"name": name, "defaultMode": 0o444, "items": items}})
        volumes.append({"name": "client-ca", **source})
        mounts.append({"name": "client-ca", "mountPath": CLIENT_CA_DIR, "readOnly": True})
    return volumes, mounts


def kustos_grpc_port(spec: ServingSpec) -> int | None:
    """The port `kustos serve` answers gRPC on, None for none. With spec.runtime.tls it
    serves the same certificate (and client CA) as HTTPS: cli passes the --tls-* files
    to tls.server_credentials."""
    return KUSTOS_GRPC_PORT


def runtime_ports(spec: ServingSpec) -> RuntimePorts:
    """The serving and metrics ports of ``spec.kind``, matching `runtime_container`."""
    kind = spec.kind
    if kind == "kustos":
        # kustos serve exposes /metrics on its serving port; with mTLS on a plain port
        # of its own that answers only health and /metrics (Prometheus has no client
        # certificate either).
        if spec.tls_secret and spec.client_ca:
            return RuntimePorts(http=KUSTOS_HTTP_PORT, metrics=KUSTOS_HEALTH_PORT,
                                http_name=HTTPS_PORT_NAME, metrics_name=HEALTH_PORT_NAME,
                                grpc=kustos_grpc_port(spec))
        if spec.tls_secret:
            return RuntimePorts(http=KUSTOS_HTTP_PORT, metrics=KUSTOS_HTTP_PORT,
                                http_name=HTTPS_PORT_NAME, metrics_scheme="https",
                                grpc=kustos_grpc_port(spec))
        return RuntimePorts(http=KUSTOS_HTTP_PORT, metrics=KUSTOS_HTTP_PORT,
                            grpc=kustos_grpc_port(spec))
    if kind == "seldon":
        return RuntimePorts(
            http=SELDON_HTTP_PORT,
            metrics=SELDON_METRICS_PORT,
            extra=((GRPC_PORT_NAME, SELDON_GRPC_PORT),),
        )
    if kind == "mlserver":
        return RuntimePorts(
            http=MLSERVER_HTTP_PORT,
            metrics=MLSERVER_METRICS_PORT,
            extra=((GRPC_PORT_NAME, MLSERVER_GRPC_PORT),),
        )
    if kind == "tfserving":
        # TF Serving only exports Prometheus metrics with a --monitoring_config_file,
        # which would need a file in the image: not rendered.
        return RuntimePorts(
            http=TFSERVING_REST_PORT,
            metrics=None,
            extra=((GRPC_PORT_NAME, TFSERVING_GRPC_PORT),),
        )
    if kind == "torchserve":
        return RuntimePorts(
            http=TORCHSERVE_INFERENCE_PORT,
            metrics=TORCHSERVE_METRICS_PORT,
            extra=((MANAGEMENT_PORT_NAME, TORCHSERVE_MANAGEMENT_PORT),),
        )
    if kind == "custom":
        if spec.port is None:
            raise RuntimeRenderError("runtime 'custom' needs a port")
        return RuntimePorts(http=spec.port, metrics=None)
    raise RuntimeRenderError(f"unknown runtime kind {kind!r}; expected one of {RUNTIME_KINDS}")


def runtime_container(spec: ServingSpec) -> dict[str, Any]:
    """The main serving container for ``spec.kind``."""
    renderers = {
        "kustos": _kustos,
        "seldon": _seldon,
        "mlserver": _mlserver,
        "tfserving": _tfserving,
        "torchserve": _torchserve,
        "custom": _custom,
    }
    render = renderers.get(spec.kind)
    if render is None:
        raise RuntimeRenderError(
            f"unknown runtime kind {spec.kind!r}; expected one of {RUNTIME_KINDS}"
        )
    container = render(spec)
    container["resources"] = dict(spec.resources)
    return container


# --- per-kind renderers ---------------------------------------------------------------


def _kustos(spec: ServingSpec) -> dict[str, Any]:
    ports = runtime_ports(spec)
    if spec.tls_secret and spec.client_ca:
        # The kubelet cannot present a client certificate: probe the plain health port.
        probes = _http_probes("/v2/health/ready", "/v2/health/live", port=HEALTH_PORT_NAME)
    elif spec.tls_secret:
        # The kubelet does not verify the certificate; HTTPS probes also prove TLS works.
        probes = _http_probes("/v2/health/ready", "/v2/health/live", port=HTTPS_PORT_NAME,
                              scheme="HTTPS")
    else:
        probes = _http_probes(ready="/v2/health/ready", live="/v2/health/live")
    container = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": ["kustos"],
        "args": kustos_serve_args(spec, port=KUSTOS_HTTP_PORT),
        "env": _merge_env(_model_env(spec), spec.env),
        "ports": _ports(ports),
        **probes,
    }
    mounts = tls_volumes(spec)[1]
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _seldon(spec: ServingSpec) -> dict[str, Any]:
    if spec.model_format != "sklearn":
        raise RuntimeRenderError("runtime 'seldon' serves sklearn models only")
    ports = runtime_ports(spec)
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": ["seldon-core-microservice"],
        "args": [
            SELDON_ADAPTER_CLASS,
            "--service-type", "MODEL",
            "--http-port", str(SELDON_HTTP_PORT),
            "--grpc-port", str(SELDON_GRPC_PORT),
            "--metrics-port", str(SELDON_METRICS_PORT),
            "--workers", str(spec.workers),
        ],
        "env": _merge_env(
            {
                **_model_env(spec),
                # The metrics app and the REST app are separate gunicorn servers; this
                # keeps the scrape path explicit rather than relying on the default.
                "PREDICTIVE_UNIT_METRICS_ENDPOINT": ports.metrics_path,
                "SELDON_LOG_LEVEL": "INFO",
            },
            spec.env,
        ),
        "ports": _ports(ports),
        # /health/status calls the adapter's health_status (model loaded and answering);
        # /health/ping only proves the worker is alive, which is what liveness needs.
        **_http_probes(ready="/health/status", live="/health/ping"),
    }


def _mlserver(spec: ServingSpec) -> dict[str, Any]:
    if spec.model_format != "sklearn":
        raise RuntimeRenderError("runtime 'mlserver' is rendered for sklearn (joblib) models")
    ports = runtime_ports(spec)
    env = {
        "MLSERVER_MODEL_NAME": spec.model_name,
        "MLSERVER_MODEL_IMPLEMENTATION": MLSERVER_SKLEARN,
        "MLSERVER_MODEL_URI": spec.model_path,
        "MLSERVER_MODEL_VERSION": spec.model_version,
        "MLSERVER_HOST": "0.0.0.0",
        "MLSERVER_HTTP_PORT": str(MLSERVER_HTTP_PORT),
        "MLSERVER_GRPC_PORT": str(MLSERVER_GRPC_PORT),
        "MLSERVER_METRICS_PORT": str(MLSERVER_METRICS_PORT),
        "MLSERVER_METRICS_ENDPOINT": ports.metrics_path,
        # MLServer 1.7's inference workers call asyncio.get_event_loop() with no loop set,
        # which uvloop >= 0.22 turns into "There is no current event loop": with
        # parallel_workers >= 1 the model never loads. 0 serves from the main process
        # whatever uvloop the image has; scale with replicas instead.
        "MLSERVER_PARALLEL_WORKERS": "0",
        # Both default to directories under the working directory; the root filesystem
        # is read-only.
        "MLSERVER_METRICS_DIR": f"{SCRATCH_DIR}/mlserver-metrics",
        "MLSERVER_ENVIRONMENTS_DIR": f"{SCRATCH_DIR}/mlserver-envs",
    }
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        # No model-settings.json in MODEL_DIR: MLServer then builds the model from the
        # MLSERVER_MODEL_* variables.
        "command": ["mlserver", "start", MODEL_DIR],
        "args": [],
        "env": _merge_env(env, spec.env),
        "ports": _ports(ports),
        **_http_probes(ready="/v2/health/ready", live="/v2/health/live"),
    }


def _tfserving(spec: ServingSpec) -> dict[str, Any]:
    # model_file names the SavedModel base directory, which holds numeric version dirs.
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": ["tensorflow_model_server"],
        "args": [
            f"--port={TFSERVING_GRPC_PORT}",
            f"--rest_api_port={TFSERVING_REST_PORT}",
            f"--model_name={spec.model_name}",
            f"--model_base_path={spec.model_path}",
        ],
        "env": _merge_env({}, spec.env),
        "ports": _ports(runtime_ports(spec)),
        # /v1/models/NAME answers 404 until the model is loaded; liveness must not
        # depend on that, so it only checks the gRPC socket.
        "readinessProbe": _probe({"httpGet": {"path": f"/v1/models/{spec.model_name}",
                                              "port": HTTP_PORT_NAME}}),
        "livenessProbe": _probe({"tcpSocket": {"port": GRPC_PORT_NAME}}, failure_threshold=6),
        "startupProbe": _startup({"tcpSocket": {"port": GRPC_PORT_NAME}}),
    }


def _torchserve(spec: ServingSpec) -> dict[str, Any]:
    if not spec.model_file.endswith(".mar"):
        raise RuntimeRenderError("runtime 'torchserve' needs a .mar model archive")
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": ["torchserve"],
        "args": [
            "--start",
            "--foreground",
            "--model-store", MODEL_DIR,
            "--models", f"{spec.model_name}={spec.model_file}",
            "--ts-config", TORCHSERVE_CONFIG,
            # Token auth (default since 0.11) writes key_file.json to the working
            # directory and needs every client to hold the key; the NetworkPolicy is the
            # access control here. --ncs: no config snapshots written to disk.
            "--disable-token-auth",
            "--ncs",
        ],
        "env": _merge_env(
            {
                "LOG_LOCATION": f"{SCRATCH_DIR}/torchserve-logs",
                "METRICS_LOCATION": f"{SCRATCH_DIR}/torchserve-logs",
                "TEMP": SCRATCH_DIR,
            },
            spec.env,
        ),
        "ports": _ports(runtime_ports(spec)),
        **_http_probes(ready="/ping", live="/ping"),
    }


def _custom(spec: ServingSpec) -> dict[str, Any]:
    ports = runtime_ports(spec)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "env": _merge_env(_model_env(spec), spec.env),
        "ports": _ports(ports),
        # Nothing is known about a custom server's HTTP paths; an open port is the most
        # that can be checked without guessing.
        "readinessProbe": _probe({"tcpSocket": {"port": HTTP_PORT_NAME}}),
        "livenessProbe": _probe({"tcpSocket": {"port": HTTP_PORT_NAME}}, failure_threshold=6),
    }
    # Empty command/args keep the image's ENTRYPOINT/CMD, so omit rather than send [].
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    return container


# --- helpers ----------------------------------------------------------------------------


def _model_env(spec: ServingSpec) -> dict[str, str]:
    """Where the model is, for runtimes that read it through the environment."""
    env = {
        "MODEL_DIR": MODEL_DIR,
        "KUSTOS_MODEL_PATH": spec.model_path,
        "KUSTOS_MODEL_NAME": spec.model_name,
        "KUSTOS_MODEL_VERSION": spec.model_version,
        "KUSTOS_MODEL_FORMAT": spec.model_format,
    }
    if spec.digest:
        env["KUSTOS_MODEL_DIGEST"] = spec.digest
    return env


def _merge_env(ours: Mapping[str, str], user: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rendered env first, then the user's; a user entry replaces ours of the same name.

    Server-side apply treats env as a map keyed on name and rejects duplicates, so
    names must be unique.
    """
    merged: dict[str, dict[str, Any]] = {k: {"name": k, "value": v} for k, v in ours.items()}
    for entry in user:
        merged.pop(entry["name"], None)  # re-insert so the user's entry keeps its order
        merged[entry["name"]] = dict(entry)
    return list(merged.values())


def _ports(ports: RuntimePorts) -> list[dict[str, Any]]:
    out = [{"name": ports.http_name, "containerPort": ports.http, "protocol": "TCP"}]
    if ports.metrics is not None and ports.metrics != ports.http:
        out.append({"name": ports.metrics_name, "containerPort": ports.metrics,
                    "protocol": "TCP"})
    if ports.grpc is not None:
        out.append({"name": GRPC_PORT_NAME, "containerPort": ports.grpc, "protocol": "TCP"})
    out += [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.extra]
    return out


def _probe(handler: dict[str, Any], failure_threshold: int = 3) -> dict[str, Any]:
    return {**handler, "periodSeconds": 10, "timeoutSeconds": 2,
            "failureThreshold": failure_threshold}


def _startup(handler: dict[str, Any]) -> dict[str, Any]:
    # Model loading can take minutes; the startup probe holds off liveness until then
    # instead of a long initialDelaySeconds that would also slow every healthy start.
    return {**handler, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 150}


def _http_probes(ready: str, live: str, port: str = HTTP_PORT_NAME,
                 scheme: str | None = None) -> dict[str, dict[str, Any]]:
    def get(path: str) -> dict[str, Any]:
        handler: dict[str, Any] = {"path": path, "port": port}
        if scheme:
            handler["scheme"] = scheme
        return {"httpGet": handler}

    return {
        "readinessProbe": _probe(get(ready)),
        "livenessProbe": _probe(get(live), failure_threshold=6),
        "startupProbe": _startup(get(live)),
    }
