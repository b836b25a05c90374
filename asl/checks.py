"""Is this run possible: every check a command makes before any work (values, names, files,
the dataset's options, the output folder, the device, the loader workers), as one ``error:`` line.

Nothing here reads a dataset, builds a model or writes a file; where commands write is
:mod:`asl.rundir`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple

from .config import (
    DEMO_CONFIG,
    FINETUNE_CONFIG,
    TRAIN,
    Config,
    check_values,
    choice,
    fields_for,
    flag_name,
    load_config,
)
from .errors import ConfigError
from .zoo import DEFAULT_MODEL, default_image_size

log = logging.getLogger(__name__)


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
    (:func:`asl.zoo.default_image_size`), the output folder (``runs/<data folder>``)."""
    if cfg.dataset == "auto":
        cfg = dataclasses.replace(cfg, dataset=resolve_dataset(cfg.data_root))
    model = cfg.model_name or DEFAULT_MODEL
    size = cfg.image_size if cfg.image_size is not None else default_image_size(model)
    if cfg.label_smoothing is None and cfg.task != "single_label":  # unset: none, for the multi-label losses
        cfg = dataclasses.replace(cfg, label_smoothing=0.0)
    init = cfg.init_checkpoint or cfg.model_path
    if init and (str(init).startswith(("hf-hub:", "local-dir:")) or Path(init).is_dir()):
        from .hub import hf_folder

        # a model folder (export.py --format hf, or one on the Hub): its weights file is the start
        weights = hf_folder(str(init)) / "model.safetensors"
        cfg = dataclasses.replace(cfg, init_checkpoint=str(weights), model_path=None)
    return dataclasses.replace(
        cfg, model_name=model, image_size=size, output=cfg.output or default_output(cfg.data_root)
    )


def check_training(cfg: Config, given: Iterable[str] = ()) -> Config:
    """Every check of a resolved training config that needs no data: values in range, names
    known, dataset options the dataset reads, the model and its input size, the files named
    (data, init weights, resume). Nothing is read, built or written. Returns ``cfg`` with the
    loader workers capped at the cores; the output folder is checked next, by the trainer, once
    the resume checkpoint (if any) is known to fit.

    Args:
        cfg: the resolved config.
        given: the settings named on the command line (a loss option given there for a loss that
            does not read it is refused even at its default value).
    """
    from .models import check_image_size

    check_values(cfg, fields_for(TRAIN))
    check_dataset_options(cfg)
    check_image_size(cfg.model_name, cfg.image_size)
    check_head(cfg)
    check_fits(cfg)
    check_tensorboard(cfg)
    if cfg.dataset == "demo":
        from .data.demo import check_demo_folder

        check_demo_folder(Path(cfg.data_root), cfg.demo_classes)  # a user's folder without --dataset: say so first
    elif not Path(cfg.data_root).exists():
        raise ConfigError(f"data folder not found: {cfg.data_root}")
    if cfg.init_checkpoint and cfg.model_path and cfg.init_checkpoint != cfg.model_path:
        raise ConfigError(
            f"--model-path {cfg.model_path} and --pretrained-path {cfg.init_checkpoint} both name the "
            f"weights training starts from (train.py reads --model-path as --init-checkpoint): keep one"
        )
    check_loss_options(cfg, given)
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
    if cfg.prior_file and not Path(cfg.prior_file).is_file():
        raise ConfigError(f"--prior-file {cfg.prior_file} not found")
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
        from .rundir import check_apart, config_sources

        check_apart("--log-dir", cfg.log_dir, config_sources(cfg), folder=True)
        if Path(cfg.log_dir).exists() and not Path(cfg.log_dir).is_dir():
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


def machine_memory(device: str = "auto") -> Tuple[int, str]:
    """(bytes, what) a run's tensors can use: the GPU's memory where training runs on CUDA, else
    the machine's RAM."""
    import torch

    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).total_memory, f"the {torch.cuda.get_device_name(dev)}"
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): no bound known
        return 1 << 62, "this machine"
    return ram, "this machine's RAM"


def check_fits(cfg: Config) -> None:
    """Every size flag bounded by what the machine holds, before anything is built: the model
    with its head (``--decoder-embedding``, ``--num-of-groups``; built on the ``meta`` device,
    no memory) and its training state (weights, gradients, Adam's two moments: 4 copies), and one
    input batch (``--batch-size`` x ``--image-size``). The class count is not known before the
    data is read; the head is sized for ``--num-classes`` or one class, a lower bound."""
    import torch

    from .models import create_model

    with torch.device("meta"):
        model = create_model(
            cfg.model_name,
            cfg.num_classes or 1,
            head=cfg.head,
            num_groups=cfg.num_of_groups if cfg.num_classes else None,  # G = min(G, C): 1 for one class
            decoder_embedding=cfg.decoder_embedding,
        )
    params = sum(p.numel() for p in model.parameters())
    have, where = machine_memory(cfg.device)
    gib = 1 << 30
    if 16 * params > have:
        raise ConfigError(
            f"{cfg.model_name} with these settings has {params / 1e9:.1f} G parameters: training holds "
            f"{16 * params / gib:,.0f} GiB of weights, gradients and optimizer state, more than {where} "
            f"({have / gib:,.0f} GiB); lower --decoder-embedding / --num-of-groups, or choose a smaller model"
        )
    batch = 4 * 3 * cfg.batch_size * cfg.image_size**2
    if batch > have:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} at --image-size {cfg.image_size}: one input batch is "
            f"{batch / gib:,.0f} GiB, more than {where} ({have / gib:,.0f} GiB); lower either"
        )


def prepare_training(config_path: Optional[str], flags: Mapping[str, Any]) -> Config:
    """The training config of a command line (base <- ``--config`` <- flags), resolved and
    checked (:func:`resolve_training`, :func:`check_training`)."""
    if not config_path and (flags.get("init_checkpoint") or flags.get("model_path")) and "pretrained" not in flags:
        # a weights file given on the command line is the start: the fine-tuning base's timm weights step aside
        flags = {**flags, "pretrained": False}
    return check_training(
        resolve_training(load_config(config_path, flags, base=train_base(config_path, flags))), given=flags
    )


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


def check_loss_options(cfg: Config, given: Iterable[str] = ()) -> None:
    """One ``error:`` line for a loss option the chosen loss does not read (``--loss bce
    --gamma-neg 4``): set on the command line (``given``), or to another value than the default."""
    from .losses import COMMON_LOSS_OPTIONS, LOSS_OPTIONS, PARTIAL_OPTIONS

    name = choice(cfg.loss)
    if name not in LOSS_OPTIONS:
        return  # an unknown loss is the loss builder's error, with the known names
    if cfg.unknown_labels and name not in ("asl", "asl_optimized"):
        raise ConfigError(
            f"--unknown-labels {cfg.unknown_labels} trains the partial-label ASL (--loss asl); --loss {cfg.loss} "
            f"does not read it"
        )
    every = {o for opts in LOSS_OPTIONS.values() for o in opts} - set(COMMON_LOSS_OPTIONS)
    reads = set(LOSS_OPTIONS[name])
    every |= set(PARTIAL_OPTIONS)
    if cfg.unknown_labels:
        reads |= set(PARTIAL_OPTIONS) - (
            set() if cfg.unknown_labels == "selective" else {"prior_file", "prior_threshold", "likelihood_topk"}
        )
    given = set(given)
    unread = sorted(o for o in every - reads if o in given or getattr(cfg, o) != getattr(_DEFAULTS, o))
    if unread:
        o = unread[0]
        readers = [n for n, opts in LOSS_OPTIONS.items() if o in opts]
        if o in PARTIAL_OPTIONS:
            readers = [
                "--unknown-labels selective"
                if o in ("prior_file", "prior_threshold", "likelihood_topk")
                else "--unknown-labels"
            ]
        raise ConfigError(
            f"{flag_name(o)} {getattr(cfg, o)!r} is not read by --loss {cfg.loss}"
            + (f" --unknown-labels {cfg.unknown_labels}" if cfg.unknown_labels else "")
            + f" (it is an option of {'/'.join(readers)}); remove it, or choose the loss it belongs to"
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
