"""Background data: fetched with its digest, parsed, checked against the model, sampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kustos.runtime.explain.background import align, fetch_background, read_background
from kustos.runtime.explain.problems import (
    BACKGROUND_FETCH_FAILED,
    BACKGROUND_INVALID,
    DIGEST_MISMATCH,
    FEATURE_NAMES_INVALID,
    SetupProblem,
)

from .conftest import sha256, write_csv

ROWS = np.arange(24, dtype=np.float64).reshape(8, 3) / 4


def problem(fn: object, *args: object, **kw: object) -> SetupProblem:
    with pytest.raises(SetupProblem) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value


def test_csv_header_names_the_features(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bg.csv", ["a", "b", "c"], ROWS)
    bg = read_background(path, max_samples=100)
    assert bg.feature_names == ["a", "b", "c"] and bg.total_rows == 8
    np.testing.assert_array_equal(bg.data, ROWS)
    data, names = align(bg, 3, None, None)
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(data, ROWS)


def test_header_in_another_order_is_reordered_to_the_feature_names(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bg.csv", ["c", "a", "b"], ROWS)
    data, names = align(read_background(path, 100), 3, ["a", "b", "c"], None)
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(data, ROWS[:, [1, 2, 0]])
    other = problem(align, read_background(path, 100), 3, ["a", "b", "z"], None)
    assert other.reason == BACKGROUND_INVALID and "'z'" in other.message


def test_a_numeric_first_row_is_data_not_a_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bg.csv", None, ROWS)
    bg = read_background(path, 100)
    assert bg.feature_names is None and len(bg.data) == 8
    assert align(bg, 3, None, None)[1] == ["feature_0", "feature_1", "feature_2"]


def test_a_non_numeric_cell_is_named_with_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bg.csv"
    path.write_text("a,b,c\n1,2,3\n4,five,6\n")
    p = problem(read_background, path, 100)
    assert p.reason == BACKGROUND_INVALID
    assert "line 3" in p.message and "'b'" in p.message and "'five'" in p.message
    path.write_text("a,b,c\n1,,3\n")
    assert "(empty)" in problem(read_background, path, 100).message
    path.write_text("a,b,c\n1,2\n")
    assert "2 columns" in problem(read_background, path, 100).message


def test_wrong_column_count_against_the_model_says_what_to_fix(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bg.csv", ["a", "b", "c"], ROWS)
    p = problem(align, read_background(path, 100), 4, None, None)
    assert p.reason == BACKGROUND_INVALID
    assert "3 feature columns" in p.message and "takes 4" in p.message
    assert "n_features_in_" in p.message
    p = problem(align, read_background(path, 100), 3, ["a", "b"], None)
    assert p.reason == FEATURE_NAMES_INVALID and "2 feature names" in p.message


def test_label_column_is_split_off(tmp_path: Path) -> None:
    path = tmp_path / "bg.csv"
    path.write_text("a,label,b\n1,yes,2\n3,no,4\n")
    bg = read_background(path, 100, label_column="label")
    np.testing.assert_array_equal(bg.data, [[1, 2], [3, 4]])
    assert bg.labels is not None and bg.labels.tolist() == ["yes", "no"]
    assert bg.feature_names == ["a", "b"]
    assert "not found" in problem(read_background, path, 100, label_column="y").message


def test_large_files_are_sampled_to_max_samples(tmp_path: Path) -> None:
    rows = np.arange(5000, dtype=np.float64).reshape(2500, 2)
    csv_path = write_csv(tmp_path / "big.csv", ["a", "b"], rows)
    bg = read_background(csv_path, max_samples=50)
    assert bg.data.shape == (50, 2) and bg.total_rows == 2500
    assert len({tuple(r) for r in bg.data.tolist()}) == 50  # distinct rows of the file
    assert bg.data[:, 0].max() > 2500  # not just the head of the file
    np.save(tmp_path / "big.npy", rows)
    nb = read_background(tmp_path / "big.npy", max_samples=50)
    assert nb.data.shape == (50, 2) and nb.total_rows == 2500
    assert set(map(tuple, nb.data.tolist())) <= set(map(tuple, rows.tolist()))


def test_npy_must_be_a_numeric_matrix(tmp_path: Path) -> None:
    np.save(tmp_path / "ok.npy", ROWS)
    assert read_background(tmp_path / "ok.npy", 100).data.shape == (8, 3)
    np.save(tmp_path / "vec.npy", np.arange(3.0))
    assert "2-D" in problem(read_background, tmp_path / "vec.npy", 100).message
    np.save(tmp_path / "obj.npy", np.array([["a", None]], dtype=object))
    p = problem(read_background, tmp_path / "obj.npy", 100)
    assert p.reason == BACKGROUND_INVALID and "numeric" in p.message
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    assert "NaN" in problem(read_background, tmp_path / "nan.npy", 100).message


def test_unknown_format_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "bg.parquet").write_bytes(b"PAR1")
    p = problem(read_background, tmp_path / "bg.parquet", 100)
    assert p.reason == BACKGROUND_INVALID and ".csv or .npy" in p.message
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    assert "UTF-8" in problem(read_background, tmp_path / "bin.csv", 100).message


def test_fetch_verifies_the_digest(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "bg.csv", ["a", "b", "c"], ROWS)
    path = fetch_background(src.as_uri(), sha256(src), tmp_path / "work")
    assert path.read_bytes() == src.read_bytes()
    p = problem(fetch_background, src.as_uri(), "sha256:" + "0" * 64, tmp_path / "work2")
    assert p.reason == DIGEST_MISMATCH and "background.digest" in p.message
    assert not (tmp_path / "work2" / "bg.csv").exists()  # unverified bytes never land
    p = problem(fetch_background, (tmp_path / "missing.csv").as_uri(), None, tmp_path / "w3",
                retries=0)
    assert p.reason == BACKGROUND_FETCH_FAILED and "not found" in p.message


def test_fetch_over_http(tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    src = write_csv(served / "bg.csv", ["a", "b", "c"], ROWS)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/bg.csv"
        path = fetch_background(url, sha256(src), tmp_path / "work")
        np.testing.assert_array_equal(read_background(path, 100).data, ROWS)
        p = problem(fetch_background, url.replace("bg.csv", "gone.csv"), None,
                    tmp_path / "work", retries=0)
        assert p.reason == BACKGROUND_FETCH_FAILED and "404" in p.message
    finally:
        server.shutdown()
        server.server_close()
