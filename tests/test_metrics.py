"""Metrics against scikit-learn and against a transcription of the official definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from asl.metrics import average_precision, calibrate_thresholds, mAP, map_and_ap, mAP_known, multilabel_metrics


def official_ap_stable(output, target):
    """The official average_precision with its ranking made stable (descending, ties by index)."""
    indices = np.argsort(-output, kind="stable")
    total_count_ = np.cumsum(np.ones((len(output), 1)))
    target_ = target[indices]
    ind = target_ == 1
    pos_count_ = np.cumsum(ind)
    total = pos_count_[-1]
    pos_count_[np.logical_not(ind)] = 0
    pp = pos_count_ / total_count_
    return np.sum(pp) / (total + 1e-8)


def official_map_stable(targs, preds):
    return 100 * np.mean([official_ap_stable(preds[:, k], targs[:, k]) for k in range(preds.shape[1])])


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
    assert mAP(targs, preds) == pytest.approx(official_map_stable(targs, preds), abs=1e-9)
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
    assert mAP(targs, preds) == pytest.approx(official_map_stable(targs, preds), abs=1e-9)
    ref = [average_precision_score(targs[:, k], preds[:, k]) for k in range(15)]
    np.testing.assert_allclose(average_precision(targs, preds), ref, rtol=1e-10)


def test_tie_order_is_stable():
    # positive first among equals when its index is smaller, last when larger
    preds = np.array([[0.5], [0.5], [0.1]])
    assert mAP(np.array([[1], [0], [0]]), preds) == pytest.approx(100.0)
    assert mAP(np.array([[0], [1], [0]]), preds) == pytest.approx(50.0)


def test_torch_inputs_and_minus_one():
    targs, preds = _tie_free(100, 4, 0.2, seed=2)
    assert mAP(torch.from_numpy(targs), torch.from_numpy(preds)) == pytest.approx(mAP(targs, preds))
    t = targs.copy()
    t[:10, 0] = -1
    keep = t[:, 0] != -1
    ap = average_precision(t, preds)
    assert ap[0] == pytest.approx(average_precision_score(targs[keep, 0], preds[keep, 0]))
    # the official mAP treats -1 as negative
    assert mAP(t, preds) == pytest.approx(official_map_stable(t, preds))


def test_large_input_uses_threads_and_agrees(monkeypatch):
    targs, preds = _tie_free(4000, 60, 0.03, seed=3)
    a = mAP(targs, preds)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert mAP(targs, preds) == pytest.approx(a, abs=1e-12)
    assert a == pytest.approx(official_map_stable(targs, preds), abs=1e-9)


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
        pp = preds[:, k] >= t
        tp = (pp & (targs[:, k] == 1)).sum()
        return 2 * tp / (pp.sum() + targs[:, k].sum())

    for k in range(3):
        best = max(f1(k, t) for t in np.unique(preds[:, k]))
        assert f1(k, thr[k]) == pytest.approx(best)
    assert calibrate_thresholds(np.zeros((5, 1)), rng.random((5, 1)))[0] == 1.0
