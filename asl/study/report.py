"""``report.md`` and its figures, one function per section."""

from __future__ import annotations

import json
import logging
import statistics
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..files import atomic_write
from ..plots import log_scale, plain_labels
from .runner import Run, _points, best_lr_per_setting, final_map, metric_name
from .spec import Experiment, Study
from .stats import dataset_stats, fmt_ci, seed_slopes

log = logging.getLogger(__name__)


def _seed_maps(rs: Dict[int, Run]) -> Dict[int, float]:
    """seed -> final mAP of each run."""
    return {seed: final_map(r) for seed, r in rs.items()}


def _diff(a: Dict[int, float], b: Dict[int, float]) -> Dict[int, float]:
    """seed -> a - b, over the seeds both have (the pairing every Δ in the report uses)."""
    return {seed: a[seed] - b[seed] for seed in sorted(a) if seed in b}


def _paired(a: Dict[int, float], b: Dict[int, float]) -> List[float]:
    return list(_diff(a, b).values())


def _chosen(runs: List[Run], best: Dict[str, float]) -> Dict[Tuple[str, str], Dict[int, Run]]:
    """(point, setting) -> seed -> the finished run at the setting's chosen learning rate."""
    out: Dict[Tuple[str, str], Dict[int, Run]] = {}
    for r in runs:
        if r.done() and (r.lr == best.get(r.setting, r.lr)):
            out.setdefault((r.point, r.setting), {})[r.seed] = r
    return out


def _score_curve(runs: List[Run]) -> List[float]:
    """Per epoch, the mean over seeds of what :func:`final_map` scores (mAP: max of plain and EMA)."""
    if metric_name(runs) != "mAP":
        return _mean_curve(runs, "macro_f1")
    return [max(a, b) for a, b in zip(_mean_curve(runs, "mAP"), _mean_curve(runs, "mAP_ema"))]


def _mean_curve(runs: List[Run], key: str) -> List[float]:
    recs = [r.records() for r in runs]
    n = min(len(x) for x in recs)
    return [statistics.mean(x[i].get(key) or 0.0 for x in recs) for i in range(n)]


def _settle_fraction(trace: List[float], tol: float = 0.1) -> Optional[float]:
    """Fraction of training after which gamma- stays within ``tol`` (relative) of its final value."""
    if not trace:
        return None
    final = trace[-1]
    band = tol * max(abs(final), 1e-6)
    last_out = max((i for i, g in enumerate(trace) if abs(g - final) > band), default=-1)
    return (last_out + 1) / len(trace)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, writer=lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


@plain_labels
def write_report(
    study: Study, planned: Dict[str, List[Run]], elapsed: Optional[float] = None, source: str = "<study.yaml>"
) -> Path:
    """``report.md`` and its figures under ``reports/<name>/``, from the finished runs: the header,
    the datasets, one section per experiment, the commands."""
    from ..plots import _pyplot

    plt = _pyplot()
    root = Path(study.output) / study.name
    root.mkdir(parents=True, exist_ok=True)
    all_runs = [r for runs in planned.values() for r in runs]
    lines = _header_lines(study, all_runs, elapsed) + _dataset_lines(all_runs)
    best_all: Dict[str, Dict[str, float]] = {}
    for e in study.experiments:
        lines += _experiment_lines(study, e, planned, best_all, plt, root)
    lines += _command_lines(study, source)
    dest = root / "report.md"
    atomic_write(dest, "\n".join(lines))
    return dest


def _header_lines(study: Study, all_runs: List[Run], elapsed: Optional[float]) -> List[str]:
    finished = len({r.key for r in all_runs if r.done()})
    lines = [f"# Study `{study.name}`", ""]
    if study.is_quick:
        lines += [
            "**QUICK PROFILE**: fewer seeds, learning rates and points than the study; a smoke test "
            "of the claims, not their measurement.",
            "",
        ]
    return lines + [
        f"Base config `{study.base_config}` with {json.dumps(study.base_overrides)}; "
        f"{finished} of {len({r.key for r in all_runs})} planned runs finished"
        + (f"; this invocation took {elapsed / 60:.1f} min" if elapsed else "")
        + ".",
        (
            "The score is the final epoch's macro-F1 (single-label runs). "
            if metric_name(all_runs) != "mAP"
            else "mAP is the final epoch's, the better of the plain and the EMA model. "
        )
        + "Δ is a paired per-seed difference, mean [95% t-interval]; * marks an interval that excludes 0."
        + (
            ""
            if metric_name(all_runs) != "mAP"
            else " p(pos), p(neg): mean validation probability of positive and of negative labels at the end; "
            "Δp = p(pos) - (1 - p(neg)), the gap between the confidence on positives and on negatives "
            "(paper Sec. 2.6-2.7)."
        ),
        "",
    ]


def _dataset_lines(all_runs: List[Run]) -> List[str]:
    cfgs = {(r.cfg.data_root, r.cfg.demo_classes): r.cfg for r in all_runs}
    lines = [
        "## Datasets",
        "",
        "| data | classes | train / val images | labels per image | positive fraction | rarest class (train images) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cfg in cfgs.values():
        st = dataset_stats(cfg)
        lines.append(
            f"| `{st['data_root']}` | {st['classes']} | {st['train']} / {st['val']} | "
            f"{st['cardinality']:.2f} | {100 * st['positive']:.1f}% | {st['rarest']} |"
        )
    return lines + [""]


def _experiment_lines(study: Study, e: Experiment, planned, best_all, plt, root: Path) -> List[str]:
    """One experiment's section: what ran, the learning-rate table, the results, figures."""
    runs = planned.get(e.name)
    if runs is None:
        return [f"## {e.title or e.name}", "", "_Not run yet (waits for an earlier experiment)._", ""]
    best_all[e.name] = best_lr_per_setting(runs)
    best = best_all[e.name] if e.lrs else {}
    chosen = _chosen(runs, best)
    baseline = e.baseline or study.baseline
    done = sum(r.done() for r in runs)
    lines = [f"## {e.title or e.name}", ""]
    if e.claim:
        lines += [f"Claim: {e.claim}", ""]
    lines += [
        f"Experiment `{e.name}`: settings {', '.join(f'`{s}`' for s in e.settings)}, overrides "
        f"{json.dumps(e.overrides)}, seeds {e.seeds or study.seeds}, "
        + (
            f"learning rates {e.lrs} (each setting at its best)"
            if e.lrs
            else f"learning rate: the best of `{e.lr_setting or 'each setting'}` in `{e.lr_from}`"
        )
        + f"; {done}/{len(runs)} runs finished.",
        "",
    ]
    lines += _lr_table(e, runs)
    cmp_runs = _chosen(planned.get(e.compare_to, []), best_all.get(e.compare_to, {})) if e.compare_to else {}
    lines += _result_table(e, chosen, cmp_runs, baseline)
    if e.compare_to:
        lines += _advantage_change(e, chosen, cmp_runs, baseline)
    if e.points and chosen:
        lines += _interaction_lines(e, chosen)
        lines += _trend_lines(e, chosen, baseline)
        lines += _sweep_figure(plt, root, e, chosen, runs)
    else:
        lines += _curve_figures(plt, root, e, chosen)
    if e.quartiles and chosen:
        lines += _quartile_table(e, chosen, baseline, runs)
    return lines + _gamma_figure(plt, root, e, chosen)


def _lr_table(e: Experiment, runs: List[Run]) -> List[str]:
    """Mean mAP per setting and learning rate (an experiment that searches more than one)."""
    if not (e.lrs and len(e.lrs) > 1):
        return []
    lines = [
        "Mean mAP per learning rate:",
        "",
        "| setting | " + " | ".join(f"{lr:g}" for lr in e.lrs) + " |",
        "| --- |" + " ---: |" * len(e.lrs),
    ]
    for s in e.settings:
        cells = []
        for lr in e.lrs:
            v = [final_map(r) for r in runs if r.setting == s and r.lr == lr and r.done()]
            cells.append(f"{statistics.mean(v):.2f} (n={len(v)})" if v else "–")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines + [""]


def _result_table(e: Experiment, chosen, cmp_runs, baseline: str) -> List[str]:
    """Per point and setting: mAP, the paired Δ against the baseline (and the compared experiment), p(pos) / p(neg)."""
    ref = f"`{e.baseline_point}`" if e.baseline_point else f"`{baseline}`"
    what = metric_name([r for rs in chosen.values() for r in rs.values()])
    single = what != "mAP"
    head = (
        "| " + (f"{e.axis or 'point'} | " if e.points else "") + f"setting | lr | seeds | {what} mean ± std | "
        f"Δ vs {ref} | "
        + (f"Δ vs `{e.compare_to}` | " if e.compare_to else "")
        + ("top-1 | balanced accuracy |" if single else "p(pos) | p(neg) | Δp |")
    )
    tail = 2 if single else 3
    lines = [head, "|" + " --- |" * (2 if e.points else 1) + " ---: |" * (4 + tail + (1 if e.compare_to else 0))]
    for p in _points(e):
        for s in e.settings:
            rs = chosen.get((p["name"], s), {})
            if not rs:
                continue
            bkey = (e.baseline_point, s) if e.baseline_point else (p["name"], baseline)
            base_runs = _seed_maps(chosen.get(bkey, {}))
            maps = _seed_maps(rs)
            vals = list(maps.values())
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            last = [r.records()[-1] for r in rs.values()]
            cells = [p["name"]] if e.points else []
            cells += [
                s,
                f"{next(iter(rs.values())).lr:g}",
                str(len(rs)),
                f"{statistics.mean(vals):.2f} ± {sd:.2f}",
                "—" if bkey == (p["name"], s) else fmt_ci(_paired(maps, base_runs)),
            ]
            if e.compare_to:
                other = _seed_maps(cmp_runs.get(("", s), {}))
                cells.append(fmt_ci(_paired(maps, other)))
            if single:  # single-label runs: their accuracies beside the macro-F1
                cells += [f"{statistics.mean(x[k] for x in last):.2f}" for k in ("top1", "balanced_accuracy")]
                lines.append("| " + " | ".join(cells) + " |")
                continue
            p_pos = statistics.mean(x.get("p_pos") or 0 for x in last)
            p_neg = statistics.mean(x.get("p_neg") or 0 for x in last)
            # Δp = mean pt of positives - mean pt of negatives, pt = p or 1 - p (paper Sec. 2.6)
            cells += [f"{p_pos:.3f}", f"{p_neg:.3f}", f"{p_pos - (1 - p_neg):+.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _command_lines(study: Study, source: str) -> List[str]:
    return [
        "## Commands",
        "",
        "```",
        f"python tools/study.py {source}" + (" --quick" if study.is_quick else "") + " --jobs 2",
        "```",
        "",
    ]


def _interaction_lines(e: Experiment, chosen) -> List[str]:
    """Does a point move the later settings more than the first (difference of paired Δs)?"""
    if not e.baseline_point or len(e.settings) < 2:
        return []
    first, bp, cells = e.settings[0], e.baseline_point, []

    def maps(point: str, s: str) -> Dict[int, float]:
        return _seed_maps(chosen.get((point, s), {}))

    for s in e.settings[1:]:
        for p in _points(e):
            if p["name"] == bp:
                continue
            d = _diff(_diff(maps(p["name"], s), maps(bp, s)), _diff(maps(p["name"], first), maps(bp, first)))
            if d:
                cells.append(f"`{s}` at {p['name']}: {fmt_ci(list(d.values()))}")
    if not cells:
        return []
    return [
        f"Interaction: Δ vs `{e.baseline_point}` of each setting minus that of `{first}`, paired per seed "
        "(> 0: the point helps this setting more): " + "; ".join(cells) + ".",
        "",
    ]


def _trend_lines(e: Experiment, chosen, baseline: str) -> List[str]:
    """Per-seed slope of mAP (and of the gain over the baseline setting) along the sweep's axis."""
    pts = [p for p in e.points if "value" in p and all((p["name"], s) in chosen for s in e.settings)]
    if len(pts) < 3:
        return []
    xs = [float(p["value"]) for p in pts]
    unit = e.axis or "unit"
    maps = {s: [_seed_maps(chosen[(p["name"], s)]) for p in pts] for s in e.settings}
    out = [
        f"Trend along {unit} ({len(pts)} points; least-squares slope per seed, mean [95% t-interval] "
        f"over seeds, mAP per unit of {unit}): "
        + "; ".join(f"`{s}` {fmt_ci(seed_slopes(xs, maps[s]), 3)}" for s in e.settings)
    ]
    if baseline in e.settings and len(e.settings) > 1:
        gains = {s: [_diff(d, b) for d, b in zip(maps[s], maps[baseline])] for s in e.settings if s != baseline}
        out[-1] += (
            "; gain over `"
            + baseline
            + "`: "
            + "; ".join(f"`{s}` {fmt_ci(seed_slopes(xs, g), 3)}" for s, g in gains.items())
        )
    out[-1] += "."
    return out + [""]


def _advantage_change(e, chosen, cmp_runs, baseline) -> List[str]:
    """Does a setting's advantage over the baseline change under this experiment's condition?"""
    out = [
        f"Change of each setting's advantage over `{baseline}` from `{e.compare_to}` to `{e.name}` "
        "(paired per seed; > 0: the setting gains relative to the baseline):",
        "",
    ]
    b_now = _seed_maps(chosen.get(("", baseline), {}))
    b_then = _seed_maps(cmp_runs.get(("", baseline), {}))
    for s in e.settings:
        if s == baseline:
            continue
        now = {k: final_map(r) for k, r in chosen.get(("", s), {}).items()}
        then = {k: final_map(r) for k, r in cmp_runs.get(("", s), {}).items()}
        d = [
            (now[k] - b_now[k]) - (then[k] - b_then[k]) for k in sorted(now) if k in b_now and k in then and k in b_then
        ]
        out.append(f"- `{s}`: {fmt_ci(d)}")
    return out + [""]


def _curve_figures(plt, root: Path, e: Experiment, chosen) -> List[str]:
    if not chosen:
        return []
    single = metric_name([r for rs in chosen.values() for r in rs.values()]) != "mAP"
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for (_, s), rs in sorted(chosen.items()):
        runs = list(rs.values())
        m = _score_curve(runs)
        axes[0].plot(range(1, len(m) + 1), m, marker=".", label=s)
        if single:
            axes[1].plot(range(1, len(m) + 1), _mean_curve(runs, "top1"), label=f"{s} top-1")
            continue
        axes[1].plot(range(1, len(m) + 1), _mean_curve(runs, "p_pos"), label=f"{s} p(pos)")
        axes[1].plot(
            range(1, len(m) + 1), _mean_curve(runs, "p_neg"), linestyle="--", color=axes[1].lines[-1].get_color()
        )
    if single:
        axes[0].set(title="validation macro-F1 (mean over seeds)", xlabel="epoch")
        axes[1].set(title="validation top-1 accuracy (mean over seeds)", xlabel="epoch")
    else:
        axes[0].set(title="validation mAP (mean over seeds; max of plain, EMA)", xlabel="epoch")
        axes[1].set(title="mean validation probability: positives (—), negatives (--)", xlabel="epoch")
        log_scale(axes[1], "y")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    name = f"{e.name}_curves.png"
    _save(fig, root / name)
    # the last epochs' slope says whether the curves have flattened
    slopes = []
    for (_, s), rs in sorted(chosen.items()):
        runs = list(rs.values())
        m = _score_curve(runs)
        if len(m) >= 3:
            slopes.append(f"`{s}` {m[-1] - m[-3]:+.2f}")
    what = "macro-F1" if single else "mAP"
    return [
        f"![{e.name} curves]({name})",
        "",
        f"{what} change over the last two epochs: " + ", ".join(slopes) + ".",
        "",
    ]


def _sweep_figure(plt, root: Path, e: Experiment, chosen, runs) -> List[str]:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = {p["name"]: p.get("value", i) for i, p in enumerate(e.points)}
    for s in e.settings:
        pts = [(xs[p["name"]], [final_map(r) for r in chosen.get((p["name"], s), {}).values()]) for p in e.points]
        pts = [(x, v) for x, v in pts if v]
        if pts:
            ax.errorbar(
                [x for x, _ in pts],
                [statistics.mean(v) for _, v in pts],
                yerr=[statistics.stdev(v) if len(v) > 1 else 0 for _, v in pts],
                marker="o",
                capsize=3,
                label=s,
            )
    # long experiment titles would run off a 6-inch figure
    ax.set(xlabel=e.axis or "point", ylabel="mAP (mean ± std over seeds)")
    ax.set_title(textwrap.fill(e.title or e.name, 60), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = f"{e.name}_sweep.png"
    _save(fig, root / name)
    return [f"![{e.name} sweep]({name})", ""]


def _quartile_table(e: Experiment, chosen, baseline: str, runs: List[Run]) -> List[str]:
    """Mean AP gain over the baseline per quartile of the classes' training frequency."""
    import numpy as np

    counts = np.asarray(dataset_stats(runs[0].cfg)["counts"])
    order = np.argsort(counts, kind="stable")
    quarts = np.array_split(order, 4)
    lines = [
        f"AP gain over `{baseline}` by class-frequency quartile (Q1 = rarest; training images per class "
        + ", ".join(f"Q{i + 1} {int(counts[q].min())}–{int(counts[q].max())}" for i, q in enumerate(quarts))
        + "):",
        "",
        "| setting | Q1 | Q2 | Q3 | Q4 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def ap(r: Run) -> Optional[np.ndarray]:
        d = r.per_class_ap()
        if d is None:
            return None
        last = r.records()[-1]
        use = d["ap_ema"] if d.get("ap_ema") and (last.get("mAP_ema") or -1) > last["mAP"] else d["ap"]
        return np.array([np.nan if v is None else v for v in use], dtype=float)

    base = {seed: ap(r) for seed, r in chosen.get(("", baseline), {}).items()}
    for s in e.settings:
        if s == baseline:
            continue
        mine = {seed: ap(r) for seed, r in chosen.get(("", s), {}).items()}
        cells = []
        for q in quarts:
            d = [
                100 * float(np.nanmean(mine[k][q] - base[k][q]))
                for k in sorted(mine)
                if k in base and mine[k] is not None and base[k] is not None
            ]
            cells.append(fmt_ci(d))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines + [""]


def _gamma_figure(plt, root: Path, e: Experiment, chosen) -> List[str]:
    traces = {
        (s, seed): [g for rec in r.records() for g in rec.get("gamma_neg_steps") or []]
        for (_, s), rs in chosen.items()
        for seed, r in rs.items()
    }
    traces = {k: v for k, v in traces.items() if v}
    if not traces:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.8))
    fracs = []
    for (s, seed), tr in sorted(traces.items()):
        ax.plot([i / len(tr) for i in range(len(tr))], tr, lw=1, label=f"{s} seed {seed}")
        fracs.append(_settle_fraction(tr))
    ax.set(xlabel="fraction of training", ylabel="γ−", title="adaptive asymmetry: γ− per step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    name = f"{e.name}_gamma.png"
    _save(fig, root / name)
    finals = [tr[-1] for tr in traces.values()]
    return [
        f"![{e.name} gamma-]({name})",
        "",
        f"Adaptive γ−: final {statistics.mean(finals):.2f} (range {min(finals):.2f}–{max(finals):.2f}); it "
        f"stays within 10% of its final value after {100 * statistics.mean(fracs):.0f}% of training on average "
        f"(range {100 * min(fracs):.0f}–{100 * max(fracs):.0f}%).",
        "",
    ]
