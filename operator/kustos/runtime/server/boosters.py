"""XGBoost and LightGBM models loaded from their native files, never from pickle.

XGBoost: ``.ubj`` (UBJSON) or ``.json``, read by ``xgboost.Booster(model_file=...)``.
LightGBM: the ``.txt`` text model, read by ``lightgbm.Booster(model_file=...)``. Both
parsers build trees from data; neither runs code from the file.

A booster file knows its objective but not the scikit-learn wrapper it was trained with,
so the objective decides: ``binary:logistic``, ``multi:softprob``, ``multi:softmax``
(XGBoost) and ``binary``, ``multiclass``, ``multiclassova`` (LightGBM) are classifiers
with classes ``0..K-1`` (both libraries train on those labels) and answer ``predict`` and
``predict_proba`` exactly as the scikit-learn models do (``predict_proba`` is
``[rows, K]``, two columns for binary); every other objective answers ``predict`` with the
booster's own output. Missing values (NaN) are what trees handle natively, so NaN is
accepted and infinities are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kustos.runtime.server.models import Model, ModelLoadError, _check_finite, _single_input
from kustos.runtime.server.tensors import Array, ProtocolError, TensorSpec, datatype_of

XGBOOST_EXTENSIONS = (".ubj", ".json")
LIGHTGBM_EXTENSIONS = (".txt",)
XGBOOST_CLASSIFIERS = ("binary:logistic", "multi:softprob", "multi:softmax")
LIGHTGBM_CLASSIFIERS = ("binary", "multiclass", "multiclassova")
# LightGBM names features Column_0.. when it was given none: not names worth reporting.
_LGB_DEFAULT_NAME = re.compile(r"^Column_\d+$")


class BoosterModel(Model):
    """A gradient-boosted tree ensemble behind the same surface as SklearnModel."""

    library: str  # xgboost | lightgbm
    booster: Any
    objective: str
    n_features: int
    n_classes: int  # 0 for anything that is not a classifier
    feature_names: list[str] | None
    allow_nan = True

    def _init(self, name: str, version: str, platform: str) -> None:
        super().__init__(name=name, version=version, platform=platform,
                         inputs=[TensorSpec("input-0", "FP64", (-1, self.n_features))])
        self.default_outputs = ("predict",)
        if self.n_classes:
            self.methods: tuple[str, ...] = ("predict", "predict_proba")
            self.classes = list(range(self.n_classes))
            self.label_output = "predict"
        else:
            self.methods = ("predict",)

    # -- the library-specific part
    def _raw_predict(self, x: Array) -> Array:
        """What the booster itself predicts (probabilities for classifiers)."""
        raise NotImplementedError

    def margin(self, x: Array) -> Array:
        """The untransformed sum of tree outputs, [rows, K] (K = 1 for binary/regression):
        what SHAP's tree algorithm attributes exactly."""
        raise NotImplementedError

    # -- the Model surface
    def prepare(self, tensors: dict[str, Array]) -> dict[str, Array]:
        x = _single_input(self, tensors)
        if x.dtype.kind not in "biuf":
            raise ProtocolError(
                f"model {self.name!r} takes numbers, got {datatype_of(x.dtype)}", 422)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ProtocolError(
                f"input shape must be [-1, {self.n_features}], got {list(x.shape)}", 422)
        x = x.astype(np.float64, copy=False)
        _check_finite(x, True, self.inputs[0].name)
        return {self.inputs[0].name: x}

    def predict_proba(self, x: Array) -> Array:
        p = np.asarray(self._raw_predict(x), dtype=np.float64)
        if self.n_classes == 2 and p.ndim == 1:
            return np.column_stack([1.0 - p, p])
        return p.reshape(x.shape[0], self.n_classes)

    def predict(self, inputs: dict[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        x = inputs[self.inputs[0].name]
        result: dict[str, Array] = {}
        if not self.n_classes:
            if "predict_proba" in outputs:
                raise ProtocolError(f"model {self.name!r} is not a classifier", 400)
            return {"predict": np.asarray(self._raw_predict(x))}
        proba = self.predict_proba(x)
        for name in outputs:
            if name == "predict_proba":
                result[name] = proba
            elif name == "predict":
                # int64 labels 0..K-1: what the sklearn wrappers' predict returns.
                result[name] = np.argmax(proba, axis=1).astype(np.int64)
        return result

    def labels(self, outputs: dict[str, Array]) -> Array | None:
        if "predict" in outputs and self.n_classes:
            return outputs["predict"]
        proba = outputs.get("predict_proba")
        if proba is not None and proba.ndim == 2:
            found: Array = np.argmax(proba, axis=1)
            return found
        return None

    def warmup_inputs(self) -> dict[str, Array] | None:
        return {self.inputs[0].name: np.zeros((1, self.n_features), dtype=np.float64)}


# -------------------------------------------------------------------------- XGBoost


class XGBoostModel(BoosterModel):
    def __init__(self, path: Path, name: str, version: str, threads: int) -> None:
        xgb = _library("xgboost", "xgboost-cpu")

        if path.suffix.lower() not in XGBOOST_EXTENSIONS:
            raise ModelLoadError(
                f"xgboost models must be native .ubj or .json files, got {path.name}")
        try:
            # Booster(model_file=) parses the native JSON/UBJSON format; no pickle involved.
            booster = xgb.Booster(model_file=str(path))
            config = json.loads(booster.save_config())
            learner = config["learner"]
            objective = str(learner["objective"]["name"])
            num_class = int(learner["learner_model_param"].get("num_class", "0") or 0)
        except Exception as exc:
            raise ModelLoadError(
                f"{path.name} is not a loadable XGBoost model: {_first_line(exc)}") from None
        # Workers scale as processes; a thread pool per worker only adds contention.
        booster.set_param({"nthread": threads})
        self.library, self.booster, self.objective = "xgboost", booster, objective
        self.n_features = int(booster.num_features())
        self.feature_names = list(booster.feature_names) if booster.feature_names else None
        if objective == "binary:logistic":
            self.n_classes = 2
        elif objective in XGBOOST_CLASSIFIERS:
            self.n_classes = num_class
        else:
            self.n_classes = 0
        # The sklearn wrapper predicts with the trees up to best_iteration when early
        # stopping recorded one; the served model must agree with it.
        best = booster.attr("best_iteration")
        self._range = (0, int(best) + 1) if best is not None else (0, 0)
        self._init(name, version, f"xgboost-{xgb.__version__}")

    def _raw_predict(self, x: Array) -> Array:
        if self.objective == "multi:softmax":
            return _softmax(self.margin(x))
        out: Array = np.asarray(self.booster.inplace_predict(x, iteration_range=self._range))
        return out

    def margin(self, x: Array) -> Array:
        out = np.asarray(self.booster.inplace_predict(x, iteration_range=self._range,
                                                      predict_type="margin"),
                         dtype=np.float64)
        return out.reshape(x.shape[0], -1)


# ------------------------------------------------------------------------- LightGBM


class LightGBMModel(BoosterModel):
    def __init__(self, path: Path, name: str, version: str, threads: int) -> None:
        lgb = _library("lightgbm", "lightgbm")

        if path.suffix.lower() not in LIGHTGBM_EXTENSIONS:
            raise ModelLoadError(
                f"lightgbm models must be native text (.txt) files, got {path.name}")
        objective = _lightgbm_objective(path)
        try:
            booster = lgb.Booster(model_file=str(path))
        except Exception as exc:
            raise ModelLoadError(
                f"{path.name} is not a loadable LightGBM model: {_first_line(exc)}") from None
        self.library, self.booster, self.objective = "lightgbm", booster, objective
        self._threads = threads
        self.n_features = int(booster.num_feature())
        names = [str(n) for n in booster.feature_name()]
        self.feature_names = None if all(_LGB_DEFAULT_NAME.match(n) for n in names) else names
        if objective == "binary":
            self.n_classes = 2
        elif objective in LIGHTGBM_CLASSIFIERS:
            self.n_classes = int(booster.num_model_per_iteration())
        else:
            self.n_classes = 0
        self._init(name, version, f"lightgbm-{lgb.__version__}")

    def _raw_predict(self, x: Array) -> Array:
        out: Array = np.asarray(self.booster.predict(x, num_threads=self._threads))
        return out

    def margin(self, x: Array) -> Array:
        out = np.asarray(self.booster.predict(x, raw_score=True, num_threads=self._threads),
                         dtype=np.float64)
        return out.reshape(x.shape[0], -1)


def _lightgbm_objective(path: Path) -> str:
    """The objective's name from the text model's header ("objective=multiclass num_class:3")."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh):
                if line.startswith("objective="):
                    parts = line[len("objective="):].split()
                    return parts[0] if parts else ""
                if line.startswith("Tree=") or n > 10_000:
                    break
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    raise ModelLoadError(f"{path.name} is not a LightGBM text model (no objective= line)")


# ------------------------------------------------------------------------- helpers


def _library(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # also a missing libgomp.so.1 (OpenMP) under lightgbm
        raise ModelLoadError(
            f"cannot import {module} ({_first_line(exc)}): install kustos[serve] "
            f"(package {package})") from None


def _softmax(z: Array) -> Array:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: Array = e / e.sum(axis=1, keepdims=True)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def load_booster(kind: str, path: Path, name: str, version: str, threads: int) -> BoosterModel:
    if kind == "xgboost":
        return XGBoostModel(path, name, version, threads)
    return LightGBMModel(path, name, version, threads)
