"""The one argument parser of train.py, validate.py and infer.py.

Every flag maps onto a :class:`asl.config.Config` field and is declared once
here; each script picks the fields it exposes. Hyphen and underscore spellings
both work (``--model-path`` and ``--model_path``), as do the official
repository's names (``--input_size``, ``--pic_path``, ``-b``, ``-j``, ``--th``).
Only flags given on the command line override the YAML config.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .config import Config, _base_type, load_config
from .errors import ASLError, ConfigError

# field -> (flag spellings, help). Underscore/hyphen twins are added automatically.
FLAGS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "dataset": (("--dataset",), "coco | voc | nuswide | tagged | demo"),
    "data_root": (("--data-root", "--data"), "dataset folder (also the positional DATA_ROOT)"),
    "train_split": (("--train-split",), "training split (default: the dataset's)"),
    "val_split": (("--val-split", "--split"), "evaluation split (default: the dataset's)"),
    "image_size": (("--image-size", "--input-size"), "input side S; images are squish-resized to S x S"),
    "batch_size": (("--batch-size", "-b"), "batch size"),
    "workers": (("--workers", "-j"), "data-loading worker processes (capped at the CPU cores)"),
    "augment": (("--augment",), "none | cutout | randaugment | cutout_randaugment"),
    "val_fraction": (("--val-fraction",), "held-out fraction of tagged data without a split column"),
    "ann_file": (("--ann-file",), "COCO-format JSON (coco) or split CSV (nuswide) outside the standard layout"),
    "image_dir": (("--image-dir",), "images of --ann-file"),
    "keep_unannotated": (("--keep-unannotated",), "coco: keep images without annotations as all-negative"),
    "voc_year": (("--voc-year",), "voc: 2007 or 2012"),
    "difficult": (("--difficult",), "voc: difficult-only classes are ignore (-1), positive or negative"),
    "resize": (("--resize",), "squish (official) or crop"),
    "label_noise": (("--label-noise",), "fraction of training positives flipped to negative (a study)"),
    "model_name": (("--model-name",), "timm model name (e.g. resnet10t, tresnet_m)"),
    "num_classes": (("--num-classes",), "number of classes (checked against the dataset / checkpoint)"),
    "init_checkpoint": (("--init-checkpoint",), "weights to start from (head dropped when classes differ)"),
    "loss": (("--loss",), "asl | asl_optimized | adaptive_asl | focal | bce"),
    "gamma_neg": (("--gamma-neg",), "ASL gamma-"),
    "gamma_pos": (("--gamma-pos",), "ASL gamma+"),
    "clip": (("--clip",), "ASL probability margin m"),
    "delta_p_target": (("--delta-p-target",), "adaptive_asl: the target of delta_p"),
    "adaptive_lambda": (("--adaptive-lambda",), "adaptive_asl: step size of the gamma_neg update"),
    "optimizer": (("--optimizer", "--opt"), "optimizer name from timm's factory (adam, adamw, sgd, ...)"),
    "lr": (("--lr",), "learning rate (OneCycle maximum)"),
    "weight_decay": (("--weight-decay", "--wd"), "weight decay (not on biases and 1-D parameters)"),
    "epochs": (("--epochs",), "planned epochs: the length of the OneCycle schedule"),
    "stop_epoch": (("--stop-epoch",), "stop after this many epochs of the planned schedule"),
    "grad_clip": (("--grad-clip",), "clip the gradient norm to this value"),
    "accum_steps": (("--accum-steps",), "micro-batches per optimizer step (gradient accumulation)"),
    "patience": (("--patience",), "early stopping: epochs without a better mAP (0: off)"),
    "compile": (("--compile",), "torch.compile the model"),
    "channels_last": (("--channels-last",), "channels_last memory format"),
    "ema": (("--ema",), "keep an EMA of the weights and validate it too"),
    "ema_decay": (("--ema-decay",), "EMA decay per step"),
    "ema_warmup": (("--ema-warmup",), "EMA warm-up (timm ModelEmaV3): decay 1-(1+step)^(-2/3) up to --ema-decay"),
    "max_bad_fraction": (("--max-bad-fraction",), "stop when more than this fraction of images is unreadable"),
    "max_bad_images": (("--max-bad-images",), "... and more than this many (so small sets survive a bad photo)"),
    "class_names": (("--class-names",),
                    "the model's class names, one per line in output order (files without names or with wrong ones)"),
    "amp": (("--amp",), "mixed precision on CUDA"),
    "output": (("--output", "-o"), "output folder"),
    "seed": (("--seed",), "random seed"),
    "device": (("--device",), "auto | cpu | cuda | cuda:N"),
    "print_freq": (("--print-freq", "-p"), "log every N steps"),
    "overwrite": (("--overwrite",), "replace what an earlier run or command wrote there (prefer a new --output)"),
    "resume": (("--resume",), "checkpoint to resume from"),
    "sync_bn": (("--sync-bn",), "SyncBatchNorm across processes under torchrun"),
    "checkpoint_every": (("--checkpoint-every",), "also write last.pth every N steps (0: epoch ends only)"),
    "max_nonfinite": (("--max-nonfinite",), "stop after this many non-finite losses in a row"),
    "model_path": (("--model-path",), "checkpoint to evaluate or run (train.py: as --init-checkpoint)"),
    "thre": (("--thre",), "threshold of CP/CR/CF1/OP/OR/OF1 (official default 0.8)"),
    "calibrate": (("--calibrate",), "fit per-class F1-optimal thresholds, save a calibrated checkpoint copy"),
    "pic_path": (("--pic-path",), "images, folders or globs"),
    "th": (("--th",), "score threshold (default: checkpoint's calibrated thresholds, else 0.7)"),
    "top_k": (("--top-k",), "report at most K labels per image"),
    "json": (("--json",), "print one JSON list to stdout"),
    "save_image": (("--save-image",), "write the (first) picture with its labels drawn on it"),
    "dataset_type": (("--dataset-type",), "official infer.py: MS-COCO (th 0.7) or OpenImages (th 0.995)"),
}

TRAIN_FIELDS = ["dataset", "data_root", "train_split", "val_split", "image_size", "batch_size", "workers",
                "augment", "val_fraction", "ann_file", "image_dir", "keep_unannotated", "voc_year", "difficult",
                "resize", "label_noise", "max_bad_fraction", "max_bad_images", "model_name", "num_classes",
                "init_checkpoint", "model_path", "loss",
                "gamma_neg", "gamma_pos", "clip", "delta_p_target", "adaptive_lambda", "optimizer", "lr",
                "weight_decay", "epochs", "stop_epoch", "grad_clip", "accum_steps", "patience", "compile",
                "channels_last", "ema", "ema_decay", "ema_warmup", "amp", "output", "seed", "device",
                "print_freq", "overwrite", "resume", "checkpoint_every", "max_nonfinite", "sync_bn", "thre"]
VALIDATE_FIELDS = ["dataset", "data_root", "val_split", "image_size", "batch_size", "workers", "val_fraction",
                   "ann_file", "image_dir", "keep_unannotated", "voc_year", "difficult", "resize", "model_name",
                   "max_bad_fraction", "max_bad_images", "num_classes", "model_path", "class_names", "thre",
                   "calibrate", "output", "overwrite", "device", "amp", "print_freq"]
INFER_FIELDS = ["model_path", "pic_path", "model_name", "num_classes", "class_names", "image_size", "th", "top_k",
                "json", "save_image", "overwrite", "dataset_type", "batch_size", "device"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one ``error:`` line (exit 2), not usage text."""

    def error(self, message: str):
        raise ConfigError(message)


def _twins(flags: Iterable[str]) -> List[str]:
    """The underscore / hyphen twins of ``flags`` that are not among them (``--model_path``)."""
    out: List[str] = []
    for f in flags:
        if f.startswith("--"):
            for v in ("--" + f[2:].replace("-", "_"), "--" + f[2:].replace("_", "-")):
                if v not in flags and v not in out:
                    out.append(v)
    return out


def build_parser(prog: str, description: str, fields: Sequence[str], positional_data: bool = False,
                 defaults: Optional[Config] = None, notes: Optional[Dict[str, str]] = None,
                 epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """An argparse parser for ``fields``; values it returns override the config.

    Each flag is listed once in ``--help`` (its underscore twin is accepted but not listed), with
    the default that will run: ``notes[field]`` where given, else the value in ``defaults``.
    """
    p = _Parser(prog=prog, description=description, epilog=epilog, argument_default=argparse.SUPPRESS,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML config file (flags override it)")
    if positional_data:
        p.add_argument("data_root_pos", nargs="?", metavar="DATA_ROOT", help="dataset folder")
    defaults = defaults if defaults is not None else Config()
    notes = notes or {}
    for name in fields:
        flags, help_text = FLAGS[name]
        typ, optional, is_list = _base_type(name)
        default = notes.get(name, repr(getattr(defaults, name)))
        kwargs = dict(dest=name, metavar=name.upper())
        if typ is bool:
            kwargs = dict(dest=name, action=argparse.BooleanOptionalAction)
        elif is_list:
            kwargs.update(nargs="+", type=typ)
        else:
            kwargs["type"] = typ
        shown = help_text if "(default:" in help_text else f"{help_text} (default: {default})"
        p.add_argument(*flags, help=shown, **kwargs)
        twins = _twins(flags)
        if twins:
            p.add_argument(*twins, help=argparse.SUPPRESS, **kwargs)
    if epilog is None:
        p.epilog = "Underscore spellings of every flag (--model_path, --input_size, ...) work too."
    return p


def parse_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """(``--config`` path or None, {field: value} of the flags actually given)."""
    ns = vars(parser.parse_args(argv))
    config_path = ns.pop("config", None)
    pos = ns.pop("data_root_pos", None)
    if pos is not None:
        ns.setdefault("data_root", pos)
    return config_path, ns


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
               base: Optional[Config] = None) -> Config:
    """Parse flags, then defaults (or ``base``) <- ``--config`` YAML <- flags."""
    config_path, overrides = parse_flags(parser, argv)
    return load_config(config_path, overrides, base=base)


def setup_logging(verbose: bool = True) -> None:
    """Plain messages on stderr; only the main process logs under torchrun."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if (verbose and rank == 0) else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Call a script's main; bad input becomes one ``error: ...`` line and exit code 2."""
    try:
        rc = int(main(argv) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as a message at interpreter exit
        return rc
    except ASLError as e:
        text = str(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``infer.py ... | head -1``): stop quietly, as Unix tools do.
        # Python flushes stdout again at exit, so point it at /dev/null first.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + 13  # SIGPIPE
    if "Original Traceback" in text:
        # Raised in a DataLoader worker: torch wraps it in the worker's traceback text;
        # the user's message is the last line, after the exception's class name.
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    msg = " ".join(text.split())  # one line, whatever the message held
    print(f"error: {msg}", file=sys.stderr)
    return 2


def resolve_device(name: str):
    """``auto``: CUDA when present, else the CPU."""
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
