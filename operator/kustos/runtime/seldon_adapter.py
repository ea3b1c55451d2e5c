"""A Seldon Core (v1 Python wrapper) model class that serves a Kustos-fetched sklearn model.

seldon-core-microservice imports this in the Seldon runtime image, which holds
seldon-core, numpy, scikit-learn and skops but not Kustos: so this module uses nothing
but the standard library and those, and is installed there as the top-level module
``kustos_seldon_adapter`` (see images/seldon.Dockerfile). The renderer
(kustos.render.runtimes, kind ``seldon``) passes the model through the environment:

- KUSTOS_MODEL_PATH     the model file, under /mnt/models (required)
- KUSTOS_MODEL_NAME     reported in metadata
- KUSTOS_MODEL_VERSION  reported in metadata
- KUSTOS_MODEL_DIGEST   ``sha256:HEX``; checked again here before deserializing, and
                        required for pickle/joblib files (they run code when loaded)

skops files load with only scikit-learn, numpy and scipy types trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Types from these packages are what sklearn estimators are made of; anything else in a
# skops file (a user's own class, a callable) is refused rather than trusted.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.")
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


class ModelLoadError(RuntimeError):
    """The model file is missing, does not match its digest, or is not trusted."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def load_model(path: str, digest: str | None) -> Any:
    """Verify ``path`` against ``digest`` (if given) and deserialize it safely."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"model file {path!r} does not exist")
    if digest:
        actual = file_sha256(path)
        if actual != digest.lower():
            raise ModelLoadError(f"model file {path!r} has digest {actual}, expected {digest}")
    if path.endswith(".skops"):
        import skops.io as sio

        untrusted = sio.get_untrusted_types(file=path)
        refused = [t for t in untrusted if not t.startswith(TRUSTED_MODULE_PREFIXES)]
        if refused:
            raise ModelLoadError(f"model file {path!r} contains untrusted types: {refused}")
        return sio.load(path, trusted=untrusted)
    if path.endswith(PICKLE_SUFFIXES):
        if not digest:
            raise ModelLoadError(
                f"refusing to unpickle {path!r} without KUSTOS_MODEL_DIGEST: "
                "pickle runs code when loaded; use skops or pin the digest"
            )
        import joblib

        return joblib.load(path)
    raise ModelLoadError(f"unsupported model file {path!r}: expected .skops or .joblib")


class KustosSeldonModel:
    """The user model seldon-core-microservice instantiates (``--service-type MODEL``)."""

    def __init__(self, **parameters: Any) -> None:
        # seldon-core passes PREDICTIVE_UNIT_PARAMETERS as keyword arguments; the
        # environment rendered by Kustos is the default.
        self.model_path = str(parameters.get("model_path") or os.environ["KUSTOS_MODEL_PATH"])
        self.name = str(parameters.get("model_name") or os.environ.get("KUSTOS_MODEL_NAME")
                        or os.path.splitext(os.path.basename(self.model_path))[0])
        self.version = str(parameters.get("model_version")
                           or os.environ.get("KUSTOS_MODEL_VERSION") or "")
        self.digest: str | None = os.environ.get("KUSTOS_MODEL_DIGEST") or None
        self._model: Any = None
        self._lock = threading.Lock()
        # predict() leaves its figures here for metrics(), which seldon-core calls right
        # after it in the same request thread.
        self._pending = threading.local()

    # --- loading -------------------------------------------------------------------

    def load(self) -> None:
        """Called by seldon-core in each gunicorn worker; idempotent."""
        self._ensure_loaded()

    def _ensure_loaded(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    model = load_model(self.model_path, self.digest)
                    if not hasattr(model, "predict"):
                        raise ModelLoadError(f"{self.model_path!r} holds no predictor")
                    self._model = model
                    log.info("loaded model %s from %s", self.name, self.model_path)
        return self._model

    @property
    def n_features(self) -> int | None:
        n = getattr(self._ensure_loaded(), "n_features_in_", None)
        return int(n) if n is not None else None

    # --- the Seldon user-model interface ---------------------------------------------

    def predict(self, X: Any, features_names: Any = None, **kwargs: Any) -> np.ndarray:
        model = self._ensure_loaded()
        rows = np.asarray(X)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)  # a single row sent as a flat list
        if rows.ndim != 2:
            raise ValueError(f"expected a 2-D array of rows, got shape {rows.shape}")
        if rows.dtype.kind not in "biuf":
            rows = rows.astype(np.float64)
        n = self.n_features
        if n is not None and rows.shape[1] != n:
            raise ValueError(f"expected {n} features per row, got {rows.shape[1]}")
        started = time.perf_counter()
        predictions = np.asarray(model.predict(rows))
        self._pending.figures = (len(rows), time.perf_counter() - started)
        return predictions

    def metrics(self) -> list[dict[str, Any]]:
        """Custom metrics; seldon-core's Python wrapper exports no others of its own."""
        figures = getattr(self._pending, "figures", None)
        if figures is None:
            return []
        self._pending.figures = None
        rows, seconds = figures
        return [
            {"type": "COUNTER", "key": "kustos_seldon_predict_rows", "value": rows},
            # seldon-core takes TIMER values in milliseconds and exports seconds.
            {"type": "TIMER", "key": "kustos_seldon_predict_seconds", "value": seconds * 1000},
        ]

    def health_status(self) -> dict[str, Any]:
        # Ready means the model predicts, not merely that the process is up: one row of
        # zeros through the real model.
        n = self.n_features
        if n is not None:
            self.predict(np.zeros((1, n)))
            self._pending.figures = None  # a probe is not a prediction to count
        return {"status": "ok", "model": self.name, "version": self.version}

    def init_metadata(self) -> dict[str, Any]:
        # seldon-core calls this before forking workers, so loading here also fails the
        # container at start-up, loudly, when the model is missing or tampered with.
        model = self._ensure_loaded()
        names = getattr(model, "feature_names_in_", None)
        schema: dict[str, Any] = {}
        if names is not None:
            schema["names"] = [str(x) for x in names]
        if self.n_features is not None:
            schema["shape"] = [self.n_features]
        custom = {"model_file": os.path.basename(self.model_path),
                  "estimator": type(model).__name__}
        if self.digest:
            custom["digest"] = self.digest
        return {
            "name": self.name,
            "versions": [self.version] if self.version else [],
            "platform": "sklearn",
            "inputs": [{"messagetype": "ndarray", "schema": schema}],
            "outputs": [{"messagetype": "ndarray", "schema": {"shape": [1]}}],
            "custom": custom,
        }
