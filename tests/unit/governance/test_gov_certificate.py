"""The operator-kept webhook certificate: kustos.governance.tls (CA, serving certificate,
renewal decisions) and kustos.governance.certificate (the Secret, the races between peered
replicas, the caBundle, the served file), against an in-memory API."""

from __future__ import annotations

import base64
import copy
import logging
import stat
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
from cryptography import x509

from kustos.controllers import run
from kustos.governance import certificate, tls
from kustos.k8s import client
from kustos.k8s.client import ApiError
from kustos.render.webhook import WEBHOOK_NAME, render_configuration
from tlsprobe import handshake

HOSTS = ["kustos-webhook.ops.svc", "kustos-webhook", "kustos-webhook.ops"]
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def sans(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)]


# --- tls: issue, renew, assess ------------------------------------------------------------


def test_issue_signs_a_serving_certificate_for_the_hosts_with_its_ca() -> None:
    b = tls.issue(HOSTS, now=NOW)
    ca = x509.load_pem_x509_certificate(b.ca_cert)
    cert = x509.load_pem_x509_certificate(b.cert)
    cert.verify_directly_issued_by(ca)
    assert sans(b.cert) == HOSTS
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - NOW >= timedelta(days=tls.CA_DAYS - 1)
    assert cert.not_valid_after_utc - NOW >= timedelta(days=tls.CERT_DAYS - 1)
    assert tls.assess(b, HOSTS, NOW) == ("keep", "")


def test_a_tls_client_verifying_the_ca_accepts_the_served_certificate(tmp_path: Path) -> None:
    """What the API server does: verify the server against the caBundle for the Service's
    name. The server loads key and certificate from the one file the operator writes."""
    b = tls.issue(HOSTS)
    served = certificate.ServingFile(tmp_path / "d")
    served.write(b)
    assert handshake(served.path, served.path, b.ca_cert.decode(),
                     "kustos-webhook.ops.svc") == b"ok"


def test_renew_keeps_the_ca_and_issues_a_new_serving_certificate() -> None:
    b = tls.issue(HOSTS, now=NOW)
    r = tls.renew(b, HOSTS, now=NOW + timedelta(days=340))
    assert (r.ca_cert, r.ca_key) == (b.ca_cert, b.ca_key)
    assert r.cert != b.cert and r.key != b.key
    x509.load_pem_x509_certificate(r.cert).verify_directly_issued_by(
        x509.load_pem_x509_certificate(b.ca_cert))
    assert tls.assess(r, HOSTS, NOW + timedelta(days=340)) == ("keep", "")
    with pytest.raises(ValueError, match="CA's key"):
        tls.renew(tls.Bundle(b.ca_cert, None, b.cert, b.key), HOSTS)


def test_assess_renews_near_expiry_and_for_new_names_and_replaces_a_dying_ca() -> None:
    b = tls.issue(HOSTS, now=NOW, ca_days=400, cert_days=100)
    assert tls.assess(b, HOSTS, NOW + timedelta(days=69))[0] == "keep"
    action, why = tls.assess(b, HOSTS, NOW + timedelta(days=71))
    assert action == "renew" and "expires" in why
    action, why = tls.assess(b, [*HOSTS, "kustos-webhook.ops.svc.cluster.local"], NOW)
    assert action == "renew" and "does not name kustos-webhook.ops.svc.cluster.local" in why
    action, why = tls.assess(b, HOSTS, NOW + timedelta(days=371))
    assert action == "replace" and "the CA expires" in why
    # Without the CA's key (a Secret made by someone else) a renewal is a new CA.
    foreign = tls.Bundle(b.ca_cert, None, b.cert, b.key)
    assert tls.assess(foreign, HOSTS, NOW)[0] == "keep"
    assert tls.assess(foreign, HOSTS, NOW + timedelta(days=71))[0] == "replace"


def test_assess_replaces_what_does_not_fit_together() -> None:
    a, b = tls.issue(HOSTS, now=NOW), tls.issue(HOSTS, now=NOW)
    assert tls.assess(tls.Bundle(a.ca_cert, a.ca_key, a.cert, b.key), HOSTS, NOW) == \
        ("replace", "the serving key does not match the certificate")
    assert tls.assess(tls.Bundle(b.ca_cert, b.ca_key, a.cert, a.key), HOSTS, NOW)[0] == \
        "replace"
    assert tls.assess(tls.Bundle(a.ca_cert, b.ca_key, a.cert, a.key), HOSTS, NOW) == \
        ("replace", "the CA key does not match the CA certificate")
    assert tls.assess(tls.Bundle(b"junk", None, b"junk", b"junk"), HOSTS, NOW)[0] == "replace"


def test_no_key_material_in_a_bundles_repr() -> None:
    b = tls.issue(HOSTS)
    for text in (repr(b), str(b), tls.describe(b), f"{b}"):
        assert "PRIVATE" not in text and "BEGIN" not in text
        assert base64.b64encode(b.key).decode()[:40] not in text
    assert "valid until" in repr(b)


# --- the Secret, against an in-memory API -------------------------------------------------


class FakeApi:
    """Secrets and webhook configurations, with resourceVersions, 409s and a hook that
    runs before a write (to play another replica)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = 0
        self.calls: list[tuple[str, str, str]] = []
        self.before_write: list[Any] = []
        self.fail: dict[str, ApiError] = {}

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", f"uid-{self.rv}")
        self.objects[obj["kind"], meta.get("namespace") or "", meta["name"]] = obj
        return copy.deepcopy(obj)

    def _hook(self) -> None:
        while self.before_write:
            self.before_write.pop(0)()

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        if "get" in self.fail:
            raise self.fail["get"]
        found = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(found) if found else None

    def create(self, manifest: Mapping[str, Any], dry_run: bool = False) -> dict[str, Any]:
        self.calls.append(("create", manifest["kind"], manifest["metadata"]["name"]))
        self._hook()
        meta = manifest["metadata"]
        if (manifest["kind"], meta.get("namespace") or "", meta["name"]) in self.objects:
            raise ApiError(409, "AlreadyExists", f"secrets \"{meta['name']}\" already exists")
        return self._store(dict(manifest))

    def patch(self, kind: str, name: str, namespace: str | None, body: Mapping[str, Any],
              resource_version: str | None = None) -> dict[str, Any]:
        self.calls.append(("patch", kind, name))
        self._hook()
        key = (kind, namespace or "", name)
        current = self.objects.get(key)
        if current is None:
            raise ApiError(404, "NotFound", "not found")
        if resource_version and current["metadata"]["resourceVersion"] != resource_version:
            raise ApiError(409, "Conflict", "the object has been modified")
        merged = copy.deepcopy(current)
        merged["data"] = {**merged.get("data", {}), **body["data"]}
        return self._store(merged)

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", manifest["kind"], manifest["metadata"]["name"]))
        key = (manifest["kind"], "", manifest["metadata"]["name"])
        current = copy.deepcopy(self.objects[key])
        assert manifest["metadata"]["uid"] == current["metadata"]["uid"]
        (hook,) = manifest["webhooks"]
        assert set(hook) == {"name", "clientConfig"} and set(hook["clientConfig"]) == \
            {"caBundle"}, "only the caBundle is applied"
        for h in current["webhooks"]:
            if h["name"] == hook["name"]:
                h["clientConfig"]["caBundle"] = hook["clientConfig"]["caBundle"]
        return self._store(current)

    def secret_bundle(self, name: str = "hook-cert", ns: str = "ops") -> tls.Bundle:
        found = certificate.from_secret(self.objects["Secret", ns, name])
        assert found is not None
        return found


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    for fn in ("get", "create", "patch", "apply"):
        monkeypatch.setattr(client, fn, getattr(fake, fn))
    yield fake


def put_secret(api: FakeApi, bundle: tls.Bundle, name: str = "hook-cert") -> None:
    api._store(certificate.secret_manifest(name, "ops", bundle))


def test_absent_secret_is_created_with_the_bundle(api: FakeApi) -> None:
    bundle, what = certificate.ensure("hook-cert", "ops", HOSTS)
    assert what == "created"
    secret = api.objects["Secret", "ops", "hook-cert"]
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
    assert api.secret_bundle() == bundle
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustos"
    # Not the release's labels: a GitOps tool must not take it for one of its own objects.
    assert "app.kubernetes.io/instance" not in secret["metadata"]["labels"]
    again, what = certificate.ensure("hook-cert", "ops", HOSTS)
    assert (again, what) == (bundle, "read")


def test_the_replica_that_loses_the_create_race_serves_the_winners(api: FakeApi) -> None:
    winner = tls.issue(HOSTS)
    api.before_write.append(lambda: put_secret(api, winner))
    bundle, what = certificate.ensure("hook-cert", "ops", HOSTS)
    assert what == "adopted"
    assert bundle == winner == api.secret_bundle()
    assert [c[0] for c in api.calls] == ["get", "create", "get"]


def test_an_expiring_certificate_is_renewed_with_the_same_ca(api: FakeApi) -> None:
    old = tls.issue(HOSTS, cert_days=10)
    put_secret(api, old)
    bundle, what = certificate.ensure("hook-cert", "ops", HOSTS)
    assert what == "renewed"
    assert bundle.ca_cert == old.ca_cert and bundle.cert != old.cert
    assert api.secret_bundle() == bundle
    assert tls.assess(bundle, HOSTS)[0] == "keep"


def test_the_replica_that_loses_the_renewal_race_takes_the_winners(api: FakeApi) -> None:
    old = tls.issue(HOSTS, cert_days=10)
    put_secret(api, old)
    theirs = tls.renew(old, HOSTS)
    api.before_write.append(lambda: api.patch(
        "Secret", "hook-cert", "ops", {"data": certificate._data(theirs)}))
    bundle, what = certificate.ensure("hook-cert", "ops", HOSTS)
    assert (bundle, what) == (theirs, "read")
    assert [c[0] for c in api.calls].count("patch") == 2  # theirs, then our refused one


def test_a_broken_secret_is_replaced(api: FakeApi) -> None:
    api._store({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "hook-cert", "namespace": "ops"},
                "data": {"tls.crt": "bm90IGEgY2VydA=="}})
    bundle, what = certificate.ensure("hook-cert", "ops", HOSTS)
    assert what == "replaced"
    assert api.secret_bundle() == bundle and tls.assess(bundle, HOSTS)[0] == "keep"


def test_api_errors_name_the_secret_not_its_content(api: FakeApi) -> None:
    api.fail["get"] = ApiError(403, "Forbidden", 'secrets "hook-cert" is forbidden: User '
                               '"system:serviceaccount:ops:kustos" cannot get resource')
    with pytest.raises(certificate.CertificateError, match="cannot read Secret ops/hook-cert: "
                                                           "403 Forbidden"):
        certificate.ensure("hook-cert", "ops", HOSTS)


# --- the caBundle ---------------------------------------------------------------------------


def configuration(api: FakeApi, ca_bundle: bytes | None = None) -> None:
    vwc = render_configuration("hook", ca_bundle=ca_bundle or b"",
                               service=("ops", "kustos-webhook"))
    if ca_bundle is None:
        del vwc["webhooks"][0]["clientConfig"]["caBundle"]
    api._store(vwc)


def test_inject_ca_sets_only_the_ca_bundle_and_only_when_it_differs(api: FakeApi) -> None:
    b = tls.issue(HOSTS)
    assert certificate.inject_ca("hook", b.ca_cert) == "missing"
    configuration(api)
    assert certificate.inject_ca("hook", b.ca_cert) == "set"
    vwc = api.objects["ValidatingWebhookConfiguration", "", "hook"]
    assert certificate.ca_bundle_of(vwc) == base64.b64encode(b.ca_cert).decode()
    assert certificate.inject_ca("hook", b.ca_cert) == "current"
    assert [c[0] for c in api.calls].count("apply") == 1


def test_inject_ca_refuses_a_configuration_without_our_webhook(api: FakeApi) -> None:
    configuration(api)
    api.objects["ValidatingWebhookConfiguration", "", "hook"]["webhooks"][0]["name"] = "other"
    with pytest.raises(certificate.CertificateError, match=WEBHOOK_NAME):
        certificate.inject_ca("hook", b"x")


# --- the served file and the keeper ---------------------------------------------------------


def test_serving_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    served = certificate.ServingFile(tmp_path / "d")
    a, b = tls.issue(HOSTS), tls.issue(HOSTS)
    assert served.write(a) is True
    assert served.write(a) is False
    assert stat.S_IMODE(served.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(served.directory.stat().st_mode) == 0o700
    assert served.write(b) is True
    assert served.path.read_bytes() == b.key + b.cert
    assert [p.name for p in served.directory.iterdir()] == ["tls.pem"]


def test_keeper_follows_the_secret_and_keeps_the_ca_bundle(
        api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    first, _ = certificate.ensure("hook-cert", "ops", HOSTS)
    served = certificate.ServingFile(tmp_path / "d")
    served.write(first)
    keeper = certificate.Keeper("hook-cert", "ops", HOSTS, "hook", served, first)
    keeper.tick()  # no configuration yet: retried soon
    assert not keeper.injected
    configuration(api)
    keeper.tick()
    assert keeper.injected
    vwc = api.objects["ValidatingWebhookConfiguration", "", "hook"]
    assert certificate.ca_bundle_of(vwc) == base64.b64encode(first.ca_cert).decode()
    # Something resets the caBundle (a sync that replaces the object): put back.
    vwc["webhooks"][0]["clientConfig"].pop("caBundle")
    keeper.tick()
    assert certificate.ca_bundle_of(api.objects["ValidatingWebhookConfiguration", "", "hook"])
    # Another replica renewed the Secret: served from the file at the next round.
    renewed = tls.renew(first, HOSTS)
    api.patch("Secret", "hook-cert", "ops", {"data": certificate._data(renewed)})
    keeper.tick()
    assert served.path.read_bytes() == renewed.key + renewed.cert
    assert keeper.bundle == renewed
    # Deleted: a new CA, a new caBundle.
    del api.objects["Secret", "ops", "hook-cert"]
    keeper.tick()
    assert keeper.bundle.ca_cert != first.ca_cert
    assert certificate.ca_bundle_of(api.objects["ValidatingWebhookConfiguration", "", "hook"]) \
        == base64.b64encode(keeper.bundle.ca_cert).decode()
    for secret in (first, renewed, keeper.bundle):
        for material in (secret.key, secret.ca_key or b"x"):
            assert base64.b64encode(material).decode()[:30] not in caplog.text
            assert material.decode().splitlines()[1] not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


# --- kustos run --webhook-secret ------------------------------------------------------------


def test_run_serves_from_the_secret_it_creates(api: FakeApi,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    args = run.parser().parse_args([
        "--webhook", "--webhook-secret", "hook-cert", "--webhook-secret-namespace", "ops",
        *[f"--webhook-host={h}" for h in HOSTS], "--webhook-inject-ca", "hook"])
    memo = kopf.Memo()
    assert run._setup_webhook(args, memo) is None
    server = memo.kustos_webhook_server
    bundle = api.secret_bundle()
    assert server.certfile == server.pkeyfile
    assert Path(server.certfile).read_bytes() == bundle.key + bundle.cert
    assert server.cadata == bundle.ca_cert  # never the key file's content
    assert server.host == HOSTS[0]
    keeper = memo.kustos_webhook_keeper  # started by kopf's startup handler
    assert (keeper.configuration, keeper.namespace, keeper.hosts) == ("hook", "ops", HOSTS)


@pytest.mark.parametrize(("argv", "problem"), [
    (["--webhook-secret", "s", "--webhook-cert", "c", "--webhook-key", "k"],
     "--webhook-secret and --webhook-cert exclude each other"),
    (["--webhook-inject-ca", "hook"], "--webhook-inject-ca needs --webhook-secret"),
    (["--webhook-secret", "s", "--webhook-host", "h"],
     "--webhook-secret needs --webhook-secret-namespace (or $POD_NAMESPACE)"),
    (["--webhook-secret", "s", "--webhook-secret-namespace", "ops"],
     "--webhook-secret needs --webhook-host (the names in the certificate)"),
])
def test_run_refuses_secret_flags_that_do_not_go_together(
        argv: list[str], problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    args = run.parser().parse_args(["--webhook", *argv])
    memo = kopf.Memo()
    assert run._setup_webhook(args, memo) == problem
    assert "kustos_webhook_server" not in memo


def test_run_reports_a_secret_it_may_not_read(api: FakeApi,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    api.fail["get"] = ApiError(403, "Forbidden", "forbidden")
    args = run.parser().parse_args(["--webhook", "--webhook-secret", "s",
                                    "--webhook-host", "h"])
    problem = run._setup_webhook(args, kopf.Memo())
    assert problem == "webhook certificate: cannot read Secret ops/s: 403 Forbidden: forbidden"


def test_the_upkeep_is_a_task_of_kopfs_loop_started_and_cancelled_by_its_handlers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A failing round is retried after RETRY, a good one waits INTERVAL; the task starts
    with kopf's startup handler and ends with its cleanup handler (no thread left)."""
    import asyncio

    monkeypatch.setattr(certificate, "RETRY", 0.01)
    monkeypatch.setattr(certificate, "INTERVAL", 60.0)
    first = tls.issue(HOSTS)
    keeper = certificate.Keeper("s", "ops", HOSTS, "hook",
                                certificate.ServingFile(tmp_path / "d"), first)
    rounds: list[int] = []

    def tick() -> None:
        rounds.append(1)
        if len(rounds) < 3:
            raise ApiError(503, "ServiceUnavailable", "not yet")
        keeper.injected = True

    monkeypatch.setattr(keeper, "tick", tick)

    async def test() -> None:
        memo = kopf.Memo(kustos_webhook_keeper=keeper)
        await run.keep_webhook_certificate(memo=memo)
        for _ in range(500):
            if len(rounds) >= 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(rounds) == 3  # two retries, then it waits INTERVAL
        await run.stop_keeping_webhook_certificate(memo=memo)
        assert memo.kustos_webhook_keeper_task.done()

    asyncio.run(test())
