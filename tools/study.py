"""Run a grid of training runs and write a report with paired, per-seed comparisons.

    python tools/study.py configs/study_demo.yaml [--dry-run]

The study YAML names a base training config, the seeds, the learning rates every setting
is tried with (each setting is reported at its own best mean), a baseline setting, the
settings (config overrides) and optional variants applied on top of all settings (label
noise, a denser demo, ...). Every run is an ordinary ``train.py`` run written under
``reports/<name>/runs/``; a finished run is reused, so a study can be stopped and started
again. The same seed gives the same initialization and batch order across settings, so
differences are paired per seed; ``report.md`` gives mean ± std and the paired difference to
the baseline with its 95% t-interval.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl.config import FIELDS, load_yaml  # noqa: E402
from asl.errors import ConfigError  # noqa: E402


@dataclass
class Study:
    name: str
    base_config: str
    seeds: List[int]
    lrs: List[float]
    baseline: str
    settings: List[Dict[str, Any]]
    variants: List[Dict[str, Any]] = field(default_factory=lambda: [{"name": "default", "overrides": {}}])
    output: str = "reports"


def load_study(path: str) -> Study:
    raw = load_yaml(path)
    known = set(Study.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    try:
        study = Study(**raw)
        study.lrs = [float(v) for v in study.lrs]
        study.seeds = [int(v) for v in study.seeds]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None
    for group in (study.settings, study.variants):
        for s in group:
            bad = sorted(set(s.get("overrides", {})) - set(FIELDS))
            if bad or "name" not in s:
                raise ConfigError(f"{path}: setting {s.get('name')!r} has unknown config keys {bad} or no name")
    if study.baseline not in {s["name"] for s in study.settings}:
        raise ConfigError(f"{path}: baseline {study.baseline!r} is not a setting")
    return study


def final_map(run_dir: Path) -> Dict[str, Any]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = recs[-1]
    return {"mAP": max(last["mAP"], last.get("mAP_ema") or -1), "records": recs}


def run_one(study: Study, variant: Dict, setting: Dict, lr: float, seed: int, epochs_expected: int,
            dry_run: bool) -> Path:
    import train
    from asl import cli

    out = Path(study.output) / study.name / "runs" / variant["name"] / setting["name"] / f"lr{lr:g}" / f"seed{seed}"
    metrics = out / "metrics.jsonl"
    if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs_expected:
        return out  # finished earlier
    overrides = {**setting.get("overrides", {}), **variant.get("overrides", {}), "lr": lr, "seed": seed,
                 "output": str(out), "overwrite": True, "print_freq": 0}
    argv = ["--config", study.base_config]
    for k, v in overrides.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            argv += [flag, str(v)]
    if dry_run:
        print("would run: train.py " + " ".join(argv))
        return out
    t0 = time.perf_counter()
    rc = cli.run(train.main, argv)
    if rc != 0:
        raise SystemExit(f"run failed ({rc}): train.py {' '.join(argv)}")
    print(f"{out}: {final_map(out)['mAP']:.2f} mAP in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def t_interval(diffs: List[float]) -> str:
    n = len(diffs)
    if n < 2:
        return f"{diffs[0]:+.2f} (one seed)" if diffs else "-"
    from scipy.stats import t

    m, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}]"


def report(study: Study, results: Dict) -> str:
    lines = [f"# Study `{study.name}`", "",
             f"Base config `{study.base_config}`, seeds {study.seeds}, learning rates {study.lrs}; each setting "
             f"at its best mean over the learning rates; mAP = final epoch, the better of plain and EMA.", ""]
    for variant in study.variants:
        v = variant["name"]
        lines += [f"## Variant `{v}` {json.dumps(variant.get('overrides', {}))}", "",
                  f"| setting | best lr | mAP mean ± std | paired Δ vs {study.baseline} (95% CI) | "
                  f"p(pos) | p(neg) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        best = {}
        for s in study.settings:
            per_lr = results[v][s["name"]]
            lr = max(per_lr, key=lambda k: statistics.mean(r["mAP"] for r in per_lr[k].values()))
            best[s["name"]] = per_lr[lr]
        base = best[study.baseline]
        for s in study.settings:
            runs = best[s["name"]]
            maps = [runs[seed]["mAP"] for seed in study.seeds]
            diffs = [runs[seed]["mAP"] - base[seed]["mAP"] for seed in study.seeds]
            sd = statistics.stdev(maps) if len(maps) > 1 else 0.0
            last = [runs[seed]["records"][-1] for seed in study.seeds]
            p_pos = statistics.mean(r.get("p_pos") or 0 for r in last)
            p_neg = statistics.mean(r.get("p_neg") or 0 for r in last)
            lr = [k for k, val in results[v][s["name"]].items() if val is runs][0]
            lines.append(f"| {s['name']} | {lr:g} | {statistics.mean(maps):.2f} ± {sd:.2f} | "
                         f"{'—' if s['name'] == study.baseline else t_interval(diffs)} | {p_pos:.3f} | {p_neg:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    args = ap.parse_args(argv)
    study = load_study(args.study)
    from asl.config import load_config

    epochs = load_config(study.base_config).epochs
    results: Dict = {}
    for variant in study.variants:
        for s in study.settings:
            for lr in study.lrs:
                for seed in study.seeds:
                    e = {**s.get("overrides", {}), **variant.get("overrides", {})}.get("epochs", epochs)
                    out = run_one(study, variant, s, lr, seed, int(e), args.dry_run)
                    if not args.dry_run:
                        results.setdefault(variant["name"], {}).setdefault(s["name"], {}).setdefault(lr, {})[
                            seed] = final_map(out)
    if args.dry_run:
        return 0
    dest = Path(study.output) / study.name / "report.md"
    dest.write_text(report(study, results), encoding="utf-8")
    print(f"report -> {dest}")
    return 0


if __name__ == "__main__":
    from asl import cli

    sys.exit(cli.run(main))
