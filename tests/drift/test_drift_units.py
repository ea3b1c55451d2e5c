"""The sidecar's pure parts, in the main venv (no alibi-detect needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kustos.runtime.drift.app import decode_rows
from kustos.runtime.drift.detectors import drifting_mask
from kustos.runtime.drift.reference import ReferenceProblem, load
from kustos.runtime.drift.window import Window
from kustos.runtime.server.tensors import ProtocolError


def test_window_closes_at_size_and_carries_the_rest_over() -> None:
    now = [0.0]
    w = Window(size=10, max_age=5, min_rows=4, clock=lambda: now[0])
    assert w.add(np.zeros((7, 2))) == []
    closed = w.add(np.ones((25, 2)))
    assert [len(c) for c in closed] == [10, 10, 10] and w.rows == 2
    assert closed[0][:7].sum() == 0 and closed[0][7:].sum() == 6


def test_window_closes_by_age_only_with_min_rows() -> None:
    now = [0.0]
    w = Window(size=100, max_age=5, min_rows=4, clock=lambda: now[0])
    w.add(np.zeros((3, 2)))
    now[0] = 10
    assert w.expire() is None  # old, but too small
    w.add(np.zeros((1, 2)))
    closed = w.expire()
    assert closed is not None and len(closed) == 4 and w.rows == 0 and w.opened_at is None
    now[0] = 100
    assert w.expire() is None  # an empty window never closes


def test_drifting_features_follow_the_correction() -> None:
    p = np.array([0.001, 0.02, 0.5, 0.013])
    assert drifting_mask(p, 0.05, "bonferroni").tolist() == [True, False, False, False]
    # Benjamini-Hochberg: 0.001 < .0125, 0.013 < .025, 0.02 < .0375 -> three features
    assert drifting_mask(p, 0.05, "fdr").tolist() == [True, True, False, True]
    assert not drifting_mask(np.array([0.9, 0.8]), 0.05, "fdr").any()


def test_decode_rows_checks_feature_count_and_orders_named_columns() -> None:
    names = ["a", "b"]
    body = (b'{"inputs":[{"name":"b","datatype":"FP32","shape":[2],"data":[3,4]},'
            b'{"name":"a","datatype":"INT64","shape":[2,1],"data":[1,2]}]}')
    np.testing.assert_array_equal(decode_rows(body, names), [[1, 3], [2, 4]])
    with pytest.raises(ProtocolError) as err:
        decode_rows(b'{"inputs":[{"name":"x","datatype":"FP64","shape":[1,3],'
                    b'"data":[1,2,3]}]}', names)
    assert err.value.status == 422


def test_reference_checks(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text("x,y\n" + "\n".join(f"{i},{i % 3}" for i in range(20)) + "\n")
    ref = load(csv, "sha256:x", None, [1], max_samples=12, seed=0)
    assert ref.names == ["x", "y"] and ref.data.shape == (12, 2)
    with pytest.raises(ReferenceProblem, match="index 2 is out of range"):
        load(csv, "d", None, [2], None, 0)
    with pytest.raises(ReferenceProblem, match="differs from featureNames"):
        load(csv, "d", ["y", "x"], [], None, 0)
    npy = tmp_path / "r.npy"
    np.save(npy, np.array([[1.0, np.nan]] * 20))
    with pytest.raises(ReferenceProblem, match="missing or infinite"):
        load(npy, "d", None, [], None, 0)
    np.save(npy, np.zeros((5, 2)))
    with pytest.raises(ReferenceProblem, match="at least 10"):
        load(npy, "d", None, [], None, 0)
