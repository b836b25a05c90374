"""Multi-label metrics: AP / mAP with the official semantics, and CP/CR/CF1/F_C/OP/OR/OF1.

Average precision of one class (the official ``average_precision``): rank the N
samples by score with ``scores.argsort()[::-1]`` (numpy's default, unstable, sort,
reversed); then

    AP = (1 / (P + 1e-8)) * sum over positives i of  precision@rank(i)
       = (1 / (P + 1e-8)) * sum_{j=1..P}  j / (j + n_j)

where the j-th ranked positive has n_j negatives ranked before it. Only a tie between a
positive and a negative makes the order of equal scores matter; there the official value
depends on the order numpy's sort leaves them in (targets [1, 0] with scores [0.5, 0.5]
give 50.0, targets [0, 0, 1] with equal scores 100.0), which can differ between numpy
versions and CPUs: such a class is ranked exactly as the official code ranks it on this
machine, with the same ``argsort`` call on the same values.

A tie-free class needs no full ranking: the negatives' scores are sorted as plain values
(numpy's SIMD sort, about twice as fast as the official ``argsort``; negatives below the
lowest positive are left out, as they rank after every positive), the P positives' scores
likewise, and n_j is one binary search of each positive among the sorted negatives
(O(P log N)); the same searches detect a positive-negative tie. Classes are spread over
threads (numpy's sort releases the GIL).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .labelled import LabelledScores, ScoreCollector

log = logging.getLogger(__name__)

__all__ = [
    "average_precision",
    "mAP",
    "mAP_known",
    "map_and_ap",
    "multilabel_metrics",
    "calibrate_thresholds",
    "labelled_map_and_ap",
    "labelled_metrics",
    "labelled_thresholds",
    "predicted",
    "evaluation_result",
    "single_label_metrics",
]


def check_targets(targs: np.ndarray) -> None:
    """Labels are in [0, 1] or -1 (unknown); anything else (-2, 2, NaN) is a ValueError."""
    if targs.dtype == bool or not targs.size:
        return
    t = targs if np.issubdtype(targs.dtype, np.floating) else targs.astype(np.float64)  # no copy of a float matrix
    bad = ~(((t >= 0) & (t <= 1)) | (t == -1))
    if bad.any():
        raise ValueError(f"targets must be in [0, 1] or -1 (unknown); got {t[bad][0]!r} ({int(bad.sum())} such values)")


def _targets(a) -> np.ndarray:
    t = _to_numpy(a)
    check_targets(t)
    return t


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        a = a.numpy()
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"expected an (N, C) array, got shape {a.shape}")
    return a


def _class_ap(scores: np.ndarray, pos: np.ndarray, valid: Optional[np.ndarray]):
    """Sum over the positives of precision at their rank, for one class (see module doc).

    Args:
        scores: (N,) scores of one class.
        pos: (N,) bool, positive samples.
        valid: (N,) bool samples that take part (None: all); invalid ones are dropped.

    Returns:
        (sum of precisions, number of positives).
    """
    if valid is not None:
        scores, pos = scores[valid], pos[valid]
    pos_scores = scores[pos]
    n_pos = pos_scores.size
    if n_pos == 0:
        return 0.0, 0
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        # NaN scores: numpy sorts them last, so the official reversed argsort ranks them first
        # (a NaN negative is ranked above every positive); the same argsort gives the same value.
        return _official_sum(scores, pos), n_pos
    neg = ~pos
    neg_scores = scores[neg]
    ps = np.sort(pos_scores)[::-1]  # positives' scores in rank order
    # Negatives below the lowest positive rank after every positive and change no n_j: sort
    # only the rest (with a trained model, most negatives). Values only: numpy's SIMD sort.
    above = neg_scores[neg_scores >= ps[-1]]
    neg_sorted = np.sort(above)
    right = np.searchsorted(neg_sorted, ps, side="right")
    before = neg_sorted.size - right  # negatives scored strictly above
    # A tie: the last negative at or below ps equals it (a gather, not a second search).
    # right == 0 wraps to the largest negative, which then exceeds ps: never a false tie.
    tied = neg_sorted[right - 1] == ps if neg_sorted.size else np.zeros(n_pos, dtype=bool)
    if np.any(tied):
        # A positive ties a negative: their order is whatever the official ranking leaves, so
        # rank this class exactly as the official code does (the same argsort on the same values).
        # Summed as the official code sums (over all N ranks, zeros between the positives), so
        # the value is the official one to the last bit.
        return _official_sum(scores, pos), n_pos
    j = np.arange(1, n_pos + 1, dtype=np.float64)
    return float(np.sum(j / (j + before))), n_pos


def _official_sum(scores: np.ndarray, pos: np.ndarray) -> float:
    """The official code's sum of precisions: its ranking (``argsort()[::-1]``), summed over all N
    ranks with zeros between the positives, so the value is the official one to the last bit."""
    hit = pos[np.argsort(scores)[::-1]]
    pp = np.where(hit, np.cumsum(hit), 0) / np.arange(1, hit.size + 1, dtype=np.float64)
    return float(np.sum(pp))


def _per_class(targs: np.ndarray, preds: np.ndarray, ignore_index: Optional[float]):
    """(sum of precisions, positives) for every class, classes spread over threads."""
    n, c = preds.shape
    # Contiguous class rows: each class's column becomes one cache-friendly row.
    preds_t = np.ascontiguousarray(preds.T)
    targs_t = np.ascontiguousarray(targs.T)

    def one(k: int):
        t = targs_t[k]
        valid = (t != ignore_index) if ignore_index is not None else None
        if valid is not None and valid.all():
            valid = None
        return _class_ap(preds_t[k], t == 1, valid)

    workers = min(os.cpu_count() or 1, 8, c)
    if workers > 1 and n * c >= 200_000:  # below that a pool costs more than it saves
        with ThreadPoolExecutor(workers) as ex:
            res = list(ex.map(one, range(c)))
    else:
        res = [one(k) for k in range(c)]
    sums = np.array([r[0] for r in res], dtype=np.float64)
    npos = np.array([r[1] for r in res], dtype=np.float64)
    return sums, npos


def average_precision(targs, preds, ignore_index: Optional[float] = -1) -> np.ndarray:
    """Per-class average precision (official ranking semantics, see module doc).

    Args:
        targs: (N, C) targets, 1 = positive; entries equal to ``ignore_index`` are dropped
            from that class; anything else counts as negative.
        preds: (N, C) scores (any monotone score: logits or probabilities).
        ignore_index: value of unknown labels, or None to keep every entry.

    Returns:
        (C,) float64 in [0, 1]; ``nan`` for a class without positives.
    """
    targs, preds = _targets(targs), _to_numpy(preds)
    _check_shapes(targs, preds)
    return _ap(*_per_class(targs, preds, ignore_index))


def _ap(sums: np.ndarray, npos: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = sums / npos
    ap[npos == 0] = np.nan
    return ap


def _known_mean(ap: np.ndarray) -> float:
    """Mean AP in percent over the classes with positives (0 when no class has any)."""
    return 0.0 if np.all(np.isnan(ap)) else float(100.0 * np.nanmean(ap))


def mAP(targs, preds) -> float:
    """Mean average precision in percent, equal to the official ``mAP(targs, preds)``.

    ``mAP = 100 * mean_k AP_k`` with ``AP_k = sum_j precision@rank(j) / (P_k + 1e-8)``;
    a class without positives counts as 0 (it stays in the mean), every target other
    than 1 counts as negative (as the official code). Tied and NaN scores are ranked as the official
    code ranks them (its ``argsort()[::-1]`` on the same values): such a class gets the official
    value to the last bit; a tie-free class agrees with it to ~1e-14 (the same sum, in another
    order). Targets outside [0, 1] other than -1 raise ``ValueError``.

    Args:
        targs: (N, C) targets, numpy or torch.
        preds: (N, C) scores, numpy or torch.
    """
    targs, preds = _targets(targs), _to_numpy(preds)
    if preds.size == 0:
        return 0.0
    _check_shapes(targs, preds)
    sums, npos = _per_class(targs, preds, None)
    return float(100.0 * np.mean(sums / (npos + 1e-8)))


def mAP_known(targs, preds, ignore_index: Optional[float] = -1) -> float:
    """Mean AP in percent over the classes that have positives, unknown labels dropped.

    Args:
        targs: (N, C) targets; ``ignore_index`` entries are left out of their class.
        preds: (N, C) scores.
    """
    return _known_mean(average_precision(targs, preds, ignore_index))


def map_and_ap(targs, preds, ignore_index: Optional[float] = -1):
    """The mAP an evaluation reports and the per-class AP behind it, from one pass over the classes.

    Without unknown labels the mAP is the official one (:func:`mAP`); with some (``ignore_index``
    entries, e.g. VOC's difficult objects) it is :func:`mAP_known`. Both are bit-identical to
    those functions.

    Args:
        targs: (N, C) targets.
        preds: (N, C) scores.

    Returns:
        (mAP in percent, (C,) float64 AP in [0, 1] with ``nan`` for a class without positives).
    """
    targs, preds = _targets(targs), _to_numpy(preds)
    _check_shapes(targs, preds)
    if preds.size == 0:
        return 0.0, np.full(preds.shape[1] if preds.ndim == 2 else 0, np.nan)
    sums, npos = _per_class(targs, preds, ignore_index)
    ap = _ap(sums, npos)
    if ignore_index is not None and bool((targs == ignore_index).any()):
        return _known_mean(ap), ap
    return float(100.0 * np.mean(sums / (npos + 1e-8))), ap


def labelled_map_and_ap(labelled: LabelledScores):
    """:func:`map_and_ap` over the labelled entries of a :class:`asl.labelled.LabelledScores`: each
    class's AP over its labelled images only, the mAP over the classes with a labelled positive
    (Google's Open Images rule); with no unknown entry at all, the official mAP. Bit-identical to
    :func:`map_and_ap` on the dense arrays.

    Returns:
        (mAP in percent, (C,) float64 AP in [0, 1] with ``nan`` for a class without positives).
    """
    if labelled.num_images == 0:
        return 0.0, np.full(labelled.num_classes, np.nan)
    res = labelled.per_class(lambda s, p: _class_ap(s, p, None))
    sums = np.array([r[0] for r in res], dtype=np.float64)
    npos = np.array([r[1] for r in res], dtype=np.float64)
    ap = _ap(sums, npos)
    if not labelled.complete:
        return _known_mean(ap), ap
    return float(100.0 * np.mean(sums / (npos + 1e-8))), ap


def nonfinite_note(scores: np.ndarray, class_names: Optional[Sequence[str]] = None) -> Optional[str]:
    """The warning for a model whose scores hold NaN or inf (a diverged checkpoint), naming how
    many classes score so, or None when every score is finite. Said wherever scores are made:
    metrics rank NaN first as the official code does, and a NaN score never passes a threshold,
    so such classes are silently never tagged.

    Args:
        scores: (N, C) scores, or a (C,) mask of the classes already found non-finite.
    """
    s = np.asarray(scores)
    bad = s if s.dtype == bool else ~np.isfinite(s).all(axis=0)
    if not bad.any():
        return None
    which = np.flatnonzero(bad)
    shown = ""
    if class_names is not None:
        shown = ": " + ", ".join(str(class_names[k]) for k in which[:5]) + (", ..." if len(which) > 5 else "")
    return (
        f"{len(which)} of {bad.size} classes score NaN or inf{shown}; the model's output is broken there "
        f"(its metrics rank them first, as the official code does, and they are never tagged)"
    )


def evaluation_result(collected: ScoreCollector, seconds: float, dataset=None) -> Dict[str, Any]:
    """What an evaluation returns (``asl.engine.evaluate``, the ONNX path of validate.py): mAP and
    per-class AP (unknown labels left out, else the official mAP: :func:`map_and_ap` on the dense
    arrays, :func:`labelled_map_and_ap` past the dense limit, the same values), the labelled entries,
    the dense scores and targets where kept, the mean validation probability of positive and of
    negative labels (paper Sec. 2.6), each class's mean score, the image count and rate, and the
    dataset's unreadable images.

    Args:
        collected: the evaluation's scores (every rank's, merged); a dataset that streams in another
            order than its source's (shards: ``evaluation_order``) has its rows put back first.
        seconds: the evaluation's wall time.
        dataset: the evaluated dataset (its ``bad_count``, its ``class_names``), or None.
    """
    place = getattr(dataset, "evaluation_order", lambda: None)()
    if place is not None:  # shards: the rows back in the source's order (ties rank as on the folder)
        collected.reorder(place)
    note = nonfinite_note(collected.nonfinite, getattr(dataset, "class_names", None))
    if note:
        log.warning("warning: %s", note)
    scores, targets = collected.dense()
    if collected.single_label:
        return _single_label_result(collected, scores, targets, seconds, dataset)
    labelled = collected.labelled()
    if scores is not None:
        m, ap = map_and_ap(targets, scores)
        pos, neg = scores[targets == 1], scores[targets == 0]
    else:
        m, ap = labelled_map_and_ap(labelled)
        pos, neg = labelled.scores[labelled.positive], labelled.scores[~labelled.positive]
    return {
        "mAP": m,
        "per_class_ap": ap,
        "scores": scores,
        "targets": targets,
        "labelled": labelled,
        "class_mean": collected.class_mean(),
        "p_pos": float(pos.mean()) if pos.size else None,
        "p_neg": float(neg.mean()) if neg.size else None,
        "num_images": int(labelled.num_images),
        "images_per_s": labelled.num_images / max(seconds, 1e-9),
        "bad_images": getattr(dataset, "bad_count", 0),
    }


def _single_label_result(collected: ScoreCollector, scores, targets, seconds: float, dataset) -> Dict[str, Any]:
    """:func:`evaluation_result` of a single-label evaluation: top-1 / top-5 / macro-F1 / balanced
    accuracy, and the one-vs-rest mAP of the softmax scores where the dense arrays were kept (past
    the dense limit the run is chosen by top-1: ``mAP`` holds it, and ``mAP_is_top1`` says so)."""
    truth, top, top_scores = collected.top()
    m = single_label_metrics(truth, top, collected.num_classes)
    if scores is not None:
        m_ap, ap = map_and_ap(targets, scores)
    else:
        m_ap, ap = m["top1"], np.full(collected.num_classes, np.nan)
    return {
        "mAP": m_ap,
        "mAP_is_top1": scores is None,
        "per_class_ap": ap,
        **m,
        "truth": truth,
        "top": top,
        "top_scores": top_scores,
        "scores": scores,
        "targets": targets,
        "labelled": None,
        "class_mean": collected.class_mean(),
        "p_pos": None,
        "p_neg": None,
        "num_images": int(len(truth)),
        "images_per_s": len(truth) / max(seconds, 1e-9),
        "bad_images": getattr(dataset, "bad_count", 0),
    }


def single_label_metrics(truth, top, num_classes: int) -> Dict[str, float]:
    """Single-label metrics in percent, from each image's class and its top-scored classes.

    - ``top1`` / ``top5``: the class is the first / among the first five scored;
    - ``macro_f1`` (Herbarium 2020's metric): the mean over classes of ``2 TP / (2 TP + FP + FN)`` of
      the top-1 predictions, over the classes that are some image's class or some prediction
      (scikit-learn's ``f1_score(average="macro")``, 0 for a class with no true positive);
    - ``balanced_accuracy``: the mean over the classes present of their recall (scikit-learn's
      ``balanced_accuracy_score``).

    Args:
        truth: (N,) int class of each image (-1: none; left out).
        top: (N, k) int classes in score order, k >= 1 (top-5 needs k >= 5, else it is top-k).
        num_classes: C.
    """
    truth, top = np.asarray(truth), np.asarray(top)
    keep = truth >= 0
    truth, top = truth[keep], top[keep]
    if not len(truth):
        return {"top1": 0.0, "top5": 0.0, "macro_f1": 0.0, "balanced_accuracy": 0.0}
    pred = top[:, 0]
    hit = pred == truth
    tp = np.bincount(truth[hit], minlength=num_classes).astype(np.float64)
    true_count = np.bincount(truth, minlength=num_classes).astype(np.float64)
    pred_count = np.bincount(pred, minlength=num_classes).astype(np.float64)
    present = (true_count > 0) | (pred_count > 0)
    f1 = np.divide(2 * tp, true_count + pred_count, out=np.zeros_like(tp), where=(true_count + pred_count) > 0)
    recall = np.divide(tp, true_count, out=np.zeros_like(tp), where=true_count > 0)
    return {
        "top1": float(100 * hit.mean()),
        "top5": float(100 * (top[:, :5] == truth[:, None]).any(1).mean()),
        "macro_f1": float(100 * f1[present].mean()),
        "balanced_accuracy": float(100 * recall[true_count > 0].mean()),
    }


def _check_shapes(targs: np.ndarray, preds: np.ndarray) -> None:
    if targs.shape != preds.shape:
        raise ValueError(f"targets {targs.shape} and scores {preds.shape} differ in shape")


def predicted(preds: np.ndarray, threshold) -> np.ndarray:
    """Labels predicted as the official validate.py predicts them: ``score > threshold``, strict,
    compared in the scores' precision (``output.gt(thre)`` on a float32 tensor compares with the
    threshold rounded to float32: a score of 0.8f is not above a threshold of 0.8).

    Args:
        preds: (N, C) scores.
        threshold: a float, or (C,) per-class thresholds.
    """
    thr = np.asarray(threshold)
    if np.issubdtype(preds.dtype, np.floating):
        thr = thr.astype(preds.dtype)
    return preds > thr


def multilabel_metrics(targs, preds, threshold=0.5, ignore_index: Optional[float] = -1) -> Dict[str, float]:
    """Thresholded per-class and overall precision / recall / F1, in percent.

    With TP/FP/FN per class at ``preds > threshold`` (strict, in the scores' precision, as the
    official validate.py: :func:`predicted`; unknown labels left out), P_k = TP_k / (TP_k + FP_k)
    and R_k = TP_k / (TP_k + FN_k) (0 where undefined):

    - ``CP = mean_k P_k``, ``CR = mean_k R_k``;
    - ``CF1 = 2 CP CR / (CP + CR)``: the harmonic mean of CP and CR, the convention of the papers'
      tables (ML-GCN and after);
    - ``F_C = mean_k 2 P_k R_k / (P_k + R_k)``: the mean of the per-class F1 scores (0 for a class
      with no true positive), what the official validate.py prints as ``F_C``;
    - ``OP``, ``OR`` from the counts summed over classes, ``OF1 = 2 OP OR / (OP + OR)``.

    Args:
        targs: (N, C) targets, 1 = positive.
        preds: (N, C) scores (probabilities).
        threshold: a float, or (C,) per-class thresholds.
        ignore_index: value of unknown labels, or None.

    Returns:
        dict with keys CP, CR, CF1, F_C, OP, OR, OF1.
    """
    targs, preds = _targets(targs), _to_numpy(preds)
    _check_shapes(targs, preds)
    pred_pos = predicted(preds, threshold)
    pos = targs == 1
    known = targs != ignore_index if ignore_index is not None else np.ones_like(pos)
    tp = np.sum(pred_pos & pos & known, axis=0).astype(np.float64)
    fp = np.sum(pred_pos & ~pos & known, axis=0).astype(np.float64)
    fn = np.sum(~pred_pos & pos & known, axis=0).astype(np.float64)
    return _rates(tp, fp, fn)


def labelled_metrics(labelled: LabelledScores, threshold=0.5) -> Dict[str, float]:
    """:func:`multilabel_metrics` over the labelled entries of a :class:`asl.labelled.LabelledScores`
    (equal to the dense computation with unknown labels left out).

    Args:
        labelled: the evaluation's labelled entries.
        threshold: a float, or (C,) per-class thresholds.
    """
    thr = np.asarray(threshold)
    cols = labelled.cols
    pred = predicted(labelled.scores, thr[cols] if thr.ndim else thr)
    pos, c = labelled.positive, labelled.num_classes
    count = lambda sel: np.bincount(cols[sel], minlength=c).astype(np.float64)  # noqa: E731
    return _rates(count(pred & pos), count(pred & ~pos), count(~pred & pos))


def _rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> Dict[str, float]:
    """CP, CR, CF1, F_C, OP, OR, OF1 from (C,) true positive, false positive and false negative counts."""

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    p_k, r_k = ratio(tp, tp + fp), ratio(tp, tp + fn)
    cp, cr = float(np.mean(p_k)) * 100, float(np.mean(r_k)) * 100
    f_c = float(np.mean(ratio(2 * p_k * r_k, p_k + r_k))) * 100
    op = float(ratio(np.array(tp.sum()), np.array(tp.sum() + fp.sum()))) * 100
    orr = float(ratio(np.array(tp.sum()), np.array(tp.sum() + fn.sum()))) * 100
    f1 = lambda a, b: 2 * a * b / (a + b) if a + b > 0 else 0.0  # noqa: E731
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "F_C": f_c, "OP": op, "OR": orr, "OF1": f1(op, orr)}


def calibrate_thresholds(targs, preds, candidates: Optional[Sequence[float]] = None) -> np.ndarray:
    """Per-class thresholds maximizing that class's F1 on (targs, preds).

    For each class the scores are sorted once and F1 is evaluated at every distinct
    score; the threshold returned for a cut just below score s is the largest value of the
    scores' precision under s, so the strict ``score > threshold`` of :func:`predicted` (and of
    infer.py) keeps exactly the samples scored s and above. A class without positives keeps 1.0
    (never predicted). ``candidates`` restricts the search to a grid instead.

    Args:
        targs: (N, C) targets.
        preds: (N, C) probabilities.
        candidates: optional grid of thresholds.

    Returns:
        (C,) float64 thresholds.
    """
    targs, preds = _targets(targs), _to_numpy(preds)
    _check_shapes(targs, preds)
    return labelled_thresholds(LabelledScores.from_dense(targs, preds), candidates)


def labelled_thresholds(labelled: LabelledScores, candidates: Optional[Sequence[float]] = None) -> np.ndarray:
    """:func:`calibrate_thresholds` over the labelled entries of a :class:`asl.labelled.LabelledScores`.

    Returns:
        (C,) float64 thresholds (1.0 for a class without labelled positives).
    """
    grid = None if candidates is None else np.asarray(candidates, dtype=np.float64)
    return np.array(labelled.per_class(lambda s, t: _best_threshold(s, t, grid)), dtype=np.float64)


def _best_threshold(s: np.ndarray, t: np.ndarray, grid: Optional[np.ndarray]) -> float:
    """The F1-maximising threshold of one class: (E,) scores, (E,) bool labels; ``grid``: the
    candidates, or None for every distinct score."""
    n_pos = int(t.sum())
    if n_pos == 0:
        return 1.0
    if grid is not None:
        pp = predicted(s[None, :], grid[:, None])
        tp = (pp & t[None, :]).sum(1)
        f1 = 2 * tp / (pp.sum(1) + n_pos)
        return float(grid[int(np.argmax(f1))])
    order = np.argsort(-s, kind="stable")
    s_sorted, t_sorted = s[order], t[order]
    tp = np.cumsum(t_sorted)
    npred = np.arange(1, s.size + 1)
    # Only the last index of each run of equal scores is a reachable threshold.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    f1 = np.where(last, 2 * tp / (npred + n_pos), -1.0)
    cut = s_sorted[int(np.argmax(f1))]
    return float(np.nextafter(cut, -np.inf, dtype=cut.dtype) if np.issubdtype(cut.dtype, np.floating) else cut - 0.5)
