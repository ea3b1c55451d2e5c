#!/usr/bin/env python3
"""A local S3 model store for the real-pod cluster: moto's server on the node's bridge
address (reachable from pods and from this host, nothing else), the samples' models
trained here on scikit-learn's bundled data sets, and the samples with their digests.

    model_store.py up        start the store (no-op when it answers); prints its endpoint
    model_store.py down      stop it
    model_store.py publish   train and upload every model the samples name; prints JSON
                             {uri: digest}, also kept in .cluster/run/model-digests.json
    model_store.py samples   the samples (manifests/samples/*.yaml) with those digests, on
                             stdout, for `kubectl apply -f -`
    model_store.py secret    the credentials Secret the samples name (model-store), YAML

Environment: KUSTOS_MODEL_STORE_ADDR [10.244.0.1, the node's bridge address],
KUSTOS_MODEL_STORE_PORT [16900], KUSTOS_CLUSTER_DIR [<repo>/.cluster].
The store keeps everything in memory: `down` forgets the models, `publish` makes them again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = Path(os.environ.get("KUSTOS_CLUSTER_DIR", ROOT / ".cluster"))
RUN, LOGS = CLUSTER / "run", CLUSTER / "logs"
ADDR = os.environ.get("KUSTOS_MODEL_STORE_ADDR", "10.244.0.1")
PORT = int(os.environ.get("KUSTOS_MODEL_STORE_PORT", "16900"))
ENDPOINT = f"http://{ADDR}:{PORT}"
# moto accepts any key; these only make the requests signed, as against a real store.
ACCESS_KEY, SECRET_KEY, REGION = "kustos-dev", "kustos-dev-secret", "us-east-1"
SECRET_NAME = "model-store"
PID = RUN / "model-store.pid"
DIGESTS = RUN / "model-digests.json"


def _alive() -> bool:
    try:
        with urllib.request.urlopen(f"{ENDPOINT}/moto-api/", timeout=2):
            return True
    except (OSError, urllib.error.URLError):
        return False


def up() -> None:
    if _alive():
        print(ENDPOINT)
        return
    RUN.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / "model-store.log", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", ADDR, "-p", str(PORT)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    PID.write_text(str(proc.pid))
    deadline = time.monotonic() + 120
    while not _alive():
        if proc.poll() is not None:
            sys.exit(f"model store exited ({proc.returncode}); see {LOGS / 'model-store.log'}")
        if time.monotonic() > deadline:
            sys.exit(f"model store not answering on {ENDPOINT} after 120 s")
        time.sleep(0.2)
    print(ENDPOINT)


def down() -> None:
    if not PID.exists():
        return
    pid = int(PID.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    PID.unlink(missing_ok=True)


def _models() -> dict[str, bytes]:
    """Every object the samples name, by URI: small real models and their data."""
    import numpy as np
    import skops.io
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    out = {
        "s3://models/iris/1/model.skops": skops.io.dumps(
            LogisticRegression(max_iter=500).fit(x, y)),
        "s3://models/iris/2/model.skops": skops.io.dumps(
            LogisticRegression(max_iter=500, C=0.5).fit(x, y)),
    }
    wx, wy = load_wine(return_X_y=True)
    wx = wx.astype(np.float32)
    wine = LogisticRegression(max_iter=5000).fit(wx, wy)
    out["s3://models/wine/3/model.onnx"] = to_onnx(
        wine, wx[:1], options={id(wine): {"zipmap": False}}).SerializeToString()
    data = load_breast_cancer()
    bx, by = data.data, data.target
    forest = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0).fit(bx, by)
    out["s3://models/breast-cancer/7/model.skops"] = skops.io.dumps(forest)
    names = [n.replace(" ", "_") for n in data.feature_names]

    def csv(rows: Any) -> bytes:
        buf = io.StringIO()
        buf.write(",".join(names) + "\n")
        for row in rows:
            buf.write(",".join(f"{v:.6g}" for v in row) + "\n")
        return buf.getvalue().encode()

    out["s3://models/breast-cancer/7/background.csv"] = csv(bx[::6])
    out["s3://models/breast-cancer/7/reference.csv"] = csv(bx)
    return out


def publish() -> dict[str, str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name=REGION)
    digests: dict[str, str] = {}
    buckets: set[str] = set()
    for uri, blob in _models().items():
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        if bucket not in buckets:
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=bucket)
            buckets.add(bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=blob)
        digests[uri] = "sha256:" + hashlib.sha256(blob).hexdigest()
    RUN.mkdir(parents=True, exist_ok=True)
    DIGESTS.write_text(json.dumps(digests, indent=1))
    return digests


def _with_digests(doc: Any, digests: dict[str, str]) -> Any:
    """Every {uri, digest} mapping in ``doc`` gets the digest of what was published."""
    if isinstance(doc, dict):
        if doc.get("uri") in digests and "digest" in doc:
            doc["digest"] = digests[doc["uri"]]
        return {k: _with_digests(v, digests) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_with_digests(v, digests) for v in doc]
    return doc


def samples() -> str:
    import yaml

    digests = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else publish()
    docs = []
    for path in sorted((ROOT / "manifests" / "samples").glob("*.yaml")):
        docs += [_with_digests(d, digests) for d in yaml.safe_load_all(path.read_text()) if d]
    return yaml.safe_dump_all(docs, sort_keys=False)


def secret(namespace: str) -> str:
    import yaml

    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "namespace": namespace},
        "stringData": {"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                       "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION},
    }, sort_keys=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["up", "down", "publish", "samples", "secret"])
    p.add_argument("-n", "--namespace", default="default", help="namespace of the Secret")
    args = p.parse_args()
    if args.command == "up":
        up()
    elif args.command == "down":
        down()
    elif args.command == "publish":
        print(json.dumps(publish(), indent=1))
    elif args.command == "samples":
        sys.stdout.write(samples())
    else:
        sys.stdout.write(secret(args.namespace))


if __name__ == "__main__":
    main()
