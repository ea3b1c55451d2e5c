"""`kustos batch` with Parquet (fastparquet) and an s3:// output on a real moto server on
loopback that checks every request's signature; a forest trained here on breast_cancer.

CSV in / Parquet out, Parquet in / JSONL out, S3 in (through `kustos fetch`, as the pod
does) / S3 out, and a run SIGKILLed after observed progress then run again: every row
once, equal to the estimator's own predictions."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kustos.runtime.batch import runner, source
from kustos.runtime.server.models import load_model
from motoserver import moto_server

fastparquet = pytest.importorskip("fastparquet")
pd = pytest.importorskip("pandas")

KUSTOS = [sys.executable, "-m", "kustos.cli"]
FEATURES = [f"f{i}" for i in range(30)]
ROW_GROUP = 700  # not a multiple of the chunk sizes below: chunks straddle row groups
ALL = """{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}]}"""


@dataclass
class Data:
    model: Path
    estimator: Any
    x: np.ndarray[Any, Any]
    ids: list[str]
    csv: Path
    parquet: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    d = tmp_path_factory.mktemp("batch-pq")
    x, y = load_breast_cancer(return_X_y=True)
    est = RandomForestClassifier(n_estimators=30, random_state=0).fit(x, y)
    sio.dump(est, d / "model.skops")
    big = np.tile(x, (8, 1))  # 4552 rows
    ids = [f"k{i}" for i in range(len(big))]
    with (d / "in.csv").open("w") as f:
        f.write(",".join(["row_key", *FEATURES]) + "\n")
        for key, row in zip(ids, big, strict=True):
            f.write(",".join([key, *map(repr, row.tolist())]) + "\n")
    frame = pd.DataFrame({"row_key": ids, **{c: big[:, i] for i, c in enumerate(FEATURES)}})
    fastparquet.write(str(d / "in.parquet"), frame, write_index=False,
                      row_group_offsets=list(range(0, len(big), ROW_GROUP)))
    return Data(d / "model.skops", est, big, ids, d / "in.csv", d / "in.parquet")


@dataclass
class Moto:
    endpoint: str
    env: dict[str, str]  # what the output's credentialsSecretRef gives the container
    boto: Any


def iam_user(iam: Any, name: str, policy: str) -> dict[str, str]:
    """A moto IAM user with one inline policy: its keys as a Secret would give them."""
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=policy)
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    import boto3

    # The 3 IAM calls below go unauthenticated; moto checks every later request.
    with moto_server(unauthenticated_calls=3) as endpoint:
        kw: dict[str, Any] = {"endpoint_url": endpoint, "region_name": "us-east-1",
                              "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        creds = iam_user(boto3.client("iam", **kw), "batch", ALL)
        s3c = boto3.client("s3", **{**kw, "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
                                    "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"]})
        s3c.create_bucket(Bucket="data")
        s3c.create_bucket(Bucket="results")
        yield Moto(endpoint, {**creds, "AWS_ENDPOINT_URL": endpoint,
                              "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"},
                   s3c)


def env_without_aws(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "AWS_EC2_METADATA_DISABLED": "true", **(extra or {})}


def batch(data: Data, out: str | Path, *extra: str, input_: Path | str | None = None,
          env: dict[str, str] | None = None,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*KUSTOS, "batch", "--model", str(data.model), "--input",
                           str(input_ or data.parquet), "--output", str(out), "--quiet",
                           "--id-field", "row_key", *extra],
                          capture_output=True, text=True, timeout=300,
                          env=env or env_without_aws())
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def parquet_rows(blobs: list[bytes]) -> Any:
    frames = [fastparquet.ParquetFile(io.BytesIO(b)).to_pandas() for b in blobs]
    return pd.concat(frames, ignore_index=True)


def s3_parts(moto: Moto, prefix: str) -> dict[str, bytes]:
    listed = moto.boto.list_objects_v2(Bucket="results", Prefix=prefix + "/")
    return {o["Key"].rsplit("/", 1)[1]: moto.boto.get_object(Bucket="results", Key=o["Key"])[
        "Body"].read() for o in listed.get("Contents", [])}


def assert_all_rows_once(data: Data, frame: Any, proba: bool = True) -> None:
    assert frame["inference_id"].tolist() == data.ids, "every row once, in file order"
    assert frame["predict"].tolist() == data.estimator.predict(data.x).tolist()
    if proba:
        got = frame[["predict_proba_0", "predict_proba_1"]].to_numpy()
        np.testing.assert_array_equal(got, data.estimator.predict_proba(data.x))


def test_csv_in_parquet_out_across_shards(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "out"
    reports = [report(batch(data, out, "--input-format", "csv", "--output-format", "parquet",
                            "--chunk-size", "500", "--shards", "3", "--shard", str(i),
                            "--prediction", "predict", "--prediction", "predict_proba",
                            input_=data.csv))
               for i in range(3)]
    n = len(data.x)
    assert sum(r["rows"] for r in reports) == n and {r["rowsTotal"] for r in reports} == {n}
    parts = sorted(out.glob("part-*"))
    assert [p.name for p in parts] == [f"part-{k:06d}.parquet" for k in range(-(-n // 500))]
    frame = parquet_rows([p.read_bytes() for p in parts])
    assert_all_rows_once(data, frame)
    assert frame["predict_proba_1"].dtype == np.float64  # numbers stay numbers
    assert json.loads((out / "_chunking.json").read_text())["format"] == "parquet"


def test_parquet_in_jsonl_out_equal_to_csv_in(data: Data, tmp_path: Path) -> None:
    """Chunks of 500 rows over row groups of 700: cut by row number, as a CSV's are."""
    out = tmp_path / "out"
    reports = [report(batch(data, out, "--input-format", "parquet", "--output-format",
                            "jsonl", "--chunk-size", "500", "--shards", "2", "--shard", str(i)))
               for i in range(2)]
    assert [r["chunks"] for r in reports] == [5, 5]
    rows = [json.loads(line) for p in sorted(out.glob("part-*.jsonl"))
            for line in p.read_text().splitlines()]
    assert [r["inference_id"] for r in rows] == data.ids
    assert [r["predict"] for r in rows] == data.estimator.predict(data.x).tolist()
    csv_out = tmp_path / "csv"
    batch(data, csv_out, "--input-format", "csv", "--output-format", "jsonl",
          "--chunk-size", "500", input_=data.csv)
    for k in range(10):
        name = f"part-{k:06d}.jsonl"
        assert (out / name).read_bytes() == (csv_out / name).read_bytes(), name


def test_a_shard_reads_only_the_row_groups_of_its_missing_chunks(data: Data,
                                                                 tmp_path: Path) -> None:
    read: list[int] = []
    wanted = {3}  # rows 1500..1999: row groups 2 (1400..2099) only
    lay = source.layout(data.parquet, "parquet", ["f0", "f7"], "row_key")
    for chunk in source.chunks(data.parquet, "parquet", 500, lambda k: k in wanted, lay):
        read.append(chunk.index) if chunk.x is not None else None
        assert chunk.wanted == (chunk.index in wanted)
        if chunk.index == 3:
            assert chunk.first_row == 1500 and chunk.x is not None
            np.testing.assert_array_equal(chunk.x, data.x[1500:2000, [0, 7]])
            assert chunk.id_values.tolist() == data.ids[1500:2000]
    assert read == [3]
    # the in-process runner: the same Model as `kustos serve`
    model = load_model(data.model, "bc")
    job = runner.Job(input=data.parquet, input_format="parquet", output=tmp_path / "o",
                     output_format="parquet", chunk_size=1000, shard=1, shards=3,
                     id_field="row_key")
    done = runner.run(job, model)
    # chunks 1 and 4 (the last, 552 rows) of 0..4
    assert (done.chunks, done.rows, done.rows_total) == (2, 1552, len(data.x))


def test_s3_in_through_fetch_and_s3_out(data: Data, moto: Moto) -> None:
    """The pod's path: `kustos fetch` brings the input (digest checked), `kustos batch`
    PUTs one object per chunk under the prefix; a second run finds them all done."""
    import hashlib

    body = data.parquet.read_bytes()
    moto.boto.put_object(Bucket="data", Key="in/rows.parquet", Body=body)
    env = env_without_aws(moto.env)
    local = data.model.parent / "fetched.parquet"
    fetched = subprocess.run([*KUSTOS, "fetch", "s3://data/in/rows.parquet", str(local),
                              "--digest", "sha256:" + hashlib.sha256(body).hexdigest()],
                             capture_output=True, text=True, timeout=120, env=env)
    assert fetched.returncode == 0, fetched.stderr
    first = report(batch(data, "s3://results/run-a", "--input-format", "parquet",
                         "--output-format", "parquet", "--chunk-size", "1000",
                         "--prediction", "predict", "--prediction", "predict_proba",
                         input_=local, env=env))
    assert (first["rows"], first["chunks"], first["chunksResumed"]) == (len(data.x), 5, 0)
    parts = s3_parts(moto, "run-a")
    assert sorted(parts) == ["_chunking.json", *(f"part-{k:06d}.parquet" for k in range(5))]
    assert_all_rows_once(data, parquet_rows([parts[f"part-{k:06d}.parquet"]
                                             for k in range(5)]))
    again = report(batch(data, "s3://results/run-a", "--input-format", "parquet",
                         "--output-format", "parquet", "--chunk-size", "1000",
                         "--prediction", "predict", "--prediction", "predict_proba",
                         input_=local, env=env))
    assert again["chunksResumed"] == 5
    # other settings into the same prefix: refused, nothing mixed
    other = batch(data, "s3://results/run-a", "--input-format", "parquet",
                  "--output-format", "parquet", "--chunk-size", "999", input_=local,
                  env=env, check=False)
    assert other.returncode == 1 and "holds the output of another run" in report(other)["error"]


def test_s3_out_refused_with_wrong_keys_says_so_without_the_secret(data: Data,
                                                                  moto: Moto) -> None:
    secret = "wrong-secret-value-1234"
    env = env_without_aws({**moto.env, "AWS_SECRET_ACCESS_KEY": secret})
    proc = batch(data, "s3://results/run-denied", "--input-format", "parquet",
                 "--chunk-size", "1000", env=env, check=False)
    assert proc.returncode == 1
    error = report(proc)["error"]
    assert "HTTP 403" in error and "s3://results/run-denied/_chunking.json" in error
    assert secret not in proc.stdout + proc.stderr
    assert s3_parts(moto, "run-denied") == {}


def killed_after_progress(args: list[str], env: dict[str, str], chunks: int) -> int:
    """Start `kustos batch`, SIGKILL it once it reported ``chunks`` written chunks (its
    per-chunk lines come after each write); the chunk indexes it reported."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    seen: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b'"chunk"' in line:
                seen.append(json.loads(line)["chunk"])
            if len(seen) >= chunks:
                break
        assert len(seen) >= chunks, "the run ended before it reported progress"
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return len(seen)


def test_killed_mid_run_to_s3_resumes_without_duplicates(data: Data, moto: Moto) -> None:
    env = env_without_aws(moto.env)
    args = [*KUSTOS, "batch", "--model", str(data.model), "--input", str(data.parquet),
            "--input-format", "parquet", "--output", "s3://results/run-kill",
            "--output-format", "parquet", "--chunk-size", "40", "--id-field", "row_key",
            "--prediction", "predict", "--prediction", "predict_proba"]
    chunks = -(-len(data.x) // 40)
    reported = killed_after_progress(args, env, 3)
    written = [k for k in s3_parts(moto, "run-kill") if k.startswith("part-")]
    assert reported <= len(written) < chunks
    rerun = report(batch(data, "s3://results/run-kill", "--input-format", "parquet",
                         "--output-format", "parquet", "--chunk-size", "40",
                         "--prediction", "predict", "--prediction", "predict_proba", env=env))
    assert rerun["chunksResumed"] >= len(written) and rerun["chunks"] == chunks
    assert rerun["chunksResumed"] < chunks, "the rerun wrote the missing chunks"
    parts = s3_parts(moto, "run-kill")
    names = [f"part-{k:06d}.parquet" for k in range(chunks)]
    assert sorted(k for k in parts if k.startswith("part-")) == names
    frame = parquet_rows([parts[n] for n in names])
    assert not frame["inference_id"].duplicated().any(), "no row written twice"
    assert_all_rows_once(data, frame)


def test_killed_mid_run_to_a_directory_resumes_without_duplicates(data: Data,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*KUSTOS, "batch", "--model", str(data.model), "--input", str(data.csv),
            "--output", str(out), "--output-format", "parquet", "--chunk-size", "40",
            "--id-field", "row_key"]
    chunks = -(-len(data.x) // 40)
    killed_after_progress(args, env_without_aws(), 3)
    written = len(list(out.glob("part-*.parquet")))
    assert 3 <= written < chunks
    rerun = report(batch(data, out, "--output-format", "parquet", "--chunk-size", "40",
                         input_=data.csv))
    assert rerun["chunksResumed"] >= written and rerun["chunks"] == chunks
    assert not list(out.glob(".part-*")), "a killed run's temporary file is cleaned up"
    frame = parquet_rows([p.read_bytes() for p in sorted(out.glob("part-*.parquet"))])
    assert not frame["inference_id"].duplicated().any()
    assert_all_rows_once(data, frame, proba=False)


def test_s3_input_read_in_place_gives_the_same_parts(data: Data, moto: Moto,
                                                     tmp_path: Path) -> None:
    """--input s3://: CSV read front to back and Parquet by row groups, with ranged GETs
    (signed, moto checks them): the parts are byte-equal to those of the local file."""
    env = env_without_aws(moto.env)
    for local, fmt in ((data.csv, "csv"), (data.parquet, "parquet")):
        moto.boto.put_object(Bucket="data", Key=f"in/rows.{fmt}", Body=local.read_bytes())
        args = ["--input-format", fmt, "--output-format", "jsonl", "--chunk-size", "500",
                "--prediction", "predict", "--prediction", "predict_proba"]
        got = report(batch(data, tmp_path / f"s3-{fmt}", *args, "--shards", "2", "--shard",
                           "1", input_=f"s3://data/in/rows.{fmt}", env=env))
        assert (got["rowsTotal"], got["chunks"]) == (len(data.x), 5)
        batch(data, tmp_path / f"local-{fmt}", *args, "--shards", "2", "--shard", "1",
              input_=local)
        names = sorted(p.name for p in (tmp_path / f"local-{fmt}").glob("part-*"))
        assert names == [f"part-{k:06d}.jsonl" for k in (1, 3, 5, 7, 9)]
        for name in names:
            assert ((tmp_path / f"s3-{fmt}" / name).read_bytes()
                    == (tmp_path / f"local-{fmt}" / name).read_bytes()), (fmt, name)
    missing = batch(data, tmp_path / "none", input_="s3://data/in/nothing.csv",
                    env=env, check=False)
    assert missing.returncode == 1 and "HTTP 404" in report(missing)["error"]
    # An empty object answers a ranged GET with 416 (its size in the error document).
    moto.boto.put_object(Bucket="data", Key="in/empty.csv", Body=b"")
    empty = batch(data, tmp_path / "none", input_="s3://data/in/empty.csv", env=env,
                  check=False)
    assert empty.returncode == 1 and "empty.csv: empty file" in report(empty)["error"]


def test_s3_parquet_input_fetches_only_the_row_groups_of_wanted_chunks(
        data: Data, moto: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    from kustos.runtime.batch import remote

    body = data.parquet.read_bytes()
    moto.boto.put_object(Bucket="data", Key="in/groups.parquet", Body=body)
    for key, value in env_without_aws(moto.env).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    readers: list[remote.S3Reader] = []

    class Counted(remote.S3Reader):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            readers.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(remote, "S3Reader", Counted)
    uri = "s3://data/in/groups.parquet"
    lay = source.layout(uri, "parquet", None, "row_key")
    got = [c for c in source.chunks(uri, "parquet", 500, lambda k: k == 3, lay)
           if c.x is not None]
    assert [c.index for c in got] == [3]
    np.testing.assert_array_equal(got[0].x, data.x[1500:2000])
    assert got[0].id_values.tolist() == data.ids[1500:2000]
    # Two footers and row group 2 (rows 1400..2099) of 7: far less than the file.
    fetched = sum(r.fetched for r in readers)
    assert 0 < fetched < len(body) / 3, (fetched, len(body))


def test_killed_mid_run_from_s3_input_resumes_without_duplicates(data: Data, moto: Moto,
                                                                tmp_path: Path) -> None:
    env = env_without_aws(moto.env)
    moto.boto.put_object(Bucket="data", Key="in/kill.csv", Body=data.csv.read_bytes())
    out = tmp_path / "out"
    args = [*KUSTOS, "batch", "--model", str(data.model), "--input", "s3://data/in/kill.csv",
            "--output", str(out), "--output-format", "parquet", "--chunk-size", "40",
            "--id-field", "row_key"]
    chunks = -(-len(data.x) // 40)
    killed_after_progress(args, env, 3)
    written = len(list(out.glob("part-*.parquet")))
    assert 3 <= written < chunks
    rerun = report(batch(data, out, "--output-format", "parquet", "--chunk-size", "40",
                         input_="s3://data/in/kill.csv", env=env))
    assert rerun["chunksResumed"] >= written and rerun["chunks"] == chunks
    frame = parquet_rows([p.read_bytes() for p in sorted(out.glob("part-*.parquet"))])
    assert not frame["inference_id"].duplicated().any()
    assert_all_rows_once(data, frame, proba=False)


def test_without_fastparquet_the_error_says_where_it_is(data: Data, tmp_path: Path) -> None:
    """The kustos image has no fastparquet: Parquet fails with a clear line there."""
    code = ("import sys; sys.modules['fastparquet'] = None; "
            "from kustos.runtime.batch.cli import main; sys.exit(main(sys.argv[1:]))")
    for fmt_args, input_ in ((["--input-format", "parquet"], data.parquet),
                             (["--input-format", "csv", "--output-format", "parquet"],
                              data.csv)):
        proc = subprocess.run([sys.executable, "-c", code, "--model", str(data.model),
                               "--input", str(input_), "--output", str(tmp_path / "o"),
                               "--id-field", "row_key", "--quiet", *fmt_args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        error = report(proc)["error"]
        assert "fastparquet" in error and "kustos-explain" in error, error


def test_parquet_refusals_name_the_column(data: Data, tmp_path: Path) -> None:
    bad = tmp_path / "text.parquet"
    frame = pd.DataFrame({"row_key": ["a", "b"], "f0": ["x", "y"], "f1": [1.0, 2.0]})
    fastparquet.write(str(bad), frame, write_index=False)
    proc = batch(data, tmp_path / "o", "--input-format", "parquet", input_=bad, check=False)
    assert proc.returncode == 1 and "column f0 is object, not numeric" in report(proc)["error"]
    proc = batch(data, tmp_path / "o", "--input-format", "parquet", "--feature", "nope",
                 check=False)
    assert proc.returncode == 1 and "no column nope in the schema" in report(proc)["error"]
    proc = batch(data, tmp_path / "o", "--input-format", "parquet", input_=data.csv,
                 check=False)
    assert proc.returncode == 1 and "not a Parquet file" in report(proc)["error"]


def only_bucket(bucket: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:*"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]})


@dataclass
class SplitKeys:
    """One moto server, two users: ``reader`` may use bucket ``inputs`` only, ``writer``
    bucket ``outputs`` only (moto checks each request's signature and the user's policy)."""

    endpoint: str
    reader: dict[str, str]  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    writer: dict[str, str]

    def client(self, keys: dict[str, str]) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def split_keys() -> Iterator[SplitKeys]:
    import boto3

    # 2 x (create_user, create_access_key, put_user_policy) and 2 create_bucket go
    # unauthenticated; every later request is checked.
    with moto_server(unauthenticated_calls=8) as endpoint:
        kw: dict[str, Any] = {"endpoint_url": endpoint, "region_name": "us-east-1",
                              "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **kw)
        keys = {user: iam_user(iam, user, only_bucket(bucket))
                for user, bucket in (("reader", "inputs"), ("writer", "outputs"))}
        admin = boto3.client("s3", **kw)
        admin.create_bucket(Bucket="inputs")
        admin.create_bucket(Bucket="outputs")
        yield SplitKeys(endpoint, keys["reader"], keys["writer"])


def test_s3_input_in_place_reads_with_the_prefixed_keys_and_writes_with_aws_ones(
        data: Data, split_keys: SplitKeys) -> None:
    """The operator's Job: the output's Secret as AWS_*, the input's as KUSTOS_INPUT_AWS_*
    (envFrom with a prefix), `--input-env-prefix KUSTOS_INPUT_`. The reader's keys may only
    read `inputs`, the writer's only write `outputs`: a run that used one set for both
    would be refused with 403."""
    keys = split_keys
    inputs, results = keys.client(keys.reader), keys.client(keys.writer)
    place = {"AWS_ENDPOINT_URL": keys.endpoint, "AWS_REGION": "us-east-1",
             "AWS_EC2_METADATA_DISABLED": "true"}
    output_env = {**keys.writer, **place}
    input_env = {f"KUSTOS_INPUT_{k}": v for k, v in {**keys.reader, **place}.items()}
    env = env_without_aws({**output_env, **input_env})
    common = ["--output-format", "parquet", "--chunk-size", "1000",
              "--prediction", "predict", "--prediction", "predict_proba"]

    def outputs(prefix: str) -> dict[str, bytes]:
        listed = results.list_objects_v2(Bucket="outputs", Prefix=prefix + "/")
        return {o["Key"].rsplit("/", 1)[1]: results.get_object(
            Bucket="outputs", Key=o["Key"])["Body"].read() for o in listed.get("Contents", [])}

    for local, fmt in ((data.csv, "csv"), (data.parquet, "parquet")):
        inputs.put_object(Bucket="inputs", Key=f"rows.{fmt}", Body=local.read_bytes())
        got = report(batch(data, f"s3://outputs/split-{fmt}", "--input-format", fmt, *common,
                           "--input-env-prefix", "KUSTOS_INPUT_",
                           input_=f"s3://inputs/rows.{fmt}", env=env))
        assert (got["rows"], got["chunks"]) == (len(data.x), 5), fmt
        parts = outputs(f"split-{fmt}")
        assert_all_rows_once(data, parquet_rows([parts[f"part-{k:06d}.parquet"]
                                                 for k in range(5)]))

    # Without the prefix the input is read with AWS_*, the writer's keys: refused.
    proc = batch(data, "s3://outputs/split-unprefixed", "--input-format", "csv", *common,
                 input_="s3://inputs/rows.csv", env=env, check=False)
    assert proc.returncode == 1
    error = report(proc)["error"]
    assert "HTTP 403" in error and "s3://inputs/rows.csv" in error, error
    assert outputs("split-unprefixed") == {}, "the input is read before anything is written"
    # No input keys under the prefix (an input without a Secret): the request goes out
    # anonymous, not with the output's AWS_* keys; refused.
    anonymous = env_without_aws({**output_env, **{f"KUSTOS_INPUT_{k}": v
                                                  for k, v in place.items()}})
    proc = batch(data, "s3://outputs/split-anonymous", "--input-format", "csv", *common,
                 "--input-env-prefix", "KUSTOS_INPUT_", input_="s3://inputs/rows.csv",
                 env=anonymous, check=False)
    assert proc.returncode == 1 and "HTTP 403" in report(proc)["error"]
    secrets = (keys.reader["AWS_SECRET_ACCESS_KEY"], keys.writer["AWS_SECRET_ACCESS_KEY"])
    assert not any(s in proc.stdout + proc.stderr for s in secrets)
    # The prefix is for an s3:// input only.
    proc = batch(data, "s3://outputs/split-local", "--input-env-prefix", "KUSTOS_INPUT_",
                 input_=data.csv, env=env, check=False)
    assert proc.returncode == 2 and "is for an s3:// input" in proc.stderr


def aws_env(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env_without_aws(moto.env).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


def test_an_s3_reader_is_pinned_to_the_version_of_its_first_get(
        data: Data, moto: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    """Later ranged GETs send If-Match with the first GET's ETag: the object overwritten
    between two reads is an InputError naming it (412 is not tried again), never bytes of
    the new version after bytes of the old."""
    from kustos.runtime.batch import remote

    aws_env(moto, monkeypatch)
    body = data.csv.read_bytes()
    moto.boto.put_object(Bucket="data", Key="in/pinned.csv", Body=body)
    uri = "s3://data/in/pinned.csv"

    whole = remote.S3Reader(uri, block=100_000)
    assert whole.read() == body and whole.gets > 2, "unchanged: read through, pinned"
    assert whole.etag.strip('"') == moto.boto.head_object(
        Bucket="data", Key="in/pinned.csv")["ETag"].strip('"')

    slept: list[float] = []
    reader = remote.S3Reader(uri, block=100_000, sleep=slept.append)
    first = reader.read(remote.FIRST_BLOCK)
    assert first == body[:remote.FIRST_BLOCK]
    # Another version, the same size: only the ETag tells them apart.
    moto.boto.put_object(Bucket="data", Key="in/pinned.csv", Body=body.replace(b"k1", b"q1"))
    with pytest.raises(source.InputError, match="changed while being read") as err:
        reader.read(10)
    assert uri in str(err.value) and reader.gets == 1 and slept == []


def test_an_s3_input_overwritten_mid_run_stops_the_run_before_a_torn_chunk(
        data: Data, moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CSV is overwritten after the chunk reader's first GET (64 KiB): the chunks read
    from it are written, the chunk that needs the next GET is not, and the run ends with
    an error that names the object."""
    from kustos.runtime.batch import remote

    aws_env(moto, monkeypatch)
    body = data.csv.read_bytes()
    key, uri = "in/overwritten.csv", "s3://data/in/overwritten.csv"
    moto.boto.put_object(Bucket="data", Key=key, Body=body)
    load = remote.S3Reader._load
    overwritten: list[int] = []

    def load_then_overwrite(self: remote.S3Reader, start: int, length: int) -> None:
        if self.gets >= 1 and not overwritten:  # a reader's second GET: overwrite first
            moto.boto.put_object(Bucket="data", Key=key, Body=body.replace(b"k", b"q"))
            overwritten.append(start)
        load(self, start, length)

    monkeypatch.setattr(remote.S3Reader, "_load", load_then_overwrite)
    job = runner.Job(input=uri, input_format="csv", output=tmp_path / "o",
                     output_format="csv", chunk_size=40, shard=0, shards=1,
                     id_field="row_key")
    with pytest.raises(source.InputError, match="changed while being read") as err:
        runner.run(job, load_model(data.model, "bc"))
    assert uri in str(err.value) and overwritten == [remote.FIRST_BLOCK]
    # Rows whose line ends inside the first GET's bytes, after the header.
    whole_rows = body[:remote.FIRST_BLOCK].count(b"\n") - 1
    parts = sorted((tmp_path / "o").glob("part-*.csv"))
    assert [p.name for p in parts] == [f"part-{k:06d}.csv" for k in range(whole_rows // 40)]
    ids = [line.split(",")[0] for p in parts for line in p.read_text().splitlines()[1:]]
    assert ids == data.ids[:len(ids)], "only rows of the first version"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_shard_reads_its_chunks_from_the_version_its_layout_came_from(
        data: Data, moto: Moto, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """The layout (header, footer) is read by one reader, the chunks by another: the
    second starts with If-Match on the first's ETag, so an input overwritten in between
    is refused, not read as another file under the same layout."""
    aws_env(moto, monkeypatch)
    local = data.csv if fmt == "csv" else data.parquet
    key = f"in/relaid.{fmt}"
    uri = f"s3://data/{key}"
    moto.boto.put_object(Bucket="data", Key=key, Body=local.read_bytes())
    lay = source.layout(uri, fmt, None, "row_key")
    assert lay.version.strip('"') == moto.boto.head_object(
        Bucket="data", Key=key)["ETag"].strip('"')
    assert sum(c.rows for c in source.chunks(uri, fmt, 500, None, lay)) == len(data.x)
    moto.boto.put_object(Bucket="data", Key=key, Body=local.read_bytes()[:-1])
    with pytest.raises(source.InputError, match="changed while being read") as err:
        next(iter(source.chunks(uri, fmt, 500, None, lay)))
    assert uri in str(err.value)
    fresh = source.layout(uri, "csv", None, "row_key") if fmt == "csv" else None
    if fresh is not None:  # a new run reads the new version
        assert fresh.version != lay.version
        assert sum(c.rows for c in source.chunks(uri, fmt, 500, None, fresh)) == len(data.x)


@pytest.mark.parametrize("output", ["directory", "s3"])
def test_a_shard_that_starts_after_the_input_was_replaced_is_refused_by_the_run(
        data: Data, moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        output: str) -> None:
    """Shards (and resumed pods) start at different times: the first records the version
    of the input it read in the run's manifest, and one that finds another version there
    stops before writing a row, naming both ETags; the run's other shard is unaffected."""
    from kustos.runtime.batch import sink

    aws_env(moto, monkeypatch)
    body = data.csv.read_bytes()
    key, uri = f"in/replaced-{output}.csv", f"s3://data/in/replaced-{output}.csv"
    moto.boto.put_object(Bucket="data", Key=key, Body=body)
    first = moto.boto.head_object(Bucket="data", Key=key)["ETag"]
    out: Path | str = (tmp_path / "o" if output == "directory"
                       else f"s3://results/replaced-{output}")
    model = load_model(data.model, "bc")

    def shard(k: int) -> runner.Report:
        return runner.run(runner.Job(input=uri, input_format="csv", output=out,
                                     output_format="csv", chunk_size=500, shard=k, shards=2,
                                     id_field="row_key"), model)

    written = shard(0)
    assert written.rows > 0
    # The same shard again (a resumed pod, nothing left to do) reads the same version.
    assert shard(0).chunks_resumed == written.chunks
    moto.boto.put_object(Bucket="data", Key=key, Body=body.replace(b"k1", b"q1"))
    second = moto.boto.head_object(Bucket="data", Key=key)["ETag"]
    with pytest.raises(sink.OutputError, match="input was replaced since this run began") as err:
        shard(1)
    assert first.strip('"') in str(err.value) and second.strip('"') in str(err.value)
    if output == "directory":
        assert not list((tmp_path / "o").glob("part-000001.csv"))
    else:
        assert "replaced-s3/part-000001.csv" not in s3_parts(moto, "replaced-s3/")


def test_racing_shards_create_the_manifest_once(moto: Moto, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shards that both found no manifest: the conditional PUT (If-None-Match: *) lets
    one create it; the other compares with it instead of replacing it, so two versions
    cannot both become the run's."""
    from kustos.runtime import s3
    from kustos.runtime.batch import sink

    aws_env(moto, monkeypatch)
    uri = "s3://results/racing/_chunking.json"
    assert s3.object_request("PUT", uri, b"{}", create_only=True)[0] == 200
    assert s3.object_request("PUT", uri, b'{"a": 1}', create_only=True)[0] == 412
    assert s3.object_request("GET", uri) == (200, b"{}")
    settings = {"chunkSize": 10, sink.INPUT_VERSION: '"v1"'}
    real = s3.object_request
    racer: list[str] = []

    def late_get(method: str, target: str, body: bytes = b"", **kw: Any) -> tuple[int, bytes]:
        if method == "PUT" and not racer:  # another shard creates it between GET and PUT
            racer.append(target)
            real("PUT", target, b'{"chunkSize": 10, "inputVersion": "\\"v0\\""}',
                 create_only=True)
        return real(method, target, body, **kw)

    monkeypatch.setattr(s3, "object_request", late_get)
    with pytest.raises(sink.OutputError, match=r'ETag "v0" when the run.*"v1" now'):
        sink.S3Output("s3://results/race2", "csv").prepare(settings)
    assert racer == ["s3://results/race2/_chunking.json"]
    sink.S3Output("s3://results/race2", "csv").prepare(
        {"chunkSize": 10, sink.INPUT_VERSION: '"v0"'})  # the winner's version: accepted
    # A directory: the same through a hard link that never replaces.
    sink.prepare(tmp_path, settings)
    sink.prepare(tmp_path, settings)
    with pytest.raises(sink.OutputError, match="input was replaced"):
        sink.prepare(tmp_path, {**settings, sink.INPUT_VERSION: '"v2"'})
    with pytest.raises(sink.OutputError, match="output of another run"):
        sink.prepare(tmp_path, {**settings, "chunkSize": 11})
    assert [p.name for p in tmp_path.iterdir()] == ["_chunking.json"]  # no temporary left
