"""What the fetch init container needs to verify spec.model.signature: pure, no I/O.

The public key, CA chain or Sigstore trust root (one key of a ConfigMap or Secret) is
projected read-only into the fetch container alone; the flags tell `kustos fetch` where
the bundle is and how to verify it (runtime/signing.py). The signer as the spec states it
goes into a pod annotation, so a finished rollout of that template means the fetch
verified that signer (as for the digest), and into status.model.signer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kustos.api.v1alpha1.modeldeployment import KeySelector, ModelSignature, ModelSource

VOLUME = "model-signature"
MOUNT = "/var/run/kustos/signature"
SIGNER_ANNOTATION = "kustos.dev/model-signer"
# The kubelet keeps an init container's termination message in the pod's status: the
# verified signer (with the key's fingerprint) stays readable there after the fetch.
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class FetchSignature:
    """Arguments, mounts and volumes the fetch init container gets for one track."""

    args: list[str] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)


def _source(ref: KeySelector, path: str) -> dict[str, Any]:
    item = {"key": ref.key, "path": path}
    if ref.kind == "Secret":
        return {"secret": {"name": ref.name, "items": [item]}}
    return {"configMap": {"name": ref.name, "items": [item]}}


def signer(sig: ModelSignature | None) -> str | None:
    """The signer the fetch verifies, as the spec names it (status.model.signer)."""
    if sig is None:
        return None
    if sig.public_key is not None:
        ref = sig.public_key
        if ref.fingerprint:
            return f"key {ref.fingerprint}"
        return f"key in {ref.kind} {ref.name}/{ref.key}"
    if sig.certificate is not None:
        if sig.certificate.identity:
            return f"certificate {sig.certificate.identity}"
        ca = sig.certificate.ca_chain
        return f"certificate issued under {ca.kind} {ca.name}/{ca.key}"
    if sig.sigstore is not None:
        return f"sigstore {sig.sigstore.identity} (issuer {sig.sigstore.issuer})"
    return None


def fetch_signature(model: ModelSource, fetch_source: str) -> FetchSignature:
    """`kustos fetch` flags for ``model.signature``; ``fetch_source`` is where the fetch
    reads the bundle (the model's own source mapping, pvc:// -> the mounted claim)."""
    sig = model.signature
    if sig is None:
        return FetchSignature()
    args = ["--signature", fetch_source, "--signer-file", TERMINATION_LOG]
    if sig.public_key is not None:
        args += ["--signature-method", "key", "--signature-key", f"{MOUNT}/key.pub"]
        if sig.public_key.fingerprint:
            args += ["--signature-key-fingerprint", sig.public_key.fingerprint]
        sources = [_source(sig.public_key, "key.pub")]
    elif sig.certificate is not None:
        args += ["--signature-method", "certificate",
                 "--signature-ca-chain", f"{MOUNT}/ca-chain.pem"]
        if sig.certificate.identity:
            args += ["--signature-identity", sig.certificate.identity]
        sources = [_source(sig.certificate.ca_chain, "ca-chain.pem")]
    else:
        assert sig.sigstore is not None  # the schema asks for exactly one method
        args += ["--signature-method", "sigstore",
                 "--signature-identity", sig.sigstore.identity,
                 "--signature-issuer", sig.sigstore.issuer,
                 "--signature-trust-root", f"{MOUNT}/trust-root.json"]
        sources = [_source(sig.sigstore.trust_root, "trust-root.json")]
    return FetchSignature(
        args=args,
        volume_mounts=[{"name": VOLUME, "mountPath": MOUNT, "readOnly": True}],
        volumes=[{"name": VOLUME, "projected": {"sources": sources, "defaultMode": 0o444}}],
    )
