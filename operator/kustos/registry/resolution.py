"""From a registry model version to the one file the fetch init container downloads.

What ``status.registry`` records (pure apart from ``resolve``, which asks the registry):

- ``source``: the model file's URI as the fetch reads it. The version's artifact location
  comes from ``model-versions/get-download-uri`` (the server resolves runs:/ and models:/
  sources to it); ``mlflow-artifacts:/PATH`` (a server that proxies its artifact store)
  becomes ``<registry url>/api/2.0/mlflow-artifacts/artifacts/PATH``; s3:// and file://
  stay as they are. The file inside that directory is the version's ``kustos.dev/file``
  tag, else the first of MLflow's own names for the format that the directory holds
  (sklearn: model.skops, MLflow 3's default, then model.pkl; onnx: model.onnx), looked up
  through the proxy's listing; a store the operator cannot list gets the first name. The
  tag ``.`` means the location is the file itself.
- ``digest``: the version's ``kustos.dev/sha256`` tag (sha256:<hex>, as `kustos fetch` or
  sha256sum reports it), set by whoever registers the model. The fetch verifies the file
  against it before anything deserializes it. Without the tag there is no digest, and a
  pickled model (.pkl/.joblib) is refused, as spec.model.digest is required for one.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kustos.api.v1alpha1.modeldeployment import ModelDeploymentSpec

from .client import RegistryClient, RegistryError
from .uri import ModelRef, is_registry_uri, parse

FILE_TAG = "kustos.dev/file"
DIGEST_TAG = "kustos.dev/sha256"
# MLflow's file names for flavours Kustos reads directly, in order of preference
# (mlflow.sklearn writes model.skops by default since MLflow 3, model.pkl with
# serialization_format pickle/cloudpickle; mlflow.onnx writes model.onnx). Others need the
# kustos.dev/file tag.
DEFAULT_FILES = {"sklearn": ("model.skops", "model.pkl"), "onnx": ("model.onnx",)}
# As the CRD's CEL rules on spec.model: which files each format accepts.
SUFFIXES = {
    "sklearn": (".skops", ".joblib", ".pkl"),
    "onnx": (".onnx",),
    "xgboost": (".ubj", ".json"),
    "lightgbm": (".txt",),
    "mlflow": (".tar.gz", ".tgz", ".tar", ".zip"),
}
PICKLED = (".pkl", ".joblib")
_DIGEST = re.compile(r"^(sha256:)?([a-fA-F0-9]{64})$")
_ARTIFACTS_PROXY = "/api/2.0/mlflow-artifacts/artifacts/"


class ResolutionError(RegistryError):
    """The version was found but cannot be served as it is registered."""

    reason = "ModelVersionUnusable"


@dataclass(frozen=True)
class Resolution:
    name: str
    alias: str | None
    version: str
    run_id: str | None
    source: str
    digest: str | None

    def status(self, resolved_at: datetime) -> dict[str, Any]:
        """status.registry (camelCase, unset fields left out)."""
        out = {"name": self.name, "alias": self.alias, "version": self.version,
               "runId": self.run_id, "source": self.source, "digest": self.digest,
               "resolvedAt": resolved_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return {k: v for k, v in out.items() if v is not None}

    def same_as(self, recorded: Mapping[str, Any] | None) -> bool:
        """Whether status.registry already says this (resolvedAt aside)."""
        if not recorded:
            return False
        now = self.status(datetime.now())
        return all(recorded.get(k) == now.get(k) for k in
                   ("name", "alias", "version", "runId", "source", "digest"))


def artifact_location(artifact_uri: str, registry_url: str) -> str:
    """The artifact URI the registry gave, as a URI the fetch reads."""
    uri = artifact_uri.strip()
    if uri.startswith("mlflow-artifacts:"):
        rest = uri[len("mlflow-artifacts:"):]
        if rest.startswith("//"):  # mlflow-artifacts://host:port/path: the path
            rest = "/" + rest[2:].partition("/")[2]
        return registry_url.rstrip("/") + _ARTIFACTS_PROXY + rest.lstrip("/")
    if uri.startswith("/"):
        return "file://" + uri
    if uri.startswith(("s3://", "file:///", "https://", "http://")):
        return uri
    scheme = uri.partition(":")[0]
    raise ResolutionError(f"the registry stores the model at a {scheme}: location, which "
                          "the fetch cannot read (s3://, file://, https:// or a proxied "
                          "mlflow-artifacts:/ store)")


def model_file(version_tags: Mapping[str, str], fmt: str,
               present: Collection[str] | None = None) -> str | None:
    """The model file's name inside the artifact directory (None: the location is the
    file itself). ``present``: the directory's files, when the registry can list them."""
    tagged = version_tags.get(FILE_TAG)
    if tagged is not None:
        tagged = tagged.strip().strip("/")
        if tagged in ("", "."):
            return None
        if ".." in tagged.split("/"):
            raise ResolutionError(f"tag {FILE_TAG}={tagged!r} leaves the artifact directory")
        return tagged
    if fmt not in DEFAULT_FILES:
        raise ResolutionError(f"format {fmt}: set the model version's tag {FILE_TAG} to the "
                              "model file's path inside the version's artifacts")
    names = DEFAULT_FILES[fmt]
    if present is None:
        return names[0]
    for name in names:
        if name in present:
            return name
    held = ", ".join(sorted(present)) or "nothing"
    raise ResolutionError(f"format {fmt}: the version's artifacts hold none of "
                          f"{', '.join(names)} (they hold {held}); set the tag {FILE_TAG}")


def digest_of(version_tags: Mapping[str, str]) -> str | None:
    tagged = version_tags.get(DIGEST_TAG)
    if tagged is None:
        return None
    m = _DIGEST.match(tagged.strip())
    if not m:
        raise ResolutionError(f"tag {DIGEST_TAG} must be sha256:<64 hex digits>")
    return f"sha256:{m[2].lower()}"


def resolve(client: RegistryClient, ref: ModelRef, fmt: str) -> Resolution:
    """Ask the registry what ``ref`` names now and where its model file is."""
    version = client.model_version(ref)
    if version.status not in (None, "", "READY"):
        raise ResolutionError(f"{ref} is version {version.version}, which is "
                              f"{version.status}, not READY")
    artifacts = client.download_uri(version.name, version.version)
    location = artifact_location(artifacts, client.url)
    present = None
    if FILE_TAG not in version.tags and location.startswith(client.url + _ARTIFACTS_PROXY):
        present = client.list_proxied(location[len(client.url + _ARTIFACTS_PROXY):])
    name = model_file(version.tags, fmt, present)
    source = location if name is None else f"{location.rstrip('/')}/{name}"
    suffixes = SUFFIXES.get(fmt, ())
    if suffixes and not source.endswith(suffixes):
        raise ResolutionError(f"{ref} (version {version.version}) resolves to "
                              f"{source.rsplit('/', 1)[-1]!r}; format {fmt} needs a "
                              f"{', '.join(suffixes)} file")
    digest = digest_of(version.tags)
    if digest is None and source.endswith(PICKLED):
        raise ResolutionError(f"unpickling runs code: {ref} (version {version.version}) is "
                              f"a pickled model; tag the version {DIGEST_TAG}=sha256:<hex>")
    return Resolution(name=version.name, alias=ref.alias, version=version.version,
                      run_id=version.run_id, source=source, digest=digest)


def matches(uri: str, recorded: Mapping[str, Any] | None) -> bool:
    """Whether status.registry was resolved for this spec URI (a new alias, name or
    version in the spec needs a new resolution before anything is rendered)."""
    if not recorded or not recorded.get("source"):
        return False
    ref = parse(uri)
    if recorded.get("name") != ref.name:
        return False
    if ref.alias:
        return bool(recorded.get("alias") == ref.alias)
    return bool(recorded.get("version") == ref.version and not recorded.get("alias"))


def served_model(model: Mapping[str, Any], recorded: Mapping[str, Any] | None
                 ) -> dict[str, Any]:
    """spec.model (wire form) as the pods get it: for a models:/ URI that status.registry
    resolved, its source, digest (spec.model.digest when the registry has none) and
    version; anything else unchanged. Pure, for the render."""
    uri = str(model.get("uri") or "")
    if not is_registry_uri(uri) or not matches(uri, recorded):
        return dict(model)
    assert recorded is not None
    out = {**model, "uri": recorded["source"], "version": str(recorded["version"])}
    if recorded.get("digest"):
        out["digest"] = recorded["digest"]
    out.pop("registry", None)
    return out


def served_spec(body: Mapping[str, Any]) -> ModelDeploymentSpec:
    """A ModelDeployment's spec as its pods serve it: validated as written, then, for a
    resolved models:/ URI, with the registry's file, digest and version as spec.model
    (not validated again: a proxied artifact store's http:// URL is no spec URI)."""
    spec = ModelDeploymentSpec.model_validate(body["spec"])
    if not is_registry_uri(spec.model.uri):
        return spec
    recorded = (body.get("status") or {}).get("registry")
    if not matches(spec.model.uri, recorded):
        return spec
    model = served_model(spec.model.wire(), recorded)
    update = {"uri": model["uri"], "version": model["version"],
              "digest": model.get("digest") or spec.model.digest}
    return spec.model_copy(update={"model": spec.model.model_copy(update=update)})
