"""kustos.registry against a real MLflow server (SQLite registry, artifacts proxied to a
moto S3 bucket), with real scikit-learn models logged by mlflow.sklearn: an alias resolved,
the resolved file fetched by `kustos fetch` against the recorded digest and predicting as
the model does, the alias moved and resolved again, and the failures mapped to reasons."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow_server import MlflowServer, mlflow_server, moto_s3
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from kustos.registry import status as registry_status
from kustos.registry.client import (
    NOT_FOUND,
    UNREACHABLE,
    NotFound,
    RegistryClient,
    Unreachable,
)
from kustos.registry.resolution import DIGEST_TAG, ResolutionError, resolve
from kustos.registry.uri import parse
from kustos.runtime.fetch import fetch
from ports import free_port

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def server() -> Iterator[MlflowServer]:
    with moto_s3() as s3, mlflow_server(s3) as srv:
        yield srv


@pytest.fixture(scope="module")
def versions(server: MlflowServer) -> list[dict[str, Any]]:
    """Two versions of "iris" (C=1 and C=0.02: different models), alias champion -> v1."""
    return [server.register("iris", c=1.0, alias="champion"), server.register("iris", c=0.02)]


def iris_predictions(c: float) -> np.ndarray:
    x, y = load_iris(return_X_y=True)
    return np.asarray(LogisticRegression(C=c, max_iter=500).fit(x, y).predict_proba(x))


def test_alias_resolves_to_a_fetchable_verified_file_and_follows_a_move(
        server: MlflowServer, versions: list[dict[str, Any]], tmp_path: Path) -> None:
    client = RegistryClient(server.url)
    ref = parse("models:/iris@champion")
    v1, v2 = versions
    assert v1["version"] == "1" and v2["version"] == "2"
    assert "model.pkl" in v1["files"] and v1["sha256"] != v2["sha256"]

    # A pickled model without the digest tag is refused, not served unverified.
    with pytest.raises(ResolutionError, match="unpickling runs code") as refused:
        resolve(client, ref, "sklearn")
    assert refused.value.reason == "ModelVersionUnusable"

    for v in versions:
        server.rest("model-versions/set-tag", {"name": "iris", "version": v["version"],
                                                "key": DIGEST_TAG,
                                                "value": f"sha256:{v['sha256']}"})
    first = resolve(client, ref, "sklearn")
    assert (first.name, first.alias, first.version) == ("iris", "champion", "1")
    assert first.run_id == v1["runId"]
    assert first.digest == f"sha256:{v1['sha256']}"
    # MLflow 3 registers a logged model (source models:/m-...); its artifacts are proxied
    # by the server: the fetch reads them from the server's artifact endpoint.
    assert v1["source"].startswith("models:/m-")
    assert first.source.startswith(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/")
    assert first.source.endswith("/artifacts/model.pkl")

    got = fetch(first.source, tmp_path / "v1.pkl", first.digest, retries=1)
    assert got.digest == first.digest
    with open(got.path, "rb") as fh:
        model = pickle.load(fh)  # verified against the registry's digest
    x, _ = load_iris(return_X_y=True)
    np.testing.assert_allclose(model.predict_proba(x), iris_predictions(1.0), rtol=1e-6)

    # The status part written for it, then the alias moved to v2.
    fresh = {"metadata": {"generation": 1}, "status": {}}
    part, notices = registry_status.resolved(fresh, first, datetime.now(UTC))
    assert part["registry"]["version"] == "1"
    assert [n.reason for n in notices] == ["ModelResolved"]

    server.rest("registered-models/alias", {"name": "iris", "alias": "champion",
                                             "version": "2"})
    second = resolve(client, ref, "sklearn")
    assert (second.version, second.digest) == ("2", f"sha256:{v2['sha256']}")
    assert second.source != first.source
    fresh = {"metadata": {"generation": 1},
             "status": {"registry": part["registry"], "conditions": part["conditions"]}}
    part2, notices = registry_status.resolved(fresh, second, datetime.now(UTC))
    assert part2["registry"]["version"] == "2"
    assert [(n.reason, n.message) for n in notices] == [
        ("ModelAliasMoved", "models:/iris@champion moved from version 1 to 2")]
    got = fetch(second.source, tmp_path / "v2.pkl", second.digest, retries=1)
    with open(got.path, "rb") as fh:
        model = pickle.load(fh)  # verified against the registry's digest
    np.testing.assert_allclose(model.predict_proba(x), iris_predictions(0.02), rtol=1e-6)
    # The same answer again: nothing to write, no Event.
    fresh = {"metadata": {"generation": 1},
             "status": {"registry": part2["registry"], "conditions": part2["conditions"]}}
    part3, notices = registry_status.resolved(fresh, second, datetime.now(UTC))
    assert part3 == part2 and notices == []


def test_version_uri_resolves_that_version(server: MlflowServer,
                                           versions: list[dict[str, Any]]) -> None:
    client = RegistryClient(server.url)
    v1 = versions[0]
    server.rest("model-versions/set-tag", {"name": "iris", "version": "1",
                                            "key": DIGEST_TAG, "value": v1["sha256"]})
    res = resolve(client, parse("models:/iris/1"), "sklearn")
    assert (res.version, res.alias, res.digest) == ("1", None, f"sha256:{v1['sha256']}")


@pytest.mark.parametrize("uri", ["models:/iris@nobody", "models:/iris/99",
                                 "models:/no-such-model@champion", "models:/no-such-model/1"])
def test_missing_alias_version_or_model_is_not_found(server: MlflowServer,
                                                     versions: list[dict[str, Any]],
                                                     uri: str) -> None:
    with pytest.raises(NotFound) as err:
        resolve(RegistryClient(server.url), parse(uri), "sklearn")
    assert err.value.reason == NOT_FOUND
    assert parse(uri).name in err.value.message


def test_format_without_a_known_file_needs_the_file_tag(
        server: MlflowServer, versions: list[dict[str, Any]]) -> None:
    with pytest.raises(ResolutionError, match=r"kustos\.dev/file"):
        resolve(RegistryClient(server.url), parse("models:/iris/1"), "xgboost")
    # A tag naming a file of another format is refused at resolution, as the CRD's rule
    # would refuse the URI.
    server.rest("model-versions/set-tag", {"name": "iris", "version": "2",
                                            "key": "kustos.dev/file", "value": "MLmodel"})
    with pytest.raises(ResolutionError, match="format sklearn needs"):
        resolve(RegistryClient(server.url), parse("models:/iris/2"), "sklearn")
    server.rest("model-versions/delete-tag", {"name": "iris", "version": "2",
                                               "key": "kustos.dev/file"}, "DELETE")


def test_mlflow3_default_skops_model_resolves_without_a_digest(server: MlflowServer,
                                                              tmp_path: Path) -> None:
    """mlflow.sklearn's default serialization (skops, model.skops): found through the
    proxy's listing; not pickled, so it is served without a digest tag (and verified
    against one when the tag is set)."""
    skops_io = pytest.importorskip("skops.io")
    logged = server.register("iris-skops", c=0.5, alias="champion", serialization="skops")
    assert "model.skops" in logged["files"] and "model.pkl" not in logged["files"]
    client = RegistryClient(server.url)
    res = resolve(client, parse("models:/iris-skops@champion"), "sklearn")
    assert res.source.endswith("/artifacts/model.skops") and res.digest is None
    server.rest("model-versions/set-tag", {"name": "iris-skops", "version": res.version,
                                            "key": DIGEST_TAG, "value": logged["sha256"]})
    res = resolve(client, parse("models:/iris-skops@champion"), "sklearn")
    got = fetch(res.source, tmp_path / "model.skops", res.digest, retries=1)
    blob = got.path.read_bytes()
    model = skops_io.loads(blob, trusted=skops_io.get_untrusted_types(data=blob))
    x, _ = load_iris(return_X_y=True)
    np.testing.assert_allclose(model.predict_proba(x), iris_predictions(0.5), rtol=1e-6)


def test_unreachable_registry() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", connect_timeout=2,
                            read_timeout=2)
    with pytest.raises(Unreachable) as err:
        client.model_version(parse("models:/iris@champion"))
    assert err.value.reason == UNREACHABLE
