"""`kustos batch`: chunking, sharding, formats, and resuming after a kill, with a real
model trained here on scikit-learn's breast-cancer data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from unit_support import wait_for

from kustos.runtime.batch import runner, sink, source
from kustos.runtime.server.models import load_model

KUSTOS = [sys.executable, "-m", "kustos.cli", "batch"]
FEATURES = [f"f{i}" for i in range(30)]


@dataclass
class Data:
    model: Path
    estimator: Any
    x: np.ndarray[Any, Any]
    csv: Path
    jsonl: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    d = tmp_path_factory.mktemp("batch")
    x, y = load_breast_cancer(return_X_y=True)
    est = RandomForestClassifier(n_estimators=60, random_state=0).fit(x, y)
    sio.dump(est, d / "model.skops")
    big = np.tile(x, (11, 1))  # 6259 rows
    with (d / "in.csv").open("w") as f:
        f.write(",".join(["row_key", *FEATURES]) + "\n")
        for i, row in enumerate(big):
            f.write(",".join([f"k{i}", *map(repr, row.tolist())]) + "\n")
    with (d / "in.jsonl").open("w") as f:
        for i, row in enumerate(big[:500]):
            f.write(json.dumps({"id": f"j{i}", **dict(zip(FEATURES, row.tolist(),
                                                          strict=True))}) + "\n")
    return Data(d / "model.skops", est, big, d / "in.csv", d / "in.jsonl")


def read_csv_parts(out: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for part in sorted(out.glob("part-*.csv")):
        with part.open(newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def batch(data: Data, out: Path, *extra: str, input_: Path | None = None,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*KUSTOS, "--model", str(data.model), "--input",
                           str(input_ or data.csv), "--output", str(out), "--quiet", *extra],
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_every_row_once_across_shards_equal_to_predict(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "out"
    features = [a for c in FEATURES for a in ("--feature", c)]
    reports = [report(batch(data, out, "--chunk-size", "700", "--shards", "3", "--shard",
                            str(i), *features, "--id-field", "row_key"))
               for i in range(3)]
    n = len(data.x)
    assert sum(r["rows"] for r in reports) == n
    assert {r["rowsTotal"] for r in reports} == {n}
    # chunk k belongs to shard k % 3, and is named by k
    assert sorted(p.name for p in out.glob("part-*")) == [
        f"part-{k:06d}.csv" for k in range((n + 699) // 700)]
    rows = read_csv_parts(out)
    assert [r["inference_id"] for r in rows] == [f"k{i}" for i in range(n)]
    assert [int(r["predict"]) for r in rows] == data.estimator.predict(data.x).tolist()


def test_killed_mid_run_resumes_at_the_next_missing_chunk(data: Data, tmp_path: Path) -> None:
    """SIGKILL after a few chunks are observed; the rerun writes the rest, no row twice."""
    out = tmp_path / "out"
    args = [*KUSTOS, "--model", str(data.model), "--input", str(data.csv), "--output",
            str(out), "--chunk-size", "25", "--id-field", "row_key", "--prediction", "predict",
            "--prediction", "predict_proba"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: len(list(out.glob("part-*.csv"))) >= 3, timeout=120,
                        step=0.005), "3 chunks written"
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    written = len(list(out.glob("part-*.csv")))
    chunks = (len(data.x) + 24) // 25
    assert 3 <= written < chunks
    rerun = report(batch(data, out, "--chunk-size", "25", "--id-field", "row_key",
                         "--prediction", "predict", "--prediction", "predict_proba"))
    assert rerun["chunksResumed"] >= written and rerun["chunks"] == chunks
    assert not list(out.glob(".part-*")), "a killed pod's temporary file is cleaned up"
    rows = read_csv_parts(out)
    assert [r["inference_id"] for r in rows] == [f"k{i}" for i in range(len(data.x))]
    assert [int(r["predict"]) for r in rows] == data.estimator.predict(data.x).tolist()
    proba = np.array([[float(r["predict_proba_0"]), float(r["predict_proba_1"])] for r in rows])
    np.testing.assert_array_equal(proba, data.estimator.predict_proba(data.x))


def test_jsonl_in_and_out_with_an_id_field(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "out"
    batch(data, out, "--input-format", "jsonl", "--output-format", "jsonl", "--id-field",
          "id", "--id-column", "request", "--chunk-size", "128", input_=data.jsonl)
    rows = [json.loads(line) for p in sorted(out.glob("part-*.jsonl"))
            for line in p.read_text().splitlines()]
    assert [r["request"] for r in rows] == [f"j{i}" for i in range(500)]
    assert [r["predict"] for r in rows] == data.estimator.predict(data.x[:500]).tolist()


def test_an_output_chunked_otherwise_is_refused(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "out"
    batch(data, out, "--chunk-size", "3000", "--id-field", "row_key")
    again = batch(data, out, "--chunk-size", "1000", "--id-field", "row_key", check=False)
    assert again.returncode == 1
    assert "holds the output of another run" in report(again)["error"]


def test_a_bad_cell_names_row_and_column_not_the_value(data: Data, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    lines = data.csv.read_text().splitlines()
    cells = lines[5].split(",")
    cells[3] = "SECRET-VALUE"
    lines[5] = ",".join(cells)
    bad.write_text("\n".join(lines[:20]) + "\n")
    log = tmp_path / "termination-log"
    proc = batch(data, tmp_path / "out", "--input", str(bad), "--id-field", "row_key",
                 "--termination-log", str(log), check=False)
    assert proc.returncode == 1
    error = json.loads(log.read_text())["error"]
    assert "row 4, column f2: not a number" in error
    assert "SECRET-VALUE" not in error + proc.stdout + proc.stderr


def test_missing_columns_and_unknown_outputs_are_named(data: Data, tmp_path: Path) -> None:
    proc = batch(data, tmp_path / "a", "--feature", "nope", check=False)
    assert proc.returncode == 1 and "no column nope" in report(proc)["error"]
    proc = batch(data, tmp_path / "c", check=False)  # row_key is no feature
    assert proc.returncode == 1 and "row 0, column row_key: not a number" in report(proc)["error"]
    proc = batch(data, tmp_path / "b", "--prediction", "scores", "--id-field", "row_key",
                 check=False)
    assert proc.returncode == 1 and "has no output scores" in report(proc)["error"]


def test_runner_in_process_matches_the_serving_prediction(data: Data, tmp_path: Path) -> None:
    """The runner predicts through the same Model as `kustos serve` (prepare + predict)."""
    model = load_model(data.model, "bc")
    seen: list[int] = []
    job = runner.Job(input=data.jsonl, input_format="jsonl", output=tmp_path / "o",
                     output_format="csv", chunk_size=100, shard=1, shards=2, id_field="id")
    done = runner.run(job, model, lambda r, k: seen.append(k))
    assert seen == [1, 3] and done.rows == 200 and done.rows_total == 500
    served = model.predict(model.prepare({"input-0": data.x[100:200]}), ["predict"])
    rows = read_csv_parts(tmp_path / "o")
    assert [int(r["predict"]) for r in rows[:100]] == served["predict"].tolist()


def test_an_error_of_the_writer_thread_reaches_the_caller(
        data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk is encoded and written in the writer thread: its error ends the run, and a
    chunk whose part was not written is neither reported nor left behind."""
    model = load_model(data.model, "bc")
    seen: list[int] = []
    encoded_in: list[str] = []
    encode = sink.encode

    def encode_recorded(*args: Any, **kwargs: Any) -> Any:
        encoded_in.append(threading.current_thread().name)
        return encode(*args, **kwargs)

    monkeypatch.setattr(sink, "encode", encode_recorded)
    job = runner.Job(input=data.jsonl, input_format="jsonl", output=tmp_path / "o",
                     output_format="parquet", chunk_size=100, shard=0, shards=1,
                     id_field="id", id_column="predict")
    with pytest.raises(sink.OutputError, match="both the id and a prediction"):
        runner.run(job, model, lambda r, k: seen.append(k))
    assert seen == []
    assert [n.split("_")[0] for n in encoded_in] == ["batch-writer"]
    assert not list((tmp_path / "o").glob("*part-*"))


def test_chunks_are_cut_in_file_order(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(10)) + "\n")
    got = [(c.index, c.first_row, len(c.lines)) for c in source.chunks(f, "csv", 4)]
    assert got == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]


def test_flatten_names_probability_columns_by_class() -> None:
    cols = sink.flatten({"predict": np.array([1, 0]),
                         "predict_proba": np.array([[0.2, 0.8], [0.9, 0.1]])}, ["no", "yes"])
    assert list(cols) == ["predict", "predict_proba_no", "predict_proba_yes"]
    text = sink.encode("id", ["a", "b"], cols, "csv").decode()
    assert text.splitlines() == ["id,predict,predict_proba_no,predict_proba_yes",
                                 "a,1,0.2,0.8", "b,0,0.9,0.1"]



def test_s3_output_tries_a_transient_error_four_times_with_backoff() -> None:
    """docs/batch.md: transient S3 errors are tried 4 times in all, 0.5, 1 and 2 s apart;
    any other error is raised at once."""
    from kustos.runtime.fetch import FetchError

    slept: list[float] = []
    calls: list[int] = []

    def failing(transient: bool) -> Any:
        def call() -> None:
            calls.append(1)
            raise FetchError("boom", transient=transient)
        return call

    with pytest.raises(FetchError):
        sink.retried(failing(True), slept.append)
    assert (len(calls), slept) == (4, [0.5, 1.0, 2.0])
    calls.clear()
    slept.clear()
    with pytest.raises(FetchError):
        sink.retried(failing(False), slept.append)
    assert (len(calls), slept) == (1, [])
