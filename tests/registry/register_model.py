"""Run by the mlflow venv's python (tests/registry/mlflow_server.py): train a logistic
regression on iris, log it with mlflow.sklearn and register it as a new version.

argv: NAME C [ALIAS] [SERIALIZATION] (pickle, or skops: MLflow 3's default, model.skops).
MLFLOW_TRACKING_URI (and credentials) come from the environment.
Prints one JSON line: version, runId, sha256 of the logged model.pkl, modelFile.
"""

import hashlib
import json
import os
import sys
import tempfile

import mlflow
import mlflow.sklearn
from mlflow import MlflowClient
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

name, c = sys.argv[1], float(sys.argv[2])
alias = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
serialization = sys.argv[4] if len(sys.argv) > 4 else "pickle"
x, y = load_iris(return_X_y=True)
model = LogisticRegression(C=c, max_iter=500).fit(x, y)
with mlflow.start_run() as run:
    info = mlflow.sklearn.log_model(
        model, name="model", registered_model_name=name,
        # No inference of requirements (it imports and scans the environment: slow).
        pip_requirements=["scikit-learn"], serialization_format=serialization)
client = MlflowClient()
versions = client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'")
version = max(versions, key=lambda v: int(v.version))
with tempfile.TemporaryDirectory() as tmp:
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}",
                                                dst_path=tmp)
    files = sorted(os.listdir(local))
    data_file = "model.pkl" if serialization == "pickle" else "model.skops"
    with open(os.path.join(local, data_file), "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
if alias:
    client.set_registered_model_alias(name, alias, version.version)
print(json.dumps({"version": version.version, "runId": run.info.run_id, "sha256": sha,
                  "source": version.source, "files": files}))
