"""Run-level helpers of the scripts: the base config, every check made before any work
(values, files, output folder), signal handling, resume state."""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .checkpoint import load_checkpoint
from .config import FIELDS, Config, check_values, choice, load_config
from .engine import set_rng_state
from .errors import CheckpointError, ConfigError
from .models import unwrap_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS / "demo.yaml"
FINETUNE_CONFIG = CONFIGS / "finetune.yaml"
# Files a training run writes into its output folder.
RUN_FILES = ("last.pth", "best.pth", "metrics.jsonl", "config.yaml", "curves.png", "per_class_ap.json")
PROBE = ".write-test-"  # prefix of the temporary file that proves a folder writable
# Fields train.py does not read (validate.py / infer.py settings): not checked for a training run.
NOT_TRAINING = {"class_names", "calibrate", "pic_path", "th", "top_k", "json", "save_image",
                "dataset_type"}


def train_base(config_path: Optional[str], flags: Mapping[str, Any]) -> Config:
    """The config that flags (and ``--config``) apply over.

    With ``--config``, the dataclass defaults; without, ``configs/demo.yaml`` when the dataset is
    the demo (no ``--dataset``, or ``--dataset demo``), else ``configs/finetune.yaml``, the
    fine-tuning base for a user's own data."""
    if config_path:
        return Config()
    if choice(flags.get("dataset", "demo")) == "demo":
        return load_config(str(DEMO_CONFIG))
    return load_config(str(FINETUNE_CONFIG))


def train_help_notes() -> Tuple[Config, Dict[str, str]]:
    """(the fine-tuning base, help notes giving the demo's value where it differs)."""
    fine, demo = load_config(str(FINETUNE_CONFIG)), load_config(str(DEMO_CONFIG))
    notes = {name: f"{getattr(fine, name)!r}; the demo: {getattr(demo, name)!r}" for name in FIELDS
             if getattr(fine, name) != getattr(demo, name)}
    notes["output"] = "runs/<name of the data folder>; the demo: 'runs/demo'"
    return fine, notes


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cap_workers(cfg: Config) -> Config:
    """Loader workers capped at the cores: more only oversubscribe them (and PyTorch warns).
    The resolved config (config.yaml, the checkpoint) records the number that ran."""
    return dataclasses.replace(cfg, workers=min(cfg.workers, available_cores()))


def default_output(data_root: str) -> str:
    """``runs/<name of the data folder>`` (the CSV's folder when the root is a labels file)."""
    root = Path(data_root)
    if root.suffix.lower() == ".csv":
        root = root.parent
    return str(Path("runs") / (root.resolve().name or "run"))


def prepare_training(config_path: Optional[str], flags: Mapping[str, Any]) -> Config:
    """The resolved training config, after every check that needs no data: values in range,
    names known, the model and its input size, the files named (data, init weights, resume).
    Nothing is read, built or written yet; :func:`check_output_dir` comes next, once the resume
    checkpoint (if any) is known to fit."""
    from .models import check_image_size

    base = train_base(config_path, flags)
    cfg = load_config(config_path, flags, base=base)
    check_values(cfg, [f for f in FIELDS if f not in NOT_TRAINING])
    check_image_size(cfg.model_name, cfg.image_size)
    if cfg.dataset == "demo":
        from .data.demo import check_demo_folder

        check_demo_folder(Path(cfg.data_root))  # a user's folder given without --dataset: say so first
    elif not Path(cfg.data_root).exists():
        raise ConfigError(f"data folder not found: {cfg.data_root}")
    init = cfg.init_checkpoint or cfg.model_path
    if init and not Path(init).is_file():
        raise ConfigError(f"--init-checkpoint {init} not found (nothing is downloaded: save the weights there "
                          f"first; see the README, 'Your own tagged images')")
    if cfg.resume and not Path(cfg.resume).is_file():
        raise ConfigError(f"--resume {cfg.resume} not found")
    if cfg.output is None:
        cfg = dataclasses.replace(cfg, output=default_output(cfg.data_root))
    return cap_workers(cfg)


def writable_dir(path: Path, flag: str = "--output") -> Path:
    """Create ``path`` (and parents) and prove it takes a file; else one-line ConfigError."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=PROBE, dir=path)
        os.close(fd)
        os.unlink(probe)  # the probe is this call's own file
    except OSError as e:
        raise ConfigError(f"cannot write into {flag} {path}: {e.strerror or e}") from None
    return path


def writable_file(path: Path, flag: str, overwrite: bool) -> Path:
    """A file path this command may write: not an existing file (unless ``--overwrite``), in a
    folder that takes files."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder, not a file")
    if path.exists() and not overwrite:
        raise ConfigError(f"{flag} {path} already exists; choose another path (or pass --overwrite to replace it)")
    writable_dir(path.parent if str(path.parent) else Path("."), flag=f"the folder of {flag}")
    return path


def check_output_dir(out: Path, overwrite: bool, resume: Optional[str] = None) -> None:
    """A run writes only into a fresh (or empty) folder, or the folder of the run it resumes.

    Anything else in the folder, an earlier run's ``best.pth`` alone included, is refused unless
    ``overwrite``: the message suggests a new ``--output`` first. The folder is created and
    proved writable."""
    # Another rank's writability probe (torchrun: every rank checks the folder) is not a run's file.
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(PROBE)) if out.is_dir() else []
    own = resume is not None and Path(resume).resolve().parent == out.resolve()
    if held and not (overwrite or own):
        what = "a run" if any(f in held for f in RUN_FILES) else "files"
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        hint = f", resume it with --resume {out / 'last.pth'}" if "last.pth" in held and not resume else ""
        raise ConfigError(f"{out} already holds {what} ({shown}); choose a new --output{hint}, or pass --overwrite "
                          f"to replace it")
    writable_dir(out)


class StopSignal:
    """SIGTERM / SIGINT set a flag; the loop saves last.pth at the next step and exits.

    The previous handlers come back with :meth:`restore` (or at the end of a ``with`` block).
    Loader workers live in process groups of their own (:func:`leave_process_group`), so a signal
    sent to the run's process group (``timeout``, Ctrl-C) reaches the loop, not the workers."""

    def __init__(self):
        self.signum, self.name = 0, ""
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum, self.name = signum, signal.Signals(signum).name

    @property
    def received(self) -> bool:
        return bool(self.signum)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> "StopSignal":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def leave_process_group(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker moves to a process group of its own.

    A signal sent to the run's process group (``timeout``, ``kill -TERM -PGID``, Ctrl-C in a
    terminal) then reaches the training loop only, which saves ``last.pth`` and shuts its workers
    down; a worker killed by it would end the run with PyTorch's "DataLoader worker is killed by
    signal" error instead. The worker keeps SIGTERM's default action, so PyTorch can still stop a
    stuck worker with it, and it exits on its own when the main process is gone (PyTorch's
    watchdog). SIGINT is ignored as well, for a terminal that signals more than its foreground group.
    """
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # a session leader cannot move; nothing else to do then
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def load_resume_checkpoint(path: str) -> dict:
    """A ``last.pth`` to resume from; anything else is refused before any work starts."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scheduler", "epoch") if ckpt.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it, it lacks {', '.join(missing)} (resume from a last.pth)")
    return ckpt


def check_resume(ckpt: Dict[str, Any], cfg: Config, class_names: Optional[Sequence[str]] = None) -> None:
    """Refuse a resume checkpoint that does not describe this run, naming what differs:
    the model, the image size and (once the data is read) the classes."""
    from .checkpoint import class_names_of

    diffs = []
    if ckpt.get("model_name") and ckpt["model_name"] != cfg.model_name:
        diffs.append(f"model {ckpt['model_name']} vs {cfg.model_name}")
    if ckpt.get("image_size") and int(ckpt["image_size"]) != cfg.image_size:
        diffs.append(f"image size {ckpt['image_size']} vs {cfg.image_size}")
    if class_names is not None:
        have = class_names_of(ckpt, int(ckpt.get("num_classes") or 0))
        if have != list(class_names):
            diffs.append(f"{len(have)} classes vs {len(class_names)}" if len(have) != len(class_names)
                         else "the class names or their order")
    if diffs:
        raise CheckpointError(f"--resume {cfg.resume} was saved by another run ({'; '.join(diffs)}, "
                              f"checkpoint vs this run); resume with the settings it was trained with, or start "
                              f"a new --output")


def restore_training_state(ckpt: Dict[str, Any], model, optimizer, scheduler, ema=None, scaler=None,
                           loss_fn=None) -> Tuple[int, int, Dict[str, Any], Optional[Dict[str, Any]]]:
    """Load a ``last.pth`` into the run's objects.

    Returns:
        (epoch to start at, global step, best record, the mid-epoch resume dict for
        ``train_one_epoch`` or None). At an epoch boundary the RNG states are restored here; a
        mid-epoch resume restores them once the loader's iterator exists.
    """
    try:
        unwrap_model(model).load_state_dict(ckpt["model"])
    except RuntimeError as e:  # what check_resume cannot see (e.g. a different head)
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise CheckpointError(f"the resume checkpoint does not fit this model: {first[:200]}") from None
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.module.load_state_dict(ckpt["ema"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    for k, v in (ckpt.get("loss_state") or {}).items():
        setattr(loss_fn, k, v)
    global_step, best = ckpt.get("global_step", 0), ckpt.get("best") or {"mAP": -1.0}
    if ckpt.get("step_in_epoch"):  # a mid-epoch checkpoint: finish that epoch first
        return ckpt["epoch"], global_step, best, {"partial": ckpt["partial"], "rng": ckpt.get("rng"),
                                                  "step": ckpt["step_in_epoch"]}
    if ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return ckpt["epoch"] + 1, global_step, best, None
