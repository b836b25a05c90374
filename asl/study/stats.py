"""The statistics of a study: dataset statistics, paired differences, t-intervals, per-seed slopes."""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from typing import Any, Dict, List, Tuple

from ..config import Config

log = logging.getLogger(__name__)


_STATS_CACHE: Dict[Tuple, Dict[str, Any]] = {}


def dataset_stats(cfg: Config) -> Dict[str, Any]:
    """Classes, images, label cardinality, positive fraction and per-class training counts."""
    import numpy as np

    from ..builders import dataset_from_config, prepare_data

    key = (cfg.dataset, cfg.data_root, cfg.demo_classes, cfg.ann_file, cfg.train_split, cfg.val_split)
    if key not in _STATS_CACHE:
        prepare_data(cfg)  # the demo variants are generated here, once, not by parallel jobs
        clean = dataclasses.replace(cfg, label_noise=0.0)
        tr = dataset_from_config(clean, True, (0, 0, 0), (1, 1, 1))
        va = dataset_from_config(clean, False, (0, 0, 0), (1, 1, 1))
        t = np.clip(tr.targets, 0, None)
        counts = t.sum(0)
        _STATS_CACHE[key] = dict(
            data_root=cfg.data_root,
            classes=tr.num_classes,
            train=len(tr),
            val=len(va),
            cardinality=float(t.sum(1).mean()),
            positive=float(t.mean()),
            rarest=int(counts.min()),
            counts=counts.tolist(),
        )
    return _STATS_CACHE[key]


def t_interval(diffs: List[float]) -> Tuple[float, float]:
    """Mean and 95% t half-width of paired differences (nan width for one pair)."""
    from scipy.stats import t

    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return m, float("nan")
    return m, float(t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)))


def fmt_ci(diffs: List[float], digits: int = 2) -> str:
    if not diffs:
        return "–"
    m, h = t_interval(diffs)
    if h != h:
        return f"{m:+.{digits}f} (1 seed)"
    star = " *" if abs(m) > h else ""
    return f"{m:+.{digits}f} [{m - h:+.{digits}f}, {m + h:+.{digits}f}]{star}"


def seed_slopes(values: List[float], by_seed: List[Dict[int, float]]) -> List[float]:
    """Least-squares slope of y on x, one per seed present at every point.

    A sweep whose every step is within seed noise can still have a clear trend; fitting the line
    within each seed and taking the t-interval over seeds keeps the pairing that the per-point
    differences use.

    Args:
        values: the sweep's axis value of each point, (P,).
        by_seed: per point, seed -> y, (P,) dicts.
    """
    seeds = sorted(set.intersection(*(set(d) for d in by_seed))) if by_seed else []
    mx = statistics.mean(values)
    sxx = sum((x - mx) ** 2 for x in values)
    out = []
    for seed in seeds:
        ys = [d[seed] for d in by_seed]
        my = statistics.mean(ys)
        out.append(sum((x - mx) * (y - my) for x, y in zip(values, ys)) / sxx)
    return out
