"""Metrics against scikit-learn and against a transcription of the official definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from asl.metrics import average_precision, calibrate_thresholds, mAP, map_and_ap, mAP_known, multilabel_metrics
from bench.official import official_map


def _tie_free(n, c, frac, seed):
    rng = np.random.default_rng(seed)
    targs = (rng.random((n, c)) < frac).astype(np.float32)
    targs[rng.integers(0, n, c), np.arange(c)] = 1  # every class has a positive
    preds = rng.permuted(np.tile(np.arange(n), (c, 1)), axis=1).T.astype(np.float64) / n
    return targs, preds


@pytest.mark.parametrize("n,c,frac", [(200, 5, 0.1), (1000, 20, 0.03), (57, 3, 0.5)])
def test_equals_sklearn_without_ties(n, c, frac):
    targs, preds = _tie_free(n, c, frac, seed=n)
    ap = average_precision(targs, preds)
    ref = [average_precision_score(targs[:, k], preds[:, k]) for k in range(c)]
    np.testing.assert_allclose(ap, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mAP(targs, preds), 100 * np.mean(ref), rtol=1e-7)


def test_equals_official_with_ties_and_empty_classes():
    rng = np.random.default_rng(1)
    n, c = 300, 12
    targs = (rng.random((n, c)) < 0.1).astype(np.float32)
    targs[:, 3] = 0  # a class without positives counts as 0
    preds = np.round(rng.random((n, c)), 1)  # heavy ties, between positives and negatives too
    preds[:, 5] = 0.5  # a constant column: every sample tied
    assert mAP(targs, preds) == pytest.approx(official_map(targs, preds), rel=1e-12)
    # Columns where a positive ties a negative are ranked by the official argsort itself and
    # summed as the official code sums: the same number to the last bit.
    for dtype in (np.float32, np.float64):
        p = preds.astype(dtype)
        for k in range(c):
            if targs[:, k].any() and np.isin(p[targs[:, k] == 1, k], p[targs[:, k] != 1, k]).any():
                assert mAP(targs[:, [k]], p[:, [k]]) == official_map(targs[:, [k]], p[:, [k]])
    ap = average_precision(targs, preds)
    assert np.isnan(ap[3])
    assert mAP_known(targs, preds) == pytest.approx(100 * np.nanmean(ap))


def test_map_and_ap_is_one_pass_of_map_and_average_precision():
    rng = np.random.default_rng(7)
    targs = (rng.random((400, 9)) < 0.1).astype(np.float32)
    targs[:, 2] = 0  # no positives: nan AP, 0 in the official mean
    preds = np.round(rng.random((400, 9)), 2)
    m, ap = map_and_ap(targs, preds)
    assert m == mAP(targs, preds)  # bit-identical: evaluate()'s mAP must not move
    np.testing.assert_array_equal(ap, average_precision(targs, preds))
    targs[rng.random(targs.shape) < 0.05] = -1  # unknown labels: the known-only mean
    m, ap = map_and_ap(targs, preds)
    assert m == mAP_known(targs, preds)
    np.testing.assert_array_equal(ap, average_precision(targs, preds))


def test_label_correlated_scores_equal_official():
    """Scores of a trained-like model: most negatives fall below the lowest positive."""
    rng = np.random.default_rng(5)
    targs = (rng.random((2000, 15)) < 0.05).astype(np.float32)
    preds = targs * 0.6 + rng.random(targs.shape) * 0.5
    targs[:5] = 0
    preds[:5] = 2.0  # a few negatives above every positive, tied among themselves
    assert mAP(targs, preds) == pytest.approx(official_map(targs, preds), abs=1e-9)
    ref = [average_precision_score(targs[:, k], preds[:, k]) for k in range(15)]
    np.testing.assert_allclose(average_precision(targs, preds), ref, rtol=1e-10)


def test_ties_are_ranked_as_the_official_code_ranks_them():
    # the examples: a positive tied with a negative takes the place numpy's sort leaves it
    one = np.array([[0.5], [0.5]], dtype=np.float32)
    assert mAP(np.array([[1], [0]]), one) == official_map(np.array([[1], [0]]), one) == pytest.approx(50.0)
    three = np.array([[0.5], [0.5], [0.5]], dtype=np.float32)
    assert mAP(np.array([[0], [0], [1]]), three) == official_map(np.array([[0], [0], [1]]), three)
    assert mAP(np.array([[0], [0], [1]]), three) == pytest.approx(100.0)
    # saturated scores (exactly 1.0f, as sigmoid gives for large logits) tie across many samples
    rng = np.random.default_rng(11)
    targs = (rng.random((3000, 20)) < 0.05).astype(np.float32)
    preds = np.clip(targs * 0.7 + rng.random(targs.shape).astype(np.float32) * 0.6, 0, 1).astype(np.float32)
    preds[rng.random(preds.shape) < 0.012] = 1.0
    assert mAP(targs, preds) == pytest.approx(official_map(targs, preds), rel=1e-12)
    stable = 100 * np.mean([_stable_ap(preds[:, k], targs[:, k]) for k in range(20)])
    assert abs(stable - official_map(targs, preds)) > 1e-3  # the stable order would be another number


def _stable_ap(output, target):
    order = np.argsort(-output, kind="stable")
    hit = target[order] == 1
    return np.sum(np.cumsum(hit)[hit] / (np.flatnonzero(hit) + 1)) / (hit.sum() + 1e-8)


def test_torch_inputs_and_minus_one():
    targs, preds = _tie_free(100, 4, 0.2, seed=2)
    assert mAP(torch.from_numpy(targs), torch.from_numpy(preds)) == pytest.approx(mAP(targs, preds))
    t = targs.copy()
    t[:10, 0] = -1
    keep = t[:, 0] != -1
    ap = average_precision(t, preds)
    assert ap[0] == pytest.approx(average_precision_score(targs[keep, 0], preds[keep, 0]))
    # the official mAP treats -1 as negative
    assert mAP(t, preds) == pytest.approx(official_map(t, preds))


def test_large_input_uses_threads_and_agrees(monkeypatch):
    targs, preds = _tie_free(4000, 60, 0.03, seed=3)
    a = mAP(targs, preds)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert mAP(targs, preds) == pytest.approx(a, abs=1e-12)
    assert a == pytest.approx(official_map(targs, preds), abs=1e-9)


def test_thresholds_are_strict_and_in_the_scores_precision():
    # the official validate.py: output.gt(thre) on float32 scores; 0.8f is not above 0.8
    targs, preds = np.array([[1], [0]]), np.array([[0.8], [0.3]], dtype=np.float32)
    assert multilabel_metrics(targs, preds, 0.8)["CR"] == 0.0
    assert multilabel_metrics(targs, preds, 0.79)["CR"] == 100.0
    official = torch.from_numpy(preds).gt(0.8).numpy()
    assert not official.any()


def test_f_c_is_the_mean_of_per_class_f1_and_cf1_the_harmonic_mean_of_cp_cr():
    # class 0: TP 2 FP 0 FN 2 -> P 1, R 1/2, F1 2/3; class 1: TP 1 FP 3 FN 0 -> P 1/4, R 1, F1 2/5
    targs = np.array([[1, 1], [1, 0], [1, 0], [1, 0], [0, 0]])
    preds = np.array([[0.9, 0.9], [0.9, 0.9], [0.1, 0.9], [0.1, 0.9], [0.1, 0.1]])
    m = multilabel_metrics(targs, preds, 0.5)
    cp, cr = (1 + 1 / 4) / 2, (1 / 2 + 1) / 2
    assert m["CP"] == pytest.approx(100 * cp) and m["CR"] == pytest.approx(100 * cr)
    assert m["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))  # 66.67: the papers' CF1
    assert m["F_C"] == pytest.approx(100 * (2 / 3 + 2 / 5) / 2)  # 53.33: the official printout's F_C
    assert abs(m["CF1"] - m["F_C"]) > 10


def test_multilabel_metrics_by_hand():
    targs = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    preds = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.1], [0.1, 0.7]])
    m = multilabel_metrics(targs, preds, threshold=0.5)
    # class 0: TP 1 FP 1 FN 1; class 1: TP 1 FP 1 FN 1
    assert m["CP"] == pytest.approx(50) and m["CR"] == pytest.approx(50) and m["CF1"] == pytest.approx(50)
    assert m["OP"] == pytest.approx(50) and m["OR"] == pytest.approx(50) and m["OF1"] == pytest.approx(50)
    m = multilabel_metrics(targs, preds, threshold=[0.05, 0.95])  # class 1 never predicted
    assert m["CP"] == pytest.approx(100 * (2 / 4 + 0) / 2)
    assert m["CR"] == pytest.approx(100 * (1 + 0) / 2)
    assert m["OP"] == pytest.approx(50) and m["OR"] == pytest.approx(50)


def test_calibrated_thresholds_maximize_f1():
    rng = np.random.default_rng(4)
    targs = (rng.random((300, 3)) < 0.2).astype(np.float32)
    preds = np.clip(targs * 0.3 + rng.random((300, 3)) * 0.7, 0, 1)
    thr = calibrate_thresholds(targs, preds)

    def f1(k, t):
        pp = preds[:, k] > t  # the strict comparison the thresholds are made for
        tp = (pp & (targs[:, k] == 1)).sum()
        return 2 * tp / (pp.sum() + targs[:, k].sum())

    for k in range(3):
        best = max(f1(k, t) for t in np.unique(preds[:, k]) - 1e-9)
        assert f1(k, thr[k]) == pytest.approx(best)
    assert calibrate_thresholds(np.zeros((5, 1)), rng.random((5, 1)))[0] == 1.0
