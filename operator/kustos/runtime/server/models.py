"""Loading a model file safely and calling it with validated numpy inputs.

Formats: ``.skops`` (sklearn via skops with an explicit allow-list of types), ``.joblib`` /
``.pkl`` (sklearn via pickle: only when a digest is pinned and matches, because unpickling
runs code), ``.onnx`` (onnxruntime), ``.ubj`` / ``.json`` (XGBoost's native formats) and
``.txt`` (LightGBM's text model); the last two in boosters.py. MLflow ``MLmodel``
directories and archives of them (format ``mlflow``) are read by mlflow_models.py through
these same loaders. Every model exposes the
same small surface: tensor specs for metadata, ``prepare`` (request tensors -> model
inputs, raising 422 on what the model cannot take) and ``predict`` (a batch of rows ->
named outputs).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kustos.runtime.server.formats import FORMATS
from kustos.runtime.server.tensors import Array, ProtocolError, TensorSpec, datatype_of

log = logging.getLogger("kustos.serve")

EXTENSIONS = {".skops": "sklearn", ".joblib": "sklearn", ".pkl": "sklearn", ".pickle": "sklearn",
              ".onnx": "onnx", ".ubj": "xgboost", ".json": "xgboost", ".txt": "lightgbm"}
PICKLE_EXTENSIONS = (".joblib", ".pkl", ".pickle")
# Modules whose types a .skops file may contain. skops already trusts builtins and a core
# set; anything else reported by get_untrusted_types must start with one of these.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.", "scipy.special.")


class ModelLoadError(Exception):
    """The model cannot be loaded; the message is one clear line for the pod log."""


@dataclass
class Model:
    """A loaded model as the protocols see it."""

    name: str
    version: str
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec] = field(default_factory=list)
    default_outputs: tuple[str, ...] = ()
    classes: list[Any] | None = None
    # Name of the output whose values are class labels, for kustos_predictions_total.
    label_output: str | None = None
    load_seconds: float = 0.0
    # Model-level metadata parameters beyond classes (an MLflow model's signature).
    extra_parameters: dict[str, Any] = field(default_factory=dict)
    # Column names of a one-input model whose columns may also come as separate inputs.
    columns: tuple[str, ...] | None = None

    @property
    def output_names(self) -> frozenset[str]:
        return frozenset(o.name for o in self.outputs)

    def prepare(self, tensors: dict[str, Array]) -> dict[str, Array]:
        raise NotImplementedError

    def predict(self, inputs: dict[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        raise NotImplementedError

    def warmup_inputs(self) -> dict[str, Array] | None:
        raise NotImplementedError

    def labels(self, outputs: dict[str, Array]) -> Array | None:
        """Predicted class labels of a batch, if this is a classifier."""
        if self.label_output and self.label_output in outputs:
            return outputs[self.label_output]
        return None

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }
        params = dict(self.extra_parameters)
        if self.classes is not None:
            params["classes"] = self.classes
        if params:
            meta["parameters"] = params
        return meta


def _single_input(model: Model, tensors: dict[str, Array]) -> Array:
    spec = model.inputs[0]
    if spec.name in tensors:
        return tensors[spec.name]
    if len(tensors) == 1:  # one-input models accept any name, as KServe and MLServer do
        return next(iter(tensors.values()))
    if model.columns and set(tensors) == set(model.columns):
        return _stack_columns(model.columns, tensors)
    raise ProtocolError(
        f"model {model.name!r} takes one input {spec.name!r}, got {sorted(tensors)}", 422
    )


def _stack_columns(columns: tuple[str, ...], tensors: dict[str, Array]) -> Array:
    """One input per column ([rows] or [rows, 1] each) -> the [rows, columns] matrix."""
    parts = []
    for name in columns:
        col = tensors[name]
        if col.ndim == 2 and col.shape[1] == 1:
            col = col[:, 0]
        if col.ndim != 1:
            raise ProtocolError(
                f"column input {name!r} must have shape [rows] or [rows, 1], "
                f"got {list(col.shape)}", 422)
        if col.dtype.kind not in "biuf":
            raise ProtocolError(f"column input {name!r} must hold numbers", 422)
        parts.append(col)
    if len({len(p) for p in parts}) != 1:
        raise ProtocolError("column inputs must all have the same number of rows", 422)
    return np.column_stack(parts)


def _check_finite(x: Array, allow_nan: bool, name: str) -> None:
    if x.dtype.kind != "f" or x.size == 0:
        return
    if allow_nan:
        if np.isinf(x).any():
            raise ProtocolError(f"input {name!r} contains infinite values", 422)
    elif not np.isfinite(x).all():
        raise ProtocolError(f"input {name!r} contains NaN or infinite values", 422)


# -------------------------------------------------------------------------- sklearn


class SklearnModel(Model):
    def __init__(self, estimator: Any, name: str, version: str) -> None:
        import sklearn
        from sklearn.base import is_classifier

        if not hasattr(estimator, "predict"):
            raise ModelLoadError(f"{type(estimator).__name__} has no predict method")
        n = getattr(estimator, "n_features_in_", None)
        self.n_features: int | None = int(n) if n is not None else None
        super().__init__(
            name=name,
            version=version,
            platform=f"sklearn-{sklearn.__version__}",
            inputs=[TensorSpec("input-0", "FP64", (-1, self.n_features or -1))],
        )
        self.estimator = estimator
        self.allow_nan = _allows_nan(estimator)
        methods = ["predict"]
        if hasattr(estimator, "predict_proba"):
            methods.append("predict_proba")
        self.methods = tuple(methods)
        self.default_outputs = ("predict",)
        if is_classifier(estimator) and hasattr(estimator, "classes_"):
            classes = np.asarray(estimator.classes_)
            if classes.ndim == 1:
                self.classes = classes.tolist()
                self.label_output = "predict"
        self._proba_argmax = _predict_is_proba_argmax(estimator)

    def prepare(self, tensors: dict[str, Array]) -> dict[str, Array]:
        x = _single_input(self, tensors)
        if x.dtype.kind not in "biuf":
            raise ProtocolError(
                f"model {self.name!r} takes numbers, got {datatype_of(x.dtype)}", 422)
        if x.ndim != 2 or (self.n_features is not None and x.shape[1] != self.n_features):
            want = f"[-1, {self.n_features}]" if self.n_features is not None else "[rows, features]"
            raise ProtocolError(f"input shape must be {want}, got {list(x.shape)}", 422)
        x = x.astype(np.float64, copy=False)
        _check_finite(x, self.allow_nan, self.inputs[0].name)
        return {self.inputs[0].name: x}

    def predict(self, inputs: dict[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        x = inputs[self.inputs[0].name]
        result: dict[str, Array] = {}
        if "predict_proba" in outputs:
            result["predict_proba"] = np.asarray(self.estimator.predict_proba(x))
            if "predict" in outputs and self._proba_argmax:
                # The forest's own predict is exactly this; skip computing the trees twice.
                result["predict"] = self.estimator.classes_.take(
                    np.argmax(result["predict_proba"], axis=1), axis=0
                )
        if "predict" in outputs and "predict" not in result:
            result["predict"] = np.asarray(self.estimator.predict(x))
        if len(result) > 1 and next(iter(result)) != outputs[0]:
            result = {k: result[k] for k in outputs}  # answer in the order asked
        return result

    def labels(self, outputs: dict[str, Array]) -> Array | None:
        if "predict" in outputs:
            return outputs["predict"]
        proba = outputs.get("predict_proba")
        if proba is not None and self.classes is not None and proba.ndim == 2:
            labels: Array = np.asarray(self.estimator.classes_).take(np.argmax(proba, axis=1))
            return labels
        return None

    def warmup_inputs(self) -> dict[str, Array] | None:
        if self.n_features is None:
            return None
        return {self.inputs[0].name: np.zeros((1, self.n_features), dtype=np.float64)}


def _allows_nan(estimator: Any) -> bool:
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(estimator).input_tags.allow_nan)
    except Exception:  # older sklearn or a foreign estimator: be conservative
        return False


def _predict_is_proba_argmax(estimator: Any) -> bool:
    try:
        from sklearn.ensemble._forest import ForestClassifier
    except ImportError:  # pragma: no cover - private path moved
        return False
    return (
        isinstance(estimator, ForestClassifier)
        and type(estimator).predict is ForestClassifier.predict
        and getattr(estimator, "n_outputs_", 1) == 1
    )


def load_skops(path: Path, extra_trusted: Iterable[str] = ()) -> Any:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a valid .skops file: {exc}") from None
    allowed = set(extra_trusted)
    refused = [t for t in untrusted
               if t not in allowed and not t.startswith(TRUSTED_MODULE_PREFIXES)]
    if refused:
        raise ModelLoadError(
            f"{path} contains types outside the allow-list: {', '.join(sorted(refused))} "
            "(add them with --trust-type only if you trust their code)"
        )
    # Trusting exactly the reported types we just vetted, never trusted=True.
    return sio.load(path, trusted=list(untrusted))


def load_pickle(path: Path, digest_hex: str | None) -> Any:
    if digest_hex is None:
        raise ModelLoadError(
            f"refusing to unpickle {path.name} without --digest: unpickling runs arbitrary code; "
            "pin the file's sha256 or use .skops/.onnx"
        )
    # The caller already verified the digest; this is only reached with a matching file.
    import joblib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return joblib.load(path)


# ----------------------------------------------------------------------------- ONNX

_ONNX_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


class OnnxModel(Model):
    def __init__(self, path: Path, name: str, version: str, threads: int) -> None:
        import onnxruntime as ort

        from kustos.runtime.server.tensors import DATATYPES

        opts = ort.SessionOptions()
        # Small tabular models: one intra-op thread is faster than a pool, and workers
        # scale across cores as processes.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc}") from None
        ins = []
        for i in self.session.get_inputs():
            dt = _ONNX_TYPES.get(i.type)
            if dt is None:
                raise ModelLoadError(f"ONNX input {i.name!r} has unsupported type {i.type}")
            shape = tuple(d if isinstance(d, int) else -1 for d in i.shape)
            ins.append(TensorSpec(i.name, dt, shape))
        super().__init__(name=name, version=version,
                         platform=f"onnxruntime-{ort.__version__}", inputs=ins)
        self._dtypes = {t.name: DATATYPES[t.datatype] for t in ins}
        self._zipmap: set[str] = set()
        outs = []
        for o in self.session.get_outputs():
            if o.type.startswith("seq(map("):  # skl2onnx's ZipMap: list of {class: prob}
                self._zipmap.add(o.name)
                outs.append(TensorSpec(o.name, "FP32", (-1, -1)))
                continue
            dt = _ONNX_TYPES.get(o.type, "BYTES")
            shape = tuple(d if isinstance(d, int) else -1 for d in (o.shape or []))
            outs.append(TensorSpec(o.name, dt, shape))
        self.outputs = outs
        self.default_outputs = tuple(o.name for o in outs)
        for o in outs:
            if "label" in o.name.lower() and len(o.shape) <= 1:
                self.label_output = o.name
                break

    def prepare(self, tensors: dict[str, Array]) -> dict[str, Array]:
        if len(self.inputs) == 1:
            tensors = {self.inputs[0].name: _single_input(self, tensors)}
        missing = [t.name for t in self.inputs if t.name not in tensors]
        extra = sorted(set(tensors) - {t.name for t in self.inputs})
        if missing or extra:
            raise ProtocolError(
                f"model {self.name!r} takes inputs {[t.name for t in self.inputs]}, "
                f"got {sorted(tensors)}", 422)
        feeds: dict[str, Array] = {}
        for spec in self.inputs:
            x = tensors[spec.name]
            want = self._dtypes[spec.name]
            if len(spec.shape) != x.ndim or any(
                d != -1 and d != s for d, s in zip(spec.shape, x.shape, strict=True)
            ):
                raise ProtocolError(
                    f"input {spec.name!r} must have shape {list(spec.shape)}, got {list(x.shape)}",
                    422)
            if want.kind == "O":
                if x.dtype.kind != "O":
                    raise ProtocolError(f"input {spec.name!r} takes BYTES", 422)
                x = np.array([v.decode() if isinstance(v, bytes) else v for v in x.reshape(-1)],
                             dtype=object).reshape(x.shape)
            elif x.dtype != want:
                if x.dtype.kind == "O" or (x.dtype.kind == "f" and want.kind in "iub"):
                    raise ProtocolError(
                        f"input {spec.name!r} takes {spec.datatype}, "
                        f"got {datatype_of(x.dtype)}", 422)
                with np.errstate(over="ignore"):
                    x = x.astype(want)
            _check_finite(x, False, spec.name)
            feeds[spec.name] = x
        return feeds

    def predict(self, inputs: dict[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        names = list(outputs)
        values = self.session.run(names, inputs)
        result: dict[str, Array] = {}
        for name, value in zip(names, values, strict=True):
            if name in self._zipmap:
                keys = sorted(value[0]) if value else []
                result[name] = np.array([[row[k] for k in keys] for row in value],
                                        dtype=np.float32).reshape(len(value), len(keys))
            else:
                result[name] = np.asarray(value)
        return result

    def warmup_inputs(self) -> dict[str, Array] | None:
        feeds: dict[str, Array] = {}
        for spec in self.inputs:
            shape = tuple(1 if d == -1 else d for d in spec.shape)
            dtype = self._dtypes[spec.name]
            if dtype.kind == "O":
                arr = np.empty(shape, dtype=object)
                arr.fill("")
                feeds[spec.name] = arr
            else:
                feeds[spec.name] = np.zeros(shape, dtype=dtype)
        return feeds


# --------------------------------------------------------------------------- loading


def infer_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise ModelLoadError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise ModelLoadError(
            f"cannot tell the format of {path.name}: use .skops, .joblib, .pkl, .onnx, "
            ".ubj/.json (xgboost), .txt (lightgbm), an MLmodel directory or a "
            ".tar.gz/.tgz/.tar/.zip of one (mlflow), or pass --format")
    return found


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def resolve_model_file(path: Path) -> Path:
    """A directory (the fetch emptyDir) holding exactly one model file is accepted too."""
    if path.is_dir():
        found = [p for p in sorted(path.iterdir()) if p.suffix.lower() in EXTENSIONS]
        if len(found) != 1:
            raise ModelLoadError(f"{path} must hold exactly one model file, found {len(found)}")
        return found[0]
    return path


def load_model(
    path: str | os.PathLike[str],
    name: str,
    version: str = "1",
    fmt: str | None = None,
    digest: str | None = None,
    trusted_types: Iterable[str] = (),
    onnx_threads: int = 1,
) -> Model:
    """Load, verify, and warm up a model. Raises :class:`ModelLoadError`."""
    from kustos.runtime.fetch import parse_digest

    started = time.perf_counter()
    source = Path(path)
    if fmt == "mlflow" or (fmt is None and _mlflow_source(source)):
        from kustos.runtime.server.mlflow_models import load_mlflow

        try:
            pinned = parse_digest(digest) if digest else None
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        served = load_mlflow(source, name, version, pinned, trusted_types, onnx_threads)
        _warm_up(served)
        served.load_seconds = time.perf_counter() - started
        return served
    file = resolve_model_file(source)
    if not file.is_file():
        raise ModelLoadError(f"model file {file} does not exist")
    try:
        digest_hex = parse_digest(digest) if digest else None
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    if digest_hex is not None:
        actual = file_sha256(file)
        if actual != digest_hex:
            raise ModelLoadError(
                f"digest mismatch for {file}: expected sha256:{digest_hex}, got sha256:{actual}")
    kind = infer_format(file, fmt)
    model: Model
    if kind == "onnx":
        model = OnnxModel(file, name, version, onnx_threads)
    elif kind in ("xgboost", "lightgbm"):
        from kustos.runtime.server.boosters import load_booster

        model = load_booster(kind, file, name, version, onnx_threads)
    else:
        suffix = file.suffix.lower()
        if suffix in PICKLE_EXTENSIONS:
            estimator = load_pickle(file, digest_hex)
        elif suffix == ".skops":
            estimator = load_skops(file, trusted_types)
        else:
            raise ModelLoadError(f"sklearn models must be .skops, .joblib or .pkl, got {file.name}")
        model = SklearnModel(estimator, name, version)
    _warm_up(model)
    model.load_seconds = time.perf_counter() - started
    return model


def _mlflow_source(path: Path) -> bool:
    """Without --format: an MLmodel directory or an archive (only MLflow models are)."""
    from kustos.runtime.server.mlflow_models import is_archive, looks_like_mlflow

    return looks_like_mlflow(path) or (path.is_file() and is_archive(path))


def _warm_up(model: Model) -> None:
    """One real prediction; output specs are read off its result (dim 0 -> -1)."""
    feeds = model.warmup_inputs()
    names: tuple[str, ...] = getattr(model, "methods", model.default_outputs)
    if feeds is None:
        log.warning("model %s: input width unknown, skipping warm-up", model.name)
        model.outputs = model.outputs or [TensorSpec(n, "FP64", (-1,)) for n in names]
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.predict(feeds, names)
    except Exception as exc:
        raise ModelLoadError(f"warm-up prediction failed: {type(exc).__name__}: {exc}") from None
    specs = {o.name: o for o in model.outputs}
    model.outputs = [
        TensorSpec(n, specs[n].datatype if n in specs else datatype_of(arr.dtype),
                   (-1, *arr.shape[1:]) if arr.ndim else ())
        for n, arr in out.items()
    ]
