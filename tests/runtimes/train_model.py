"""Train a small real sklearn model on a bundled dataset and save it; stdlib + sklearn only.

Run with whichever interpreter must produce the file, since skops and joblib files are
tied to the scikit-learn that wrote them: the runtime tests run it inside the runtime's
own venv, the benchmark in Kustos' venv.

    python train_model.py {logreg,forest} OUTDIR --format skops|joblib

writes OUTDIR/model.<format> and OUTDIR/expected.json: the file's sha256, a few rows and
the model's own predictions for them, which the tests compare with what the server says.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

MODELS = {
    # name: (dataset, estimator)
    "logreg": "iris",
    "forest": "breast_cancer",
}


def train(kind: str) -> tuple[Any, Any]:
    from sklearn import datasets
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    loader = getattr(datasets, f"load_{MODELS[kind]}")
    X, y = loader(return_X_y=True)
    if kind == "logreg":
        model: Any = LogisticRegression(max_iter=1000)
    else:
        # n_jobs=1: a single-row predict must not pay for a thread pool.
        model = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
    model.fit(X, y)
    return model, X


def save(model: Any, path: str) -> None:
    if path.endswith(".skops"):
        import skops.io as sio

        sio.dump(model, path)
    else:
        import joblib

        joblib.dump(model, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(MODELS))
    parser.add_argument("outdir")
    parser.add_argument("--format", choices=["skops", "joblib"], default="skops")
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args(argv)
    import sklearn

    model, X = train(args.kind)
    os.makedirs(args.outdir, exist_ok=True)
    path = os.path.join(args.outdir, f"model.{args.format}")
    save(model, path)
    with open(path, "rb") as f:
        digest = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    # Spread the sample over the dataset so that more than one class is predicted.
    step = max(1, len(X) // args.rows)
    rows = X[::step][: args.rows]
    expected = {
        "model": args.kind,
        "file": os.path.basename(path),
        "digest": digest,
        "sklearn": sklearn.__version__,
        "rows": rows.tolist(),
        "predictions": model.predict(rows).tolist(),
        "n_features": int(X.shape[1]),
    }
    with open(os.path.join(args.outdir, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(json.dumps({"path": path, "digest": digest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
