"""kustos.k8s.config (in-cluster and kubeconfig loading) and kustos.k8s.client over real HTTPS."""

from __future__ import annotations

import base64
import json
import os
import ssl
import stat
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kustos import metrics
from kustos.governance import inventory
from kustos.k8s import client, config

SECRET = "s3cr3t-token-value"


# --- helpers ------------------------------------------------------------------------------

def _cert(cn: str, *, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
          ca: bool = False, dns: list[str] | None = None,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_cert, signer_key = issuer or (None, key)
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(signer_cert.subject if signer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   signer_key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kubeconfig(path: Path, *, cluster: dict[str, Any], user: dict[str, Any],
                namespace: str | None = None, name: str = "dev") -> Path:
    ctx: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        ctx["namespace"] = namespace
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": ctx}]}))
    return path


CA_CERT, CA_KEY = _cert("test-ca", ca=True)
CLIENT_CERT, CLIENT_KEY = _cert("alice", issuer=(CA_CERT, CA_KEY))


# --- kubeconfig ----------------------------------------------------------------------------

def test_kubeconfig_with_data_fields_keeps_secrets_out_of_reprs(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "config", cluster={
        "server": "https://10.0.0.1:6443", "certificate-authority-data": _b64(_pem(CA_CERT)),
        "tls-server-name": "kube.test",
    }, user={"token": SECRET, "client-certificate-data": _b64(_pem(CLIENT_CERT)),
             "client-key-data": _b64(_key_pem(CLIENT_KEY))})
    cfg = config.from_kubeconfig([path])
    assert cfg.server == "https://10.0.0.1:6443"
    assert cfg.ca_data == _pem(CA_CERT).decode()
    assert cfg.tls() == {"cert_reqs": "CERT_REQUIRED", "ca_cert_data": cfg.ca_data,
                         "server_hostname": "kube.test"}
    auth = cfg.credentials.auth()
    assert auth.headers == {"Authorization": f"Bearer {SECRET}"}
    assert auth.cert is not None
    cert_file, key_file = map(Path, auth.cert)
    assert cert_file.read_bytes() == _pem(CLIENT_CERT)
    assert key_file.read_bytes() == _key_pem(CLIENT_KEY)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    for text in (repr(cfg), repr(cfg.credentials), repr(auth), str(cfg)):
        assert SECRET not in text and "PRIVATE KEY" not in text, text


def test_private_files_are_removed_with_their_credentials() -> None:
    creds = config.Credentials(cert=(_pem(CLIENT_CERT), _key_pem(CLIENT_KEY)))
    cert = creds.auth().cert
    assert cert is not None and Path(cert[1]).exists()
    del creds
    import gc

    gc.collect()
    assert not Path(cert[1]).parent.exists()


def test_kubeconfig_paths_are_relative_to_the_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "conf"
    (conf_dir / "pki").mkdir(parents=True)
    (conf_dir / "pki" / "ca.crt").write_bytes(_pem(CA_CERT))
    (conf_dir / "pki" / "alice.crt").write_bytes(_pem(CLIENT_CERT))
    (conf_dir / "pki" / "alice.key").write_bytes(_key_pem(CLIENT_KEY))
    (conf_dir / "token").write_text(SECRET + "\n")
    path = _kubeconfig(conf_dir / "config", cluster={
        "server": "https://kube.test", "certificate-authority": "pki/ca.crt",
    }, user={"client-certificate": "pki/alice.crt", "client-key": "pki/alice.key",
             "tokenFile": "token"})
    monkeypatch.chdir(tmp_path)  # somewhere else: the paths must not depend on the cwd
    cfg = config.from_kubeconfig([Path("conf/config")])
    assert cfg.ca_file == str(conf_dir.absolute() / "pki" / "ca.crt")
    auth = cfg.credentials.auth()
    assert auth.cert == (str(conf_dir / "pki" / "alice.crt"), str(conf_dir / "pki" / "alice.key"))
    assert auth.headers["Authorization"] == f"Bearer {SECRET}"
    assert cfg.credentials.refreshable
    assert path.exists()


def test_kubeconfig_merge_first_file_wins(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(yaml.safe_dump({
        "current-context": "one",
        "clusters": [{"name": "c", "cluster": {"server": "https://first:6443"}}],
        "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u",
                                                 "namespace": "team-a"}}],
    }))
    second = tmp_path / "b.yaml"
    second.write_text(yaml.safe_dump({
        "current-context": "two",
        "clusters": [{"name": "c", "cluster": {"server": "https://second:6443"}}],
        "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u",
                                                 "namespace": "team-b"}},
                     {"name": "two", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"username": "bob", "password": SECRET}}],
    }))
    missing = tmp_path / "absent.yaml"
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(missing), str(first), "", str(second)]))
    assert config.kubeconfig_paths() == [missing, first, second]
    cfg = config.load(sa_dir=tmp_path / "no-sa")
    assert cfg.server == "https://first:6443"
    basic = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert cfg.credentials.auth().headers == {"Authorization": f"Basic {basic}"}
    assert SECRET not in repr(cfg)
    assert config.current_namespace() == "team-a"
    assert inventory._current_namespace() == "team-a"
    assert config.from_kubeconfig(context="two").server == "https://first:6443"

    monkeypatch.setenv("KUBECONFIG", str(second))
    assert config.current_namespace() is None
    assert inventory._current_namespace() == "default"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    assert inventory._current_namespace() == "default"


def test_kubeconfig_errors_say_what_is_wrong(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(config.ConfigError,
                       match=r"no kubeconfig: .*absent does not exist.*not in a cluster"):
        config.load(sa_dir=tmp_path)
    bad = tmp_path / "bad"
    bad.write_text(f"users:\n- name: u\n  user: {{token: {SECRET}\n")
    with pytest.raises(config.ConfigError, match="not valid YAML") as err:
        config.from_kubeconfig([bad])
    assert SECRET not in str(err.value)
    both = _kubeconfig(tmp_path / "both", cluster={
        "server": "https://x", "insecure-skip-tls-verify": True, "certificate-authority": "ca"},
        user={})
    with pytest.raises(config.ConfigError, match="exclude each other"):
        config.from_kubeconfig([both])
    insecure = _kubeconfig(tmp_path / "insecure", cluster={
        "server": "https://x", "insecure-skip-tls-verify": True}, user={"token": SECRET})
    assert config.from_kubeconfig([insecure]).tls() == {"cert_reqs": "CERT_NONE"}
    half = _kubeconfig(tmp_path / "half", cluster={"server": "https://x"},
                       user={"client-certificate": "c.crt"})
    with pytest.raises(config.ConfigError, match="go together"):
        config.from_kubeconfig([half])


# --- exec credential plugins -----------------------------------------------------------------

PLUGIN = """#!{python}
import json, os, sys
count = sys.argv[1]
with open(count, "a") as f:
    f.write("x")
n = len(open(count).read())
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
status = {{"token": "tok-%d" % n}}
if os.environ.get("EXPIRY"):
    status["expirationTimestamp"] = os.environ["EXPIRY"]
if os.environ.get("CERT"):
    status = {{"clientCertificateData": os.environ["CERT"],
               "clientKeyData": os.environ["KEY"]}}
with open(count + ".info", "w") as f:
    json.dump(info, f)
print(json.dumps({{"apiVersion": os.environ.get("API", info["apiVersion"]),
                  "kind": "ExecCredential", "status": status}}))
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def _exec_kubeconfig(tmp_path: Path, env: dict[str, str],
                     api_version: str = "client.authentication.k8s.io/v1") -> Path:
    plugin = tmp_path / "bin" / "plugin.py"
    plugin.parent.mkdir(exist_ok=True)
    plugin.write_text(PLUGIN.format(python=sys.executable))
    plugin.chmod(0o755)
    return _kubeconfig(tmp_path / "config", cluster={
        "server": "https://kube.test", "certificate-authority-data": _b64(_pem(CA_CERT))},
        user={"exec": {"apiVersion": api_version, "command": "./bin/plugin.py",
                       "args": [str(tmp_path / "count")], "provideClusterInfo": True,
                       "interactiveMode": "Never",
                       "env": [{"name": k, "value": v} for k, v in env.items()]}})


def _runs(tmp_path: Path) -> int:
    return len((tmp_path / "count").read_text())


def test_exec_plugin_token_is_cached_until_it_expires(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    monkeypatch.chdir("/")
    creds = config.from_kubeconfig([_exec_kubeconfig(tmp_path, {"EXPIRY": later})]).credentials
    assert creds.auth().headers == {"Authorization": "Bearer tok-1"}
    assert creds.auth().headers == {"Authorization": "Bearer tok-1"}
    assert _runs(tmp_path) == 1
    info = json.loads((tmp_path / "count.info").read_text())
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == "https://kube.test"
    # A 401 asks the plugin again even before the expiry.
    assert creds.refreshable
    assert creds.auth(refresh=True).headers == {"Authorization": "Bearer tok-2"}
    assert "tok-" not in repr(creds) and "plugin.py" in repr(creds)


def test_exec_plugin_runs_again_once_expired(tmp_path: Path) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    creds = config.from_kubeconfig([_exec_kubeconfig(tmp_path, {"EXPIRY": past})]).credentials
    assert creds.auth().headers["Authorization"] == "Bearer tok-1"
    assert creds.auth().headers["Authorization"] == "Bearer tok-2"
    assert _runs(tmp_path) == 2


def test_exec_plugin_without_expiry_is_cached(tmp_path: Path) -> None:
    creds = config.from_kubeconfig([_exec_kubeconfig(tmp_path, {})]).credentials
    for _ in range(3):
        assert creds.auth().headers["Authorization"] == "Bearer tok-1"
    assert _runs(tmp_path) == 1


def test_exec_plugin_v1beta1_client_certificate(tmp_path: Path) -> None:
    env = {"CERT": _pem(CLIENT_CERT).decode(), "KEY": _key_pem(CLIENT_KEY).decode()}
    path = _exec_kubeconfig(tmp_path, env, "client.authentication.k8s.io/v1beta1")
    creds = config.from_kubeconfig([path]).credentials  # owns the files: keep it
    auth = creds.auth()
    assert auth.headers == {}
    assert auth.cert is not None
    assert Path(auth.cert[0]).read_bytes() == _pem(CLIENT_CERT)
    assert Path(auth.cert[1]).read_bytes() == _key_pem(CLIENT_KEY)
    assert stat.S_IMODE(Path(auth.cert[1]).stat().st_mode) == 0o600


@pytest.mark.parametrize(("env", "match"), [
    ({"EXIT": "3"}, "exit code 3"),
    ({"API": "client.authentication.k8s.io/v1beta1"}, "no ExecCredential"),
])
def test_exec_plugin_failures_never_show_its_output(tmp_path: Path, env: dict[str, str],
                                                    match: str) -> None:
    creds = config.from_kubeconfig([_exec_kubeconfig(tmp_path, env)]).credentials
    with pytest.raises(config.ConfigError, match=match) as err:
        creds.auth()
    assert "tok-" not in str(err.value) and err.value.__context__ is None


def test_exec_plugin_not_found_shows_the_install_hint(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "config", cluster={"server": "https://x"}, user={"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": "kustos-no-such-plugin",
        "installHint": "install it from example.com", "interactiveMode": "Never"}})
    with pytest.raises(config.ConfigError, match="not found: install it from example"):
        config.from_kubeconfig([path]).credentials.auth()


# --- in-cluster and token files ----------------------------------------------------------------

def _service_account(tmp_path: Path, token: str = SECRET) -> Path:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_bytes(_pem(CA_CERT))
    return sa


def test_in_cluster_config(tmp_path: Path) -> None:
    sa = _service_account(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg = config.load(sa_dir=sa, environ=env)
    assert cfg.server == "https://10.96.0.1:443"
    assert cfg.tls() == {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(sa / "ca.crt")}
    assert cfg.credentials.auth().headers == {"Authorization": f"Bearer {SECRET}"}
    assert SECRET not in repr(cfg)
    v6 = config.in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1",
                                "KUBERNETES_SERVICE_PORT": "443"})
    assert v6.server == "https://[fd00:10:96::1]:443"
    with pytest.raises(config.NotInCluster):
        config.in_cluster(sa, {})
    with pytest.raises(config.NotInCluster):
        config.in_cluster(tmp_path / "absent", env)
    (sa / "token").write_text("")
    with pytest.raises(config.ConfigError, match="empty"):
        config.in_cluster(sa, env)


def test_token_file_is_reread_when_it_rotates(tmp_path: Path) -> None:
    sa = _service_account(tmp_path, "token-1")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    creds = config.in_cluster(sa, env).credentials
    assert creds.auth().headers["Authorization"] == "Bearer token-1"
    # The kubelet writes a new file and swaps a symlink: a new inode.
    (sa / "token.new").write_text("token-two")
    (sa / "token.new").replace(sa / "token")
    assert creds.auth().headers["Authorization"] == "Bearer token-two"
    # Mid-rotation the file may be missing: the last token is still valid.
    (sa / "token").unlink()
    assert creds.auth().headers["Authorization"] == "Bearer token-two"


def test_token_file_is_reread_after_a_minute(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("token-a")
    token_file = config.TokenFile(path)
    assert token_file.token() == "token-a"
    # Same inode, size and mtime: only its age tells.
    st = path.stat()
    path.write_text("token-b")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert token_file.token() == "token-a"
    token_file._read_at -= config.TOKEN_MAX_AGE  # a minute later
    assert token_file.token() == "token-b"


# --- a real round trip --------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]
    valid_token: str

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(item[0] for item in peer["subject"]) if peer else {}
        self.seen.append({"method": self.command, "path": self.path,
                          "authorization": self.headers.get("Authorization"),
                          "content_type": self.headers.get("Content-Type"),
                          "client": subject.get("commonName"),
                          "body": self.rfile.read(length) if length else b""})
        if self.headers.get("Authorization") != f"Bearer {self.valid_token}":
            status, body = 401, b'{"kind":"Status","reason":"Unauthorized","message":"no"}'
        elif "missing" in self.path:
            status, body = 404, json.dumps({"kind": "Status", "reason": "NotFound",
                                            "message": 'configmaps "missing" not found'}).encode()
        elif "conflict" in self.path:
            status, body = 409, json.dumps({"kind": "Status", "reason": "Conflict",
                                            "message": "the object has been modified"}).encode()
        elif "broken" in self.path:
            status, body = 502, b"<html>bad gateway</html>"
        else:
            status, body = 200, json.dumps({"kind": "ConfigMap", "ok": True}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[tuple[ThreadingHTTPServer, type[_Handler]]]:
    """HTTPS on 127.0.0.1 with a certificate for kube.test only, requiring a client
    certificate signed by CA_CERT."""
    server_cert, server_key = _cert("kube.test", issuer=(CA_CERT, CA_KEY), dns=["kube.test"])
    (tmp_path / "server.pem").write_bytes(_pem(server_cert) + _key_pem(server_key))
    (tmp_path / "ca.pem").write_bytes(_pem(CA_CERT))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "server.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(tmp_path / "ca.pem")
    handler = type("Handler", (_Handler,), {"seen": [], "valid_token": SECRET})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _connect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port: int,
             **cluster: Any) -> None:
    path = _kubeconfig(tmp_path / "kube" / "config", cluster={
        "server": f"https://127.0.0.1:{port}", "certificate-authority-data": _b64(_pem(CA_CERT)),
        "tls-server-name": "kube.test", **cluster,
    }, user={"token": SECRET, "client-certificate-data": _b64(_pem(CLIENT_CERT)),
             "client-key-data": _b64(_key_pem(CLIENT_KEY))})
    monkeypatch.setattr(client, "_api", client.Api(config.from_kubeconfig([path])))


def test_call_round_trip_over_https(apiserver: tuple[ThreadingHTTPServer, type[_Handler]],
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, handler = apiserver
    _connect(monkeypatch, tmp_path, server.server_address[1])
    assert client.get("ConfigMap", "cm", "ns") == {"kind": "ConfigMap", "ok": True}
    assert client.get("ConfigMap", "missing", "ns") is None
    writes = metrics.API_WRITES.labels(verb="PATCH", resource="configmaps")._value.get()
    client.apply({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "cm", "namespace": "ns"}, "data": {"a": "b c"}})
    assert metrics.API_WRITES.labels(verb="PATCH", resource="configmaps")._value.get() \
        == writes + 1
    client.list_objects("ConfigMap", "ns", {"app": "x", "tier": "y"})
    get, missing, apply, listing = handler.seen
    assert get == {"method": "GET", "path": "/api/v1/namespaces/ns/configmaps/cm",
                   "authorization": f"Bearer {SECRET}", "content_type": "application/json",
                   "client": "alice", "body": b""}
    assert missing["path"].endswith("/missing")
    assert apply["method"] == "PATCH"
    assert apply["path"] == "/api/v1/namespaces/ns/configmaps/cm?fieldManager=kustos&force=true"
    assert apply["content_type"] == "application/apply-patch+yaml"
    assert json.loads(apply["body"])["data"] == {"a": "b c"}
    assert listing["path"] == "/api/v1/namespaces/ns/configmaps?labelSelector=app%3Dx%2Ctier%3Dy"

    with pytest.raises(client.ApiError) as err:
        client.patch("ConfigMap", "conflict", "ns", {"data": {}}, resource_version="7")
    assert (err.value.status, err.value.reason, err.value.message) == (
        409, "Conflict", "the object has been modified")
    assert json.loads(handler.seen[-1]["body"])["metadata"] == {"resourceVersion": "7"}
    assert handler.seen[-1]["content_type"] == "application/merge-patch+json"
    with pytest.raises(client.ApiError) as err:
        client.get("ConfigMap", "broken", "ns")
    assert (err.value.status, err.value.reason, err.value.message) == (502, "Unknown", "HTTP 502")
    client.delete("ConfigMap", "missing", "ns", uid="u-1")  # 404: already gone
    assert json.loads(handler.seen[-1]["body"])["preconditions"] == {"uid": "u-1"}


def test_call_verifies_the_server_certificate(
        apiserver: tuple[ThreadingHTTPServer, type[_Handler]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server, handler = apiserver
    other_ca, _ = _cert("other-ca", ca=True)
    _connect(monkeypatch, tmp_path, server.server_address[1],
             **{"certificate-authority-data": _b64(_pem(other_ca))})
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get("ConfigMap", "cm", "ns")
    # The certificate names kube.test, not 127.0.0.1.
    _connect(monkeypatch, tmp_path, server.server_address[1], **{"tls-server-name": None})
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get("ConfigMap", "cm", "ns")
    assert handler.seen == []


def test_call_rereads_a_rotated_token_after_a_401(
        apiserver: tuple[ThreadingHTTPServer, type[_Handler]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server, handler = apiserver
    token = tmp_path / "token"
    token.write_text("token-old")
    port = server.server_address[1]
    cfg = config.Config(f"https://127.0.0.1:{port}", config.Credentials(
        token_file=config.TokenFile(token),
        cert=(_pem(CLIENT_CERT), _key_pem(CLIENT_KEY))),
        ca_data=_pem(CA_CERT).decode(), tls_server_name="kube.test")
    monkeypatch.setattr(client, "_api", client.Api(cfg))
    handler.valid_token = "token-old"
    assert client.get("ConfigMap", "cm", "ns") is not None
    # Rotated behind our back (same inode, size and mtime), and the server knows.
    st = token.stat()
    token.write_text("token-new")
    os.utime(token, ns=(st.st_atime_ns, st.st_mtime_ns))
    handler.valid_token = "token-new"
    assert client.get("ConfigMap", "cm", "ns") is not None
    assert [s["authorization"] for s in handler.seen] == [
        "Bearer token-old", "Bearer token-old", "Bearer token-new"]
    handler.valid_token = "something-else"
    with pytest.raises(client.ApiError) as err:
        client.get("ConfigMap", "cm", "ns")
    assert (err.value.status, err.value.reason) == (401, "Unauthorized")


def test_rotated_plugin_certificates_replace_the_files_before(tmp_path: Path) -> None:
    creds = config.Credentials(cert=(_pem(CLIENT_CERT), _key_pem(CLIENT_KEY)))
    static = creds.auth().cert
    assert static is not None
    generations = [creds._plugin_files(f"cert-{n}".encode(), f"key-{n}".encode())
                   for n in range(3)]
    assert creds._plugin_files(b"cert-2", b"key-2") == generations[2]  # unchanged: same files
    # The previous generation stays for requests in flight; older ones go; static ones stay.
    assert not any(Path(f).exists() for f in generations[0])
    assert all(Path(f).exists() for f in (*generations[1], *generations[2], *static))


# --- kopf's login ---------------------------------------------------------------------------

def test_kopf_logs_in_with_the_same_configuration(tmp_path: Path) -> None:
    """kopf's watches and kustos.k8s use one configuration: a rotating ServiceAccount token
    expires in kopf's vault so that kopf asks again; a kubeconfig's certificate and basic
    auth are handed over as files and fields."""
    from kustos.controllers.run import connection_info

    sa = _service_account(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    info = connection_info(config.load(sa_dir=sa, environ=env))
    assert (info.server, info.scheme, info.token) == ("https://10.96.0.1:443", "Bearer", SECRET)
    assert info.ca_path == str(sa / "ca.crt") and info.certificate_data is None
    assert info.expiration is not None
    assert timedelta(0) < info.expiration - datetime.now(UTC) <= timedelta(minutes=1)

    path = _kubeconfig(tmp_path / "config", cluster={
        "server": "https://10.0.0.1:6443", "certificate-authority-data": _b64(_pem(CA_CERT))},
        user={"username": "alice", "password": SECRET,
              "client-certificate-data": _b64(_pem(CLIENT_CERT)),
              "client-key-data": _b64(_key_pem(CLIENT_KEY))})
    info = connection_info(config.from_kubeconfig([path]))
    assert (info.username, info.password, info.token) == ("alice", SECRET, None)
    assert info.ca_data == _pem(CA_CERT).decode() and info.expiration is None
    assert info.certificate_data == _pem(CLIENT_CERT)
    assert info.private_key_data == _key_pem(CLIENT_KEY)
