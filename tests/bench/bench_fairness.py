"""fairness_report (metrics on (slice, label, prediction) combinations weighted by their
counts) against fairlearn's MetricFrame on the rows themselves, side by side, on the same
random binary labels with one sensitive feature of 5 values. Prints seconds, the ratio,
and checks that both give the same slice figures and gaps.

    nice .venv/bin/python tests/bench/bench_fairness.py [--rows 10000 100000 200000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from kustos.runtime.truth.fairness import FairnessConfig, fairness_report


def per_row(yt: np.ndarray, yp: np.ndarray, s: np.ndarray) -> dict[str, object]:
    frame = MetricFrame(metrics={"accuracy": accuracy_score, "selectionRate": selection_rate,
                                 "truePositiveRate": true_positive_rate,
                                 "falsePositiveRate": false_positive_rate},
                        y_true=yt, y_pred=yp, sensitive_features=s)
    return {"slices": frame.by_group.to_dict(orient="index"),
            "accuracyGap": float(frame.difference()["accuracy"]),
            "demographicParityDifference": demographic_parity_difference(
                yt, yp, sensitive_features=s),
            "equalizedOddsDifference": equalized_odds_difference(yt, yp, sensitive_features=s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 200_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cfg = FairnessConfig.from_spec({"sensitiveFeatures": [{"name": "g"}], "minSliceSize": 1})
    print(f"{'rows':>9} {'fairness_report s':>18} {'MetricFrame per row s':>22} {'ratio':>7}")
    for n in args.rows:
        yt, yp = rng.integers(0, 2, n), rng.integers(0, 2, n)
        s = rng.integers(0, 5, n).astype(str)
        began = time.perf_counter()
        ours = fairness_report(yt.tolist(), yp.tolist(), {"g": s.tolist()}, cfg)
        ours_s = time.perf_counter() - began
        began = time.perf_counter()
        theirs = per_row(yt, yp, s)
        theirs_s = time.perf_counter() - began
        feature = ours["features"]["g"]
        for key in ("accuracyGap", "demographicParityDifference", "equalizedOddsDifference"):
            assert abs(feature[key] - float(theirs[key])) < 1e-9, key  # type: ignore[arg-type]
        for name, figures in theirs["slices"].items():  # type: ignore[attr-defined]
            for metric, value in figures.items():
                assert abs(feature["slices"][name][metric] - value) < 1e-9, (name, metric)
        print(f"{n:>9} {ours_s:>18.3f} {theirs_s:>22.3f} {theirs_s / ours_s:>6.1f}x")


if __name__ == "__main__":
    main()
