"""Which model each track runs and the candidate's weight, from spec + status.rollout
(pure). A rollout in flight is rendered as the existing canary: spec.model becomes the
stable model recorded in status.rollout and spec.canary the candidate at the current
weight, so render/ and status/ need no second canary of their own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kustos.api.v1alpha1 import ModelDeploymentSpec
from kustos.api.v1alpha1.modeldeployment import CanaryModel, CanarySpec, ServerTLS
from kustos.render.runtimes import TLS_DIR

from .machine import model_ref, same

# The Service the candidate answers mirrored requests on during the shadow phase.
CANDIDATE_SUFFIX = "-candidate"


def rollout_status(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return (body.get("status") or {}).get("rollout") or {}


def in_flight(spec: ModelDeploymentSpec, status: Mapping[str, Any]) -> bool:
    """A candidate other than the stable model is deployed (not rolled back)."""
    stable = status.get("stable")
    return (spec.rollout is not None and bool(stable)
            and not same(model_ref(spec.model), stable)
            and status.get("phase") != "RolledBack")


def shadowing(spec: ModelDeploymentSpec, status: Mapping[str, Any]) -> bool:
    """The candidate runs without live traffic: the shadow phase, or the moment between a
    spec change and the rollout controller's first look (weight 0)."""
    return in_flight(spec, status) and (
        status.get("phase") in ("Idle", "Shadow", "Promoted")
        or (status.get("phase") == "Paused" and status.get("pausedFrom") == "Shadow"))


def effective_spec(spec: ModelDeploymentSpec,
                   status: Mapping[str, Any]) -> ModelDeploymentSpec:
    """The spec the children are rendered from: with a rollout in flight the stable
    model as spec.model and the candidate as spec.canary at status.rollout.weight (0
    while shadowing); after a rollback the stable model alone; else ``spec``."""
    stable = status.get("stable")
    if spec.rollout is None or not stable or same(model_ref(spec.model), stable):
        return spec
    old = spec.model.model_copy(update={
        "uri": stable.get("uri", spec.model.uri),
        "digest": stable.get("digest"),
        "version": stable.get("version", spec.model.version),
        "format": stable.get("format", spec.model.format),
        # spec.model.signature.uri names the candidate's bundle; the stable's is its
        # default, <uri>.sig
        "signature": spec.model.signature.model_copy(update={"uri": None})
        if spec.model.signature else None,
    })
    if status.get("phase") == "RolledBack":
        return spec.model_copy(update={"model": old})
    weight = 0 if shadowing(spec, status) else int(status.get("weight") or 0)
    # constructed, not validated: weight 0 (shadow) and 100 (last step) are outside a
    # manual canary's 1..99
    canary = CanarySpec.model_construct(
        model=CanaryModel.model_construct(
            version=spec.model.version, uri=spec.model.uri, format=spec.model.format,
            digest=spec.model.digest,
            signature_uri=spec.model.signature.uri if spec.model.signature else None),
        traffic_percent=weight)
    return spec.model_copy(update={"model": old, "canary": canary})


def shadow_target(name: str, namespace: str, cluster_domain: str, percent: int,
                  tls: ServerTLS | None = None) -> list[str]:
    """The stable server's arguments that mirror requests to the candidate. With
    spec.runtime.tls the candidate serves HTTPS with the certificate the stable serves
    (one Secret for both tracks): the mirror pins it, and under mTLS presents it as its
    client certificate (runtime/server/shadow_tls.py)."""
    scheme = "https" if tls is not None else "http"
    url = f"{scheme}://{name}{CANDIDATE_SUFFIX}.{namespace}.svc.{cluster_domain}"
    args = ["--shadow-url", url, "--shadow-percent", str(percent)]
    if tls is not None:
        args += ["--shadow-tls-pin", f"{TLS_DIR}/tls.crt"]
        if tls.client_ca is not None:
            args += ["--shadow-tls-cert", f"{TLS_DIR}/tls.crt",
                     "--shadow-tls-key", f"{TLS_DIR}/tls.key"]
    return args
