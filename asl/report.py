"""``report.html``: one self-contained page to look at after an evaluation (no network: every
figure and picture is inline), readable on a phone.

Sections, each with its ``id``:
- ``metrics``: the headline numbers.
- ``per-class-ap``: the per-class AP, sorted.
- ``pr-curves``: precision-recall curves of the best and the worst classes.
- ``f1-threshold``: F1 against one threshold for all classes, with the calibrated per-class
  thresholds marked.
- ``frequency-ap``: each class's positives against its AP.
- ``contact-sheet``: the most confident false positives and the most missed positives, with their
  scores.

Written by ``validate.py --output`` and at the end of every training run.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .files import atomic_write
from .labelled import LabelledScores
from .outputs import REPORT_GENERATOR
from .plots import log_scale, plain_labels

__all__ = [
    "SECTIONS",
    "SINGLE_LABEL_SECTIONS",
    "write_report",
    "render_report",
    "write_single_label_report",
    "render_single_label_report",
]

SECTIONS = ("metrics", "per-class-ap", "pr-curves", "f1-threshold", "frequency-ap", "contact-sheet")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:980px;padding:12px;
color:#1d232a;line-height:1.4}h1{font-size:1.35em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto}table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}
th{text-align:left}.sheet{display:flex;flex-wrap:wrap;gap:8px}.sheet figure{margin:0;width:150px;font-size:.8em}
.sheet img{width:150px;height:150px;object-fit:cover;border-radius:4px}.note{color:#5a6470;font-size:.9em}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(path: str, side: int = 150) -> Optional[str]:
    from .errors import DataError
    from .images import load_rgb

    try:
        img = load_rgb(path)
    except DataError:
        return None
    img.thumbnail((side * 2, side * 2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _pr_curve(scores: np.ndarray, pos: np.ndarray):
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(pos[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(pos.sum(), 1)
    return recall, precision


def _f1_curve(labelled: LabelledScores, grid: np.ndarray):
    """(overall F1, mean per-class F1) at each threshold of ``grid``, labelled entries only."""
    cols, pos, c = labelled.cols, labelled.positive, labelled.num_classes
    of1, cf1 = [], []
    for t in grid:
        pred = labelled.scores > t
        tp, fp, fn = (np.bincount(cols[sel], minlength=c) for sel in (pred & pos, pred & ~pos, ~pred & pos))
        of1.append(2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1))
        cf1.append(np.mean(2 * tp / np.maximum(2 * tp + fp + fn, 1)))
    return np.array(of1), np.array(cf1)


@dataclass
class _Data:
    """What every section reads: the labelled entries, names, AP in percent (C,), the classes with
    positives sorted by AP (best first), positives per class."""

    labelled: LabelledScores
    names: List[str]
    ap: np.ndarray
    valid: np.ndarray
    order: np.ndarray
    positives: np.ndarray


@plain_labels
def render_report(
    class_names: Sequence[str],
    image_paths: Sequence[str],
    per_class_ap: np.ndarray,
    title: str,
    headline: Dict[str, Any],
    thresholds: Optional[Sequence[float]] = None,
    sheet_size: int = 8,
    labelled: Optional[LabelledScores] = None,
    scores: Optional[np.ndarray] = None,
    targets: Optional[np.ndarray] = None,
) -> str:
    """The page's HTML, from the evaluation's labelled entries (or its dense scores and targets).

    Args:
        class_names: C names.
        image_paths: N pictures, in the rows' order (for the contact sheet).
        per_class_ap: (C,) AP in [0, 1], NaN for a class without positives.
        title: the page's heading (the model and the data).
        headline: name -> value of the headline metrics, in order.
        thresholds: calibrated per-class thresholds to mark, or None.
        sheet_size: pictures per row of the contact sheet.
        labelled: the evaluation's labelled entries (:class:`asl.labelled.LabelledScores`).
        scores: (N, C) sigmoid scores, with ``targets`` in place of ``labelled``.
        targets: (N, C) 1 / 0 / -1 (unknown).
    """
    if labelled is None:
        labelled = LabelledScores.from_dense(np.asarray(targets, np.float32), np.asarray(scores, np.float32))
    ap = np.asarray(per_class_ap, np.float64) * 100
    valid = np.flatnonzero(~np.isnan(ap))
    best_first = valid[np.argsort(-ap[valid], kind="stable")]
    d = _Data(labelled, list(class_names), ap, valid, best_first, labelled.positives())
    esc = html.escape
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            REPORT_GENERATOR,  # what tells a report this package wrote from a user's page
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{esc(title)}</h1>",
            _metrics_section(headline),
            _ap_section(d),
            _pr_section(d),
            _f1_section(d, thresholds),
            _frequency_section(d),
            _contact_sheet(d, image_paths, sheet_size),
            "</body></html>",
        ]
    )


def _metrics_section(headline: Dict[str, Any]) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{v:.2f}</td></tr>"
        if isinstance(v, float)
        else f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
        for k, v in headline.items()
    )
    return f"<section id='metrics'><h2>Metrics</h2><table>{rows}</table></section>"


def _figure(draw: Callable[[Any], None], size) -> str:
    """A figure drawn by ``draw(ax)``, as an inline PNG."""
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    src = _png(fig)
    plt.close(fig)
    return src


def _ap_section(d: _Data) -> str:
    def draw(ax):
        ax.barh(range(len(d.order)), d.ap[d.order][::-1], color="#3b6ea8")
        if len(d.order) <= 120:
            ax.set_yticks(range(len(d.order)))
            ax.set_yticklabels([d.names[i] for i in d.order][::-1], fontsize=7)
        ax.set_xlabel("AP (%)")
        ax.set_xlim(0, 100)

    src = _figure(draw, (9, max(2.5, min(0.16 * len(d.order), 40))))
    return (
        f"<section id='per-class-ap'><h2>Per-class AP, sorted</h2><img alt='per-class AP' src='{src}'>"
        f"<p class='note'>{len(d.valid)} classes with positives; {len(d.names) - len(d.valid)} without (left out)</p>"
        "</section>"
    )


def _pr_section(d: _Data) -> str:
    k = min(3, len(d.order))
    picked = [*d.order[:k], *d.order[::-1][:k]] if len(d.order) > k else list(d.order)

    def draw(ax):
        for i in dict.fromkeys(picked):
            _, scores, positive = d.labelled.segment(i)
            r, p = _pr_curve(scores, positive)
            ax.plot(r, p, label=f"{d.names[i]} (AP {d.ap[i]:.1f})", linestyle="-" if i in d.order[:k] else "--")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower left")

    src = _figure(draw, (6, 4.5))
    return (
        "<section id='pr-curves'><h2>Precision-recall: the best and the worst classes</h2>"
        f"<img alt='precision-recall curves' src='{src}'></section>"
    )


def _f1_section(d: _Data, thresholds: Optional[Sequence[float]]) -> str:
    grid = np.linspace(0.0, 0.99, 100)
    of1, cf1 = _f1_curve(d.labelled, grid)

    def draw(ax):
        ax.plot(grid, of1 * 100, label="overall F1 (OF1)")
        ax.plot(grid, cf1 * 100, label="mean per-class F1 (F_C)")
        if thresholds is not None:
            for t in thresholds:
                ax.axvline(float(t), color="#c44", alpha=0.25, linewidth=0.8)
            ax.plot([], [], color="#c44", alpha=0.5, label="calibrated per-class thresholds")
        ax.set_xlabel("threshold (one for all classes)")
        ax.set_ylabel("F1 (%)")
        ax.legend(fontsize=7)

    src = _figure(draw, (6, 3.8))
    best = float(grid[int(np.argmax(of1))])
    return (
        "<section id='f1-threshold'><h2>F1 against the threshold</h2>"
        f"<img alt='F1 against threshold' src='{src}'>"
        f"<p class='note'>best single threshold for OF1: {best:.2f}"
        + (" (red: the calibrated thresholds)" if thresholds is not None else "")
        + "</p></section>"
    )


def _frequency_section(d: _Data) -> str:
    def draw(ax):
        ax.scatter(np.maximum(d.positives[d.valid], 1), d.ap[d.valid], s=12, alpha=0.7)
        log_scale(ax, "x")
        ax.set_xlabel("positives in this split (log scale)")
        ax.set_ylabel("AP (%)")

    src = _figure(draw, (6, 3.8))
    return (
        "<section id='frequency-ap'><h2>Frequency against AP</h2>"
        f"<img alt='class frequency against AP' src='{src}'></section>"
    )


def _contact_sheet(d: _Data, image_paths: Sequence[str], sheet_size: int) -> str:
    esc = html.escape
    lab = d.labelled
    every = lab.row_major()  # ties keep the (image, class) order
    cols = lab.cols

    def sheet(entries, key, what):
        values = lab.scores[entries]
        entries = entries[np.isfinite(values)]
        cells = []
        for e in entries[np.argsort(key(lab.scores[entries]), kind="stable")][:sheet_size]:
            r, c = int(lab.rows[e]), int(cols[e])
            thumb = _thumb(image_paths[r]) if r < len(image_paths) else None
            img = f"<img alt='{esc(d.names[c])}' src='{thumb}'>" if thumb else "<p>(unreadable)</p>"
            cells.append(
                f"<figure>{img}<figcaption><b>{esc(d.names[c])}</b> {lab.scores[e]:.3f} {what}<br>"
                f"{esc(os.path.basename(str(image_paths[r])))}</figcaption></figure>"
            )
        return "".join(cells) or "<p>none</p>"

    fp = sheet(every[~lab.positive[every]], np.negative, "(not a label)")
    fn = sheet(every[lab.positive[every]], np.positive, "(a missed label)")
    return (
        "<section id='contact-sheet'><h2>Contact sheet</h2>"
        f"<h3>Most confident false positives</h3><div class='sheet'>{fp}</div>"
        f"<h3>Most missed positives</h3><div class='sheet'>{fn}</div></section>"
    )


def write_report(path: str | os.PathLike, **kwargs: Any) -> str:
    """Render (:func:`render_report`'s arguments) and write ``path`` atomically; returns the path."""
    atomic_write(path, render_report(**kwargs))
    return str(path)


SINGLE_LABEL_SECTIONS = ("metrics", "per-class-accuracy", "confusions", "frequency-accuracy", "contact-sheet")


@plain_labels
def render_single_label_report(
    truth: np.ndarray,
    top: np.ndarray,
    top_scores: np.ndarray,
    class_names: Sequence[str],
    image_paths: Sequence[str],
    title: str,
    headline: Dict[str, Any],
    sheet_size: int = 8,
    confusions: int = 20,
) -> str:
    """The page of a single-label evaluation: the metrics, per-class accuracy sorted, the most
    frequent confusions (a table, readable at thousands of classes where a C x C grid is not), each
    class's frequency against its accuracy, and the most confident mistakes.

    Args:
        truth: (N,) class of each image.
        top: (N, k) top-scored classes; ``top[:, 0]`` is the prediction.
        top_scores: (N, k) their probabilities.
        class_names: C names.
        image_paths: N pictures, in the rows' order.
        title, headline: the page's heading and its metrics.
    """
    esc = html.escape
    names = list(class_names)
    c = len(names)
    pred = top[:, 0] if len(top) else np.zeros(0, np.int64)
    counts = np.bincount(truth, minlength=c)
    hits = np.bincount(truth[pred == truth], minlength=c)
    present = np.flatnonzero(counts > 0)
    acc = np.full(c, np.nan)
    acc[present] = 100 * hits[present] / counts[present]
    order = present[np.argsort(-acc[present], kind="stable")]

    def bars(ax):
        ax.barh(range(len(order)), acc[order][::-1], color="#3b6ea8")
        if len(order) <= 120:
            ax.set_yticks(range(len(order)))
            ax.set_yticklabels([names[i] for i in order][::-1], fontsize=7)
        ax.set_xlabel("accuracy (%)")
        ax.set_xlim(0, 100)

    wrong = pred != truth
    rows = _confusion_rows(truth[wrong], pred[wrong], names, counts, confusions)

    def scatter(ax):
        ax.scatter(np.maximum(counts[present], 1), acc[present], s=12, alpha=0.7)
        log_scale(ax, "x")
        ax.set_xlabel("images of the class in this split (log scale)")
        ax.set_ylabel("accuracy (%)")

    cells = []
    for r in np.flatnonzero(wrong)[np.argsort(-top_scores[wrong, 0], kind="stable")][:sheet_size]:
        thumb = _thumb(image_paths[r]) if r < len(image_paths) else None
        img = f"<img alt='{esc(names[pred[r]])}' src='{thumb}'>" if thumb else "<p>(unreadable)</p>"
        cells.append(
            f"<figure>{img}<figcaption><b>{esc(names[pred[r]])}</b> {top_scores[r, 0]:.3f}, is "
            f"{esc(names[truth[r]])}<br>{esc(os.path.basename(str(image_paths[r])))}</figcaption></figure>"
        )
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            REPORT_GENERATOR,
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{esc(title)}</h1>",
            _metrics_section(headline),
            "<section id='per-class-accuracy'><h2>Per-class accuracy, sorted</h2>"
            f"<img alt='per-class accuracy' src='{_figure(bars, (9, max(2.5, min(0.16 * len(order), 40))))}'>"
            f"<p class='note'>{len(present)} classes in this split</p></section>",
            "<section id='confusions'><h2>The most frequent confusions</h2><table><tr><th>class</th>"
            f"<th>taken for</th><th>images</th><th>of the class</th></tr>{rows or '<tr><td>none</td></tr>'}"
            "</table></section>",
            "<section id='frequency-accuracy'><h2>Frequency against accuracy</h2>"
            f"<img alt='class frequency against accuracy' src='{_figure(scatter, (6, 3.8))}'></section>",
            "<section id='contact-sheet'><h2>The most confident mistakes</h2>"
            f"<div class='sheet'>{''.join(cells) or '<p>none</p>'}</div></section>",
            "</body></html>",
        ]
    )


def _confusion_rows(truth: np.ndarray, pred: np.ndarray, names: List[str], counts: np.ndarray, limit: int) -> str:
    """Table rows of the ``limit`` most frequent (class, taken for) pairs among the mistakes."""
    if not len(truth):
        return ""
    c = len(names)
    pairs, n = np.unique(truth.astype(np.int64) * c + pred, return_counts=True)
    out = []
    for i in np.argsort(-n, kind="stable")[:limit]:
        t, p = divmod(int(pairs[i]), c)
        out.append(
            f"<tr><th>{html.escape(names[t])}</th><td>{html.escape(names[p])}</td><td>{int(n[i])}</td>"
            f"<td>{100 * n[i] / counts[t]:.1f}%</td></tr>"
        )
    return "".join(out)


def write_single_label_report(path: str | os.PathLike, **kwargs: Any) -> str:
    """Render (:func:`render_single_label_report`'s arguments) and write ``path`` atomically."""
    atomic_write(path, render_single_label_report(**kwargs))
    return str(path)
