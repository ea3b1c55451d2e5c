"""spec.model.webIdentity: the fetch init container assumes an IAM role with the pod's
own ServiceAccount token (STS AssumeRoleWithWebIdentity), no static keys anywhere.

The kubelet writes a token for ``audience`` into a projected volume and rotates it; the
AWS_* variables point `kustos fetch` (runtime/aws_credentials.py) at it, as EKS's IRSA
webhook does for SDKs. The token names the model's own ServiceAccount
(system:serviceaccount:NAMESPACE:NAME), which the role's trust policy must name.
Pure functions: model -> manifest parts.
"""

from __future__ import annotations

from typing import Any

from ..api.v1alpha1.modeldeployment import WebIdentity

VOLUME = "aws-web-identity"
TOKEN_DIR = "/var/run/secrets/kustos/aws-web-identity"
TOKEN_FILE = f"{TOKEN_DIR}/token"


def web_identity_volume(web: WebIdentity) -> dict[str, Any]:
    return {"name": VOLUME, "projected": {"defaultMode": 0o444, "sources": [
        {"serviceAccountToken": {"audience": web.audience,
                                 "expirationSeconds": web.token_expiration_seconds,
                                 "path": "token"}}]}}


def web_identity_mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}


def web_identity_env(web: WebIdentity, session_name: str) -> list[dict[str, Any]]:
    env = {
        "AWS_ROLE_ARN": web.role_arn,
        "AWS_WEB_IDENTITY_TOKEN_FILE": TOKEN_FILE,
        # CloudTrail shows which model assumed the role.
        "AWS_ROLE_SESSION_NAME": session_name,
        # Other SDKs in custom images: the regional endpoint, as kustos fetch uses.
        "AWS_STS_REGIONAL_ENDPOINTS": "regional",
    }
    if web.region:
        env["AWS_REGION"] = web.region
    if web.sts_endpoint:
        env["AWS_ENDPOINT_URL_STS"] = web.sts_endpoint
    return [{"name": k, "value": v} for k, v in env.items()]


def session_name(namespace: str, name: str) -> str:
    """STS's RoleSessionName: 2-64 of [\\w+=,.@-]; namespace and name are DNS labels."""
    return f"kustos.{namespace}.{name}"[:64]
