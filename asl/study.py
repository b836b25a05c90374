"""Seeded grids of training runs and a report with paired comparisons (the paper's claims at small scale).

    asl-study configs/study_demo.yaml [--quick] [--jobs 2] [--dry-run] [--report-only]
    (also python -m asl.study ..., python tools/study.py ...)

A study YAML names a base training config and ``base_overrides``, the seeds, the settings (named
config overrides: a loss and its parameters) and a list of experiments. An experiment runs some
settings at each of its learning rates (``lrs``) or at each setting's best learning rate in an
earlier experiment (``lr_from``), optionally over ``points`` (a sweep axis: gamma-, margin, class
count), with its own ``overrides`` (label noise, longer schedule). Every run is an ordinary
training run (``python -m asl.train`` in a subprocess) in the working folder
``reports/<name>/work/<key>/`` (not tracked); once finished, its config and per-epoch records are
appended to ``reports/<name>/runs.jsonl``, the study's one record file. The key hashes the fields
that can change a run's result (``asl.config.RESULT_FIELDS``), so a run shared by two experiments is
trained once, a finished run is reused, an interrupted one resumes from its ``last.pth``, changing
a setting retrains only what it changes, and a field added to the config later (with its default)
leaves every recorded run's key as it was. ``--quick`` shares the full study's record file.

The same seed gives the same initialization, batch order and label noise across settings, so
every comparison is a paired per-seed difference with a 95% t-interval. ``report.md`` holds the
tables, the dataset statistics and the figures (curves, probabilities, sweeps, adaptive gamma-).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .config import FIELDS, RESULT_FIELDS, Config, dump_config, from_dict, load_config, load_yaml
from .errors import ConfigError
from .files import atomic_write
from .runtime import resolve_training

log = logging.getLogger(__name__)
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])


@dataclass
class Experiment:
    name: str
    settings: List[str]
    title: str = ""
    claim: str = ""
    lrs: List[float] = field(default_factory=list)
    lr_from: Optional[str] = None  # each setting at its best lr in that experiment
    lr_setting: Optional[str] = None  # ...or every setting at this setting's best lr there
    seeds: Optional[List[int]] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    points: List[Dict[str, Any]] = field(default_factory=list)  # [{name, value, overrides}]
    axis: str = ""
    baseline: Optional[str] = None
    baseline_point: Optional[str] = None  # sweeps: Δ against this point of the same setting
    compare_to: Optional[str] = None  # same setting and seed in that experiment: the paired change
    quartiles: bool = False  # AP gain by training-frequency quartile of the classes
    quick: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    name: str
    base_config: str
    seeds: List[int]
    baseline: str
    settings: List[Dict[str, Any]]
    experiments: List[Experiment]
    base_overrides: Dict[str, Any] = field(default_factory=dict)
    output: str = "reports"
    quick: Dict[str, Any] = field(default_factory=dict)
    is_quick: bool = False
    runs_name: str = ""  # the full study's name: its quick profile shares its runs folder

    def setting(self, name: str) -> Dict[str, Any]:
        return next(s for s in self.settings if s["name"] == name)


def _strict(cls, raw: Dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)} - {"is_quick", "runs_name"}
    unknown = sorted(set(map(str, raw)) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name in names
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in raw
    ]
    if required:
        raise ConfigError(f"{where}: missing key{'s' if len(required) > 1 else ''} {', '.join(required)}")
    try:
        return cls(**raw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_overrides(overrides: Dict[str, Any], where: str) -> None:
    bad = sorted(set(overrides) - set(FIELDS))
    if bad:
        raise ConfigError(f"{where}: unknown config keys {', '.join(bad)}")


def load_study(path: str, quick: bool = False) -> Study:
    """Read and check a study YAML; ``quick`` applies its ``quick:`` profile (and each experiment's)."""
    raw = load_yaml(path)
    runs_name = raw.get("name", "study")
    if quick:
        q = dict(raw.get("quick") or {})
        keep = q.pop("experiments", None)
        base = {**(raw.get("base_overrides") or {}), **q.pop("base_overrides", {})}
        raw = {**raw, **q, "base_overrides": base, "name": f"{raw.get('name', 'study')}_quick"}
        if keep is not None:
            raw["experiments"] = [e for e in raw.get("experiments", []) if e.get("name") in keep]
    exps = []
    for i, e in enumerate(raw.get("experiments") or []):
        if not isinstance(e, dict):
            raise ConfigError(f"{path}: experiment {i} is not a mapping")
        if quick and e.get("quick"):
            e = {**e, **e["quick"]}
        exps.append(_strict(Experiment, e, f"{path}: experiment {e.get('name', i)!r}"))
    study = _strict(Study, {**raw, "experiments": exps}, path)
    study.is_quick, study.runs_name = quick, runs_name
    try:
        study.seeds = [int(s) for s in study.seeds]
        for e in study.experiments:
            e.lrs = [float(v) for v in e.lrs]
            e.seeds = [int(s) for s in e.seeds] if e.seeds is not None else None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: {err}") from None
    _check_overrides(study.base_overrides, f"{path}: base_overrides")
    names = set()
    for s in study.settings:
        if "name" not in s:
            raise ConfigError(f"{path}: a setting has no name")
        _check_overrides(s.get("overrides", {}), f"{path}: setting {s['name']!r}")
        names.add(s["name"])
    seen = set()
    for e in study.experiments:
        where = f"{path}: experiment {e.name!r}"
        for s in e.settings + [e.baseline or study.baseline]:
            if s not in names:
                raise ConfigError(f"{where}: no setting named {s!r}")
        if bool(e.lrs) == bool(e.lr_from):
            raise ConfigError(f"{where}: give either lrs or lr_from")
        for ref in (e.lr_from, e.compare_to):
            if ref and ref not in seen:
                raise ConfigError(f"{where}: {ref!r} must be an earlier experiment")
        _check_overrides(e.overrides, where)
        for p in e.points:
            if "name" not in p:
                raise ConfigError(f"{where}: a point has no name")
            _check_overrides(p.get("overrides", {}), f"{where}: point {p['name']!r}")
        seen.add(e.name)
    if study.baseline not in names:
        raise ConfigError(f"{path}: baseline {study.baseline!r} is not a setting")
    return study


# --------------------------------------------------------------------------- runs


def config_key(cfg: Config) -> str:
    """Hash of the fields that can change a run's result (``RESULT_FIELDS``: not where it writes,
    how often it logs or how many loader workers it uses)."""
    d = {k: getattr(cfg, k) for k in RESULT_FIELDS}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def record_key(record: Dict[str, Any]) -> str:
    """The key of a recorded run: its config, with today's defaults for fields added since."""
    known = {k: v for k, v in record["config"].items() if k in FIELDS}
    return config_key(from_dict(known, source="run record"))


class RunStore:
    """A study's finished runs: ``runs.jsonl``, one JSON object per run, in the order they finished::

        {"config": {the RESULT_FIELDS values}, "epochs": [the metrics.jsonl records],
         "per_class_ap": {"epoch": ..., "ap": [...], "ap_ema": [...] or null}}

    Records are looked up by :func:`record_key`, computed from the config when the file is read
    (no key is stored), so a field added to the config since a run was recorded (with its
    default) does not orphan it. Adding
    rewrites the file atomically; parallel jobs (threads) add under a lock.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: Optional[Dict[str, Dict[str, Any]]] = None

    def _load(self) -> Dict[str, Dict[str, Any]]:
        if self._records is None:
            recs = {}
            if self.path.exists():
                for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                    if line.strip():
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            raise ConfigError(f"{self.path}:{n}: not a JSON record") from None
                        recs[record_key(rec)] = rec
            self._records = recs
        return self._records

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self._load().get(key)

    def __len__(self) -> int:
        return len(self._load())

    def __iter__(self):
        return iter(list(self._load().values()))

    def add(self, cfg: Config, epochs: List[Dict[str, Any]], per_class_ap: Optional[Dict[str, Any]]) -> str:
        """Record a finished run; returns its key."""
        key = config_key(cfg)
        rec = {"config": {k: getattr(cfg, k) for k in RESULT_FIELDS}, "epochs": epochs, "per_class_ap": per_class_ap}
        with self._lock:
            recs = self._load()
            recs[key] = rec
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs.values()))
        return key


def read_run_folder(folder: Path) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """(per-epoch records, per-class AP without the class names) of a training run's folder."""
    f = folder / "metrics.jsonl"
    epochs = (
        [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()] if f.exists() else []
    )
    ap = None
    if (folder / "per_class_ap.json").exists():
        ap = json.loads((folder / "per_class_ap.json").read_text(encoding="utf-8"))
        ap.pop("class_names", None)  # the dataset's, in its order: the same for every run of a dataset
    return epochs, ap


def import_run_folders(folder: Path, store: RunStore) -> Tuple[int, int]:
    """Record the finished runs of an older study layout (``runs/<hash>/`` folders, each with its
    ``study_config.yaml``, ``metrics.jsonl`` and ``per_class_ap.json``) in ``store``; nothing in
    ``folder`` is changed. Returns (runs recorded, unfinished runs left out)."""
    added = skipped = 0
    for d in sorted(p for p in Path(folder).iterdir() if (p / "study_config.yaml").is_file()):
        cfg = load_config(str(d / "study_config.yaml"))
        epochs, ap = read_run_folder(d)
        if len(epochs) < min(cfg.stop_epoch or cfg.epochs, cfg.epochs):
            skipped += 1
            continue
        store.add(cfg, epochs, ap)
        added += 1
    return added, skipped


@dataclass
class Run:
    experiment: str
    setting: str
    point: str
    lr: float
    seed: int
    overrides: Dict[str, Any]
    cfg: Config
    key: str
    dir: Path  # the working folder while it trains
    store: Optional[RunStore] = field(default=None, repr=False, compare=False)
    _finished: Optional[List[Dict[str, Any]]] = field(default=None, repr=False, compare=False)

    @property
    def epochs(self) -> int:
        return min(self.cfg.stop_epoch or self.cfg.epochs, self.cfg.epochs)

    def record(self) -> Optional[Dict[str, Any]]:
        return self.store.get(self.key) if self.store is not None else None

    def records(self) -> List[Dict[str, Any]]:
        """The run's per-epoch records: from the study's record file once finished, else from its
        working folder (a finished run never changes)."""
        if self._finished is not None:
            return self._finished
        rec = self.record()
        recs = rec["epochs"] if rec is not None else read_run_folder(self.dir)[0] if self.dir else []
        if len(recs) >= self.epochs:
            self._finished = recs
        return recs

    def per_class_ap(self) -> Optional[Dict[str, Any]]:
        rec = self.record()
        return rec["per_class_ap"] if rec is not None else read_run_folder(self.dir)[1]

    def done(self) -> bool:
        return len(self.records()) >= self.epochs


def _points(e: Experiment) -> List[Dict[str, Any]]:
    return e.points or [{"name": "", "overrides": {}}]


_STORES: Dict[Path, RunStore] = {}


def study_store(study: Study) -> RunStore:
    """The record file of ``study`` (its quick profile shares the full study's)."""
    path = (Path(study.output) / study.runs_name / "runs.jsonl").resolve()
    return _STORES.setdefault(path, RunStore(path))


def plan_experiment(study: Study, e: Experiment, best_lrs: Dict[str, Dict[str, float]]) -> List[Run]:
    """The runs of ``e``; ``best_lrs[experiment][setting]`` resolves ``lr_from``."""
    base = load_config(study.base_config, study.base_overrides)
    root = Path(study.output) / study.runs_name
    store = study_store(study)
    runs = []
    for p in _points(e):
        for s in e.settings:
            if e.lr_from:
                lrs = [best_lrs[e.lr_from][e.lr_setting or s]]
            else:
                lrs = e.lrs
            for lr in lrs:
                for seed in e.seeds or study.seeds:
                    ov = {
                        **study.setting(s).get("overrides", {}),
                        **e.overrides,
                        **p.get("overrides", {}),
                        "lr": lr,
                        "seed": seed,
                    }
                    # resolved as the trainer resolves it (model, input size), so the key is the run's
                    cfg = resolve_training(load_config(None, ov, base=base))
                    key = config_key(cfg)
                    d = root / "work" / key
                    cfg = dataclasses.replace(cfg, output=str(d), print_freq=0)
                    runs.append(Run(e.name, s, p["name"], lr, seed, ov, cfg, key, d, store))
    return runs


def best_lr_per_setting(runs: List[Run]) -> Dict[str, float]:
    """Each setting's learning rate with the best mean final mAP over its finished seeds."""
    by: Dict[str, Dict[float, List[float]]] = {}
    for r in runs:
        if r.done():
            by.setdefault(r.setting, {}).setdefault(r.lr, []).append(final_map(r))
    return {s: max(per, key=lambda lr: statistics.mean(per[lr])) for s, per in by.items()}


def final_map(run: Run) -> float:
    """Final-epoch mAP, the better of the plain and the EMA model (the checkpoint train.py keeps)."""
    last = run.records()[-1]
    return max(last["mAP"], last.get("mAP_ema") or -1.0)


class _Launcher:
    """Starts runs as ``python -m asl.train`` subprocesses and stops them all (they save
    ``last.pth``) on a signal."""

    def __init__(self, threads: int):
        self.threads = threads
        self.procs: Dict[int, subprocess.Popen] = {}
        self.stopping = False

    def __call__(self, run: Run) -> Tuple[Run, int, float]:
        if self.stopping:
            return run, -1, 0.0
        run.dir.mkdir(parents=True, exist_ok=True)
        # the launcher's own files sit beside the run's folder: the folder holds the run's files alone
        cfg_file = run.dir.parent / f"{run.dir.name}.yaml"
        dump_config(run.cfg, cfg_file)
        argv = [sys.executable, "-m", "asl.train", "--config", str(cfg_file)]
        argv += ["--resume", str(run.dir / "last.pth")] if (run.dir / "last.pth").exists() else ["--overwrite"]
        # the package this process runs, installed or not
        path = os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads), PYTHONPATH=path)
        t0 = time.perf_counter()
        with open(run_log(run), "a", encoding="utf-8") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
            self.procs[proc.pid] = proc
            rc = proc.wait()
            self.procs.pop(proc.pid, None)
        return run, rc, time.perf_counter() - t0

    def stop(self) -> None:
        self.stopping = True
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # train.py saves last.pth at its next step
        for proc in list(self.procs.values()):
            proc.wait()


def run_log(run: Run) -> Path:
    """The training log of a run, beside its folder (``work/<key>.log``)."""
    return run.dir.parent / f"{run.dir.name}.log"


def execute(runs: List[Run], jobs: int) -> None:
    """Train the unfinished runs, ``jobs`` at a time, each with cores // jobs threads. On Ctrl-C or
    SIGTERM the running ones save their state (the next invocation resumes them) and nothing new starts."""
    todo, seen = [], set()
    for r in runs:
        if not r.done() and r.key not in seen:
            seen.add(r.key)
            todo.append(r)
    if not todo:
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log.info("%d runs to train (%d jobs x %d threads)", len(todo), jobs, threads)
    launcher = _Launcher(threads)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for run, rc, sec in pool.map(launcher, todo):
            if rc != 0:
                tail = run_log(run).read_text(encoding="utf-8", errors="replace").strip().splitlines()
                raise ConfigError(f"run {run.dir} failed ({rc}): {tail[-1] if tail else 'no output'}")
            epochs, ap = read_run_folder(run.dir)
            run.store.add(run.cfg, epochs, ap)
            (run.dir / "last.pth").unlink(missing_ok=True)  # 4x best.pth; only an unfinished run needs it
            log.info(
                "%s %s %s lr %g seed %d: %.2f mAP in %.0fs",
                run.experiment,
                run.setting,
                run.point,
                run.lr,
                run.seed,
                final_map(run),
                sec,
            )
    except BaseException:
        launcher.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        signal.signal(signal.SIGTERM, previous)


def run_study(study: Study, jobs: int = 1, dry_run: bool = False, train: bool = True) -> Dict[str, List[Run]]:
    """Plan (and unless ``dry_run`` or not ``train``, train) every experiment in order."""
    planned: Dict[str, List[Run]] = {}
    best: Dict[str, Dict[str, float]] = {}
    counted: Dict[str, Run] = {}
    for e in study.experiments:
        needed = [e.lr_setting] if e.lr_setting else e.settings
        pending = e.lr_from and any(s not in best.get(e.lr_from, {}) for s in needed)
        if pending and not dry_run:
            log.info("experiment %s waits for %s's learning rates", e.name, e.lr_from)
            break
        if pending:  # count with a stand-in rate: the runs exist once lr_from's are finished
            src = next(x for x in study.experiments if x.name == e.lr_from)
            best[e.lr_from] = {**{s: src.lrs[0] if src.lrs else 0.0 for s in needed}, **best.get(e.lr_from, {})}
        runs = plan_experiment(study, e, best)
        planned[e.name] = runs
        if train and not dry_run:
            for cfg in {(r.cfg.data_root, r.cfg.demo_classes): r.cfg for r in runs}.values():
                dataset_stats(cfg)  # generate demo variants here, not in parallel jobs
            execute(runs, jobs)
        if any(r.done() for r in runs):
            best[e.name] = best_lr_per_setting(runs)
        if dry_run:
            todo = {r.key: r for r in runs if not r.done() and r.key not in counted}
            counted.update(todo)
            sizes = sorted({r.cfg.image_size for r in todo.values()})
            print(
                f"{e.name}: {len(runs)} runs, {len(todo)} to train "
                f"({sum(r.epochs for r in todo.values())} epochs at {'/'.join(map(str, sizes)) or '-'} px)"
                + (f"; learning rates from {e.lr_from} once it is finished" if pending else "")
            )
    return planned


# --------------------------------------------------------------------------- analysis


_STATS_CACHE: Dict[Tuple, Dict[str, Any]] = {}


def dataset_stats(cfg: Config) -> Dict[str, Any]:
    """Classes, images, label cardinality, positive fraction and per-class training counts."""
    import numpy as np

    from .factory import dataset_from_config, prepare_data

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


def write_report(
    study: Study, planned: Dict[str, List[Run]], elapsed: Optional[float] = None, source: str = "<study.yaml>"
) -> Path:
    """``report.md`` and its figures under ``reports/<name>/``, from the finished runs."""
    from .plots import _pyplot

    plt = _pyplot()
    root = Path(study.output) / study.name
    root.mkdir(parents=True, exist_ok=True)
    all_runs = [r for runs in planned.values() for r in runs]
    finished = len({r.key for r in all_runs if r.done()})
    lines = [f"# Study `{study.name}`", ""]
    if study.is_quick:
        lines += [
            "**QUICK PROFILE**: fewer seeds, learning rates and points than the study; a smoke test "
            "of the claims, not their measurement.",
            "",
        ]
    lines += [
        f"Base config `{study.base_config}` with {json.dumps(study.base_overrides)}; "
        f"{finished} of {len({r.key for r in all_runs})} planned runs finished"
        + (f"; this invocation took {elapsed / 60:.1f} min" if elapsed else "")
        + ".",
        "mAP is the final epoch's, the better of the plain and the EMA model. Δ is a paired per-seed "
        "difference, mean [95% t-interval]; * marks an interval that excludes 0. p(pos), p(neg): mean "
        "validation probability of positive and of negative labels at the end; Δp = p(pos) - (1 - p(neg)), "
        "the gap between the confidence on positives and on negatives (paper Sec. 2.6-2.7).",
        "",
    ]
    cfgs = {(r.cfg.data_root, r.cfg.demo_classes): r.cfg for r in all_runs}
    lines += [
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
    lines.append("")
    best_all: Dict[str, Dict[str, float]] = {}
    for e in study.experiments:
        runs = planned.get(e.name)
        if runs is None:
            lines += [f"## {e.title or e.name}", "", "_Not run yet (waits for an earlier experiment)._", ""]
            continue
        best_all[e.name] = best_lr_per_setting(runs)
        best = best_all[e.name] if e.lrs else {}
        chosen = _chosen(runs, best)
        baseline = e.baseline or study.baseline
        done = sum(r.done() for r in runs)
        lines += [f"## {e.title or e.name}", ""]
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
        if e.lrs and len(e.lrs) > 1:
            lines += [
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
            lines.append("")
        cmp_runs = _chosen(planned.get(e.compare_to, []), best_all.get(e.compare_to, {})) if e.compare_to else {}
        ref = f"`{e.baseline_point}`" if e.baseline_point else f"`{baseline}`"
        head = (
            "| " + (f"{e.axis or 'point'} | " if e.points else "") + "setting | lr | seeds | mAP mean ± std | "
            f"Δ vs {ref} | " + (f"Δ vs `{e.compare_to}` | " if e.compare_to else "") + "p(pos) | p(neg) | Δp |"
        )
        lines += [head, "|" + " --- |" * (2 if e.points else 1) + " ---: |" * (8 if e.compare_to else 7)]
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
                p_pos = statistics.mean(x.get("p_pos") or 0 for x in last)
                p_neg = statistics.mean(x.get("p_neg") or 0 for x in last)
                # Δp = mean pt of positives - mean pt of negatives, pt = p or 1 - p (reference Sec. 3)
                cells += [f"{p_pos:.3f}", f"{p_neg:.3f}", f"{p_pos - (1 - p_neg):+.3f}"]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
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
        lines += _gamma_figure(plt, root, e, chosen)
    lines += [
        "## Commands",
        "",
        "```",
        f"python tools/study.py {source}" + (" --quick" if study.is_quick else "") + " --jobs 2",
        "```",
        "",
    ]
    dest = root / "report.md"
    atomic_write(dest, "\n".join(lines))
    return dest


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
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for (_, s), rs in sorted(chosen.items()):
        runs = list(rs.values())
        m = _mean_curve(runs, "mAP_ema")
        m = [max(a, b) for a, b in zip(_mean_curve(runs, "mAP"), m)]
        axes[0].plot(range(1, len(m) + 1), m, marker=".", label=s)
        axes[1].plot(range(1, len(m) + 1), _mean_curve(runs, "p_pos"), label=f"{s} p(pos)")
        axes[1].plot(
            range(1, len(m) + 1), _mean_curve(runs, "p_neg"), linestyle="--", color=axes[1].lines[-1].get_color()
        )
    axes[0].set(title="validation mAP (mean over seeds; max of plain, EMA)", xlabel="epoch")
    axes[1].set(title="mean validation probability: positives (—), negatives (--)", xlabel="epoch", yscale="log")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    name = f"{e.name}_curves.png"
    _save(fig, root / name)
    # the last epochs' slope says whether the curves have flattened
    slopes = []
    for (_, s), rs in sorted(chosen.items()):
        runs = list(rs.values())
        m = [max(a, b) for a, b in zip(_mean_curve(runs, "mAP"), _mean_curve(runs, "mAP_ema"))]
        if len(m) >= 3:
            slopes.append(f"`{s}` {m[-1] - m[-3]:+.2f}")
    return [f"![{e.name} curves]({name})", "", "mAP change over the last two epochs: " + ", ".join(slopes) + ".", ""]


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


def main(argv=None) -> int:
    from . import cli

    ap = argparse.ArgumentParser(prog=cli.prog("study"), description=__doc__.splitlines()[0])
    ap.add_argument("study", help="study YAML, e.g. configs/study_demo.yaml")
    ap.add_argument("--quick", action="store_true", help="the YAML's quick profile (labelled as such)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained in parallel (threads split between them)")
    ap.add_argument("--dry-run", action="store_true", help="count the runs, train nothing")
    ap.add_argument("--report-only", action="store_true", help="write the report from the finished runs")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    study = load_study(args.study, quick=args.quick)
    t0 = time.perf_counter()
    planned = run_study(study, jobs=args.jobs, dry_run=args.dry_run, train=not args.report_only)
    if args.dry_run:
        return 0
    dest = write_report(study, planned, None if args.report_only else time.perf_counter() - t0, args.study)
    print(f"report -> {dest}")
    return 0


def console() -> None:
    """The ``asl-study`` entry point (also ``python -m asl.study``, ``python tools/study.py``)."""
    from . import cli

    cli.setup_logging()
    sys.exit(cli.run(main))


if __name__ == "__main__":
    console()
