"""Each detector on real data (sklearn's breast_cancer and diabetes) with real alibi-detect:
held-out rows of the reference's distribution are quiet, a shifted feature is caught."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from drift_support import Sidecar, payload, sha256, sidecar, write_csv

pytestmark = pytest.mark.slow


def quartiles(x: np.ndarray, ref_rows: int) -> np.ndarray:
    """Continuous columns -> integer categories 0..3 by the reference's quartiles."""
    cuts = np.quantile(x[:ref_rows], [0.25, 0.5, 0.75], axis=0)
    return np.stack([np.digitize(x[:, k], cuts[:, k]) for k in range(x.shape[1])], axis=1)


def evaluate(s: Sidecar, x: np.ndarray, windows: int) -> dict[str, object]:
    code, body = s.post(payload(x))
    assert code == 202 and body == {"accepted": len(x)}, body
    return s.wait_windows(windows)


@pytest.mark.timeout(300)
def test_ks_quiet_on_held_out_rows_then_catches_one_shifted_feature(
        drift_venv: Path, cancer: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    x, names = cancer
    ref = write_csv(tmp_path / "cancer.csv", x[:300], names)
    held = x[300:500]
    with sidecar(drift_venv, tmp_path, "--detector", "ks", "--reference-uri", ref.as_uri(),
                 "--reference-digest", sha256(ref), "--window-size", "200",
                 "--window-max-age", "0", "--name", "cancer") as s:
        st = s.wait_loaded()
        assert st["ready"] and st["error"] is None and st["featureNames"] == names

        st = evaluate(s, held, 1)
        assert not st["drift"] and st["driftingFeatures"] == [] and st["episode"] is None
        assert len(st["featurePValues"]) == 30 and min(st["featurePValues"].values()) > 0.05 / 30

        shifted = held.copy()
        j = names.index("mean_radius")
        shifted[:, j] += held[:, j].std()  # one standard deviation, this feature only
        st = evaluate(s, shifted, 2)
        assert st["drift"] and "mean_radius" in st["driftingFeatures"]
        assert len(st["driftingFeatures"]) <= 2, st["driftingFeatures"]
        assert st["featurePValues"]["mean_radius"] < 0.05 / 30
        assert st["episode"]["id"] == 1 and st["episodes"] == 1

        st = evaluate(s, held, 3)  # back to normal: the episode ends
        assert not st["drift"] and st["episode"] is None and st["episodes"] == 1

        m = s.metrics()
        assert m['kustos_drift_windows_total{model="cancer"}'] == 3
        assert m['kustos_drift_episodes_total{model="cancer"}'] == 1
        assert m['kustos_drift_detected{model="cancer"}'] == 0
        assert m['kustos_drift_inputs_dropped_total{model="cancer"}'] == 0
        assert 'kustos_drift_p_value{feature="mean_radius",model="cancer"}' in m
        assert m['kustos_drift_evaluation_seconds_count{model="cancer"}'] == 3


@pytest.mark.timeout(300)
def test_chisquare_and_tabular_catch_a_categorical_shift(
        drift_venv: Path, cancer: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    x, names = cancer
    cats = quartiles(x[:, :5], 300).astype(np.float64)
    cat_names = [f"{n}_q" for n in names[:5]]
    # tabular: 4 continuous features and 2 categorical ones (indices 4, 5)
    mixed = np.concatenate([x[:, 5:9], cats[:, :2]], axis=1)
    mixed_names = names[5:9] + cat_names[:2]
    ref_c = write_csv(tmp_path / "cats.csv", cats[:300], cat_names)
    ref_t = write_csv(tmp_path / "mixed.csv", mixed[:300], mixed_names)
    common = ["--window-size", "200", "--window-max-age", "0"]
    with sidecar(drift_venv, tmp_path, "--detector", "chisquare", "--reference-uri",
                 str(ref_c), *common) as chi, \
         sidecar(drift_venv, tmp_path, "--detector", "tabular", "--reference-uri",
                 str(ref_t), "--categorical", "4,5", *common) as tab:
        for s, data, col in ((chi, cats, 2), (tab, mixed, 5)):
            assert s.wait_loaded()["ready"], s.logs()
            held = data[300:500]
            st = evaluate(s, held, 1)
            assert not st["drift"], st
            shifted = held.copy()
            shifted[:, col] = np.where(shifted[:, col] >= 2, 0, shifted[:, col])  # 2, 3 -> 0
            st = evaluate(s, shifted, 2)
            feature = (cat_names if s is chi else mixed_names)[col]
            assert st["drift"] and st["driftingFeatures"] == [feature], st
            assert st["featurePValues"][feature] < 1e-6


@pytest.mark.timeout(300)
def test_mmd_catches_a_shift_on_all_features_at_once(
        drift_venv: Path, diabetes: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    x, names = diabetes
    ref = tmp_path / "diabetes.npy"
    np.save(ref, x[:250])
    held = x[250:400]
    with sidecar(drift_venv, tmp_path, "--detector", "mmd", "--reference-uri", str(ref),
                 "--feature-names", ",".join(names), "--window-size", "150",
                 "--permutations", "100", "--name", "diabetes") as s:
        st = s.wait_loaded()
        assert st["ready"], st
        st = evaluate(s, held, 1)
        assert not st["drift"] and st["pValue"] > 0.05, st
        shifted = held.copy()
        shifted[:, names.index("bmi")] += 1.5 * held[:, names.index("bmi")].std()
        st = evaluate(s, shifted, 2)
        assert st["drift"] and st["pValue"] <= 0.05 and st["distance"] > 0, st
        assert st["episode"] is not None
        m = s.metrics()
        assert m['kustos_drift_p_value{feature="*",model="diabetes"}'] <= 0.05
        assert m['kustos_drift_distance{model="diabetes"}'] > 0


@pytest.mark.timeout(300)
def test_cvm_online_fires_after_the_shift_not_before(
        drift_venv: Path, diabetes: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    x, names = diabetes
    ref = write_csv(tmp_path / "diabetes.csv", x[:250], names)
    with sidecar(drift_venv, tmp_path, "--detector", "cvm-online", "--reference-uri",
                 str(ref), "--ert", "1000", "--online-window-sizes", "50",
                 "--window-size", "100", "--window-max-age", "0") as s:
        st = s.wait_loaded()
        assert st["ready"], st
        # 100 rows without drift: with ERT 1000 a false alarm here has ~5% probability
        # (the seed is fixed, so this is deterministic).
        st = evaluate(s, x[250:350], 1)
        assert not st["drift"] and st["detectedAtRow"] is None, st
        shifted = x[350:442].copy()
        j = names.index("s5")
        shifted[:, j] += 1.5 * x[:, j].std()
        code, _ = s.post(payload(np.concatenate([shifted, shifted[:8]])))
        assert code == 202
        st = s.wait_windows(2)
        assert st["drift"] and "s5" in st["driftingFeatures"], st
        assert 0 < st["detectedAtRow"] < 100
        assert st["threshold"] > 0 and st["featureDistances"]["s5"] > st["threshold"]


@pytest.mark.timeout(300)
def test_evaluation_falling_behind_drops_inputs_and_counts_them(
        drift_venv: Path, diabetes: tuple[np.ndarray, list[str]], tmp_path: Path) -> None:
    x, _ = diabetes
    ref = tmp_path / "diabetes.npy"
    np.save(ref, x[:300])
    # mmd with many permutations is slow on purpose: each window takes a while
    with sidecar(drift_venv, tmp_path, "--detector", "mmd", "--reference-uri", str(ref),
                 "--permutations", "2000", "--window-size", "20", "--window-max-age", "0",
                 "--max-pending-windows", "1", "--name", "busy") as s:
        assert s.wait_loaded()["ready"]
        body = payload(x[300:320])
        for _ in range(10):
            started = time.monotonic()
            code, _ = s.post(body)
            assert code == 202 and time.monotonic() - started < 2.0  # never waits
        st = s.status()
        assert st["inputsAccepted"] == 200
        assert st["inputsDropped"] >= 100 and st["inputsDropped"] % 20 == 0, st
        dropped = st["inputsDropped"]
        st = s.wait_windows((200 - dropped) // 20, timeout=120)
        assert st["windowsEvaluated"] * 20 + st["inputsDropped"] == 200
        assert s.metrics()['kustos_drift_inputs_dropped_total{model="busy"}'] == dropped
