"""Scores kept only at labelled entries: every figure equals the dense masked computation bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from asl.labelled import LabelledScores, ScoreCollector
from asl.metrics import (
    evaluation_result,
    labelled_map_and_ap,
    labelled_metrics,
    labelled_thresholds,
    map_and_ap,
    multilabel_metrics,
)


def _partial(n=300, c=12, seed=0, known=0.3, ties=True):
    """Open Images-like labels: most entries unknown (-1); a class with no positive, a class with no
    labelled entry, scores with ties and a NaN."""
    rng = np.random.default_rng(seed)
    targets = np.where(rng.random((n, c)) < 0.4, 1.0, 0.0).astype(np.float32)
    targets[rng.random((n, c)) > known] = -1
    targets[:, 3] = np.where(targets[:, 3] == 1, 0, targets[:, 3])  # labelled negatives only
    targets[:, 5] = -1  # nothing labelled
    scores = rng.random((n, c)).astype(np.float32)
    if ties:
        scores = np.round(scores * 20) / 20  # many ties between positives and negatives
        scores[7, 2] = np.nan
    return targets, scores


def _per_class_by_hand(targets, scores):
    """Each class's labelled entries, the dense way: a mask per column."""
    return [(scores[targets[:, k] != -1, k], targets[targets[:, k] != -1, k] == 1) for k in range(targets.shape[1])]


def _f1(s, t, x):
    return 2 * (t & (s > x)).sum() / ((s > x).sum() + t.sum())


@pytest.mark.parametrize("ties", [False, True])
def test_map_ap_metrics_thresholds_equal_the_dense_masked_ones(ties):
    targets, scores = _partial(ties=ties)
    lab = LabelledScores.from_dense(targets, scores)
    assert len(lab) == int((targets != -1).sum()) and not lab.complete
    m, ap = labelled_map_and_ap(lab)
    m_dense, ap_dense = map_and_ap(targets, scores)
    assert m == m_dense  # bit for bit, ties and NaN included
    np.testing.assert_array_equal(ap, ap_dense)
    assert np.isnan(ap[3]) and np.isnan(ap[5])  # no positive: left out of the mean
    for thr in (0.5, np.linspace(0.2, 0.7, targets.shape[1])):
        assert labelled_metrics(lab, thr) == multilabel_metrics(targets, scores, thr)
    by_hand = _per_class_by_hand(targets, scores)
    for k, (s, t) in enumerate(by_hand):
        got = lab.segment(k)
        np.testing.assert_array_equal(got[1], s)
        np.testing.assert_array_equal(got[2], t)
    thr = labelled_thresholds(lab)
    for k, (s, t) in enumerate(by_hand):  # each class's threshold is the best F1 over its labelled entries
        if not t.any():
            assert thr[k] == 1.0
            continue
        cuts = [np.nextafter(v, -1, dtype=np.float32) for v in s[np.isfinite(s)]]
        assert _f1(s, t, thr[k]) == max(_f1(s, t, x) for x in cuts)


def test_without_unknowns_the_mean_is_the_official_one():
    rng = np.random.default_rng(1)
    targets = (rng.random((50, 4)) < 0.3).astype(np.float32)
    targets[:, 2] = 0  # a class without positives counts as 0 in the official mean
    scores = rng.random((50, 4)).astype(np.float32)
    lab = LabelledScores.from_dense(targets, scores)
    assert lab.complete
    assert labelled_map_and_ap(lab)[0] == map_and_ap(targets, scores)[0]


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_the_collector_past_its_dense_limit_keeps_entries_only_and_scores_the_same(batch):
    targets, scores = _partial(n=211)
    dense, sparse = ScoreCollector(211, dense_limit=10**9), ScoreCollector(211, dense_limit=0)
    for a in range(0, 211, batch):
        for col in (dense, sparse):
            col.add(scores[a : a + batch], targets[a : a + batch])
    assert sparse.dense() == (None, None) and sparse._scores is None
    ev_d, ev_s = evaluation_result(dense, 1.0), evaluation_result(sparse, 1.0)
    assert ev_s["scores"] is None and ev_s["targets"] is None
    assert ev_s["mAP"] == ev_d["mAP"] == map_and_ap(targets, scores)[0]
    np.testing.assert_array_equal(ev_s["per_class_ap"], ev_d["per_class_ap"])
    for f in ("indptr", "rows", "scores", "positive"):
        np.testing.assert_array_equal(getattr(ev_s["labelled"], f), getattr(ev_d["labelled"], f))
    np.testing.assert_allclose(ev_s["class_mean"], np.nanmean(scores.astype(np.float64), 0), rtol=1e-12)
    assert ev_s["p_pos"] == pytest.approx(float(scores[targets == 1].mean()), rel=1e-6)
    assert ev_s["p_neg"] == pytest.approx(float(scores[targets == 0].mean()), rel=1e-6)
    assert ev_s["num_images"] == 211


@pytest.mark.parametrize("sparse", [False, True])
def test_ranks_merge_into_the_single_process_evaluation(sparse):
    """Each rank scores rows i * world + rank (the evaluation sampler's shard, padded past N); merged,
    they are the single-process evaluation."""
    from asl.distributed import ShardSampler

    n, world = 23, 3
    targets, scores = _partial(n=n)
    limit = 0 if sparse else 10**9
    single = ScoreCollector(n, dense_limit=limit)
    single.add(scores, targets)
    ranks = []
    for r in range(world):
        idx = list(ShardSampler(n, r, world))
        col = ScoreCollector(n, dense_limit=limit, rank=r, world_size=world)
        col.add(scores[idx], targets[idx])
        ranks.append(col)
    merged = ranks[0]
    dense = None
    if not sparse:  # what gather_rows does across ranks
        parts = [c.dense() for c in ranks]
        dense = [np.stack([p[j] for p in parts], axis=1).reshape(-1, scores.shape[1])[:n] for j in (0, 1)]
    merged.absorb([c.shared_state() for c in ranks], *(dense or (None, None)))
    a, b = evaluation_result(single, 1.0), evaluation_result(merged, 1.0)
    assert a["mAP"] == b["mAP"]
    np.testing.assert_array_equal(a["labelled"].rows, b["labelled"].rows)
    np.testing.assert_array_equal(a["labelled"].scores, b["labelled"].scores)
    np.testing.assert_allclose(a["class_mean"], b["class_mean"], rtol=1e-12)  # padding counted once
    assert b["num_images"] == n


def test_saved_entries_load_back_and_make_the_dense_arrays(tmp_path):
    from asl.files import atomic_write

    targets, scores = _partial(n=40, ties=False)
    lab = LabelledScores.from_dense(targets, scores)
    lab.save(tmp_path / "s.npz", atomic_write)
    back = LabelledScores.load(tmp_path / "s.npz")
    assert back.num_images == 40
    t, s = back.dense()
    np.testing.assert_array_equal(t, targets)
    known = targets != -1
    np.testing.assert_array_equal(s[known], scores[known])
    assert np.isnan(s[~known]).all()
    np.savez(tmp_path / "other.npz", rows=np.arange(3))
    with pytest.raises(ValueError, match="not a labelled-scores file"):
        LabelledScores.load(tmp_path / "other.npz")


def test_single_label_ranks_merge_into_the_single_process_evaluation():
    from asl.distributed import ShardSampler

    rng = np.random.default_rng(4)
    n, c, world = 23, 9, 3
    scores = rng.random((n, c)).astype(np.float32)
    targets = np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
    for limit in (10**9, 0):  # dense, and past the dense limit (the top classes only)
        single = ScoreCollector(n, dense_limit=limit, single_label=True)
        single.add(scores, targets)
        ranks = []
        for r in range(world):
            idx = list(ShardSampler(n, r, world))
            col = ScoreCollector(n, dense_limit=limit, rank=r, world_size=world, single_label=True)
            col.add(scores[idx], targets[idx])
            ranks.append(col)
        dense = [None, None]
        if limit:
            parts = [col.dense() for col in ranks]
            dense = [np.stack([p[j] for p in parts], axis=1).reshape(-1, c)[:n] for j in (0, 1)]
        ranks[0].absorb([col.shared_state() for col in ranks], *dense)
        a, b = evaluation_result(single, 1.0), evaluation_result(ranks[0], 1.0)
        for k in ("top1", "top5", "macro_f1", "balanced_accuracy", "mAP"):
            assert a[k] == b[k], k
        np.testing.assert_array_equal(a["truth"], targets.argmax(1))
        np.testing.assert_array_equal(b["top"][:, 0], scores.argmax(1))
        assert b["mAP_is_top1"] == (limit == 0)
