"""A gated rollout with spec.runtime.tls, on loopback with real `kustos serve` processes
and certificates made here: the controller's scrape reads a TLS pod's /metrics, and the
stable mirrors to the candidate over HTTPS, pinned to the certificate both serve (one
Secret for both tracks), presenting it as its client certificate under mTLS. A candidate
with any other certificate, even one the same CA signed for the same names, gets nothing."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runtime.test_serve_tls import SecretVolume, make_ca, make_leaf
from test_rollout_shadow_gate import post, serve
from unit_support import wait_for

from kustos.controllers.rollout import _get, scrape_context
from kustos.rollout import window
from kustos.runtime.server import shadow_tls
from kustos.runtime.server.cli import _check, build_parser
from ports import free_port

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
BODY = {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                    "data": [v for r in ROWS for v in r]}]}
REQUESTS = 20


@dataclass
class Secrets:
    """The model's TLS Secret (both tracks mount it), another certificate from the same CA
    for the same names, and the CA (also the client CA under mTLS)."""

    ca: Path
    cert: Path
    key: Path
    other_cert: Path
    other_key: Path
    model: Path


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    d = Path(tmp_path_factory.mktemp("rollout-tls"))
    ca = make_ca("rollout-ca")
    (d / "ca.crt").write_bytes(ca.pem)
    for name in ("iris", "other"):
        cert, key, _ = make_leaf(ca, name, both=True)
        (d / f"{name}.crt").write_bytes(cert + ca.pem)  # leaf then chain, as cert-manager
        (d / f"{name}.key").write_bytes(key)
    x, y = load_iris(return_X_y=True)
    (d / "model.skops").write_bytes(skops.io.dumps(LogisticRegression(max_iter=500).fit(x, y)))
    return Secrets(d / "ca.crt", d / "iris.crt", d / "iris.key", d / "other.crt",
                   d / "other.key", d / "model.skops")


def trusting(s: Secrets) -> ssl.SSLContext:
    """A caller that verifies the server against the CA."""
    return ssl.create_default_context(cafile=str(s.ca))


def scrape(port: int, tls: bool = True) -> str:
    """/metrics as the controller reads it: on the TLS port, or (mTLS) the plain
    --health-port."""
    text = (_get(f"https://127.0.0.1:{port}/metrics", scrape_context()) if tls
            else _get(f"http://127.0.0.1:{port}/metrics"))
    assert text is not None
    return text


def mirrored(text: str, outcome: str) -> float:
    line = r'^kustos_shadow_requests_total\{model="iris",outcome="' + outcome + r'"\} (\S+)$'
    found = re.search(line, text, re.M)
    return float(found.group(1)) if found else 0.0


def predict(port: int, context: ssl.SSLContext, n: int = REQUESTS) -> None:
    for _ in range(n):
        assert post(port, "/v2/models/iris/infer", BODY, context=context)[0] == 200


def tls_flags(cert: Path, key: Path, *extra: str) -> tuple[str, ...]:
    return ("--tls-cert", str(cert), "--tls-key", str(key), *extra)


@pytest.fixture(scope="module")
def candidate(secrets: Secrets) -> Iterator[int]:
    """The candidate: the model's Secret, HTTPS."""
    with serve(secrets.model, *tls_flags(secrets.cert, secrets.key),
               context=trusting(secrets)) as port:
        yield port


def test_the_scrape_reads_a_tls_pods_metrics(secrets: Secrets, candidate: int) -> None:
    predict(candidate, trusting(secrets), 3)
    sample = window.parse(scrape(candidate), "iris")
    assert sample.requests.get("200", 0) >= 3 and sum(sample.classes.values()) >= 9
    # what the scrape did before: the system's CAs and the host name, so no TLS pod's
    # metrics (and every gate inconclusive)
    assert _get(f"https://127.0.0.1:{candidate}/metrics") is None


def test_the_mirror_goes_over_https_to_the_pinned_candidate(secrets: Secrets,
                                                             candidate: int) -> None:
    before = window.parse(scrape(candidate), "iris")
    with serve(secrets.model, *tls_flags(
            secrets.cert, secrets.key, "--shadow-url", f"https://127.0.0.1:{candidate}",
            "--shadow-tls-pin", str(secrets.cert)), context=trusting(secrets)) as stable:
        predict(stable, trusting(secrets))
        # the mirror is asynchronous: wait until every row was compared
        assert wait_for(lambda: sum(window.parse(scrape(stable), "iris").shadow_rows.values())
                        >= REQUESTS * len(ROWS), 30, 0.2)
        text = scrape(stable)
    rows = window.parse(text, "iris").shadow_rows
    assert rows == {"agree": REQUESTS * len(ROWS), "disagree": 0.0}  # the same model
    assert (mirrored(text, "sent"), mirrored(text, "failed")) == (REQUESTS, 0)
    after = window.parse(scrape(candidate), "iris")
    assert after.requests["200"] - before.requests["200"] == REQUESTS


def test_a_candidate_with_another_certificate_gets_nothing(secrets: Secrets) -> None:
    # signed by the same CA, for the same names: a CA-trusting client would accept it
    with serve(secrets.model, *tls_flags(secrets.other_cert, secrets.other_key),
               context=trusting(secrets)) as impostor, serve(
            secrets.model, *tls_flags(secrets.cert, secrets.key, "--shadow-url",
                                      f"https://127.0.0.1:{impostor}", "--shadow-tls-pin",
                                      str(secrets.cert)), context=trusting(secrets)) as stable:
        predict(stable, trusting(secrets))
        assert wait_for(lambda: mirrored(scrape(stable), "failed") >= REQUESTS, 30, 0.2)
        text = scrape(stable)
        served = window.parse(scrape(impostor), "iris")
    assert mirrored(text, "sent") == 0
    assert sum(window.parse(text, "iris").shadow_rows.values()) == 0
    assert served.requests.get("200", 0) == 0  # not one request body reached it


def test_under_mtls_the_mirror_presents_the_pods_certificate(secrets: Secrets) -> None:
    caller = trusting(secrets)
    caller.load_cert_chain(str(secrets.cert), str(secrets.key))

    def mtls(*extra: str) -> tuple[tuple[str, ...], int]:
        health = free_port()  # probes and the scrape: no client certificate there
        return tls_flags(secrets.cert, secrets.key, "--tls-client-ca", str(secrets.ca),
                         "--health-port", str(health), *extra), health

    flags, _ = mtls()
    with serve(secrets.model, *flags, context=caller) as mcandidate:
        pin = ("--shadow-url", f"https://127.0.0.1:{mcandidate}", "--shadow-tls-pin",
               str(secrets.cert))
        flags, health = mtls(*pin, "--shadow-tls-cert", str(secrets.cert),
                             "--shadow-tls-key", str(secrets.key))
        with serve(secrets.model, *flags, context=caller) as stable:
            predict(stable, caller)
            assert wait_for(lambda: mirrored(scrape(health, False), "sent") >= REQUESTS, 30,
                            0.2)
            text = scrape(health, False)
        assert mirrored(text, "failed") == 0
        assert window.parse(text, "iris").shadow_rows["agree"] == REQUESTS * len(ROWS)
        # without a client certificate the candidate refuses the mirror
        flags, health = mtls(*pin)
        with serve(secrets.model, *flags, context=caller) as stable:
            predict(stable, caller, 5)
            assert wait_for(lambda: mirrored(scrape(health, False), "failed") >= 5, 30, 0.2)
            assert mirrored(scrape(health, False), "sent") == 0


def accepts(client: ssl.SSLContext, cert: Path, key: Path) -> bool:
    """Whether ``client`` completes a handshake with a loopback server serving ``cert``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def answer() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(ssl.SSLError, OSError), \
                    server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                    client.wrap_socket(raw, server_hostname="candidate") as conn:
                return conn.recv(2) == b"ok"
        except ssl.SSLError:
            return False
        finally:
            thread.join(5)


def test_the_pin_follows_a_rotated_secret(secrets: Secrets, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    volume = SecretVolume(tmp_path / "secret")
    volume.update({"tls.crt": secrets.cert.read_bytes()})
    ctx = shadow_tls.ReloadingClientContext(shadow_tls.MirrorTls(pin=volume.path("tls.crt")))
    # the first certificate only: not another one the CA after it in tls.crt signed
    assert accepts(ctx.current(), secrets.cert, secrets.key)
    assert not accepts(ctx.current(), secrets.other_cert, secrets.other_key)
    assert ctx.reloads == 0
    volume.update({"tls.crt": secrets.other_cert.read_bytes()})  # the kubelet's ..data swap
    assert accepts(ctx.current(), secrets.other_cert, secrets.other_key)
    assert not accepts(ctx.current(), secrets.cert, secrets.key)
    assert ctx.reloads == 1
    volume.update({"tls.crt": b"half-written"})  # does not load: the previous pin stays
    with caplog.at_level(logging.WARNING, "kustos.serve"):
        assert accepts(ctx.current(), secrets.other_cert, secrets.other_key)
        assert accepts(ctx.current(), secrets.other_cert, secrets.other_key)
    assert ctx.reloads == 1
    # said once, naming the file, never its contents (docs/security.md)
    assert caplog.text.count("do not load") == 1
    assert str(volume.path("tls.crt")) in caplog.text and "half-written" not in caplog.text


def test_the_flags_are_checked_before_serving(secrets: Secrets, tmp_path: Path) -> None:
    def check(*flags: str) -> str | None:
        return _check(build_parser().parse_args(["--model", "m", "--name", "iris", *flags]))

    https = ("--shadow-url", "https://candidate")
    assert check(*https, "--shadow-tls-pin", str(secrets.cert)) is None
    assert check("--shadow-url", "http://candidate", "--shadow-tls-pin", str(secrets.cert)) \
        == "--shadow-tls-* need an https --shadow-url"
    assert check(*https, "--shadow-tls-cert", str(secrets.cert)) == \
        "--shadow-tls-cert and --shadow-tls-key go together"
    (tmp_path / "empty.pem").write_text("no certificate here\n")
    assert check(*https, "--shadow-tls-pin", str(tmp_path / "empty.pem")) == \
        f"--shadow-tls-*: {tmp_path / 'empty.pem'} holds no PEM certificate"
    wrong = check(*https, "--shadow-tls-cert", str(secrets.cert), "--shadow-tls-key",
                  str(secrets.other_key))
    assert wrong is not None and wrong.startswith("--shadow-tls-*: cannot load the client")
    assert "PRIVATE" not in wrong
