"""CSV parts (runtime/batch/csv_part.py): every value reads back as the same bits, rows
and columns where the cell-per-string encoder put them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kustos.runtime.batch import csv_part, sink, source

EDGES = [0.0, -0.0, 1e-05, 2.5e-07, 1e16, 1e22, 5e-324, 2.2250738585072014e-308,
         1.7976931348623157e308, -1.7976931348623157e308, 0.1, 1 / 3, 100.0, -7.0,
         123456789012345678.0, 9007199254740993.0]
F32_EDGES = np.array([0.0, -0.0, 1e-05, 1e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38,
                      0.1, 1 / 3, 16777216.0, 16777217.0, 2.5e-07], dtype=np.float32)


def reference(id_column: str, ids: list[str], columns: dict[str, np.ndarray[Any, Any]]) -> bytes:
    """The encoder before csv_part: one Python string per cell (astype(str))."""
    cells = [ids, *(c.astype(str).tolist() for c in columns.values())]
    lines = [",".join([id_column, *columns])]
    lines += [",".join(row) for row in zip(*cells, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def parsed(data: bytes) -> tuple[list[str], list[str], list[list[str]]]:
    lines = data.decode().split("\n")
    assert lines[-1] == "", "the part ends with a newline"
    header, *rows = (line.split(",") for line in lines[:-1])
    return header, [r[0] for r in rows], [r[1:] for r in rows]


def random_doubles(n: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """Any finite double, drawn by its bits: every exponent, denormals, negative zero."""
    bits = rng.integers(0, 2**64, size=4 * n, dtype=np.uint64, endpoint=False)
    values = bits.view(np.float64)
    return values[np.isfinite(values)][:n]


def significant_digits(text: str) -> int:
    mantissa = text.lower().split("e")[0].replace("-", "").replace(".", "")
    return len(mantissa.strip("0")) or 1


def assert_same_bits(texts: list[str], column: np.ndarray[Any, Any]) -> None:
    if column.dtype == np.float32:
        back = np.array([np.float32(float(t)) for t in texts], dtype=np.float32)
        assert back.view(np.uint32).tolist() == column.view(np.uint32).tolist()
        # The float32's own shortest text (at most 9 digits), not the widened double's.
        assert max(significant_digits(t) for t in texts) <= 9
    elif column.dtype == np.float64:
        back = np.array([float(t) for t in texts], dtype=np.float64)
        assert back.view(np.uint64).tolist() == column.view(np.uint64).tolist()
    else:
        assert texts == column.astype(str).tolist()


def test_values_read_back_bit_for_bit() -> None:
    rng = np.random.default_rng(14)
    n = 5000
    doubles = random_doubles(n, rng)
    doubles[: len(EDGES)] = EDGES
    singles = rng.integers(0, 2**32, size=4 * n, dtype=np.uint32).view(np.float32)
    singles = singles[np.isfinite(singles)][:n]
    singles[: len(F32_EDGES)] = F32_EDGES
    proba = rng.random((n, 2))
    columns = {
        "predict": rng.integers(-2**62, 2**62, size=n),
        "wide": doubles,
        "narrow": singles,
        "proba_1": proba[:, 1],  # not contiguous, as flatten leaves it
        "small": rng.integers(0, 255, size=n).astype(np.uint8),
        "unit": rng.random(n) * 10.0 ** rng.integers(-30, 30, size=n),
    }
    assert all(csv_part._printed_by_orjson(c) for c in columns.values()), "the fast path"
    data = sink.encode("inference_id", source.RowNumbers(7, n), columns, "csv")
    header, ids, rows = parsed(data)
    assert header == ["inference_id", *columns]
    assert ids == [str(i) for i in range(7, 7 + n)]
    for j, column in enumerate(columns.values()):
        assert_same_bits([r[j] for r in rows], column)


def test_non_finite_bool_and_text_columns_keep_their_old_text() -> None:
    """A column with NaN or an infinity is written as before (nan, inf, -inf), the finite
    values in it too; booleans as True/False; text as is (a comma in it is not quoted,
    as before: the caller's ids come from an unquoted CSV or JSON)."""
    ids = ["a", "b,c", "é", "k" * 40]
    columns = {
        "score": np.array([np.nan, np.inf, -np.inf, 1e-05]),
        "narrow": np.array([np.nan, 0.1, -0.0, 16777216.0], dtype=np.float32),
        "flag": np.array([True, False, True, False]),
        "label": np.array(["yes", "no", "ü", "maybe"]),
        "obj": np.array([{"a": 1}, None, 1.5, "x"], dtype=object),
    }
    data = sink.encode("id", ids, columns, "csv")
    assert data == reference("id", ids, columns)
    assert data.decode().splitlines()[1] == "a,nan,nan,True,yes,{'a': 1}"


def test_numbers_differ_from_the_old_text_only_in_spelling() -> None:
    """orjson spells some numbers otherwise than repr (0.00001 for 1e-05, 2.5e-7 for
    2.5e-07; float32 16777216.0 for 1.6777216e+07): the same values, every other cell
    byte-equal."""
    columns = {"wide": np.array(EDGES),
               "narrow": np.resize(F32_EDGES, len(EDGES)),
               "predict": np.arange(len(EDGES)) - 3}
    ids = [f"r{i}" for i in range(len(EDGES))]
    new, old = (parsed(d) for d in (sink.encode("id", ids, columns, "csv"),
                                    reference("id", ids, columns)))
    assert new[:2] == old[:2]
    for got, want in zip(new[2], old[2], strict=True):
        assert got[2] == want[2]
        assert float(got[0]) == float(want[0]) and np.float32(got[1]) == np.float32(want[1])
    assert new[2][2][0] == "0.00001" and old[2][2][0] == "1e-05"


@pytest.mark.parametrize("rows", [0, 1, 2, csv_part.ROW_BLOCK, csv_part.ROW_BLOCK + 1])
def test_short_chunks_and_block_edges(rows: int) -> None:
    columns = {"p": np.arange(rows, dtype=np.float64) / 4, "q": np.arange(rows)}
    ids = source.RowNumbers(10**12, rows)
    assert sink.encode("id", ids, columns, "csv") == reference("id", list(ids), columns)


def test_a_column_of_another_length_is_refused() -> None:
    with pytest.raises(ValueError):
        sink.encode("id", ["a", "b"], {"p": np.array([1.0, 2.0, 3.0])}, "csv")
