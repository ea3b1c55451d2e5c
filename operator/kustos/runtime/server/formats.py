"""The model formats `kustos serve` and `kustos explain` load: one list for the loaders and
for both command lines (which must not import the numeric stack to parse their flags)."""

from __future__ import annotations

FORMATS = ("sklearn", "onnx", "xgboost", "lightgbm", "mlflow")
