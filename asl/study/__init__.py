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
import sys
import time

from ..errors import ConfigError
from .report import write_report
from .runner import Run, execute, run_log, run_study
from .spec import Experiment, Study, load_study
from .stats import seed_slopes
from .store import RunStore, config_key, import_run_folders, record_key

__all__ = [
    "main",
    "console",
    "Experiment",
    "Study",
    "load_study",
    "Run",
    "execute",
    "run_log",
    "run_study",
    "write_report",
    "seed_slopes",
    "RunStore",
    "config_key",
    "import_run_folders",
    "record_key",
]

# The package's parts: spec (the YAML), store (runs.jsonl), runner (plan and train), stats
# (intervals, slopes), report (report.md, a function per section); this module is the command.


def main(argv=None) -> int:
    from .. import cli

    ap = argparse.ArgumentParser(prog=cli.prog("study"), description=__doc__.splitlines()[0])
    ap.add_argument("study", help="study YAML, e.g. configs/study_demo.yaml")
    ap.add_argument("--quick", action="store_true", help="the YAML's quick profile (labelled as such)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained in parallel (threads split between them)")
    ap.add_argument("--dry-run", action="store_true", help="count the runs, train nothing")
    ap.add_argument("--report-only", action="store_true", help="write the report from the finished runs")
    args = ap.parse_args(argv)
    cli.setup_logging()
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
    from .. import cli

    sys.exit(cli.run(main))
