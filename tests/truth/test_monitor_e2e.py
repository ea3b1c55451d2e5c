"""End to end on 127.0.0.1: a real `kustos serve --truth-url` logs every prediction to a
real `kustos truth`; labels arrive by every route (Seldon feedback and V2 feedback through
the model server, a CSV and a JSONL file on disk, a Parquet file in a moto S3 bucket);
the monitor's metrics equal scikit-learn's on the same joined rows, and survive a restart."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from truth_support import (
    Proc,
    metrics,
    moto_s3,
    post,
    request,
    s3_put,
    serve,
    status,
    truth,
    wait_for,
)

pytestmark = pytest.mark.slow

N_V2, N_SELDON = 60, 60
MIN_SAMPLES = 20


def _labels_for(y: np.ndarray, ids: list[str], flip: set[int]) -> dict[str, int]:
    """The true label of each id, with a few flipped so the model is not always right."""
    return {rid: int(1 - y[i]) if i in flip else int(y[i]) for i, rid in enumerate(ids)}


@pytest.mark.timeout(400)
def test_labels_from_every_route_give_sklearns_metrics(tmp_path: Path) -> None:
    import pandas as pd
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import (
        accuracy_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    x_all, y_all = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(7).permutation(len(x_all))
    x_all, y_all = x_all[order], y_all[order]
    clf = LogisticRegression(max_iter=10000).fit(x_all[200:], y_all[200:])
    model = tmp_path / "cancer.skops"
    sio.dump(clf, model)
    x = x_all[:N_V2 + N_SELDON + 1]
    y = y_all[:N_V2 + N_SELDON + 1]
    v2_ids = [f"v2-{i}" for i in range(N_V2)]
    seldon_ids = [f"seldon-{i}" for i in range(N_SELDON)]
    ids = v2_ids + seldon_ids + ["late-0"]  # late-0: its label comes before its prediction
    truth_of = _labels_for(y, ids, flip={3, 17, 64, 90})
    group = {rid: "a" if i % 3 else "b" for i, rid in enumerate(ids)}

    csv_dir, jsonl_dir, data_dir = tmp_path / "csv", tmp_path / "jsonl", tmp_path / "store"
    csv_dir.mkdir()
    jsonl_dir.mkdir()
    with moto_s3("labels") as s3env:
        config = tmp_path / "truth.json"
        config.write_bytes(orjson.dumps({
            "model": "cancer", "task": "classification", "window": "1h",
            "minSamples": MIN_SAMPLES, "evaluationInterval": "1s",
            "thresholds": {"minAccuracy": 0.999, "minRocAuc": 0.5, "maxLogLoss": 10,
                           "minCoverage": 0.5},
            "bulk": [{"uri": csv_dir.as_uri() + "/", "format": "csv", "interval": "1s"},
                     {"uri": jsonl_dir.as_uri() + "/", "format": "jsonl", "interval": "1s"},
                     {"uri": "s3://labels/daily/", "format": "parquet", "interval": "1s"}],
            "fairness": {"sensitiveFeatures": [{"name": "group", "source": "label"}],
                         "minSliceSize": 5},
        }))
        mon = truth(tmp_path, config, data_dir, s3env)
        srv = serve(tmp_path, model, "cancer", "--model-version", "7", "--truth-url",
                    f"http://127.0.0.1:{mon.port}")
        try:
            mon.wait_ready()
            srv.wait_ready()
            started = time.time()
            # The label of late-0 arrives first, straight at the monitor.
            code, body = post(mon.port, "/v2/models/cancer/feedback",
                              {"labels": [{"id": "late-0", "label": truth_of["late-0"],
                                           "metadata": {"group": group["late-0"]}}]})
            assert (code, body["joined"]) == (200, 0), body
            proba = clf.predict_proba(x)
            for i, rid in enumerate(v2_ids):
                code, body = post(srv.port, "/v2/models/cancer/infer", {
                    "id": rid, "inputs": [{"name": "input-0", "datatype": "FP64",
                                           "shape": [1, 30], "data": x[i].tolist()}],
                    "outputs": [{"name": "predict"}, {"name": "predict_proba"}]})
                assert code == 200, body
            for j, rid in enumerate(seldon_ids):
                code, body = post(srv.port, "/api/v1.0/predictions", {
                    "data": {"ndarray": [x[N_V2 + j].tolist()]}, "meta": {"puid": rid}})
                assert code == 200 and body["meta"]["puid"] == rid, body
            code, body = post(srv.port, "/v2/models/cancer/infer", {
                "id": "late-0", "inputs": [{"name": "input-0", "datatype": "FP64",
                                            "shape": [1, 30], "data": x[-1].tolist()}],
                "outputs": [{"name": "predict"}, {"name": "predict_proba"}]})
            assert code == 200, body
            assert wait_for(lambda: status(mon.port)["predictions"] == len(ids), 60), \
                (status(mon.port), mon.logs(), srv.logs())

            # Seldon feedback through the model server (0..19): forwarded.
            for rid in seldon_ids[:20]:
                code, body = post(srv.port, "/api/v1.0/feedback", {
                    "response": {"meta": {"puid": rid}},
                    "truth": {"data": {"ndarray": [[truth_of[rid]]]},
                              "meta": {"tags": {"group": group[rid]}}}})
                assert code == 200, body
            # V2 feedback through the model server (v2 0..19): forwarded, 202.
            code, body = post(srv.port, "/v2/models/cancer/feedback", {"labels": [
                {"id": rid, "label": truth_of[rid], "metadata": {"group": group[rid]}}
                for rid in v2_ids[:20]]})
            assert code == 202, body
            # CSV (v2 20..39) with two unusable rows; JSONL (seldon 20..39) with one.
            rows = [f"{rid},{truth_of[rid]},{group[rid]}" for rid in v2_ids[20:40]]
            (csv_dir / "day1.csv").write_text("id,label,group\n" + "\n".join(rows)
                                              + "\n,1,a\nv2-59,,a\n")
            lines = [orjson.dumps({"id": rid, "label": truth_of[rid], "group": group[rid]})
                     for rid in seldon_ids[20:40]]
            (jsonl_dir / "day1.jsonl").write_bytes(b"\n".join(lines) + b"\n{not json\n")
            # Parquet in S3 (v2 40..59, plus a label for an id never predicted).
            frame = pd.DataFrame({"id": [*v2_ids[40:60], "ghost"],
                                  "label": [truth_of[r] for r in v2_ids[40:60]] + [1],
                                  "group": [group[r] for r in v2_ids[40:60]] + ["a"]})
            buf = io.BytesIO()
            frame.to_parquet(buf, engine="fastparquet", index=False)
            s3_put(s3env, "labels", "daily/2026-12-06.parquet", buf.getvalue())
            labelled = ["late-0", *seldon_ids[:40], *v2_ids]
            st = wait_for(lambda: (s := status(mon.port))["joined"] == len(labelled)
                          and s["versions"].get("7", {}).get("count") == len(labelled)
                          and s, 90)
            assert st, (status(mon.port), mon.logs())
            elapsed = time.time() - started

            # The same joined rows, evaluated here.
            index = {rid: i for i, rid in enumerate(ids)}
            rows_i = sorted(index[r] for r in labelled)
            y_true = [truth_of[ids[i]] for i in rows_i]
            y_pred = clf.predict(x[rows_i]).tolist()
            p = proba[rows_i]
            prec, rec, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                               zero_division=0)
            want = {"accuracy": accuracy_score(y_true, y_pred), "precision": prec,
                    "recall": rec, "f1": f1, "rocAuc": roc_auc_score(y_true, p[:, 1]),
                    "logLoss": log_loss(y_true, p, labels=[0, 1])}
            v7 = st["versions"]["7"]
            for name, value in want.items():
                assert v7["metrics"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
            unlabelled = [i for i in range(len(ids)) if ids[i] not in set(labelled)]
            assert v7["metrics"]["estimatedAccuracy"] == pytest.approx(
                proba[unlabelled].max(axis=1).mean())
            assert (v7["count"], v7["predictions"]) == (len(labelled), len(ids))
            assert not v7["inconclusive"]
            assert v7["coverage"] == pytest.approx(len(labelled) / len(ids))
            delay = v7["labelDelaySeconds"]
            assert 0 <= delay["p50"] <= delay["p95"] <= elapsed + 1, delay
            assert st["labels"] == len(labelled) + 1  # the ghost label is kept, unjoined
            # Thresholds: accuracy < 0.999 is a violation; the others hold.
            assert [(v["metric"], v["kind"], v["version"]) for v in st["violations"]] == \
                [("accuracy", "performance", "7")], st["violations"]
            assert st["violations"][0]["value"] == pytest.approx(want["accuracy"])
            # Fairness by the labels' metadata (the fairness module's report).
            assert set(v7["fairness"]["features"]["group"]["slices"]) == {"a", "b"}
            # Bulk: each file loaded once, bad rows counted and named.
            bulk = {b["format"]: b for b in st["bulk"]}
            assert (bulk["csv"]["files"], bulk["csv"]["rows"], bulk["csv"]["badRows"]) \
                == (1, 22, 2), bulk
            assert (bulk["jsonl"]["rows"], bulk["jsonl"]["badRows"]) == (21, 1), bulk
            assert (bulk["parquet"]["files"], bulk["parquet"]["rows"],
                    bulk["parquet"]["badRows"]) == (1, 21, 0), bulk
            assert st["error"] is None, st["error"]
            # Prometheus.
            mt = metrics(mon.port)
            key = 'kustos_truth_metric{metric="accuracy",model="cancer",version="7"}'
            assert mt[key] == pytest.approx(want["accuracy"])
            assert mt['kustos_truth_label_coverage{model="cancer",version="7"}'] == \
                pytest.approx(v7["coverage"])
            assert mt['kustos_truth_label_delay_seconds_count{model="cancer"}'] == \
                len(labelled)
            assert mt['kustos_truth_labels_total{outcome="invalid",source="bulk"}'] == 3
            assert mt['kustos_truth_events_total{outcome="accepted",type="response"}'] == \
                len(ids)
            sm = metrics(srv.port)
            assert sm['kustos_truth_feedback_forwarded_total{model="cancer",outcome="sent"}'] \
                == 21

            # Bad input: 4xx naming the problem, at the monitor and at the model server.
            code, body = post(mon.port, "/v2/models/cancer/feedback",
                              {"labels": [{"id": "x", "label": [1]}]})
            assert code == 400 and "labels[0].label" in body["error"], body
            code, body = post(mon.port, "/v2/models/other/feedback",
                              {"labels": [{"id": "x", "label": 1}]})
            assert code == 404 and "other" in body["error"], body
            code, body = request(mon.port, "POST", "/v1/events", b"{",
                                 {"ce-type": "org.kubeflow.serving.inference.request",
                                  "ce-id": "q"})
            assert code == 400 and "malformed JSON" in body["error"], body
            code, body = request(mon.port, "POST", "/v1/events", b"{}",
                                 {"ce-type": "com.example.other", "ce-id": "q"})
            assert code == 400 and "ce-type" in body["error"], body
            code, body = post(srv.port, "/v2/models/cancer/feedback", {"labels": []})
            assert code == 400 and "'labels'" in body["error"], body
            code, body = post(srv.port, "/api/v1.0/feedback",
                              {"truth": {"data": {"ndarray": [[1]]}}})
            assert code == 400 and "inference id" in body["status"]["info"], body
            assert request(mon.port, "GET", "/v1/events")[0] == 405

            before = {k: st[k] for k in ("predictions", "labels", "joined")}
            assert mon.stop() == 0
            # Restart: the store keeps everything; the bulk files are not loaded again.
            mon2 = truth(tmp_path, config, data_dir, s3env)
            try:
                mon2.wait_ready()
                st2 = wait_for(lambda: (s := status(mon2.port))["lastEvaluation"] and s
                               and all(b["lastPoll"] for b in s["bulk"]) and s, 30)
                assert st2, status(mon2.port)
                assert {k: st2[k] for k in before} == before
                assert all(b["files"] == 0 for b in st2["bulk"]), st2["bulk"]
                assert st2["versions"]["7"]["metrics"]["accuracy"] == \
                    pytest.approx(want["accuracy"])
            finally:
                mon2.stop()
        finally:
            srv.stop()
            mon.stop()


def test_bad_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    import subprocess

    from truth_support import KUSTOS

    config = tmp_path / "bad.json"
    config.write_bytes(orjson.dumps({"model": "m", "thresholds": {"minAccuracy": 2}}))
    out = subprocess.run([KUSTOS, "truth", "--config", str(config), "--data-dir",
                          str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "thresholds.minAccuracy" in out.stderr, out.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("relayed", [False, True], ids=["in-process", "relay"])
def test_regression_over_v1_with_request_ids(tmp_path: Path, relayed: bool) -> None:
    """V1 :predict with x-request-id and gRPC ModelInfer with an id; the version from
    ce-modelversion; labels through the model server's V2 feedback; MAE/RMSE equal
    sklearn's, maxMae breaks. ``relayed``: the events go through `kustos payload-relay`
    (the pod's payload-log container, as the operator renders it with a monitor); the
    feedback still goes from the server."""
    import grpc
    import skops.io as sio
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb
    from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    from ports import free_port

    x, y = load_diabetes(return_X_y=True)
    reg = Ridge().fit(x[100:], y[100:])
    model = tmp_path / "diabetes.skops"
    sio.dump(reg, model)
    config = tmp_path / "truth.json"
    config.write_bytes(orjson.dumps({
        "model": "diabetes", "task": "regression", "minSamples": 10,
        "evaluationInterval": "1s", "thresholds": {"maxMae": 20.0, "maxRmse": 500.0}}))
    mon = truth(tmp_path, config, tmp_path / "store")
    grpc_port = free_port()
    monitor = f"http://127.0.0.1:{mon.port}"
    relay, handover = None, []
    if relayed:
        sock = tmp_path / "relay.sock"
        relay = Proc(tmp_path, "payload-relay", [
            "payload-relay", "--socket", str(sock), "--name", "diabetes",
            "--model-version", "2024-06", "--truth-url", monitor])
        relay.wait_ready()
        handover = ["--payload-log-relay", str(sock)]
    srv = serve(tmp_path, model, "diabetes", "--model-version", "2024-06", "--truth-url",
                monitor, "--grpc-port", str(grpc_port), *handover)
    try:
        mon.wait_ready()
        srv.wait_ready()
        for i in range(20):
            code, body = post(srv.port, "/v1/models/diabetes:predict",
                              {"instances": [x[i].tolist()]}, {"x-request-id": f"q{i}"})
            assert code == 200, body
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for i in range(20, 30):
                req = pb.ModelInferRequest(model_name="diabetes", id=f"q{i}")
                t = req.inputs.add(name="input-0", datatype="FP64", shape=[1, 10])
                t.contents.fp64_contents.extend(x[i].tolist())
                assert stub.ModelInfer(req, timeout=10).id == f"q{i}"
        code, body = post(srv.port, "/v2/models/diabetes/feedback", {"labels": [
            {"id": f"q{i}", "label": float(y[i])} for i in range(30)]})
        assert code == 202, body
        st = wait_for(lambda: (s := status(mon.port))["versions"].get("2024-06", {})
                      .get("count") == 30 and s, 60)
        assert st, (status(mon.port), mon.logs(), srv.logs())
        pred = reg.predict(x[:30])
        m = st["versions"]["2024-06"]["metrics"]
        assert m["mae"] == pytest.approx(mean_absolute_error(y[:30], pred), rel=1e-9)
        assert m["rmse"] == pytest.approx(float(np.sqrt(mean_squared_error(y[:30], pred))),
                                          rel=1e-9)
        assert [(v["metric"], v["version"]) for v in st["violations"]] == \
            [("mae", "2024-06")]
        assert st["task"] == "regression" and st["versions"]["2024-06"]["coverage"] == 1.0
        sent = 'kustos_payload_log_events_total{model="diabetes",outcome="sent"}'
        # Counted once the monitor answered (a moment after it stored them).
        sender = srv if relay is None else relay
        assert wait_for(lambda: metrics(sender.port).get(sent) == 60, 30)
        if relay is not None:  # the relay sent the events, the server none
            assert metrics(srv.port).get(sent, 0) == 0
            assert metrics(srv.port)['kustos_payload_log_relayed_total{model="diabetes"}'] == 30
    finally:
        srv.stop()
        mon.stop()
        if relay is not None:
            relay.stop()
