"""kustos.registry against MLflow's basic-auth app (`mlflow server --app-name basic-auth`):
no or wrong credentials are RegistryUnauthorized, the right ones resolve; the password
appears in no message, repr or log line (urllib3's debug log included)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator

import pytest
from mlflow_server import MlflowServer, mlflow_server, moto_s3

from kustos.registry.client import UNAUTHORIZED, Credentials, RegistryClient, Unauthorized
from kustos.registry.resolution import DIGEST_TAG, resolve
from kustos.registry.uri import parse

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def server() -> Iterator[MlflowServer]:
    with moto_s3() as s3, mlflow_server(s3, basic_auth=True) as srv:
        registered = srv.register("guarded", c=1.0, alias="champion")
        srv.rest("model-versions/set-tag", {"name": "guarded",
                                            "version": registered["version"],
                                            "key": DIGEST_TAG, "value": registered["sha256"]})
        yield srv


def test_basic_auth(server: MlflowServer, caplog: pytest.LogCaptureFixture) -> None:
    assert server.admin is not None
    user, password = server.admin
    ref = parse("models:/guarded@champion")
    caplog.set_level(logging.DEBUG)

    with pytest.raises(Unauthorized) as anonymous:
        RegistryClient(server.url).model_version(ref)
    assert anonymous.value.reason == UNAUTHORIZED

    wrong = Credentials(username=user, password=password + "x")
    with pytest.raises(Unauthorized) as refused:
        resolve(RegistryClient(server.url, wrong), ref, "sklearn")
    assert "credentials rejected" in refused.value.message

    good = Credentials.from_secret_data({"username": user, "password": password})
    client = RegistryClient(server.url, good)
    res = resolve(client, ref, "sklearn")
    assert (res.name, res.version, res.alias) == ("guarded", "1", "champion")
    assert res.digest is not None

    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    seen = [str(refused.value), repr(refused.value), str(anonymous.value), repr(client),
            repr(good), repr(wrong), caplog.text]
    for secret in (password, encoded):
        assert not any(secret in text for text in seen)
    # The header did go out (the right password resolved, the wrong one did not).
    assert good.header()["Authorization"] == f"Basic {encoded}"
