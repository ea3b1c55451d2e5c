"""The sidecar's HTTP surface: malformed inputs get 4xx with an error object (never 500),
and reference problems leave it up, not ready, with a reason and a fix in the status."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from drift_support import free_port, payload, sha256, sidecar, write_csv

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_bad_inputs_are_4xx_and_good_ones_fill_the_window(
        drift_venv: Path, cancer: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    x, names = cancer
    ref = write_csv(tmp_path / "cancer.csv", x[:300], names)
    with sidecar(drift_venv, tmp_path, "--detector", "ks", "--reference-uri", str(ref),
                 "--window-size", "100", "--window-max-age", "0") as s:
        assert s.wait_loaded()["ready"]

        def tensor(**kw: object) -> bytes:
            t = {"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": [0.0] * 30}
            t.update(kw)
            return orjson.dumps({"model_name": "m", "inputs": [t]})

        bad = {
            b"{not json": (400, "JSON"),
            b"[1, 2]": (400, "object"),
            b'{"inputs": []}': (400, "non-empty"),
            b'{"inputs": [3]}': (400, "tensor"),
            tensor(shape=[2, 30]): (400, "needs 60 elements"),
            tensor(datatype="FP99"): (400, "datatype"),
            tensor(datatype="BYTES", data=["a"] * 30): (400, "numeric"),
            tensor(data=["1"] * 30): (400, "numbers"),
            tensor(shape="1,30"): (400, "shape"),
            tensor(shape=[]): (400, "elements"),
            tensor(datatype="FP16", data=[1e6] * 30): (422, "infinite"),
            payload(x[:5, :10]): (422, "the reference has 30"),
            orjson.dumps({"inputs": [
                {"name": "a", "datatype": "FP64", "shape": [2, 15], "data": [0.0] * 30},
                {"name": "b", "datatype": "FP64", "shape": [3, 15], "data": [0.0] * 45}]}):
                (400, "rows"),
        }
        for body, (code, words) in bad.items():
            got, answer = s.post(body)
            assert got == code, (body[:80], answer)
            assert isinstance(answer, dict) and words in answer["error"], (body[:80], answer)
        assert s.get("/v1/inputs")[0] == 405
        assert s.post(b"{}", "/v1/drift/status")[0] == 405
        assert s.get("/nowhere")[0] == 404
        assert s.status()["inputsAccepted"] == 0

        # one tensor per feature, named as the features, in any order: put in feature order
        cols = [{"name": n, "datatype": "FP64", "shape": [60], "data": x[300:360, j].tolist()}
                for j, n in reversed(list(enumerate(names)))]
        assert s.post(orjson.dumps({"inputs": cols}))[0] == 202
        assert s.post(payload(x[360:400].astype(np.float32)))[0] == 202  # FP32, as served
        st = s.wait_windows(1)
        assert st["inputsAccepted"] == 100 and st["window"]["rows"] == 0
        assert not st["drift"], st  # rows reordered correctly: same distribution


@pytest.mark.timeout(240)
def test_window_closes_by_age_once_it_has_the_minimum_rows(
        drift_venv: Path, cancer: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    x, names = cancer
    ref = write_csv(tmp_path / "cancer.csv", x[:300], names)
    with sidecar(drift_venv, tmp_path, "--detector", "ks", "--reference-uri", str(ref),
                 "--window-size", "500", "--window-max-age", "1",
                 "--window-min-rows", "30") as s:
        assert s.wait_loaded()["ready"]
        assert s.post(payload(x[300:320]))[0] == 202
        time.sleep(2.5)  # old enough, but 20 < 30 rows: stays open
        st = s.status()
        assert st["windowsEvaluated"] == 0 and st["window"]["rows"] == 20
        assert s.post(payload(x[320:335]))[0] == 202
        st = s.wait_windows(1, timeout=10)
        assert st["window"]["rows"] == 0 and len(st["featurePValues"]) == 30


@pytest.mark.timeout(240)
def test_reference_problems_keep_the_sidecar_up_and_say_what_to_fix(
        drift_venv: Path, cancer: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    x, names = cancer
    good = write_csv(tmp_path / "cancer.csv", x[:100], names)
    broken = tmp_path / "broken.csv"
    broken.write_text("a,b\n1,2\n3,oops\n")
    parquet = tmp_path / "ref.parquet"
    parquet.write_bytes(b"PAR1")
    cases = {
        "digest": (["--detector", "ks", "--reference-uri", str(good),
                    "--reference-digest", "sha256:" + "0" * 64],
                   "DigestMismatch", sha256(good).split(":")[1]),
        "broken": (["--detector", "ks", "--reference-uri", str(broken)],
                    "ReferenceInvalid", "line 3, column 'b'"),
        "unreachable": (["--detector", "ks", "--reference-uri",
                         f"http://127.0.0.1:{free_port()}/ref.csv"],
                        "ReferenceFetchFailed", "network error"),
        "missing": (["--detector", "ks", "--reference-uri", str(tmp_path / "nope.csv")],
                    "ReferenceFetchFailed", "not found"),
        "detector": (["--detector", "psi", "--reference-uri", str(good)],
                     "DetectorUnsupported", "use one of ks, chisquare"),
        "names": (["--detector", "ks", "--reference-uri", str(good),
                   "--feature-names", "a,b,c"], "ReferenceInvalid", "3 features"),
        "format": (["--detector", "ks", "--reference-uri", str(parquet)],
                   "ReferenceInvalid", ".csv file"),
        "categorical": (["--detector", "chisquare", "--reference-uri", str(good)],
                        "ReferenceInvalid", "encode categories as integers"),
    }
    with contextlib.ExitStack() as stack:
        running = {k: stack.enter_context(sidecar(drift_venv, tmp_path, *args))
                   for k, (args, _, _) in cases.items()}
        for key, s in running.items():
            _, reason, words = cases[key]
            st = s.wait_loaded(timeout=120)
            assert not st["ready"] and st["error"]["reason"] == reason, (key, st)
            assert words in st["error"]["message"], (key, st["error"])
            assert s.get("/v2/health/live")[0] == 200
            assert s.get("/v2/health/ready")[0] == 503
            code, body = s.post(payload(x[:3]))
            assert code == 503 and reason in body["error"], (key, body)
            assert s.metrics()['kustos_drift_ready{model="model"}'] == 0
            assert s.proc.poll() is None, key
