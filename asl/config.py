"""The experiment config: one typed dataclass, loaded from YAML, overridden by flags.

Unknown keys are rejected, values are coerced to the field's type (PyYAML reads
``1e-4`` as a string), and the resolved config is saved next to the run and
inside every checkpoint. The three scripts share the one schema, so any config
file is valid for each of them; each script reads the fields it needs.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import ConfigError


@dataclass
class Config:
    # --- data
    dataset: str = "demo"
    data_root: str = "data/demo"
    train_split: Optional[str] = None  # None: the dataset's training split
    val_split: Optional[str] = None  # None: the dataset's evaluation split
    image_size: int = 224
    batch_size: int = 64
    workers: int = 2
    augment: str = "none"  # none | cutout | randaugment | cutout_randaugment
    val_fraction: float = 0.2  # tagged data without a split column
    ann_file: Optional[str] = None  # COCO-format JSON (coco) or split CSV (nuswide) outside the layout
    image_dir: Optional[str] = None  # images of ann_file
    keep_unannotated: bool = False  # coco: keep images without annotations as all-negative
    voc_year: Optional[str] = None  # voc: 2007 or 2012 (default: 2007 if present)
    difficult: str = "ignore"  # voc: difficult-only classes are ignore (-1) | positive | negative
    resize: str = "squish"  # squish (official Resize((S, S))) | crop (random-resized crop / center crop)
    max_bad_fraction: float = 0.01  # a run stops when more than max(max_bad_images, this x N) images are unreadable
    max_bad_images: int = 5  # ... so that one bad photo does not stop a small set
    demo_classes: int = 80  # demo: 80, or 10/20/40 for the denser variants of the sparsity sweep
    label_noise: float = 0.0  # study: fraction of training positives flipped to negative (seeded)
    # --- model
    model_name: str = "resnet10t"
    num_classes: Optional[int] = None  # checked against the dataset when given (official flag)
    init_checkpoint: Optional[str] = None
    channels_last: bool = False
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    # --- loss
    loss: str = "asl"  # asl | asl_optimized | adaptive_asl | focal | bce
    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    focal_gamma: float = 2.0
    eps: float = 1e-8
    disable_torch_grad_focal_loss: bool = True
    loss_reduction: str = "sum"
    label_smoothing: float = 0.0
    delta_p_target: float = 0.1
    adaptive_lambda: float = 0.1
    # --- optimization
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    epochs: int = 80  # length of the OneCycle schedule
    stop_epoch: Optional[int] = None  # stop early on that schedule (official: 40 of 80)
    pct_start: float = 0.2
    grad_clip: Optional[float] = None
    accum_steps: int = 1  # gradient accumulation: effective batch = batch_size x accum_steps x processes
    patience: int = 0  # early stopping: epochs without a better mAP before stopping (0: off)
    compile: bool = False  # torch.compile the model (first steps pay the compile)
    ema: bool = True
    ema_decay: float = 0.9997
    ema_warmup: bool = False  # timm ModelEmaV3 warm-up: decay 1 - (1 + step)^(-2/3) until it reaches ema_decay
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); off on CPU
    # --- run
    output: Optional[str] = None  # None: runs/<name of the data folder>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    print_freq: int = 50
    overwrite: bool = False
    checkpoint_every: int = 0  # also write last.pth every N steps (0: at epoch ends only)
    max_nonfinite: int = 20  # stop after this many non-finite losses in a row
    resume: Optional[str] = None
    # --- evaluation and inference
    model_path: Optional[str] = None
    class_names: Optional[str] = None  # validate/infer: a file of class names (one per line) for plain state dicts
    thre: float = 0.8  # validate.py threshold of CP/CR/CF1/OP/OR/OF1 (official default)
    calibrate: bool = False
    pic_path: List[str] = field(default_factory=list)
    th: Optional[float] = None  # infer.py threshold; None: checkpoint's calibrated ones or 0.7
    top_k: Optional[int] = None
    json: bool = False
    save_image: Optional[str] = None
    dataset_type: Optional[str] = None  # infer.py: MS-COCO | OpenImages (official thresholds)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _base_type(name: str):
    """(type, optional, is_list) of a field."""
    hint = _HINTS[name]
    optional = False
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) in (list, List):
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML or flag value to the field's type, or raise ConfigError."""
    typ, optional, is_list = _base_type(name)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional or is_list:
            return None if optional else []
        raise ConfigError(f"config key {name!r} may not be empty")
    if is_list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce_scalar(name, typ, v) for v in items]
    return _coerce_scalar(name, typ, value)


def _coerce_scalar(name: str, typ, value: Any) -> Any:
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():
                value = float(value)  # "1e3": PyYAML reads exponent forms without a sign as strings
            if isinstance(value, float) and not value.is_integer():
                raise ValueError  # an integer field takes integral values only: 2.5e0 is refused like 2.5
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return choice(value) if name in CHOICES else str(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"config key {name!r} expects {typ.__name__}, got {value!r}")


def from_dict(values: Mapping[str, Any], base: Optional[Config] = None, source: str = "config") -> Config:
    """A Config with ``values`` applied over ``base`` (defaults when None); unknown keys rejected."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    cfg = dataclasses.replace(base) if base is not None else Config()
    for k, v in values.items():
        setattr(cfg, k, coerce(k, v))
    return cfg


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML is a ConfigError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return data


def load_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                base: Optional[Config] = None) -> Config:
    """Defaults (or ``base``) <- YAML file <- overrides (flags)."""
    cfg = base if base is not None else Config()
    if path:
        cfg = from_dict(load_yaml(path), cfg, source=path)
    if overrides:
        cfg = from_dict(overrides, cfg, source="flags")
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    import os

    import yaml

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


# --- value checks: every value a run reads is checked before any data is read or model built.

def _finite(v) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


# field -> (test, what it must be). A None value of an optional field is always accepted.
RANGES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "stop_epoch": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "workers": (lambda v: v >= 0, ">= 0"),
    "image_size": (lambda v: v >= 1, ">= 1"),  # and >= the model's minimum: asl.models.check_image_size
    "val_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "max_bad_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "max_bad_images": (lambda v: v >= 0, ">= 0"),
    "label_noise": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "num_classes": (lambda v: v >= 1, ">= 1"),
    "gamma_neg": (lambda v: v >= 0, ">= 0"),
    "gamma_pos": (lambda v: v >= 0, ">= 0"),
    "clip": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "focal_gamma": (lambda v: v >= 0, ">= 0"),
    "eps": (lambda v: 0 < v < 1, "in (0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "delta_p_target": (lambda v: -1 < v < 1, "in (-1, 1)"),
    "adaptive_lambda": (lambda v: v >= 0, ">= 0"),
    "pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
    "grad_clip": (lambda v: v > 0, "> 0"),
    "accum_steps": (lambda v: v >= 1, ">= 1"),
    "patience": (lambda v: v >= 0, ">= 0"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "seed": (lambda v: 0 <= v < 2**63, "in [0, 2^63)"),
    "print_freq": (lambda v: v >= 0, ">= 0"),
    "checkpoint_every": (lambda v: v >= 0, ">= 0"),
    "max_nonfinite": (lambda v: v >= 1, ">= 1"),
    "thre": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "th": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "top_k": (lambda v: v >= 1, ">= 1"),
    "demo_classes": (lambda v: v % 10 == 0 and 10 <= v <= 80, "a multiple of 10 in [10, 80]"),
}

# field -> the names it accepts (lower case); the optimizer is checked against timm's registry.
CHOICES: Dict[str, Tuple[str, ...]] = {
    "augment": ("none", "cutout", "randaugment", "cutout_randaugment"),
    "resize": ("squish", "crop"),
    "difficult": ("ignore", "positive", "negative"),
    "loss": ("asl", "asl_optimized", "adaptive_asl", "focal", "bce"),
    "loss_reduction": ("sum", "mean", "batchmean", "none"),
    "dataset": ("coco", "voc", "nuswide", "tagged", "demo"),
    "voc_year": ("2007", "2012"),
    "dataset_type": ("ms_coco", "coco", "openimages"),
}


def choice(value: str) -> str:
    """A name as ``CHOICES`` spells it: lower case, ``-`` and spaces as ``_`` (``MS-COCO`` -> ``ms_coco``)."""
    return str(value).strip().lower().replace("-", "_").replace(" ", "_")


def flag_name(name: str) -> str:
    """How a field is spelled on the command line (``--stop-epoch``), for messages."""
    return "--" + name.replace("_", "-")


def check_values(cfg: Config, fields: Iterable[str]) -> None:
    """Raise :class:`ConfigError` (one line) for the first value of ``fields`` out of range.

    Finite numbers only; ranges from ``RANGES``; names from ``CHOICES`` (values are coerced to
    :func:`choice`'s spelling when read) and, for ``optimizer``, timm's registry;
    ``stop_epoch`` <= ``epochs``. Files and folders are checked by the scripts.
    """
    fields = list(fields)
    for name in fields:
        value = getattr(cfg, name)
        if value is None or isinstance(value, bool):
            continue
        if not _finite(value):
            raise ConfigError(f"{flag_name(name)} must be a finite number, got {value!r}")
        if name in RANGES and not RANGES[name][0](value):
            raise ConfigError(f"{flag_name(name)} must be {RANGES[name][1]}, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise ConfigError(f"unknown {name.replace('_', ' ')} {value!r}: {flag_name(name)} must be one of "
                              f"{', '.join(CHOICES[name])}")
    if "stop_epoch" in fields and cfg.stop_epoch is not None and cfg.stop_epoch > cfg.epochs:
        raise ConfigError(f"--stop-epoch {cfg.stop_epoch} is past the schedule's end (--epochs {cfg.epochs})")
    if "optimizer" in fields:
        from timm.optim import list_optimizers

        known = list_optimizers()
        if cfg.optimizer.lower() not in known:
            close = [n for n in known if cfg.optimizer.lower() in n][:5]
            raise ConfigError(f"--optimizer {cfg.optimizer!r} is not in timm's optimizer registry"
                              + (f"; did you mean {', '.join(close)}?" if close else " (e.g. adam, adamw, sgd)"))
