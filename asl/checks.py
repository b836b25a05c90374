"""Is this run possible: every check a command makes before any work (values, names, files,
the dataset's options, the output folder, the device, the loader workers), as one ``error:`` line.

Nothing here reads a dataset, builds a model or writes a file but the output folder it creates
and proves writable (removed again when the command fails).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from .config import (
    DEFAULT_MODEL,
    DEMO_CONFIG,
    FINETUNE_CONFIG,
    TRAIN,
    Config,
    check_values,
    choice,
    default_image_size,
    fields_for,
    flag_name,
    load_config,
)
from .errors import ConfigError

log = logging.getLogger(__name__)

# Files a training run writes into its output folder.
RUN_FILES = (
    "last.pth",
    "best.pth",
    "metrics.jsonl",
    "config.yaml",
    "curves.png",
    "per_class_ap.json",
    "report.html",
    "tensorboard",
)
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


def resolve_dataset(root: str) -> str:
    """``--dataset auto``: the format ``root`` holds (:func:`asl.data.detect.detect_dataset`), logged."""
    from .data.detect import detect_dataset

    name, why = detect_dataset(root)
    log.info("--dataset auto: %s (%s)", name, why)
    return name


def resolve_training(cfg: Config) -> Config:
    """Fill what a training config leaves unset: the model (``DEFAULT_MODEL``), its input size
    (:func:`asl.config.default_image_size`), the output folder (``runs/<data folder>``)."""
    if cfg.dataset == "auto":
        cfg = dataclasses.replace(cfg, dataset=resolve_dataset(cfg.data_root))
    model = cfg.model_name or DEFAULT_MODEL
    size = cfg.image_size if cfg.image_size is not None else default_image_size(model)
    return dataclasses.replace(
        cfg, model_name=model, image_size=size, output=cfg.output or default_output(cfg.data_root)
    )


def check_training(cfg: Config) -> Config:
    """Every check of a resolved training config that needs no data: values in range, names
    known, dataset options the dataset reads, the model and its input size, the files named
    (data, init weights, resume). Nothing is read, built or written. Returns ``cfg`` with the
    loader workers capped at the cores; the output folder is checked next, by the trainer, once
    the resume checkpoint (if any) is known to fit."""
    from .models import check_image_size

    check_values(cfg, fields_for(TRAIN))
    check_dataset_options(cfg)
    check_image_size(cfg.model_name, cfg.image_size)
    check_head(cfg)
    check_tensorboard(cfg)
    if cfg.dataset == "demo":
        from .data.demo import check_demo_folder

        check_demo_folder(Path(cfg.data_root), cfg.demo_classes)  # a user's folder without --dataset: say so first
    elif not Path(cfg.data_root).exists():
        raise ConfigError(f"data folder not found: {cfg.data_root}")
    init = cfg.init_checkpoint or cfg.model_path
    if init and cfg.pretrained:
        raise ConfigError(
            f"--pretrained (timm's weights of {cfg.model_name}) and --pretrained-path {init} both name "
            f"a start: keep one (--no-pretrained to start from the file)"
        )
    if init and not Path(init).is_file():
        raise ConfigError(
            f"--pretrained-path {init} not found"
            + (" (it is a folder)" if Path(init).is_dir() else "")
            + "; for timm's weights of the model pass --pretrained instead"
        )
    if cfg.resume and not Path(cfg.resume).is_file():
        raise ConfigError(f"--resume {cfg.resume} not found")
    return cap_workers(cfg)


def tensorboard_dir(cfg: Config) -> Optional[str]:
    """Where ``--tensorboard`` / ``--log-dir`` write event files (None: off)."""
    if cfg.log_dir:
        return cfg.log_dir
    return str(Path(cfg.output) / "tensorboard") if cfg.tensorboard and cfg.output else None


def check_tensorboard(cfg: Config) -> None:
    """TensorBoard is an optional extra: asked for without it installed, one line saying how."""
    if not (cfg.tensorboard or cfg.log_dir):
        return
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install '.[tensorboard]'")
    if cfg.log_dir:
        log_dir, data = Path(cfg.log_dir).resolve(), Path(cfg.data_root).resolve()
        if log_dir == data or data in log_dir.parents:
            raise ConfigError(f"--log-dir {cfg.log_dir} is inside the data folder {cfg.data_root}")
        if log_dir.exists() and not log_dir.is_dir():
            raise ConfigError(f"--log-dir {cfg.log_dir} is a file, not a folder")


def check_head(cfg: Config) -> None:
    """The head's settings: ML-Decoder needs a backbone with spatial features or tokens (one
    forward on the ``meta`` device) and a width its 8 attention heads divide; its flags mean
    nothing to the linear head."""
    if cfg.head != "ml_decoder":
        if cfg.num_of_groups not in (None, -1) or cfg.decoder_embedding not in (None, -1):
            raise ConfigError("--num-of-groups / --decoder-embedding set the ML-Decoder head: add --head ml_decoder")
        return
    from .heads import NUM_HEADS
    from .models import feature_layout

    if cfg.decoder_embedding not in (None, -1) and cfg.decoder_embedding % NUM_HEADS:
        raise ConfigError(
            f"--decoder-embedding {cfg.decoder_embedding} must be a multiple of {NUM_HEADS} "
            f"(ML-Decoder's attention heads)"
        )
    feature_layout(cfg.model_name, cfg.image_size)


def prepare_training(config_path: Optional[str], flags: Mapping[str, Any]) -> Config:
    """The training config of a command line (base <- ``--config`` <- flags), resolved and
    checked (:func:`resolve_training`, :func:`check_training`)."""
    if not config_path and (flags.get("init_checkpoint") or flags.get("model_path")) and "pretrained" not in flags:
        # a weights file given on the command line is the start: the fine-tuning base's timm weights step aside
        flags = {**flags, "pretrained": False}
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


# A run's own files besides RUN_FILES: its lock and marker, and the probes and temporaries of its writes.


RUN_LOCK = ".asl-run.lock"
# Names that say a folder is a dataset, not a run's output.
DATASET_MARKERS = (
    "labels.csv",
    "classes.txt",
    "_classes.csv",
    "metadata.jsonl",
    "metadata.csv",
    "demo.json",
    "annotations",
    "images",
    "JPEGImages",
    "train2014",
    "val2014",
    "train2017",
    "val2017",
)


def _is_run_own(name: str) -> bool:
    """A file every run may find in its folder: its lock, a rank's writability probe, a temporary
    file of an interrupted atomic write of a run file."""
    if name == RUN_LOCK or name.startswith(PROBE):
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in RUN_FILES)


def _data_folder(data_root: str) -> Path:
    root = Path(data_root).expanduser()
    return (root.parent if root.suffix.lower() in (".csv", ".json", ".txt") else root).resolve()


def check_output_dir(out: Path, overwrite: bool, resume: Optional[str] = None, data_root: Optional[str] = None) -> bool:
    """A run writes only into a fresh (or empty) folder, or the folder of the run it resumes.

    Anything else in the folder, an earlier run's ``best.pth`` alone included, is refused unless
    ``overwrite``; ``overwrite`` replaces only what a run wrote (a folder holding other files, a
    dataset above all, is refused). The output is never the dataset's folder, inside it, or a
    folder the dataset is inside. The folder is created and proved writable.

    Returns:
        whether this call created the folder (a command that then fails removes it again).
    """
    if data_root is not None:
        data, target = _data_folder(data_root), out.expanduser().resolve()
        if target == data or data in target.parents or target in data.parents:
            where = "the" if target == data else "inside the" if data in target.parents else "a folder holding the"
            raise ConfigError(
                f"--output {out} is {where} dataset folder {data_root}: a run never writes into its "
                f"data; choose another --output"
            )
    held = sorted(p.name for p in out.iterdir() if not _is_run_own(p.name)) if out.is_dir() else []
    own = resume is not None and Path(resume).resolve().parent == out.resolve()
    if held and not own:
        foreign = [n for n in held if n not in RUN_FILES]
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        if foreign:
            kind = "a dataset" if any(n in DATASET_MARKERS for n in held) else "files no run wrote"
            raise ConfigError(
                f"{out} holds {kind} ({shown}), not a run's output: choose a new --output "
                f"(--overwrite replaces only a run's own files)"
            )
        if not overwrite:
            hint = f", resume it with --resume {out / 'last.pth'}" if "last.pth" in held and not resume else ""
            raise ConfigError(
                f"{out} already holds a run ({shown}); choose a new --output{hint}, or pass --overwrite to replace it"
            )
    created = not out.exists()
    writable_dir(out)
    return created


@contextlib.contextmanager
def removed_on_error(*paths: Path, always: bool = False):
    """Folders this block creates (``paths`` and their missing parents) are removed again, when
    still empty, if the block raises (``always``: also when it ends well, as a dry run): a command
    that fails leaves no empty output folder behind."""
    missing = []
    for path in paths:
        p = Path(path).absolute()
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent

    def clean():
        for p in sorted(set(missing), key=lambda q: len(q.parts), reverse=True):
            remove_if_empty(p)

    try:
        yield
    except BaseException:
        clean()
        raise
    if always:
        clean()


def remove_if_empty(out: Path) -> None:
    """Remove a folder a failed command created, when nothing but its lock is in it."""
    try:
        if (out / RUN_LOCK).is_file() and [p.name for p in out.iterdir()] == [RUN_LOCK]:
            (out / RUN_LOCK).unlink()
        out.rmdir()  # only ever succeeds on an empty folder
    except OSError:
        pass


_DEFAULTS = Config()


def check_dataset_options(cfg: Config) -> None:
    """One ``error:`` line for a dataset option set for a dataset that does not read it
    (``--voc-year`` with ``--dataset coco``): it would otherwise be silently ignored."""
    from .data import DATASETS, unread_options  # torch: only where a dataset is read

    unread = unread_options(cfg.dataset, dataclasses.asdict(cfg), dataclasses.asdict(_DEFAULTS))
    if unread:
        owners = {o: [n for n, s in DATASETS.items() if o in s.options] for o in unread}
        o = unread[0]
        raise ConfigError(
            f"{flag_name(o)} {getattr(cfg, o)!r} is not read by --dataset {cfg.dataset} (it is a "
            f"{'/'.join(owners[o])} option); remove it, or name the dataset it belongs to"
        )


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
