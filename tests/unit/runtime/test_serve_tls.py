"""`kustos serve` over TLS: real handshakes against a real server process on loopback.

A CA, server and client certificates are made here; the model is the iris
LogisticRegression the conftest trains. Covers HTTPS inference verified against the CA,
mTLS (no client certificate, one from another CA, the right one), the plain health
port beside mTLS, certificate rotation by a kubelet-style symlink swap with no restart
and no dropped connection, plain HTTP sent to the TLS port, and the gRPC credentials
helper over the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from unit_support import wait_for

from kustos.runtime.server import tls as server_tls
from ports import free_port

from .conftest import Models, http_get, spawn_cli, stop_process

INFER = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64",
                                  "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]})


# --- certificates -----------------------------------------------------------------------


@dataclass
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_ca(name: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return Issuer(cert, key)


def make_leaf(ca: Issuer, name: str, client: bool = False,
              both: bool = False) -> tuple[bytes, bytes, int]:
    """(certificate PEM, key PEM, serial) for 127.0.0.1/localhost, or a client identity;
    ``both``: the server certificate usable as a client certificate too (one cert-manager
    Certificate with both usages)."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    serial = x509.random_serial_number()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if both
              else [ExtendedKeyUsageOID.CLIENT_AUTH if client
                    else ExtendedKeyUsageOID.SERVER_AUTH])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(serial)
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if not client:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, serial


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret: tls.crt -> ..data/tls.crt,
    ..data -> a timestamped directory; ``update`` swaps ..data atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.generation = 0

    def update(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        target = self.root / f"..gen_{self.generation}"
        target.mkdir()
        for name, data in files.items():
            (target / name).write_bytes(data)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")  # rename(2): atomic, as the kubelet does
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")

    def path(self, name: str) -> str:
        return str(self.root / name)


@dataclass
class Pki:
    ca: Issuer
    other_ca: Issuer
    ca_file: Path
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca("kustos-test-ca"), make_ca("someone-else-ca")
    (d / "ca.crt").write_bytes(ca.pem)
    paths = []
    for issuer, name in ((ca, "client"), (other, "stranger")):
        cert, key, _ = make_leaf(issuer, name, client=True)
        (d / f"{name}.crt").write_bytes(cert)
        (d / f"{name}.key").write_bytes(key)
        paths.append((d / f"{name}.crt", d / f"{name}.key"))
    return Pki(ca, other, d / "ca.crt", paths[0], paths[1])


def client_context(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def https(port: int, ctx: ssl.SSLContext, method: str = "GET", path: str = "/v2/health/ready",
          body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body,
                     headers={"content-type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def served_serial(port: int, ctx: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@contextlib.contextmanager
def tls_server(models: Models, volume: SecretVolume, *extra: str
               ) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris",
                     "--port", str(port), "--tls-cert", volume.path("tls.crt"),
                     "--tls-key", volume.path("tls.key"), *extra)
    try:
        yield port, proc
    finally:
        out, err = stop_process(proc)
        # Whatever happened, no key material reached the log, and refused handshakes
        # and plain-HTTP clients left no tracebacks or errors there either.
        assert b"PRIVATE KEY" not in err and b"PRIVATE KEY" not in out
        assert b"Traceback" not in err and b" ERROR " not in err, err.decode()[-3000:]


def wait_https_ready(port: int, proc: subprocess.Popen[bytes], ctx: ssl.SSLContext) -> None:
    def ok() -> bool:
        if proc.poll() is not None:
            return True
        with contextlib.suppress(OSError, http.client.HTTPException):
            return https(port, ctx)[0] == 200
        return False

    assert wait_for(ok, 60, 0.1), "server not ready in time"
    assert proc.poll() is None, f"server exited: {proc.communicate()[1].decode()[-2000:]}"


def server_volume(tmp_path: Path, pki: Pki) -> tuple[SecretVolume, int]:
    volume = SecretVolume(tmp_path / "secret")
    cert, key, serial = make_leaf(pki.ca, "iris")
    volume.update({"tls.crt": cert, "tls.key": key, "ca.crt": pki.ca.pem})
    return volume, serial


# --- the tests --------------------------------------------------------------------------


def test_https_infer_rotation_and_plain_http(models: Models, pki: Pki, tmp_path: Path) -> None:
    volume, first_serial = server_volume(tmp_path, pki)
    ctx = client_context(pki)
    with tls_server(models, volume) as (port, proc):
        wait_https_ready(port, proc, ctx)
        status, body = https(port, ctx, "POST", "/v2/models/iris/infer", INFER)
        assert status == 200, body
        want = models.iris_est.predict([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]).tolist()
        assert orjson.loads(body)["outputs"][0]["data"] == want

        # A client that trusts another CA refuses the server's certificate.
        stranger = ssl.create_default_context(cadata=pki.other_ca.pem.decode())
        with pytest.raises(ssl.SSLCertVerificationError):
            https(port, stranger)

        # Plain HTTP to the TLS port: a plain 400 that says why, then the port still serves.
        status, text = http_get(port, "/v2/health/ready", timeout=10)
        assert status == 400 and b"HTTPS" in text
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"\x00\x01garbage that is no TLS record\r\n")
            raw.shutdown(socket.SHUT_WR)
            assert raw.recv(100) == b""  # closed, no answer
        assert https(port, ctx)[0] == 200

        # A keep-alive connection opened before the rotation.
        kept = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        kept.request("GET", "/v2/health/ready")
        assert kept.getresponse().read() is not None
        assert served_serial(port, ctx) == first_serial

        # A half-rotated pair (new certificate, old key) is not loaded: still the old one.
        new_cert, new_key, new_serial = make_leaf(pki.ca, "iris")
        old_key = (volume.root / "..data" / "tls.key").read_bytes()
        volume.update({"tls.crt": new_cert, "tls.key": old_key, "ca.crt": pki.ca.pem})
        # Then the right pair: the next connection gets it, without a restart.
        volume.update({"tls.crt": new_cert, "tls.key": new_key, "ca.crt": pki.ca.pem})
        assert wait_for(lambda: served_serial(port, ctx) == new_serial, 30, 0.2), \
            "the rotated certificate is not served"
        assert proc.poll() is None
        kept.request("POST", "/v2/models/iris/infer", body=INFER,
                     headers={"content-type": "application/json"})
        resp = kept.getresponse()
        assert resp.status == 200 and orjson.loads(resp.read())["outputs"][0]["data"] == want
        kept.close()


def test_half_rotation_is_logged_and_old_certificate_kept(pki: Pki, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    caplog.set_level(logging.INFO, "kustos.serve")
    volume, _ = server_volume(tmp_path, pki)
    reloading = server_tls.ReloadingContext(volume.path("tls.crt"), volume.path("tls.key"))
    before = reloading.context
    cert, _, _ = make_leaf(pki.ca, "iris")
    volume.update({"tls.crt": cert, "tls.key": (volume.root / "..data/tls.key").read_bytes()})
    assert reloading.check() is False and reloading.context is before
    assert "do not load" in caplog.text and "PRIVATE" not in caplog.text
    assert "TLS certificate" in caplog.text and "valid until" in caplog.text
    assert reloading.check() is False  # retried, logged once
    assert caplog.text.count("do not load") == 1


def test_mtls(models: Models, pki: Pki, tmp_path: Path) -> None:
    volume, _ = server_volume(tmp_path, pki)
    health, grpc_port = free_port(), free_port()
    with tls_server(models, volume, "--tls-client-ca", volume.path("ca.crt"),
                    "--health-port", str(health), "--grpc-port", str(grpc_port)
                    ) as (port, proc):
        good = client_context(pki, pki.client)
        wait_https_ready(port, proc, good)
        status, body = https(port, good, "POST", "/v2/models/iris/infer", INFER)
        assert status == 200, body

        # No client certificate, or one from another CA: refused. With TLS 1.3 the client
        # learns it at its first read (the server checks after the client's Finished).
        for ctx in (client_context(pki), client_context(pki, pki.stranger)):
            with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError,
                                http.client.RemoteDisconnected)):
                https(port, ctx)
        assert https(port, good)[0] == 200  # and it still serves

        # The plain health port: probes and metrics, nothing else.
        assert http_get(health, "/v2/health/ready")[0] == 200
        assert http_get(health, "/metrics")[0] == 200
        status, _ = http_get(health, "/v2/models/iris")
        assert status == 404

        # The gRPC port takes the same files: mTLS there too.
        assert grpc_health(grpc_port, pki, pki.client) == "SERVING"
        for client in (None, pki.stranger):
            assert grpc_health(grpc_port, pki, client) == "UNAVAILABLE"
        assert proc.poll() is None


def grpc_health(port: int, pki: Pki, client: tuple[Path, Path] | None) -> str:
    """grpc.health.v1 Check over TLS: the serving status, or the error's status code."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    key, chain = (client[1].read_bytes(), client[0].read_bytes()) if client else (None, None)
    creds = grpc.ssl_channel_credentials(pki.ca.pem, key, chain)
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_bad_files_fail_clearly(models: Models, pki: Pki, tmp_path: Path) -> None:
    volume, _ = server_volume(tmp_path, pki)
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_bytes(make_leaf(pki.ca, "x")[1])
    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris",
                     "--port", str(free_port()), "--tls-cert", volume.path("tls.crt"),
                     "--tls-key", str(wrong_key))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert b"cannot load the certificate" in err and b"PRIVATE KEY" not in err

    proc = spawn_cli("serve", "--model", str(models.iris_lr), "--name", "iris",
                     "--tls-cert", volume.path("tls.crt"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"--tls-cert and --tls-key go together" in err


def test_flags_reach_the_server() -> None:
    from kustos.runtime.server.cli import _check, build_parser

    args = build_parser().parse_args(["--model", "m", "--name", "n", "--tls-cert", "/nope",
                                      "--tls-key", "/nope"])
    assert _check(args) == "--tls-cert: no such file /nope"
    args = build_parser().parse_args(["--model", "m", "--name", "n", "--health-port", "8080"])
    assert _check(args) == "--health-port must differ from --port"
    assert isinstance(args, argparse.Namespace)


def test_grpc_server_credentials_mtls_and_rotation(pki: Pki, tmp_path: Path) -> None:
    grpc = pytest.importorskip("grpc")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    volume, first_serial = server_volume(tmp_path, pki)
    creds = server_tls.server_credentials(volume.path("tls.crt"), volume.path("tls.key"),
                                          volume.path("ca.crt"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        def check(client: tuple[Path, Path] | None) -> int:
            key, chain = ((client[1].read_bytes(), client[0].read_bytes())
                          if client else (None, None))
            channel_creds = grpc.ssl_channel_credentials(pki.ca.pem, key, chain)
            with grpc.secure_channel(f"localhost:{port}", channel_creds) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)

        assert check(pki.client) == health_pb2.HealthCheckResponse.SERVING
        for client in (None, pki.stranger):
            with pytest.raises(grpc.RpcError) as failed:
                check(client)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

        def serial_now() -> int:
            ctx = client_context(pki, pki.client)
            ctx.set_alpn_protocols(["h2"])
            return served_serial(port, ctx)

        # A half-rotated pair is not loaded: the old certificate stays in service.
        cert, key, serial = make_leaf(pki.ca, "iris")
        assert serial != first_serial
        old_key = (volume.root / "..data" / "tls.key").read_bytes()
        volume.update({"tls.crt": cert, "tls.key": old_key, "ca.crt": pki.ca.pem})
        assert serial_now() == first_serial
        assert check(pki.client) == health_pb2.HealthCheckResponse.SERVING

        # Rotation: gRPC asks before each handshake; the next channel sees the new serial.
        volume.update({"tls.crt": cert, "tls.key": key, "ca.crt": pki.ca.pem})

        assert wait_for(lambda: serial_now() == serial, 30, 0.2)
        assert check(pki.client) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


# --- the TLS accept path in-process, on both event loops ---------------------------------


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_silent_and_stalled_handshakes_are_cut_and_counted(loop_kind: str, pki: Pki,
                                                          tmp_path: Path) -> None:
    from .test_http_limits import start_toy

    volume, _ = server_volume(tmp_path, pki)
    reloading = server_tls.ReloadingContext(volume.path("tls.crt"), volume.path("tls.key"))
    toy = start_toy(loop_kind, header_timeout=0.5, tls=reloading)
    server = toy.server
    try:
        ctx = client_context(pki)
        ctx.check_hostname = False  # the toy listens on a random 127.x.y.z
        silent = socket.create_connection(toy.addr, timeout=10)
        stalled = socket.create_connection(toy.addr, timeout=10)
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
        for sock in (silent, stalled):
            with sock, contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""  # closed by the server, no answer
        assert wait_for(lambda: server.tls_failures >= 2 and server.open_connections == 0, 10)

        # Plain HTTP gets the plain 400; a real client still gets served.
        with socket.create_connection(toy.addr, timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ") and b"HTTPS" in answer
        assert server.plain_to_tls == 1
        with socket.create_connection(toy.addr, timeout=10) as raw, \
                ctx.wrap_socket(raw) as conn:
            conn.sendall(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"ok":true}')
        assert wait_for(lambda: server.open_connections == 0, 10)
    finally:
        toy.stop()


def test_workers_share_the_tls_port(models: Models, pki: Pki, tmp_path: Path) -> None:
    volume, _ = server_volume(tmp_path, pki)
    ctx = client_context(pki)
    with tls_server(models, volume, "--workers", "2") as (port, proc):
        wait_https_ready(port, proc, ctx)
        for _ in range(8):  # spread over both workers by the kernel
            status, body = https(port, ctx, "POST", "/v2/models/iris/infer", INFER)
            assert status == 200, body
