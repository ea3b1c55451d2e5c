"""S3 GetObject for `kustos fetch`: URL, AWS Signature V4, the region redirect; and
small whole-object requests (PUT, HEAD, GET) for `kustos batch`'s output, ranged GETs
for its input.

Credentials come from the provider chain of :mod:`.aws_credentials` (static keys, web
identity, container credentials, IMDSv2). A bucket in another region than the one
configured answers 301 PermanentRedirect / 307 / 400 with its region (the
x-amz-bucket-region header or <Region> in the error document); the request is then made
once more against that region, signed again for it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl
import threading
import time
import urllib.parse
from typing import NamedTuple

from .aws_credentials import (
    CredentialChain,
    Credentials,
    CredentialsError,
    default_chain,
    is_loopback,
    load_settings,
    region_of,
    ssl_context,
)
from .fetch import FetchError, HTTPStatusError, _http_open, _Stream, _xml_field

DEFAULT_REGION = "us-east-1"
REDIRECT_STATUSES = (301, 307, 400)

# One chain per configuration for the life of the process: temporary credentials are
# kept across retries and across fetches (the explainer and drift sidecars fetch more
# than once) and loaded again before they expire.
_chains: dict[tuple[object, ...], CredentialChain] = {}
_chains_lock = threading.Lock()


def s3_url(bucket: str, key: str, region: str, endpoint: str | None) -> str:
    quoted = urllib.parse.quote(key, safe="/~")
    if endpoint:
        # Custom endpoints (MinIO, Ceph, moto) speak path-style.
        return f"{endpoint.rstrip('/')}/{bucket}/{quoted}"
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    if "." in bucket:  # dotted names break the wildcard certificate of virtual hosts
        return f"https://s3.{region}.{suffix}/{bucket}/{quoted}"
    return f"https://{bucket}.s3.{region}.{suffix}/{quoted}"


def sigv4_headers(
    method: str,
    url: str,
    creds: Credentials | None,
    region: str,
    now: time.struct_time | None = None,
    service: str = "s3",
    payload: bytes = b"",
) -> dict[str, str]:
    """AWS Signature Version 4 headers for a request with body ``payload`` (none by
    default). A session token (temporary credentials) travels as X-Amz-Security-Token and
    is signed. Without credentials the request goes out anonymous (a public bucket)."""
    parts = urllib.parse.urlsplit(url)
    t = now or time.gmtime()
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", t)
    day = amz_date[:8]
    payload_hash = hashlib.sha256(payload).hexdigest()
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload_hash,
               "x-amz-date": amz_date}
    if creds is None:
        return {k: v for k, v in headers.items() if k != "host"}
    if creds.session_token:
        headers["x-amz-security-token"] = creds.session_token
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(query)
    )
    signed = sorted(headers)
    canonical_headers = "".join(f"{k}:{headers[k].strip()}\n" for k in signed)
    signed_headers = ";".join(signed)
    canonical = "\n".join(
        [method, parts.path or "/", canonical_query, canonical_headers, signed_headers,
         payload_hash]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )

    def _hmac(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    key = _hmac(("AWS4" + creds.secret_key).encode(), day)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    del headers["host"]  # http.client sends the same Host itself
    return headers


def chain_for(settings: dict[str, str], ca_bundle: str | None,
              context: ssl.SSLContext | None) -> CredentialChain:
    key = (tuple(sorted(settings.items())), ca_bundle)
    with _chains_lock:
        chain = _chains.get(key)
        if chain is None:
            chain = _chains[key] = default_chain(settings, context=context)
        return chain


def session(credentials_dir: str | None = None, ca_bundle: str | None = None,
            env_prefix: str = ""
            ) -> tuple[Credentials | None, ssl.SSLContext | None, str, str | None]:
    """Credentials, TLS context, region and endpoint override from the settings (the
    variables ``env_prefix`` + AWS_*, see load_settings); raises CredentialsError."""
    settings = load_settings(credentials_dir=credentials_dir, prefix=env_prefix)
    bundle = ca_bundle or settings.get("AWS_CA_BUNDLE")
    context = ssl_context(bundle) if bundle else None
    creds = chain_for(settings, bundle, context).get()
    region = region_of(settings) or DEFAULT_REGION
    endpoint = settings.get("AWS_ENDPOINT_URL_S3") or settings.get("AWS_ENDPOINT_URL")
    return creds, context, region, endpoint


def _session(uri: str, credentials_dir: str | None, ca_bundle: str | None,
             env_prefix: str = ""
             ) -> tuple[Credentials | None, ssl.SSLContext | None, str, str | None]:
    """:func:`session` for one request on ``uri``: no credentials is a FetchError."""
    try:
        return session(credentials_dir, ca_bundle, env_prefix)
    except CredentialsError as exc:
        raise FetchError(f"no credentials for {uri}: {exc}", transient=exc.transient) from None


def open_object(bucket: str, key: str, uri: str, timeout: float,
                credentials_dir: str | None, ca_bundle: str | None = None) -> _Stream:
    creds, context, region, endpoint = _session(uri, credentials_dir, ca_bundle)

    def get(in_region: str) -> _Stream:
        url = s3_url(bucket, key, in_region, endpoint)
        # An endpoint written out in the settings (in-cluster MinIO, Ceph) is used as
        # given, http included, like KServe's s3-usehttps=0; the digest still guards the
        # bytes. Without one, AWS itself is reached over https only.
        return _http_open(url, uri, timeout, headers=sigv4_headers("GET", url, creds, in_region),
                          ssl_context=context, allow_http=bool(endpoint))

    try:
        return get(region)
    except HTTPStatusError as exc:
        if exc.status not in REDIRECT_STATUSES or not exc.region or exc.region == region:
            raise
        moved = exc.region
    return get(moved)  # once: a second redirect is an error like any other


def object_request(method: str, uri: str, body: bytes = b"", *, timeout: float = 60.0,
                   credentials_dir: str | None = None, ca_bundle: str | None = None,
                   create_only: bool = False) -> tuple[int, bytes]:
    """One PUT, HEAD or GET of a whole small object (``s3://bucket/key``): (status, body).
    200 and 404 are answers; another status raises HTTPStatusError (transient for 5xx and
    429), after the region redirect is followed once as for GetObject. The body is signed
    (its sha256 in x-amz-content-sha256), so S3 refuses a PUT that arrives altered.
    ``create_only``: a PUT made only if the key holds no object (If-None-Match: *); 412
    is then an answer: another writer got there first."""
    extra, answers = ({"if-none-match": "*"}, (200, 404, 412)) if create_only else ({}, (200, 404))
    status, data, _ = _request(method, uri, body, extra, answers, timeout, credentials_dir,
                               ca_bundle)
    return status, data


class ObjectRange(NamedTuple):
    """Bytes of an object, its size, and the ETag of the version they came from ("" when
    the store sent none)."""

    data: bytes
    size: int
    etag: str


def object_range(uri: str, first: int, last: int, *, timeout: float = 60.0,
                 credentials_dir: str | None = None, ca_bundle: str | None = None,
                 env_prefix: str = "", if_match: str = "") -> ObjectRange:
    """Bytes ``first`` to ``last`` (inclusive, cut at the end) of an object, with one
    ranged GET. A range that starts at or past the end gives no bytes. 404 raises
    HTTPStatusError, like every status but 200, 206 and 416; with ``if_match`` (an ETag)
    the GET is made only if the object still has that ETag, else S3 answers 412
    (HTTPStatusError, status 412, not transient).
    ``env_prefix``: the settings are the variables PREFIX + AWS_* (load_settings)."""
    extra = {"range": f"bytes={first}-{last}"}
    if if_match:
        extra["if-match"] = if_match
    status, data, headers = _request("GET", uri, b"", extra, (200, 206, 416), timeout,
                                     credentials_dir, ca_bundle, env_prefix)
    etag = headers.get("etag", "")
    if status == 200:  # the whole object (a store that ignores Range, or an empty one)
        return ObjectRange(data[first:last + 1], len(data), etag)
    # Content-Range: "bytes FIRST-LAST/SIZE" (206), maybe "bytes */SIZE" (416); else the
    # 416 error document's ActualObjectSize.
    size = headers.get("content-range", "").rpartition("/")[2]
    if status == 416 and not size.isdigit():
        size = _xml_field(data, "ActualObjectSize")
    if not size.isdigit():
        raise FetchError(f"GET {uri}: no object size in the answer to a ranged GET")
    return ObjectRange(data if status == 206 else b"", int(size), etag)


def _request(method: str, uri: str, body: bytes, extra: dict[str, str],
             answers: tuple[int, ...], timeout: float, credentials_dir: str | None,
             ca_bundle: str | None, env_prefix: str = "") -> tuple[int, bytes, dict[str, str]]:
    """One signed request on ``s3://bucket/key``: (status, body, lower-cased response
    headers) for a status in ``answers``, else HTTPStatusError; the region redirect is
    followed once. ``extra`` headers go unsigned."""
    parts = urllib.parse.urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if parts.scheme != "s3" or not bucket or not key:
        raise FetchError(f"s3 URI must be s3://bucket/key, got {uri!r}")
    creds, context, region, endpoint = _session(uri, credentials_dir, ca_bundle, env_prefix)

    def send(in_region: str) -> tuple[int, bytes, dict[str, str]]:
        url = s3_url(bucket, key, in_region, endpoint)
        target = urllib.parse.urlsplit(url)
        host = target.hostname or ""
        if target.scheme != "https" and not (endpoint or is_loopback(host)):
            raise FetchError(f"refusing plain http for {uri}: use https")
        headers = sigv4_headers(method, url, creds, in_region, payload=body)
        headers.update(extra)
        if method == "PUT":
            headers["content-length"] = str(len(body))
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            conn = http.client.HTTPSConnection(host, target.port, timeout=timeout,
                                               context=context or ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, target.port, timeout=timeout)
        try:
            conn.request(method, target.path, body=body if method == "PUT" else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"network error on {method} {uri}: {type(exc).__name__}",
                             transient=True) from None
        finally:
            conn.close()
        if resp.status in answers:
            return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
        code = _xml_field(data, "Code")
        moved = resp.getheader("x-amz-bucket-region") or _xml_field(data, "Region") or None
        what = f"HTTP {resp.status}" + (f" {code}" if code else "")
        raise HTTPStatusError(f"{what} on {method} {uri}", status=resp.status, code=code,
                              region=moved,
                              transient=resp.status >= 500 or resp.status in (408, 429))

    try:
        return send(region)
    except HTTPStatusError as exc:
        if exc.status not in REDIRECT_STATUSES or not exc.region or exc.region == region:
            raise
        moved = exc.region
    return send(moved)  # once, as for GetObject
