"""Planning a study's runs and training them in subprocesses, ``--jobs`` at a time."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..checks import resolve_training
from ..config import Config, dump_config, load_config
from ..errors import ConfigError
from .spec import Experiment, Study
from .stats import dataset_stats
from .store import RunStore, config_key, read_run_folder

log = logging.getLogger(__name__)
# the folder holding the package: the runs' subprocesses import this very asl, installed or not
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


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
    """The run's final score: the final epoch's mAP, the better of the plain and the EMA model (the
    checkpoint train.py keeps); for a single-label run, the final epoch's macro-F1 (Herbarium 2020's
    metric, the paper's single-label comparison)."""
    last = run.records()[-1]
    if getattr(run.cfg, "task", None) == "single_label":
        return last["macro_f1"]
    return max(last["mAP"], last.get("mAP_ema") or -1.0)


def metric_name(runs) -> str:
    """What :func:`final_map` measures for these runs, for the report's text."""
    return "macro-F1" if any(getattr(r.cfg, "task", None) == "single_label" for r in runs) else "mAP"


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
                "%s %s %s lr %g seed %d: %.2f %s in %.0fs",
                run.experiment,
                run.setting,
                run.point,
                run.lr,
                run.seed,
                final_map(run),
                metric_name([run]),
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
    log.info(
        "study %s%s: %d experiments over %d settings, records in %s",
        study.name,
        " (quick profile)" if study.is_quick else "",
        len(study.experiments),
        len(study.settings),
        Path(study.output) / study.runs_name,
    )
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
