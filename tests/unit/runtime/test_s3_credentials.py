"""S3 for `kustos fetch`: the AWS credential chain, session tokens, region redirects, CA
bundles, redirects of plain https sources.

STS and S3 are a real moto server (it checks SigV4 and the session token of temporary
credentials after the set-up calls). moto has no container-credentials or instance
metadata endpoint, so a small loopback server here implements those documented APIs,
handing out real temporary credentials that moto's STS issued. moto answers every region
from one endpoint and never redirects: a loopback gateway in front of it answers as S3
does for a request signed for the wrong region (301 PermanentRedirect with
x-amz-bucket-region, or 400 AuthorizationHeaderMalformed with <Region>) and forwards the
rest to moto unchanged; with a certificate from a CA made here it is also the TLS endpoint.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kustos.governance import tls
from kustos.runtime import aws_credentials as ac
from kustos.runtime import fetch as f
from kustos.runtime import s3
from motoserver import moto_server

from .conftest import free_port

PAYLOAD = os.urandom(3000)
EU_PAYLOAD = os.urandom(2000)
ROLE_ARN = "arn:aws:iam::123456789012:role/kustos-fetch"
ALL = """{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:*", "sts:*"], "Resource": "*"}]}"""
TRUST = """{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
  "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/example"},
  "Action": "sts:AssumeRoleWithWebIdentity"},
  {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:user/kustos"},
  "Action": ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity"]}]}"""
BUCKET_REGIONS = {"models": "us-east-1", "models-eu": "eu-west-1"}
SETUP_CALLS = 9  # the unauthenticated set-up calls below; moto checks every later one
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bWw6aXJpcyJ9.c2ln"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AWS_* of the developer's shell; no chain kept from an earlier test."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3._chains.clear()
    yield
    s3._chains.clear()


@dataclass
class Moto:
    endpoint: str
    user_key: dict[str, str]
    temporary: dict[str, Any]  # an AssumeRole answer, for the metadata servers


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    import boto3

    with moto_server(unauthenticated_calls=SETUP_CALLS) as endpoint:
        kw: dict[str, Any] = {"endpoint_url": endpoint, "region_name": "us-east-1",
                              "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="kustos")
        key = iam.create_access_key(UserName="kustos")["AccessKey"]
        iam.put_user_policy(UserName="kustos", PolicyName="all", PolicyDocument=ALL)
        iam.create_role(RoleName="kustos-fetch", AssumeRolePolicyDocument=TRUST)
        iam.put_role_policy(RoleName="kustos-fetch", PolicyName="all", PolicyDocument=ALL)
        boto3.client("s3", **kw).create_bucket(Bucket="models")
        eu = boto3.client("s3", **{**kw, "region_name": "eu-west-1"})
        eu.create_bucket(Bucket="models-eu",
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        eu.put_object(Bucket="models-eu", Key="m/model.skops", Body=EU_PAYLOAD)
        boto3.client("s3", **kw).put_object(Bucket="models", Key="iris/model.skops",
                                            Body=PAYLOAD)
        user = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        # What an EKS/ECS agent would hold: temporary credentials of the role.
        sts = boto3.client("sts", **{**kw, "aws_access_key_id": user["AWS_ACCESS_KEY_ID"],
                                     "aws_secret_access_key": user["AWS_SECRET_ACCESS_KEY"]})
        temp = sts.assume_role(RoleArn=ROLE_ARN, RoleSessionName="metadata")["Credentials"]
        yield Moto(endpoint, user, temp)


# --------------------------------------------------------------------- loopback servers


@dataclass
class Seen:
    requests: list[dict[str, Any]] = field(default_factory=list)
    redirect: str = "301"  # or "400": how the gateway says "wrong region"
    refuse_tokens: bool = False  # answer STS as AWS does an untrusted token (moto never does)


class _Quiet(http.server.BaseHTTPRequestHandler):
    """A test server's handler: ``_answer`` sends a whole response; no access log."""

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[http.server.BaseHTTPRequestHandler],
           context: ssl.SSLContext | None = None) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "https" if context else "http"
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def gateway(moto: Moto) -> Iterator[tuple[str, Seen]]:
    """S3's region check in front of moto, recording what each request carried."""
    yield from _gateway(moto, None)


def _gateway(moto: Moto,
             context: ssl.SSLContext | None) -> Generator[tuple[str, Seen], None, None]:
    seen = Seen()
    upstream = urllib.parse.urlsplit(moto.endpoint)

    class Handler(_Quiet):
        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            auth = self.headers.get("authorization") or ""
            scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", auth)
            record: dict[str, Any] = {"method": self.command, "path": self.path,
                      "region": scope.group(1) if scope else None,
                      "token": self.headers.get("x-amz-security-token"),
                      "form": dict(urllib.parse.parse_qsl(body.decode()))}
            seen.requests.append(record)
            if record["form"].get("Action") == "AssumeRoleWithWebIdentity" and not auth:
                if seen.refuse_tokens:
                    doc = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                           b"<Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
                           b"<Message>Incorrect token audience</Message></Error>"
                           b"</ErrorResponse>")
                    return self._answer(400, doc, {})
                self._sign_for_moto(body)
            bucket = self.path.split("/")[1] if self.command == "GET" else ""
            actual = BUCKET_REGIONS.get(bucket)
            if actual and record["region"] and record["region"] != actual:
                if seen.redirect == "301":
                    doc = (b"<Error><Code>PermanentRedirect</Code><Message>use the bucket's"
                           b" region</Message></Error>")
                    return self._answer(301, doc, {"x-amz-bucket-region": actual})
                doc = (f"<Error><Code>AuthorizationHeaderMalformed</Code><Region>{actual}"
                       f"</Region></Error>").encode()
                return self._answer(400, doc, {})
            conn = http.client.HTTPConnection(upstream.hostname or "", upstream.port,
                                              timeout=30)
            try:
                conn.request(self.command, self.path, body=body or None,
                             headers=dict(self.headers))  # Host too: what was signed
                resp = conn.getresponse()
                data = resp.read()
                keep = {k: v for k, v in resp.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection",
                                             "content-length", "server", "date")}
                self._answer(resp.status, data, keep)
            finally:
                conn.close()

        def _sign_for_moto(self, body: bytes) -> None:
            """AWS takes AssumeRoleWithWebIdentity unsigned (the token is the proof);
            moto's server, checking signatures, wants every call signed: sign this one
            with the set-up user's key, as moto needs, before it goes on."""
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials

            req = AWSRequest("POST", f"http://{self.headers['host']}/", data=body,
                             headers={"content-type": self.headers["content-type"]})
            SigV4Auth(Credentials(moto.user_key["AWS_ACCESS_KEY_ID"],
                                  moto.user_key["AWS_SECRET_ACCESS_KEY"]),
                      "sts", "us-east-1").add_auth(req)
            for name in ("authorization", "x-amz-date"):
                del self.headers[name]
                self.headers[name] = req.headers[name]

        do_GET = do_POST = do_PUT = _any

    server, url = _serve(Handler, context)
    try:
        yield url, seen
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Metadata:
    url: str
    container_token: str = "container-token-1"
    imds_token: str = "imds-session-token"
    hits: list[str] = field(default_factory=list)
    creds: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def metadata(moto: Moto) -> Iterator[Metadata]:
    """The container credentials endpoint (ECS / EKS Pod Identity) and IMDSv2, answering
    with moto's temporary credentials; requests without the right token get 401."""
    t = moto.temporary
    state = Metadata("", creds={
        "AccessKeyId": t["AccessKeyId"], "SecretAccessKey": t["SecretAccessKey"],
        "Token": t["SessionToken"], "Expiration": t["Expiration"].isoformat()})
    role_path = "/latest/meta-data/iam/security-credentials/"

    class Handler(_Quiet):
        def do_GET(self) -> None:
            state.hits.append(f"GET {self.path}")
            if self.path == "/creds":
                if self.headers.get("authorization") != state.container_token:
                    return self._answer(401, b"{}")
                return self._answer(200, json.dumps(state.creds).encode())
            if self.headers.get("x-aws-ec2-metadata-token") != state.imds_token:
                return self._answer(401, b"")
            if self.path == role_path:
                return self._answer(200, b"kustos-node\n")
            if self.path == role_path + "kustos-node":
                body = {"Code": "Success", "Type": "AWS-HMAC", **state.creds}
                return self._answer(200, json.dumps(body).encode())
            self._answer(404, b"")

        def do_PUT(self) -> None:
            state.hits.append(f"PUT {self.path}")
            if self.path != "/latest/api/token" or not self.headers.get(
                    "x-aws-ec2-metadata-token-ttl-seconds"):
                return self._answer(400, b"")
            self._answer(200, state.imds_token.encode())

    server, state.url = _serve(Handler)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def setenv(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for k, v in values.items():
        monkeypatch.setenv(k, v)


def web_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> Path:
    token = tmp_path / "token"
    token.write_text(JWT)
    setenv(monkeypatch, AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1",
           AWS_WEB_IDENTITY_TOKEN_FILE=str(token), AWS_ROLE_ARN=ROLE_ARN,
           AWS_ROLE_SESSION_NAME="iris-fetch")
    return token


# ------------------------------------------------------------------------------ tests


def test_static_keys_sign_and_anonymous_is_refused(moto: Moto, gateway: tuple[str, Seen],
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = gateway
    setenv(monkeypatch, AWS_ENDPOINT_URL=url, AWS_REGION="us-east-1")
    with pytest.raises(f.FetchError, match="permission denied"):  # no credentials at all
        f.fetch("s3://models/iris/model.skops", tmp_path / "a", retries=0)
    assert seen.requests[-1]["region"] is None
    setenv(monkeypatch, **moto.user_key)
    res = f.fetch("s3://models/iris/model.skops", tmp_path / "m", retries=0)
    assert res.path.read_bytes() == PAYLOAD
    assert seen.requests[-1]["region"] == "us-east-1" and seen.requests[-1]["token"] is None


def test_web_identity_assumes_the_role_and_signs_with_the_session_token(
        moto: Moto, gateway: tuple[str, Seen], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = gateway
    web_identity(monkeypatch, tmp_path, url)
    res = f.fetch("s3://models/iris/model.skops", tmp_path / "m", retries=0)
    assert res.path.read_bytes() == PAYLOAD
    sts_call, get = seen.requests
    assert sts_call["method"] == "POST" and sts_call["form"]["Action"] == (
        "AssumeRoleWithWebIdentity")
    assert sts_call["form"]["WebIdentityToken"] == JWT
    assert sts_call["form"]["RoleArn"] == ROLE_ARN
    assert sts_call["form"]["RoleSessionName"] == "iris-fetch"
    assert get["method"] == "GET" and get["token"]  # X-Amz-Security-Token went along
    # moto checks the token: the same temporary keys without it are refused.
    creds = ac.default_chain(ac.load_settings()).get()
    assert creds is not None and creds.source == "web-identity" and creds.session_token
    bare = ac.Credentials(creds.access_key, creds.secret_key)
    object_url = s3.s3_url("models", "iris/model.skops", "us-east-1", url)
    with pytest.raises(f.FetchError, match="HTTP 403"):
        f._http_open(object_url, "x", 10, headers=s3.sigv4_headers(
            "GET", object_url, bare, "us-east-1"), allow_http=True)
    signed = s3.sigv4_headers("GET", object_url, creds, "us-east-1")
    assert "x-amz-security-token" in signed["authorization"]  # signed, not just sent
    stream = f._http_open(object_url, "x", 10, headers=signed, allow_http=True)
    assert b"".join(stream.chunks) == PAYLOAD
    stream.close()


def test_sts_endpoint_override_and_regional_default(
        moto: Moto, gateway: tuple[str, Seen], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = gateway
    web_identity(monkeypatch, tmp_path, moto.endpoint)  # S3 straight to moto ...
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", url)  # ... STS through the gateway
    f.fetch("s3://models/iris/model.skops", tmp_path / "m", retries=0)
    assert [r["method"] for r in seen.requests] == ["POST"]
    assert ac.sts_endpoint({"AWS_REGION": "eu-west-1"}) == "https://sts.eu-west-1.amazonaws.com"
    assert ac.sts_endpoint({"AWS_REGION": "cn-north-1"}) == (
        "https://sts.cn-north-1.amazonaws.com.cn")
    assert ac.sts_endpoint({}) == "https://sts.amazonaws.com"
    assert ac.sts_endpoint({"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://x:1/"}) == (
        "http://x:1")


def test_precedence_static_then_web_identity_then_container_then_imds(
        moto: Moto, gateway: tuple[str, Seen], metadata: Metadata, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = gateway
    token = tmp_path / "token"
    token.write_text(JWT)
    container_token = tmp_path / "pod-identity-token"
    container_token.write_text(metadata.container_token)
    settings = {
        **moto.user_key, "AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1",
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token), "AWS_ROLE_ARN": ROLE_ARN,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": metadata.url + "/creds",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(container_token),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata.url,
    }
    order = []
    for drop in ([], ["AWS_ACCESS_KEY_ID"], ["AWS_ROLE_ARN"],
                 ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]):
        for name in drop:
            del settings[name]
        creds = ac.default_chain(settings).get()
        assert creds is not None
        order.append(creds.source)
        if creds.source != "static":
            assert creds.session_token and creds.expiration
    assert order == ["static", "web-identity", "container", "instance-metadata"]
    assert ac.default_chain({**settings, "AWS_EC2_METADATA_DISABLED": "true"}).get() is None
    # Credentials from the credentials directory win over the environment.
    d = tmp_path / "creds"
    d.mkdir()
    (d / "AWS_ACCESS_KEY_ID").write_text("from-the-dir\n")
    assert ac.load_settings({"AWS_ACCESS_KEY_ID": "from-env"}, str(d))["AWS_ACCESS_KEY_ID"] == (
        "from-the-dir")


def test_settings_under_a_prefix_are_a_set_of_their_own() -> None:
    """A BatchInference's batch container: the output's Secret as AWS_*, the input's as
    KUSTOS_INPUT_AWS_* (envFrom with a prefix). Each read sees its own set only."""
    env = {"AWS_ACCESS_KEY_ID": "output-key", "AWS_SECRET_ACCESS_KEY": "output-secret",
           "AWS_REGION": "eu-west-1",
           "KUSTOS_INPUT_AWS_ACCESS_KEY_ID": "input-key",
           "KUSTOS_INPUT_AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "KUSTOS_INPUT_AWS_SECRET_ACCESS_KEY": "",  # empty: not set
           "KUSTOS_INPUT_OTHER": "not an AWS setting", "HOME": "/home/x"}
    assert ac.load_settings(env) == {"AWS_ACCESS_KEY_ID": "output-key",
                                     "AWS_SECRET_ACCESS_KEY": "output-secret",
                                     "AWS_REGION": "eu-west-1"}
    assert ac.load_settings(env, prefix="KUSTOS_INPUT_") == {
        "AWS_ACCESS_KEY_ID": "input-key", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    assert ac.load_settings(env, prefix="NONE_") == {}


def test_container_credentials_fetch_and_token_rules(
        moto: Moto, metadata: Metadata, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("stale")
    setenv(monkeypatch, AWS_ENDPOINT_URL=moto.endpoint, AWS_REGION="us-east-1",
           AWS_CONTAINER_CREDENTIALS_FULL_URI=metadata.url + "/creds",
           AWS_CONTAINER_AUTHORIZATION_TOKEN=metadata.container_token,
           AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file))
    # The file wins over the variable: its stale token is refused, without echoing it.
    with pytest.raises(f.FetchError) as err:
        f.fetch("s3://models/iris/model.skops", tmp_path / "m", retries=0)
    assert "container credentials: HTTP 401" in str(err.value) and "stale" not in str(err.value)
    token_file.write_text(metadata.container_token + "\n")  # rotated: read again
    res = f.fetch("s3://models/iris/model.skops", tmp_path / "m", retries=0)
    assert res.path.read_bytes() == PAYLOAD
    relative = ac.ContainerProvider({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/creds/x"})
    assert relative.url() == "http://169.254.170.2/v2/creds/x"
    for ok in ("http://169.254.170.23/v1/credentials", "http://[fd00:ec2::23]/v1/credentials",
               "https://creds.example/x", "http://localhost:9/x"):
        assert ac.ContainerProvider({"AWS_CONTAINER_CREDENTIALS_FULL_URI": ok}).url() == ok
    with pytest.raises(ac.CredentialsError, match="must be https"):
        ac.ContainerProvider({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://10.0.0.1/x"}).url()


def test_imds_v2_token_then_role_credentials(moto: Moto, metadata: Metadata, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, AWS_ENDPOINT_URL=moto.endpoint, AWS_REGION="us-east-1",
           AWS_EC2_METADATA_SERVICE_ENDPOINT=metadata.url, AWS_EC2_METADATA_DISABLED="false")
    res = f.fetch("s3://models/iris/model.skops", tmp_path / "m", retries=0)
    assert res.path.read_bytes() == PAYLOAD
    role = "/latest/meta-data/iam/security-credentials/"
    assert metadata.hits == ["PUT /latest/api/token", f"GET {role}", f"GET {role}kustos-node"]
    # No metadata service (a closed port, as off EC2): no credentials, quickly.
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert ac.InstanceMetadataProvider({"AWS_EC2_METADATA_SERVICE_ENDPOINT": closed}).load() is None
    assert time.monotonic() - started < 5
    assert ac.InstanceMetadataProvider({"AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata.url,
                                        "AWS_EC2_METADATA_DISABLED": "true"}).load() is None


def test_temporary_credentials_refresh_before_expiry(
        moto: Moto, gateway: tuple[str, Seen], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = gateway
    token = web_identity(monkeypatch, tmp_path, url)
    now = [time.time()]
    chain = ac.default_chain(ac.load_settings(), clock=lambda: now[0])
    first = chain.get()
    assert first is not None and first.expiration is not None
    assert chain.get() is first and len(seen.requests) == 1  # cached
    now[0] = first.expiration - ac.REFRESH_MARGIN - 1
    assert chain.get() is first and len(seen.requests) == 1
    token.write_text(JWT + "rotated")  # the kubelet rotated the projected token
    now[0] = first.expiration - ac.REFRESH_MARGIN + 1
    second = chain.get()
    assert second is not None and second is not first
    assert second.access_key != first.access_key and len(seen.requests) == 2
    assert seen.requests[1]["form"]["WebIdentityToken"] == JWT + "rotated"


@pytest.mark.parametrize("how", ["301", "400"])
def test_region_redirect_is_followed_once_and_signed_again(
        how: str, moto: Moto, gateway: tuple[str, Seen], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = gateway
    seen.redirect = how
    web_identity(monkeypatch, tmp_path, url)  # configured for us-east-1
    res = f.fetch("s3://models-eu/m/model.skops", tmp_path / "m", retries=0)
    assert res.path.read_bytes() == EU_PAYLOAD
    gets = [r for r in seen.requests if r["method"] == "GET"]
    assert [g["region"] for g in gets] == ["us-east-1", "eu-west-1"]
    assert all(g["token"] for g in gets)
    # Without an endpoint, the second request goes to the bucket's regional host.
    assert s3.s3_url("models-eu", "m/a b", "eu-west-1", None) == (
        "https://models-eu.s3.eu-west-1.amazonaws.com/m/a%20b")
    assert s3.s3_url("my.models", "k", "eu-west-1", None) == (
        "https://s3.eu-west-1.amazonaws.com/my.models/k")


def test_ca_bundle_for_s3_and_sts(moto: Moto, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tls.issue(["127.0.0.1"])
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "tls.crt", tmp_path / "tls.key"
    ca.write_bytes(bundle.ca_cert)
    cert.write_bytes(bundle.cert)
    key.write_bytes(bundle.key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    gen = _gateway(moto, ctx)
    url, seen = next(gen)
    try:
        web_identity(monkeypatch, tmp_path, url)  # https, for STS and S3
        with pytest.raises(f.FetchError, match="TLS error"):  # the system CAs do not know it
            f.fetch("s3://models/iris/model.skops", tmp_path / "m", retries=0)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
        res = f.fetch("s3://models/iris/model.skops", tmp_path / "m", retries=0)
        assert res.path.read_bytes() == PAYLOAD
        assert [r["method"] for r in seen.requests] == ["POST", "GET"]
        # The --ca-bundle flag does the same, for S3 and for https sources.
        monkeypatch.delenv("AWS_CA_BUNDLE")
        s3._chains.clear()
        r = subprocess.run([sys.executable, "-m", "kustos.cli", "fetch", "--quiet",
                            "s3://models/iris/model.skops", str(tmp_path / "n"),
                            "--ca-bundle", str(ca)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "n").read_bytes() == PAYLOAD
        with pytest.raises(f.FetchError, match=r"CA bundle .* does not exist"):
            f.fetch(f"{url}/models/iris/model.skops", tmp_path / "o", retries=0,
                    ca_bundle=str(tmp_path / "missing.pem"))
    finally:
        gen.close()


def test_secrets_stay_out_of_errors_and_reprs(gateway: tuple[str, Seen], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    token = web_identity(monkeypatch, tmp_path, gateway[0])
    gateway[1].refuse_tokens = True
    r = subprocess.run([sys.executable, "-m", "kustos.cli", "fetch", "--retries", "0",
                        "s3://models/iris/model.skops", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert ("web identity (STS AssumeRoleWithWebIdentity): HTTP 400 InvalidIdentityToken"
            in r.stderr)
    assert JWT not in r.stderr and JWT[:20] not in r.stderr
    token.write_text("")
    with pytest.raises(ac.CredentialsError, match="is empty"):
        ac.WebIdentityProvider({"AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
                                "AWS_ROLE_ARN": ROLE_ARN}).load()
    creds = ac.Credentials("AKIASECRETID", "s3cr3t-value", "sess10n-token", 1e9, "container")
    assert not any(s in repr(creds) for s in ("AKIASECRETID", "s3cr3t", "sess10n"))
    assert "s3cr3t" not in repr(ac.default_chain({"AWS_SECRET_ACCESS_KEY": "s3cr3t"}))


def test_sigv4_matches_the_aws_example() -> None:
    """AWS's published GET Object example (Signature Version 4 documentation)."""
    creds = ac.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    headers = s3.sigv4_headers("GET", "https://examplebucket.s3.amazonaws.com/test.txt", creds,
                               "us-east-1",
                               now=time.strptime("20130524T000000Z", "%Y%m%dT%H%M%SZ"))
    # The example also signs a Range header; without it the signature differs, so check
    # the parts that do not depend on it.
    assert headers["x-amz-date"] == "20130524T000000Z"
    assert headers["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=")
    assert "authorization" not in s3.sigv4_headers("GET", "https://b.s3.amazonaws.com/k", None,
                                                   "us-east-1")


# ------------------------------------------------------------- redirects of https sources


@pytest.fixture
def hops() -> Iterator[tuple[str, list[str]]]:
    paths: list[str] = []

    class Handler(_Quiet):
        def do_GET(self) -> None:
            paths.append(self.path)
            if self.path.startswith("/loop"):
                return self._answer(302, b"", {"location": "/loop"})
            if self.path == "/old":
                return self._answer(301, b"", {"location": "/mid?sig=secret-signature"})
            if self.path.startswith("/mid"):
                return self._answer(307, b"", {"location": "/model.skops"})
            if self.path == "/bare":
                return self._answer(302, b"", {})
            self._answer(200, PAYLOAD, {})

    server, url = _serve(Handler)
    try:
        yield url, paths
    finally:
        server.shutdown()
        server.server_close()


def test_http_redirects_are_followed_within_limits(hops: tuple[str, list[str]],
                                                   tmp_path: Path) -> None:
    url, paths = hops
    res = f.fetch(f"{url}/old", tmp_path / "m", retries=0)
    assert res.path.read_bytes() == PAYLOAD
    assert paths == ["/old", "/mid?sig=secret-signature", "/model.skops"]
    with pytest.raises(f.FetchError, match="more than 5 redirects") as err:
        f.fetch(f"{url}/loop", tmp_path / "m", retries=0)
    assert "secret" not in str(err.value)
    with pytest.raises(f.FetchError, match="without a Location"):
        f.fetch(f"{url}/bare", tmp_path / "m", retries=0)
