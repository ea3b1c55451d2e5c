"""ModelDeployment: which model to serve, how, and under which governance."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from .common import (
    Digest,
    Duration,
    KModel,
    LocalObjectReference,
    ResourceStatus,
    Uri,
    validations,
)
from .registry import ModelRegistry, ModelUri, RegistryStatus
from .rollout import RolloutSpec, RolloutStatus

RuntimeKind = Literal["kustos", "seldon", "mlserver", "tfserving", "torchserve", "custom"]
RiskTier = Literal["low", "medium", "high"]
ModelFormat = Literal["sklearn", "onnx", "xgboost", "lightgbm", "mlflow"]


# A bundle location: as a model URI, but not pvc:// (the default bundle of a pvc:// model,
# <model uri>.sig on the same claim, is mounted with the model).
BUNDLE_URI_PATTERN = r"^(file:///|https://|s3://|http://(127\.0\.0\.1|localhost)[:/])\S+$"


class KeySelector(KModel):
    """One key of a ConfigMap or Secret in the ModelDeployment's namespace."""

    kind: Literal["ConfigMap", "Secret"] = "ConfigMap"
    """ConfigMap (public material) or Secret."""
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the ConfigMap or Secret."""
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """The key holding the file."""


class PublicKeyReference(KeySelector):
    """The public key a bundle must be signed with, optionally pinned by fingerprint."""

    fingerprint: Digest | None = None
    """sha256 of the key's DER SubjectPublicKeyInfo (`kustos sign` prints it): the fetch
    refuses a mounted key with another fingerprint, so editing the ConfigMap/Secret cannot
    swap the trusted key; status.model.signer then names this fingerprint."""


class CertificateTrust(KModel):
    """Verify a bundle signed with a certificate (`kustos sign --certificate`)."""

    ca_chain: KeySelector
    """CA certificates (PEM) the signing certificate must chain to."""
    identity: str | None = Field(default=None, min_length=1, max_length=512)
    """The signing certificate's expected subjectAltName (email, URI or DNS name); any
    certificate issued under caChain when unset."""


class SigstoreTrust(KModel):
    """Verify a Sigstore (keyless) bundle offline, against a trust root given as a file."""

    identity: str = Field(min_length=1, max_length=512)
    """The expected signer identity in the Fulcio certificate (email or workflow URI)."""
    issuer: str = Field(min_length=1, max_length=512, pattern=r"^https://\S+$")
    """The expected OIDC issuer, e.g. https://token.actions.githubusercontent.com."""
    trust_root: KeySelector
    """A Sigstore trusted root (trusted_root.json) or ClientTrustConfig JSON: the Fulcio
    CAs, Rekor and CT log keys verification uses; nothing is fetched at verify time."""


class ModelSignature(KModel):
    """An OpenSSF model-signing bundle the fetch init container verifies before the model
    is written where the server loads it."""

    model_config = validations(
        ("(has(self.publicKey) ? 1 : 0) + (has(self.certificate) ? 1 : 0)"
         " + (has(self.sigstore) ? 1 : 0) == 1",
         "spec.model.signature needs exactly one of publicKey, certificate or sigstore",
         None),
    )

    uri: str | None = Field(default=None, pattern=BUNDLE_URI_PATTERN, max_length=2048)
    """Where the bundle lives; defaults to the model URI with .sig appended (what
    `kustos sign` writes), fetched with the model's credentials."""
    public_key: PublicKeyReference | None = None
    """An elliptic-curve public key (PEM) the bundle must be signed with."""
    certificate: CertificateTrust | None = None
    """The CA chain (and optionally the identity) of a certificate-signed bundle."""
    sigstore: SigstoreTrust | None = None
    """Identity, issuer and trust root of a Sigstore bundle."""


class WebIdentity(KModel):
    """Fetch an s3:// model as an IAM role, assumed with the pod's own ServiceAccount token
    (STS AssumeRoleWithWebIdentity, as EKS's IRSA): no static keys in the cluster. The
    model gets its own ServiceAccount (named after the ModelDeployment); the role's trust
    policy must name the cluster's OIDC issuer as a federated principal, this audience
    (aud) and system:serviceaccount:NAMESPACE:NAME (sub)."""

    role_arn: str = Field(max_length=2048,
                          pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$")
    """The role to assume, arn:aws:iam::ACCOUNT:role/NAME."""
    audience: str = Field(default="sts.amazonaws.com", min_length=1, max_length=256)
    """The audience of the projected token; the OIDC provider in IAM must list it."""
    region: str | None = Field(default=None, max_length=32, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
    """The region of STS and of the bucket (AWS_REGION); a bucket elsewhere is followed
    by its region redirect."""
    sts_endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https://\S+$")
    """An STS endpoint other than the regional one (AWS_ENDPOINT_URL_STS): a VPC endpoint,
    or an S3-compatible store's STS."""
    token_expiration_seconds: int = Field(default=3600, ge=600, le=86400)
    """Lifetime of the projected token; the kubelet renews it at 80%."""


# A models:/ URI's file is checked when it is resolved (kustos.registry.resolution).
RESOLVED = "self.uri.startsWith('models:/') || "


class ModelSource(KModel):
    """Which model file to serve and how to check it."""

    model_config = validations(
        (RESOLVED + "self.format != 'onnx' || self.uri.endsWith('.onnx')",
         "format onnx needs a .onnx file", ".uri"),
        (RESOLVED + "self.format != 'sklearn' || self.uri.endsWith('.skops')"
         " || self.uri.endsWith('.joblib') || self.uri.endsWith('.pkl')",
         "format sklearn needs a .skops, .joblib or .pkl file", ".uri"),
        (RESOLVED + "self.format != 'xgboost' || self.uri.endsWith('.ubj')"
         " || self.uri.endsWith('.json')",
         "format xgboost needs a native .ubj or .json file", ".uri"),
        (RESOLVED + "self.format != 'lightgbm' || self.uri.endsWith('.txt')",
         "format lightgbm needs a native text model (.txt) file", ".uri"),
        (RESOLVED + "self.format != 'mlflow' || self.uri.endsWith('.tar.gz')"
         " || self.uri.endsWith('.tgz') || self.uri.endsWith('.tar') || self.uri.endsWith('.zip')",
         "format mlflow needs a .tar.gz, .tgz, .tar or .zip archive of an MLmodel directory",
         ".uri"),
        ("!(self.uri.endsWith('.joblib') || self.uri.endsWith('.pkl')) || has(self.digest)",
         "unpickling runs code: a .joblib/.pkl model needs a pinned digest", ".digest"),
        ("!has(self.webIdentity) || self.uri.startsWith('s3://')",
         "webIdentity is for s3:// models", ".webIdentity"),
        ("!self.uri.startsWith('models:/') || has(self.registry)",
         "a models:/ URI needs spec.model.registry (the MLflow registry to resolve it in)",
         ".registry"),
        ("!has(self.registry) || self.uri.startsWith('models:/')",
         "spec.model.registry is for models:/ URIs", ".registry"),
    )


    name: str | None = Field(default=None, min_length=1, max_length=63,
                             pattern=r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$")
    """Model name in the inference protocols; defaults to metadata.name."""
    version: str = Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]*)?$")
    """Model version, e.g. "7"; reported by the server and recorded in status.history."""
    uri: ModelUri
    """Where the model file lives: file:///, https://, s3://BUCKET/KEY or pvc://CLAIM/PATH;
    or a registered model, models:/NAME@ALIAS or models:/NAME/VERSION, resolved in
    spec.model.registry (status.registry says to what)."""
    format: ModelFormat = "sklearn"
    """sklearn (.skops, or .joblib/.pkl with a pinned digest), onnx, xgboost (native .ubj or
    .json), lightgbm (native text .txt) or mlflow (a .tar.gz/.tgz/.tar/.zip of an MLmodel
    directory of flavour sklearn, xgboost, lightgbm or onnx; pickled flavours need a pinned
    digest); only the kustos runtime serves them all."""
    digest: Digest | None = None
    """sha256 of the model file (sha256:<64 hex>), verified before it is deserialized."""
    credentials_secret_ref: LocalObjectReference | None = None
    """A Secret whose keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...)
    the fetch init container gets as environment, for s3:// and private https:// sources."""
    web_identity: WebIdentity | None = None
    """Assume an IAM role with the pod's ServiceAccount token instead of static keys (static
    keys in credentialsSecretRef, if any, still come first, as in the AWS SDKs)."""
    signature: ModelSignature | None = None
    """Verify an OpenSSF model-signing bundle before the model is used (the canary's
    model is verified the same way, against its own bundle)."""
    encryption: ModelEncryption | None = None
    """The model file is encrypted (`kustos encrypt`) with a Vault/OpenBao Transit key;
    needs spec.secrets.vault. The canary's model must be encrypted with the same key."""
    registry: ModelRegistry | None = None
    """The MLflow Model Registry a models:/ URI is resolved in (docs/registry.md)."""


QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a quantity (e.g. 500m, 1Gi)")
    return value


# A resource quantity as the API server parses it (int, or a string like 500m or 1Gi).
Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}],
                    "pattern": QUANTITY_PATTERN}),
]


class TransitKey(KModel):
    """A Vault/OpenBao Transit key."""

    mount: str = Field(default="transit", min_length=1, max_length=256,
                       pattern=r"^[-_a-zA-Z0-9]+(/[-_a-zA-Z0-9]+)*$")
    """Where the Transit secrets engine is mounted (without a leading or trailing /)."""
    key_name: str = Field(min_length=1, max_length=128, pattern=r"^[-_.a-zA-Z0-9]+$")
    """The Transit key that wraps the model's data key (`kustos encrypt --transit-key`)."""


class ModelEncryption(KModel):
    """The model file is an envelope written by `kustos encrypt`: AES-256-GCM with a data
    key wrapped by a Transit key. The fetch init container logs in to Vault as the model's
    own ServiceAccount (spec.secrets.vault: address, authPath, namespace, audience), unwraps
    the data key with transit/decrypt and decrypts into an in-memory model volume;
    spec.model.digest then pins the decrypted model."""

    transit: TransitKey
    """The Transit key the data key is wrapped with."""
    role: str | None = Field(default=None, min_length=1, max_length=256,
                             pattern=r"^[-._a-zA-Z0-9@]+$")
    """Kubernetes auth role for the decryption; defaults to spec.secrets.vault.role. Its
    policy needs only update on MOUNT/decrypt/KEYNAME."""
    size_limit: str | None = Field(default=None, max_length=64, pattern=QUANTITY_PATTERN)
    """Size of the in-memory (tmpfs) model volume; it counts against the pod's memory.
    Defaults to the operator config's modelVolumeSize."""


class ResourceRequirements(KModel):
    """Compute resources of the serving container, as in a Pod spec."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. {cpu: 500m, memory: 512Mi}."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources, e.g. {memory: 1Gi}."""


class EnvVar(KModel):
    """An environment variable for the serving container (a literal value)."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str = Field(default="", max_length=32768)
    """Variable value. Use spec.secrets for anything secret."""


DNS_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class ClientCASource(KModel):
    """Where the CA that signs client certificates is: a Secret or a ConfigMap key."""

    model_config = validations(
        ("has(self.secretName) != has(self.configMapName)",
         "clientCA needs exactly one of secretName and configMapName", None),
    )

    secret_name: str | None = Field(default=None, min_length=1, max_length=253,
                                    pattern=DNS_NAME)
    """A Secret holding the CA certificate(s) (PEM)."""
    config_map_name: str | None = Field(default=None, min_length=1, max_length=253,
                                        pattern=DNS_NAME)
    """A ConfigMap holding the CA certificate(s) (PEM): CA certificates are public."""
    key: str = Field(default="ca.crt", min_length=1, max_length=253,
                     pattern=r"^[-._a-zA-Z0-9]+$")
    """The key holding the PEM (default ca.crt, as cert-manager writes it)."""


class ServerTLS(KModel):
    """HTTPS (and gRPC over TLS) at the model server itself, end to end in the pod."""

    secret_name: str = Field(min_length=1, max_length=253, pattern=DNS_NAME)
    """A kubernetes.io/tls Secret (tls.crt, tls.key) in the namespace, e.g. written by
    cert-manager or synced from Vault PKI. Mounted read-only; a renewed certificate is
    served to new connections without a restart."""
    client_ca: ClientCASource | None = Field(default=None, alias="clientCA")
    """When set, mutual TLS: every client must present a certificate this CA signed.
    Probes and the Prometheus scrape then use a plain port that serves only health and
    /metrics (the kubelet cannot present a client certificate)."""


class RuntimeSpec(KModel):
    """Which server runs the model."""

    model_config = validations(
        ("self.kind != 'custom' || (has(self.image) && has(self.port))",
         "runtime kind custom needs image and port", ".kind"),
        ("self.kind == 'custom' || !(has(self.command) || has(self.args) || has(self.port))",
         "command, args and port are only for runtime kind custom", ".kind"),
        ("!has(self.tls) || self.kind == 'kustos'",
         "tls is served by runtime kind kustos only", ".tls"),
    )


    kind: RuntimeKind = "kustos"
    """kustos (default: fast, serves all protocols), seldon, mlserver, tfserving, torchserve
    or custom."""
    image: str | None = Field(default=None, max_length=512)
    """Container image; defaults to the operator's configured image for the kind."""
    protocol: Literal["v2", "v1", "seldon"] = "v2"
    """Protocol clients use (kustos serves all three at once); used for the URL in status."""
    workers: int = Field(default=1, ge=1, le=64)
    """Server worker processes per pod (kustos runtime)."""
    resources: ResourceRequirements | None = None
    """Resources of the serving container; operator defaults apply when unset."""
    env: list[EnvVar] | None = Field(default=None, max_length=64)
    """Extra environment variables for the serving container."""
    command: list[str] | None = Field(default=None, max_length=64)
    """custom runtime only: the container command."""
    args: list[str] | None = Field(default=None, max_length=256)
    """custom runtime only: the container arguments."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """custom runtime only: the HTTP port the container serves on."""
    tls: ServerTLS | None = None
    """kustos runtime only: serve HTTPS from a certificate Secret, optionally requiring
    client certificates (mTLS). The Service port becomes https (443)."""


class AutoscalingSpec(KModel):
    """Horizontal autoscaling; when set, an HPA owns the replica count."""

    model_config = validations(
        ("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas",
         ".minReplicas"),
    )


    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Lower bound on replicas."""
    max_replicas: int = Field(ge=1, le=1000)
    """Upper bound on replicas."""
    target_cpu_utilization: int | None = Field(default=None, ge=1, le=100,
                                               alias="targetCPUUtilization")
    """Target average CPU utilisation in percent of requests (default 80 when no target is set)."""
    target_requests_per_second: int | None = Field(default=None, ge=1, le=1000000)
    """Target requests/s per pod: the HPA's Pods metric kustos_requests_per_second (needs a
    custom-metrics adapter), or a KEDA ScaledObject's Prometheus trigger when the operator
    config says autoscaling.requests_backend: keda."""
    scale_down_stabilization_seconds: int | None = Field(default=None, ge=0, le=3600)
    """How long the load must stay low before replicas are removed (the HPA's scale-down
    stabilization window; Kubernetes' default 300 s when unset)."""


class VaultItem(KModel):
    """One secret value from Vault KV v2."""

    path: str = Field(min_length=1, max_length=512, pattern=r"^[^\s\"]+$")
    """KV v2 API path, e.g. secret/data/ml/credit-risk (mount/data/path)."""
    key: str | None = Field(default=None, min_length=1, max_length=256,
                            pattern=r"^[^\s\"{}]+$")
    """Key inside the secret; all keys (as JSON) when unset."""
    file: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """File name under the secrets mount (/var/run/secrets/kustos)."""
    env: str | None = Field(default=None, max_length=256, pattern=r"^[A-Z_][A-Z0-9_]*$")
    """sync mode: also expose it as this environment variable (files are preferred)."""
    template: str | None = Field(default=None, max_length=8192)
    """injector and agent modes: a Vault Agent template for this file (default: the key's
    value, or all keys as JSON)."""


class VaultSpec(KModel):
    """Secrets from Vault (or OpenBao)."""

    model_config = validations(
        ("self.items.all(i, self.items.exists_one(j, j.file == i.file))",
         "each item needs its own file name", ".items"),
        ("self.mode != 'sync' || self.items.all(i, !has(i.template))",
         "templates are for injector and agent modes only", ".items"),
        ("self.mode == 'sync' || self.items.all(i, !has(i.env))",
         "env is for sync mode only (the Vault Agent writes files)", ".items"),
        ("self.mode == 'injector' || self.items.all(i, i.path.contains('/data/'))",
         "sync mode reads KV v2: each path must be MOUNT/data/PATH", ".items"),
        ("self.items.all(i, i.file != '.' && i.file != '..' && !i.file.startsWith('..'))",
         "a file name must not be '.', '..' or start with '..'", ".items"),
        ("self.mode != 'injector' || self.items.all(i, size(i.file) <= 41 && "
         "i.file.matches('^[a-zA-Z0-9]([-._a-zA-Z0-9]*[a-zA-Z0-9])?$'))",
         "injector mode: a file name becomes part of an annotation key: at most 41 "
         "characters, starting and ending with a letter or digit", ".items"),
    )


    mode: Literal["sync", "injector", "agent"] = "sync"
    """sync: the operator reads Vault and owns a Secret; injector: Vault Agent Injector
    annotations (the cluster runs the injector's webhook); agent: Kustos renders an OpenBao
    agent into the pod itself (an init container and a sidecar, config in a ConfigMap)."""
    address: str | None = Field(default=None, max_length=512,
                                pattern=r"^https?://[^\s/?#]+/?$")
    """Vault's address (https://vault.example:8200). sync and agent: defaults to the
    operator config's vault.address; injector: the injector's own address when unset."""
    role: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z0-9@]+$")
    """Vault Kubernetes auth role bound to the model's ServiceAccount."""
    auth_path: str = Field(default="kubernetes", min_length=1, max_length=256,
                           pattern=r"^[-_a-zA-Z0-9]+(/[-_a-zA-Z0-9]+)*$")
    """Mount path of the Kubernetes auth method (without auth/)."""
    namespace: str | None = Field(default=None, max_length=256,
                                  pattern=r"^[-_a-zA-Z0-9]+(/[-_a-zA-Z0-9]+)*/?$")
    """Vault Enterprise / OpenBao namespace."""
    audience: str | None = Field(default=None, min_length=1, max_length=256)
    """Audience of the ServiceAccount token presented to Vault; the role's audience must
    match. Defaults to the operator config's vault.audience ("vault")."""
    refresh_interval: Duration = "5m"
    """sync mode: how often secrets are re-read (at least 5s); a new version rolls the
    pods. agent mode: how often the sidecar agent re-reads them and rewrites the files
    (no restart)."""
    pre_populate_only: bool = False
    """injector and agent modes: only the init container, no sidecar agent (the files are
    written once per pod start)."""
    items: list[VaultItem] = Field(min_length=1, max_length=64)
    """The secret values to provide."""


class SecretsSpec(KModel):
    """Where the model's secrets come from."""

    vault: VaultSpec | None = None
    """Secrets from Vault."""


class Approval(KModel):
    """Who approved this model version for production."""

    approved_by: str = Field(min_length=1, max_length=256)
    """Approver's identity."""
    ticket: str = Field(min_length=1, max_length=256)
    """Change or risk ticket, e.g. RISK-1234."""
    approved_at: datetime | None = None
    """When it was approved (RFC 3339)."""


class ModelCard(KModel):
    """Model card fields, shown by kubectl describe and kept with the deployment."""

    intended_use: str | None = Field(default=None, max_length=4096)
    """What the model is for."""
    limitations: str | None = Field(default=None, max_length=4096)
    """Known limitations and out-of-scope uses."""
    training_data: str | None = Field(default=None, max_length=4096)
    """What it was trained on."""
    metrics: dict[str, str] | None = None
    """Evaluation metrics, e.g. {auc: "0.91"}."""


class GovernanceSpec(KModel):
    """Ownership, risk and approval."""

    owner: str | None = Field(default=None, max_length=256)
    """Team or person accountable for the model."""
    risk_tier: RiskTier = "low"
    """low | medium | high; policies key off this."""
    approval: Approval | None = None
    """Approval of this version."""
    model_card: ModelCard | None = None
    """Model card."""


# spec.canary.model.uri is a file: a registry version would need a second resolution
# (status.registry holds spec.model's); spec.rollout covers registry-driven canaries.
CANARY_REGISTRY_PREFIX = "models:/"
CANARY_REGISTRY_MESSAGE = (
    "spec.canary.model.uri cannot be a models:/ registry URI (only spec.model.uri is "
    "resolved in a registry): give the registered version's file URI, or use spec.rollout "
    "with spec.model.uri models:/NAME@ALIAS, which rolls each alias move out as a gated "
    "canary")


class CanaryModel(KModel):
    """The canary's model; unset fields are taken from spec.model."""

    model_config = validations(
        ("!(self.uri.endsWith('.joblib') || self.uri.endsWith('.pkl')) || has(self.digest)",
         "unpickling runs code: a .joblib/.pkl model needs a pinned digest", ".digest"),
        # The URI pattern refuses it too; this says why, and what to do instead.
        (f"!self.uri.startsWith('{CANARY_REGISTRY_PREFIX}')", CANARY_REGISTRY_MESSAGE, ".uri"),
    )

    version: str = Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]*)?$")
    """Canary model version."""
    uri: Uri
    """Where the canary model file lives: file:///, https://, s3:// or pvc://. Not a
    models:/ registry URI (only spec.model.uri is resolved in a registry): for a
    registered version give its file, or use spec.rollout with a models:/NAME@ALIAS
    spec.model.uri, whose alias moves are rolled out as gated canaries."""
    format: ModelFormat | None = None
    """Format; defaults to spec.model.format."""
    digest: Digest | None = None
    """sha256 of the canary model file."""
    signature_uri: str | None = Field(default=None, pattern=BUNDLE_URI_PATTERN,
                                      max_length=2048)
    """The canary's bundle, verified as spec.model.signature says; defaults to the canary
    URI with .sig appended."""


class CanarySpec(KModel):
    """A second model version behind the same Service."""

    model: CanaryModel
    """The canary model."""
    traffic_percent: int = Field(ge=1, le=99)
    """Share of traffic for the canary, 1..99: the weight of its HTTPRoute backend with
    spec.gateway and the Gateway API installed, else the replica ratio of the two
    Deployments (status.canary.trafficSplit says which)."""


# A Gateway API hostname: a DNS name, optionally with one leading wildcard label.
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Hostname = Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME_PATTERN)]


class GatewayParentRef(KModel):
    """A Gateway (Gateway API) the model's HTTPRoute attaches to."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_NAME)
    """The Gateway's name."""
    namespace: str | None = Field(default=None, min_length=1, max_length=63,
                                  pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """The Gateway's namespace; the ModelDeployment's when unset (the Gateway's listener
    must allow routes from this namespace)."""
    section_name: str | None = Field(default=None, min_length=1, max_length=253,
                                     pattern=DNS_NAME)
    """One listener of the Gateway, by name; all of them when unset."""


class GatewayRouteSpec(KModel):
    """Serve the model through a Gateway API implementation: Kustos renders an HTTPRoute
    whose backends are the stable track (and the canary's, weighted by
    spec.canary.trafficPercent) when the cluster serves the HTTPRoute CRD."""

    model_config = validations(
        # whole-object equality: name, namespace and sectionName (unset equals unset);
        # comparing the fields one by one with has() costs the CRD's CEL budget 100x over
        ("self.parentRefs.all(a, self.parentRefs.exists_one(b, b == a))",
         "spec.gateway.parentRefs must not name the same Gateway listener twice",
         ".parentRefs"),
        ("!has(self.hostnames) || self.hostnames.all(h, self.hostnames.exists_one(x, x == h))",
         "spec.gateway.hostnames must be distinct", ".hostnames"),
    )

    parent_refs: list[GatewayParentRef] = Field(min_length=1, max_length=8)
    """The Gateways (or their listeners) the route attaches to."""
    hostnames: list[Hostname] | None = Field(default=None, max_length=16)
    """Host names the route answers (the Host header); every host the listener accepts
    when unset."""
    path_prefix: str = Field(default="/", min_length=1, max_length=1024, pattern=r"^/\S*$")
    """The path prefix routed to the model (kept as is: the model server sees the full
    path, e.g. /v2/models/<name>/infer)."""


class KafkaSink(KModel):
    """A Kafka topic (plaintext listener; the CloudEvents Kafka binding, binary mode)."""

    bootstrap_servers: list[Annotated[str, Field(
        min_length=3, max_length=261, pattern=r"^[^\s,:]+:[0-9]{1,5}$")]] = Field(
        min_length=1, max_length=16)
    """Brokers to ask for the topic's partition leaders, as host:port."""
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[a-zA-Z0-9._-]+$")
    """The topic; each event is a record keyed by the inference id."""


class PayloadLogSink(KModel):
    """Where payload log events go: an HTTP(S) URL or a Kafka topic."""

    model_config = validations(
        ("has(self.url) != has(self.kafka)",
         "a spec.logging sink needs exactly one of url and kafka", None),
    )

    url: str | None = Field(default=None, min_length=1, max_length=2048,
                            pattern=r"^https?://[^\s/?#]+\S*$")
    """An HTTP(S) endpoint that accepts CloudEvents in binary content mode (e.g. a Knative
    broker, KServe's message-dumper, a log collector)."""
    kafka: KafkaSink | None = None
    """A Kafka topic."""


class PayloadLoggingSpec(KModel):
    """Payload logging: each sampled prediction's request and response, sent as
    CloudEvents (KServe's event types and extensions) by the payload-log container the
    operator adds to the model's pods (the kustos model server samples and hands them
    over within the pod)."""

    model_config = validations(
        ("self.sinks.all(a, self.sinks.exists_one(b, b == a))",
         "spec.logging.sinks must not name the same sink twice", ".sinks"),
        ("self.sinks.filter(s, has(s.kafka)).size() <= 1",
         "spec.logging allows one kafka sink", ".sinks"),
        ("!has(self.redact) || self.redact.all(n, self.redact.exists_one(x, x == n))",
         "spec.logging.redact must not name a field twice", ".redact"),
    )

    sinks: list[PayloadLogSink] = Field(min_length=1, max_length=8)
    """The event sinks; every sampled prediction goes to each (a queue per sink)."""
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    """Share of predictions logged, 0..1 (default 1: all)."""
    redact: list[Annotated[str, Field(min_length=1, max_length=253,
                                      pattern=r"^[^,\s]+$")]] | None = Field(
        default=None, max_length=64)
    """Input tensor and JSON field names whose values are replaced by "[redacted]" in the
    pod before an event leaves it (PII)."""
    queue_size: int = Field(default=10000, ge=1, le=1000000)
    """Predictions waiting per sink; when full the newest is dropped (counted in
    kustos_payload_log_events_total{outcome="dropped"}): a prediction never waits."""


class ModelDeploymentSpec(KModel):
    """Desired state of a ModelDeployment."""

    model_config = validations(
        ("!has(self.governance) || self.governance.riskTier != 'high' || has(self.model.digest)",
         "riskTier high needs a pinned model digest", ".model.digest"),
        ("!has(self.canary) || !has(self.governance) || self.governance.riskTier != 'high'"
         " || has(self.canary.model.digest)",
         "riskTier high needs a pinned canary model digest", ".canary.model.digest"),
        ("!has(self.canary) || !has(self.canary.model.signatureUri) || "
         "has(self.model.signature)",
         "canary.model.signatureUri needs spec.model.signature (how to verify it)",
         ".canary.model.signatureUri"),
        ("!has(self.canary) || self.replicas >= 2 || has(self.autoscaling)",
         "a canary needs at least 2 replicas", ".replicas"),
        # An HTTPRoute backend speaks plain HTTP unless a BackendTLSPolicy says otherwise,
        # which Kustos does not render (yet).
        ("!has(self.gateway) || !has(self.runtime.tls)",
         "spec.gateway routes plain HTTP: it cannot be combined with spec.runtime.tls",
         ".gateway"),
        ("!has(self.model.encryption) || (has(self.secrets) && has(self.secrets.vault))",
         "spec.model.encryption needs spec.secrets.vault (the Vault the model logs in to)",
         ".model.encryption"),
        ("!has(self.model.encryption) || !has(self.secrets) || !has(self.secrets.vault)"
         " || self.secrets.vault.mode != 'injector' || has(self.secrets.vault.address)",
         "spec.model.encryption with injector mode needs spec.secrets.vault.address (the "
         "fetch init container logs in itself)", ".secrets.vault.address"),
        ("!has(self.logging) || self.runtime.kind == 'kustos'",
         "spec.logging is served by runtime kind kustos only", ".logging"),
        ("!has(self.rollout) || !has(self.canary)",
         "spec.rollout and spec.canary are mutually exclusive (a rollout makes its own "
         "canary)", ".rollout"),
    )


    model: ModelSource
    """The model to serve."""
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    """The serving runtime."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Replicas when autoscaling is not set (the scale subresource)."""
    autoscaling: AutoscalingSpec | None = None
    """When set, an HPA owns the replica count."""
    secrets: SecretsSpec | None = None
    """Secrets for the model server."""
    governance: GovernanceSpec | None = None
    """Ownership, risk tier, approval and model card."""
    canary: CanarySpec | None = None
    """Optional canary."""
    gateway: GatewayRouteSpec | None = None
    """Serve through a Gateway API Gateway (an HTTPRoute): the canary's share is then the
    exact weight of its backend, not the replica ratio."""
    logging: PayloadLoggingSpec | None = None
    """Payload logging of predictions as CloudEvents (kustos runtime only); off when
    unset."""
    rollout: RolloutSpec | None = None
    """Gated progressive delivery: a change of spec.model goes through shadow and canary
    steps, each judged against the stable model, then is promoted or rolled back
    (docs/rollouts.md)."""


class DeployedModel(KModel):
    """A model version as deployed."""

    version: str | None = None
    """Model version."""
    digest: str | None = None
    """Model digest."""
    uri: str | None = None
    """Where the model file was fetched from (what `kustos rollback` restores)."""
    signer: str | None = None
    """Who signed the model, as the fetch verified it before serving: the public key's
    ConfigMap/Secret, the certificate identity, or the Sigstore identity and issuer (the
    key's sha256 fingerprint is in the fetch-model container's termination message)."""
    deployed_at: datetime | None = None
    """When this version was first rolled out."""


class HistoryEntry(DeployedModel):
    """A version that was served, or a gated rollout's candidate that was rolled back."""

    event: Literal["RolledBack"] | None = None
    """Unset: a version that served every caller (what `kustos rollback` returns to).
    RolledBack: a spec.rollout candidate that was rolled back, automatically by a failed
    gate or by an abort; it never took all traffic, and `kustos rollback` skips it."""
    message: str | None = None
    """RolledBack: why, e.g. the failed gates with the stable's and the candidate's
    values, or the abort."""
    rolled_back_at: datetime | None = None
    """RolledBack: when."""


class SecretVersion(KModel):
    """The version of one synced Vault secret."""

    path: str
    """KV v2 path."""
    version: int
    """KV v2 version that was read."""


class SecretsStatus(KModel):
    """Secret sync state: versions and times only, never values."""

    version: str | None = None
    """Checksum over the item mapping and the versions read (never the values); the pod
    template carries it, so a new version rolls the pods."""
    versions: list[SecretVersion] | None = None
    """The KV v2 version of each path, as last synced."""
    secret_name: str | None = None
    """The Secret the values were written to."""
    last_sync: datetime | None = None
    """Last successful sync."""


class CanaryStatus(KModel):
    """How the canary's share of the traffic is made."""

    traffic_split: Literal["gateway", "replicas"] | None = None
    """gateway: the weights of the HTTPRoute's backends (exact, for requests through the
    Gateway); replicas: the ratio of the two Deployments' pods behind one Service."""
    traffic_percent: int | None = None
    """The canary's share in effect, in percent: the backend weight, or the canary's part
    of the pods."""


class ModelDeploymentStatus(ResourceStatus):
    """Observed state of a ModelDeployment.

    Conditions: Ready, Progressing, Degraded, SecretsReady (Vault sync mode),
    PolicyCompliant (once a GovernancePolicy applies); later: ModelVerified.
    """

    replicas: int | None = None
    """Pods of the serving Deployment."""
    ready_replicas: int | None = None
    """Ready pods."""
    selector: str | None = None
    """Label selector of the serving pods (scale subresource)."""
    url: str | None = None
    """In-cluster URL of the model endpoint."""
    model: DeployedModel | None = None
    """The version being served."""
    secrets: SecretsStatus | None = None
    """Secret sync state."""
    history: list[HistoryEntry] | None = None
    """The last deployed versions, newest first, with the gated rollouts' candidates that
    were rolled back (event RolledBack) among them."""
    canary: CanaryStatus | None = None
    """How the canary's traffic is split (unset without a canary)."""
    approval: Approval | None = None
    """The approval last recorded in the audit trail (an ApprovalChanged Event is posted
    when spec.governance.approval differs from it)."""
    registry: RegistryStatus | None = None
    """What a models:/ spec.model.uri resolved to in the registry (docs/registry.md)."""
    rollout: RolloutStatus | None = None
    """Where a spec.rollout stands: phase, step, weight, the stable and candidate models
    and the last analysis."""


class ModelDeployment(KModel):
    """Serve one model with its runtime, scaling, secrets and governance."""

    api_version: Literal["kustos.dev/v1alpha1"] = "kustos.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
