"""MLflow models (``format: mlflow``): an ``MLmodel`` directory, or a .tar/.tar.gz/.tgz/.zip
archive of one, served through the native loaders of models.py and boosters.py.

Only the MLmodel file (YAML, read with ``safe_load``) and the chosen flavour's data file
are read; MLflow itself is not imported and ``python_function`` code is never run.
Flavours, in the order tried: ``onnx`` (onnxruntime), ``xgboost`` (native .ubj/.json; the
``xgb`` format is UBJSON as XGBoost 3 writes it), ``lightgbm`` (the Booster's native text
model, or the scikit-learn wrapper stored as skops with a fixed allow-list of LightGBM
types) and ``sklearn`` (skops, with the usual allow-list). Pickle and cloudpickle data
files are refused unless a digest is pinned: the archive's sha256 for an archive, the data
file's for a directory. The ``signature`` becomes V2 metadata: column names and types on
the input, the raw signature under ``parameters.signature``; a column-based signature also
lets a request send one input per column (MLServer's way), stacked in signature order.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from kustos.runtime.server.models import (
    Model,
    ModelLoadError,
    OnnxModel,
    SklearnModel,
    file_sha256,
    load_skops,
)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
FLAVOURS = ("onnx", "xgboost", "lightgbm", "sklearn")
PICKLE_FORMATS = ("pickle", "cloudpickle")
# What a LightGBM scikit-learn wrapper saved with skops may contain, beyond skops' own
# trusted set and models.TRUSTED_MODULE_PREFIXES. Ours, never read from the MLmodel file.
LIGHTGBM_SKOPS_TYPES = ("lightgbm.sklearn.LGBMClassifier", "lightgbm.sklearn.LGBMRegressor",
                        "lightgbm.sklearn.LGBMRanker", "lightgbm.basic.Booster",
                        "collections.OrderedDict")
# Bounds on what an archive may unpack to (the pod's /tmp is a small emptyDir).
MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 8 << 30

# MLflow column types and tensor dtypes -> V2 datatypes.
COLUMN_TYPES = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32",
                "double": "FP64", "string": "BYTES", "binary": "BYTES", "datetime": "BYTES"}
TENSOR_DTYPES = {"bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32",
                 "int64": "INT64", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                 "uint64": "UINT64", "float16": "FP16", "float32": "FP32", "float64": "FP64",
                 "str": "BYTES", "object": "BYTES", "bytes": "BYTES"}


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def looks_like_mlflow(path: Path) -> bool:
    """An MLmodel directory, or a fetch directory holding one (no --format needed)."""
    return path.is_dir() and (path / "MLmodel").is_file()


def load_mlflow(path: Path, name: str, version: str, digest_hex: str | None,
                trusted_types: Iterable[str] = (), threads: int = 1) -> Model:
    """The model behind an MLmodel directory or archive (not yet warmed up)."""
    source = _source(path)
    if not source.exists():
        raise ModelLoadError(f"MLflow model {source} does not exist")
    scratch = Path(tempfile.mkdtemp(prefix="kustos-mlflow-"))
    try:
        if source.is_dir():
            root = source
        else:
            if not is_archive(source):
                raise ModelLoadError(
                    f"an MLflow model must be an MLmodel directory or a "
                    f"{'/'.join(ARCHIVE_SUFFIXES)} archive of one, got {source.name}")
            if digest_hex is not None:
                actual = file_sha256(source)
                if actual != digest_hex:
                    raise ModelLoadError(f"digest mismatch for {source}: expected "
                                         f"sha256:{digest_hex}, got sha256:{actual}")
            root = _unpack(source, scratch / "model")
            # The archive's digest covers every file in it.
            digest_hex = "verified" if digest_hex is not None else None
        spec = _read_mlmodel(root)
        model = _load_flavour(root, spec, name, version, digest_hex, trusted_types, threads,
                              scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # every loader has read its file by now
    _apply_signature(model, spec.get("signature"))
    model.platform = f"mlflow/{model.platform}"
    return model


def _source(path: Path) -> Path:
    """A fetch directory holding exactly one archive stands for that archive."""
    if path.is_dir() and not (path / "MLmodel").is_file():
        found = [p for p in sorted(path.iterdir()) if is_archive(p)]
        if len(found) != 1:
            raise ModelLoadError(f"{path} holds no MLmodel file and not exactly one archive "
                                 f"({'/'.join(ARCHIVE_SUFFIXES)}) of an MLflow model")
        return found[0]
    return path


# -------------------------------------------------------------------------- archives


def _unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir()
    try:
        if archive.name.lower().endswith(".zip"):
            _unzip(archive, dest)
        else:
            _untar(archive, dest)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelLoadError(f"cannot unpack {archive.name}: {exc}") from None
    if (dest / "MLmodel").is_file():
        return dest
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    # `tar czf model.tgz my_model/`: the MLmodel directory one level down.
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "MLmodel").is_file():
        return entries[0]
    raise ModelLoadError(f"{archive.name} holds no MLmodel file at its top level "
                         "or in its single top-level directory")


def _untar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        _check_sizes(archive, len(members), sum(m.size for m in members))
        for m in members:
            if not (m.isfile() or m.isdir()):
                raise ModelLoadError(
                    f"{archive.name}: {m.name!r} is not a regular file or directory")
            pure = PurePosixPath(m.name)
            if pure.is_absolute() or ".." in pure.parts:
                raise ModelLoadError(f"{archive.name}: refusing member {m.name!r}")
        # The "data" filter refuses absolute names, '..' and anything leaving dest; the
        # images' Python (Debian bookworm's 3.11.2) predates extraction filters (3.11.4),
        # where the checks above (regular files and directories, no absolute or '..'
        # names) are what keeps the members inside dest.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def _unzip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_sizes(archive, len(infos), sum(i.file_size for i in infos))
        for info in infos:
            mode = info.external_attr >> 16
            pure = PurePosixPath(info.filename)
            if (pure.is_absolute() or ".." in pure.parts or "\\" in info.filename
                    or (mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)))):
                raise ModelLoadError(f"{archive.name}: refusing member {info.filename!r}")
        zf.extractall(dest)


def _check_sizes(archive: Path, members: int, size: int) -> None:
    if members > MAX_MEMBERS or size > MAX_UNPACKED_BYTES:
        raise ModelLoadError(f"{archive.name} unpacks to {members} files, {size} bytes: over "
                             f"the limit of {MAX_MEMBERS} files, {MAX_UNPACKED_BYTES} bytes")


# -------------------------------------------------------------------------- flavours


def _read_mlmodel(root: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load((root / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {root / 'MLmodel'}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("flavors"), dict):
        raise ModelLoadError(f"{root / 'MLmodel'} has no 'flavors' mapping")
    return spec


def _data_file(root: Path, flavour: str, conf: dict[str, Any], key: str,
               digest_hex: str | None) -> Path:
    value = conf.get(key)
    if not isinstance(value, str) or not value:
        raise ModelLoadError(f"MLmodel flavour {flavour!r} names no data file ({key!r})")
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts:
        raise ModelLoadError(f"MLmodel flavour {flavour!r}: data file {value!r} is outside "
                             "the model directory")
    path = root / pure
    if not path.is_file():
        raise ModelLoadError(f"MLmodel flavour {flavour!r}: data file {value!r} is missing")
    if digest_hex not in (None, "verified"):  # a directory: the digest pins the data file
        actual = file_sha256(path)
        if actual != digest_hex:
            raise ModelLoadError(f"digest mismatch for {path}: expected sha256:{digest_hex}, "
                                 f"got sha256:{actual}")
    return path


def _as(scratch: Path, file: Path, suffix: str) -> Path:
    """``file`` under a name with the suffix the native loader reads it by."""
    if file.suffix.lower() == suffix:
        return file
    link = scratch / f"data{suffix}"
    os.symlink(file.resolve(), link)
    return link


def _pinned(file: Path, digest_hex: str | None, flavour: str, fmt: str) -> None:
    """Pickled data is loaded only under a digest (checked already: the archive's, or for
    a directory the data file's own)."""
    if digest_hex is None:
        raise ModelLoadError(
            f"refusing to unpickle {file.name} (MLflow flavour {flavour}, "
            f"serialization_format {fmt}) without --digest: unpickling runs arbitrary code; "
            "pin the sha256 (of the archive, or of the data file for a directory) "
            "or save the model with serialization_format='skops'")


def _version(module: str) -> str:
    import importlib

    return str(getattr(importlib.import_module(module), "__version__", "?"))


def _unpickle(file: Path) -> Any:
    with warnings.catch_warnings(), open(file, "rb") as fh:
        warnings.simplefilter("ignore")
        return pickle.load(fh)  # only reached under a matching digest


def _load_flavour(root: Path, spec: dict[str, Any], name: str, version: str,
                  digest_hex: str | None, trusted_types: Iterable[str], threads: int,
                  scratch: Path) -> Model:
    flavours = spec["flavors"]
    chosen = next((f for f in FLAVOURS if isinstance(flavours.get(f), dict)), None)
    if chosen is None:
        raise ModelLoadError(
            f"MLmodel flavours {sorted(map(str, flavours))}: kustos serves MLflow models "
            f"of flavour {', '.join(FLAVOURS)}")
    conf: dict[str, Any] = flavours[chosen]
    if chosen == "onnx":
        return OnnxModel(_data_file(root, chosen, conf, "data", digest_hex), name, version,
                         threads)
    if chosen == "xgboost":
        from kustos.runtime.server.boosters import XGBoostModel

        file = _data_file(root, chosen, conf, "data", digest_hex)
        fmt = str(conf.get("model_format") or file.suffix.lstrip(".")).lower()
        if fmt not in ("ubj", "json", "xgb"):
            raise ModelLoadError(f"MLflow xgboost model_format {fmt!r} is not served "
                                 "(native ubj, json or xgb only)")
        # XGBoost 3 writes model_format "xgb" as UBJSON.
        return XGBoostModel(_as(scratch, file, ".json" if fmt == "json" else ".ubj"),
                            name, version, threads)
    if chosen == "lightgbm":
        file = _data_file(root, chosen, conf, "data", digest_hex)
        suffix = file.suffix.lower()
        fmt = str(conf.get("serialization_format") or "").lower()
        # A native Booster is saved as its text model (model.lgb) whatever
        # serialization_format says; the scikit-learn wrappers as skops or pickle.
        if conf.get("model_class") == "lightgbm.basic.Booster" or suffix in (".lgb", ".txt"):
            from kustos.runtime.server.boosters import LightGBMModel

            return LightGBMModel(_as(scratch, file, ".txt"), name, version, threads)
        if suffix == ".skops":
            est = load_skops(file, (*LIGHTGBM_SKOPS_TYPES, *trusted_types))
            model = SklearnModel(est, name, version)
            model.platform = f"lightgbm-{_version('lightgbm')}"
            return model
        if suffix in (".pkl", ".pickle") or fmt in PICKLE_FORMATS:
            _pinned(file, digest_hex, chosen, fmt or "pickle")
            return SklearnModel(_unpickle(file), name, version)
        raise ModelLoadError(f"MLflow lightgbm data file {file.name} is not served "
                             "(native text .lgb/.txt, skops, or pickle with a digest)")
    file = _data_file(root, chosen, conf, "pickled_model", digest_hex)
    fmt = str(conf.get("serialization_format") or "cloudpickle").lower()
    if fmt == "skops":
        return SklearnModel(load_skops(file, trusted_types), name, version)
    if fmt in PICKLE_FORMATS:
        _pinned(file, digest_hex, chosen, fmt)
        return SklearnModel(_unpickle(file), name, version)
    raise ModelLoadError(f"MLflow sklearn serialization_format {fmt!r} is not served "
                         "(skops, or pickle/cloudpickle with a digest)")


# -------------------------------------------------------------------------- signature


def _signature_part(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise ModelLoadError("MLmodel signature is not valid JSON") from None
    if not isinstance(parsed, list) or not all(isinstance(x, dict) for x in parsed):
        raise ModelLoadError("MLmodel signature inputs/outputs must be lists of objects")
    return parsed


def _datatype(entry: dict[str, Any]) -> str | None:
    if entry.get("type") == "tensor":
        tspec = entry.get("tensor-spec")
        return TENSOR_DTYPES.get(str(tspec.get("dtype"))) if isinstance(tspec, dict) else None
    return COLUMN_TYPES.get(str(entry.get("type")))


def _apply_signature(model: Model, signature: Any) -> None:
    if not isinstance(signature, dict):
        return
    inputs = _signature_part(signature.get("inputs"))
    outputs = _signature_part(signature.get("outputs"))
    model.extra_parameters["signature"] = {"inputs": inputs, "outputs": outputs}
    if not inputs or len(model.inputs) != 1:
        return
    columns = [c for c in inputs if c.get("type") != "tensor" and isinstance(c.get("name"), str)]
    if len(columns) != len(inputs):
        return
    spec = model.inputs[0]
    width = spec.shape[1] if len(spec.shape) == 2 else -1
    if width not in (-1, len(columns)):
        raise ModelLoadError(f"the MLmodel signature has {len(columns)} columns, "
                             f"the model takes {width} features")
    described = [{"name": c["name"], "type": c.get("type"), "datatype": _datatype(c)}
                 for c in columns]
    types = {d["datatype"] for d in described}
    datatype = spec.datatype
    # The numeric type the columns share, for models that take any numbers (not ONNX,
    # whose input type is fixed by the graph).
    if not isinstance(model, OnnxModel) and len(types) == 1:
        only = types.pop()
        if only not in (None, "BYTES"):
            datatype = str(only)
    model.inputs = [replace(spec, datatype=datatype, shape=(-1, len(columns)),
                            parameters={"columns": described})]
    model.columns = tuple(str(c["name"]) for c in columns)

