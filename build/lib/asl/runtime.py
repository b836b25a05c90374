"""Run-level helpers of the commands: the base configs, every check made before any work
(values, files, output folder), signal handling, loader workers' process groups."""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from .config import (
    DEFAULT_MODEL,
    FIELDS,
    TRAIN,
    Config,
    check_values,
    choice,
    default_image_size,
    fields_for,
    load_config,
)
from .errors import ConfigError

# The base configs ship inside the package (configs/demo.yaml and configs/finetune.yaml in the
# source tree point here), so an installed `asl-train` finds them.
CONFIGS = Path(__file__).resolve().parent / "configs"
DEMO_CONFIG = CONFIGS / "demo.yaml"
FINETUNE_CONFIG = CONFIGS / "finetune.yaml"
# Files a training run writes into its output folder.
RUN_FILES = ("last.pth", "best.pth", "metrics.jsonl", "config.yaml", "curves.png", "per_class_ap.json")
PROBE = ".write-test-"  # prefix of the temporary file that proves a folder writable


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


def resolve_training(cfg: Config) -> Config:
    """Fill what a training config leaves unset: the model (``DEFAULT_MODEL``), its input size
    (:func:`asl.config.default_image_size`), the output folder (``runs/<data folder>``)."""
    model = cfg.model_name or DEFAULT_MODEL
    size = cfg.image_size if cfg.image_size is not None else default_image_size(model)
    return dataclasses.replace(cfg, model_name=model, image_size=size,
                               output=cfg.output or default_output(cfg.data_root))


def check_training(cfg: Config) -> Config:
    """Every check of a resolved training config that needs no data: values in range, names
    known, dataset options the dataset reads, the model and its input size, the files named
    (data, init weights, resume). Nothing is read, built or written. Returns ``cfg`` with the
    loader workers capped at the cores; the output folder is checked next, by the trainer, once
    the resume checkpoint (if any) is known to fit."""
    from .factory import check_dataset_options
    from .models import check_image_size

    check_values(cfg, fields_for(TRAIN))
    check_dataset_options(cfg)
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
    return cap_workers(cfg)


def prepare_training(config_path: Optional[str], flags: Mapping[str, Any]) -> Config:
    """The training config of a command line (base <- ``--config`` <- flags), resolved and
    checked (:func:`resolve_training`, :func:`check_training`)."""
    return check_training(resolve_training(load_config(config_path, flags, base=train_base(config_path, flags))))


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
    Loader workers live in process groups of their own (:func:`asl.factory.leave_process_group`), so a signal
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


def resolve_device(name: str):
    """``auto``: CUDA when present, else the CPU; a named device must exist."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
    return dev
