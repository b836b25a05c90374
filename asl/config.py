"""The experiment config: one typed dataclass, loaded from YAML, overridden by flags.

Unknown keys are rejected, values are coerced to the field's type (PyYAML reads
``1e-4`` as a string), and the resolved config is saved next to the run and
inside every checkpoint. The three scripts share the one schema, so any config
file is valid for each of them; each script reads the fields it needs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from .errors import ConfigError
from .files import atomic_write
from .zoo import DEFAULT_MODEL, MAX_IMAGE_SIZE, OFFICIAL_THRE

# The base configs ship inside the package (configs/demo.yaml and configs/finetune.yaml in the
# source tree point here), so an installed `asl-train` finds them.
CONFIGS = Path(__file__).resolve().parent / "configs"
DEMO_CONFIG = CONFIGS / "demo.yaml"
FINETUNE_CONFIG = CONFIGS / "finetune.yaml"


# --- the schema. Each field carries its flags, help text, allowed range or names, and the
# commands that read it: the argument parsers of train / validate / infer are generated from
# it (asl.cli), and YAML files, flags and checkpoints all go through ``from_dict``.

TRAIN, VALIDATE, INFER, EXPORT = "train", "validate", "infer", "export"


def setting(
    default: Any = None,
    *flags: str,
    help: Union[str, Dict[Optional[str], str]],
    check: Optional[Tuple[Callable[[Any], bool], str]] = None,
    choices: Optional[Tuple[str, ...]] = None,
    commands: Optional[Tuple[str, ...]] = None,
    result: bool = True,
    default_factory: Optional[Callable[[], Any]] = None,
):
    """A config field with its command-line metadata.

    Args:
        default: the value when neither YAML nor a flag sets it; ``None`` on an optional field
            means "unset" (resolved later: from the checkpoint, the model, the official defaults).
        flags: spellings (the first is shown in ``--help``); default ``--field-name``. Underscore
            twins are accepted too.
        help: one line for ``--help``.
        check: (test, what it must be) for values that are set.
        choices: the names accepted (lower case; values are coerced by :func:`choice`).
        commands: the commands that read it (default: its section's ``COMMANDS``).
        result: whether the value can change a training run's result (the study's cache key).
    """
    md = dict(flags=flags, help=help, check=check, choices=choices, commands=commands, result=result)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=md)
    return field(default=default, metadata=md)


def _range(test: Callable[[Any], bool], text: str) -> Tuple[Callable[[Any], bool], str]:
    return test, text


_POS = _range(lambda v: v > 0, "> 0")
_NONNEG = _range(lambda v: v >= 0, ">= 0")
_ONE_UP = _range(lambda v: v >= 1, ">= 1")
_UNIT = _range(lambda v: 0 <= v <= 1, "in [0, 1]")
_UNIT_OPEN_TOP = _range(lambda v: 0 <= v < 1, "in [0, 1)")
_OPEN_UNIT = _range(lambda v: 0 < v < 1, "in (0, 1)")


@dataclass
class DataConfig:
    """What to read and how: the dataset, its split, the input pipeline."""

    COMMANDS: ClassVar[Tuple[str, ...]] = (TRAIN, VALIDATE)
    task: Optional[str] = setting(
        None,
        commands=(TRAIN, VALIDATE, INFER, EXPORT),
        help={
            None: "multi-label (unset): sigmoid outputs, any number of labels per image | single-label: one class "
            "per image, softmax outputs (recorded in the checkpoint)",
            VALIDATE: "multi-label | single-label (unset: the checkpoint's)",
            INFER: "multi-label | single-label (unset: the checkpoint's)",
            EXPORT: "multi-label | single-label (unset: the checkpoint's)",
        },
        choices=("multi_label", "single_label"),
    )
    dataset: str = setting(
        "demo",
        help="coco | voc | nuswide | tagged | onehot | sidecar | imagefolder | labelstudio | openimages | shards | "
        "classfolder (train/<class>/<picture>) | herbarium | demo, or auto (told from what the folder holds)",
        choices=(
            "coco",
            "voc",
            "nuswide",
            "tagged",
            "onehot",
            "sidecar",
            "imagefolder",
            "labelstudio",
            "openimages",
            "shards",
            "classfolder",
            "herbarium",
            "demo",
            "auto",
        ),
    )
    data_root: str = setting(
        "data/demo", "--data-root", "--data", help="dataset folder (also the positional DATA_ROOT)"
    )
    train_split: Optional[str] = setting(None, help="training split (default: the dataset's)", commands=(TRAIN,))
    val_split: Optional[str] = setting(None, "--val-split", "--split", help="evaluation split (default: the dataset's)")
    image_size: Optional[int] = setting(
        None,
        "--image-size",
        "--input-size",
        check=_range(lambda v: 1 <= v <= MAX_IMAGE_SIZE, f"in [1, {MAX_IMAGE_SIZE}]"),
        commands=(TRAIN, VALIDATE, INFER, EXPORT),
        help="input side S; images are squish-resized to S x S (unset: validate / infer take the checkpoint's; "
        "else the model's official size, TResNet-L/XL 448, others 224)",
    )  # >= asl.models.check_image_size
    batch_size: int = setting(
        64, "--batch-size", "-b", check=_ONE_UP, help="batch size", commands=(TRAIN, VALIDATE, INFER)
    )
    workers: int = setting(
        2,
        "--workers",
        "-j",
        check=_NONNEG,
        result=False,
        help="data-loading worker processes (capped at the CPU cores)",
    )
    augment: str = setting(
        "none",
        help="none | cutout | randaugment | cutout_randaugment",
        commands=(TRAIN,),
        choices=("none", "cutout", "randaugment", "cutout_randaugment"),
    )
    resize: str = setting(
        "squish",
        help="squish (official Resize((S, S))) or crop (random-resized / center crop)",
        choices=("squish", "crop"),
    )
    label_noise: float = setting(
        0.0,
        check=_UNIT_OPEN_TOP,
        commands=(TRAIN,),
        help="fraction of training positives flipped to negative (seeded; a study)",
    )
    max_bad_fraction: float = setting(
        0.01, check=_UNIT, help="stop when more than this fraction of images is unreadable"
    )
    max_bad_images: int = setting(
        5, check=_NONNEG, help="... and more than this many (so small sets survive a bad photo)"
    )
    shuffle_buffer: int = setting(
        1000,
        check=_NONNEG,
        commands=(TRAIN,),
        help="shards: samples held in each loader worker's shuffle buffer (0: the shards' order, shuffled by shard)",
    )
    shard_size: int = setting(
        10**9, check=_ONE_UP, commands=(), result=False, help="asl-data shard: bytes per tar (one sample always fits)"
    )
    resize_short: Optional[int] = setting(
        None,
        check=_ONE_UP,
        commands=(),
        result=False,
        help="asl-data shard: re-encode each picture as a JPEG of this short side (unset: its own bytes, unchanged)",
    )
    # Dataset options: each dataset declares which it reads (asl.data.DATASETS); one set for
    # another dataset is an error, not silently dropped.
    val_fraction: float = setting(
        0.2,
        check=_OPEN_UNIT,
        help="tagged: held-out fraction when labels.csv has no split column; coco: of "
        "--ann-file's images when no --val-ann-file is given; herbarium: of its labelled (training) images",
    )
    tag_separator: Optional[str] = setting(
        None,
        help="tagged: between the tags of labels.csv (unset: '|'; ' ' for Planet's 'image_name,tags'); "
        "sidecar, imagefolder: between the tags of a .txt / a labels cell (unset: ',')",
    )
    ann_file: Optional[str] = setting(
        None, help="coco: a COCO-format JSON, nuswide: the split CSV, outside the standard layout"
    )
    image_dir: Optional[str] = setting(None, help="coco, nuswide: the images of --ann-file")
    keep_unannotated: bool = setting(False, help="coco: keep images without annotations as all-negative")
    val_ann_file: Optional[str] = setting(
        None,
        help="coco: the evaluation split's COCO JSON beside --ann-file (unset: --val-fraction of --ann-file's "
        "images are held out, seeded)",
    )
    val_image_dir: Optional[str] = setting(None, help="coco: the images of --val-ann-file (unset: --image-dir)")
    voc_year: Optional[str] = setting(
        None, help="voc: 2007 or 2012 (default: 2007 if present)", choices=("2007", "2012")
    )
    difficult: str = setting(
        "ignore",
        help="voc: difficult-only classes are ignore (-1), positive or negative",
        choices=("ignore", "positive", "negative"),
    )
    demo_classes: int = setting(
        80,
        commands=(TRAIN,),
        check=_range(lambda v: v % 10 == 0 and 10 <= v <= 80, "a multiple of 10 in [10, 80]"),
        help="demo: 80, or 10/20/40 for the denser variants of the sparsity study",
    )


@dataclass
class ModelConfig:
    """The network: which, how many outputs, which weights."""

    COMMANDS: ClassVar[Tuple[str, ...]] = (TRAIN, VALIDATE, INFER, EXPORT)
    model_name: Optional[str] = setting(
        None, help=f"timm model name (unset: the checkpoint's; training: {DEFAULT_MODEL})"
    )
    num_classes: Optional[int] = setting(
        None, check=_ONE_UP, help="number of classes (checked against the dataset / checkpoint)"
    )
    model_path: Optional[str] = setting(None, help="checkpoint to evaluate or run (train.py: as --init-checkpoint)")
    init_checkpoint: Optional[str] = setting(
        None,
        "--init-checkpoint",
        "--pretrained-path",
        commands=(TRAIN,),
        help="a weights file to start from: .safetensors, .pth / .bin state dicts, our checkpoints, official ASL / "
        "ImageNet-21K files (the classifier is replaced when the class count differs)",
    )
    pretrained: bool = setting(
        False,
        commands=(TRAIN,),
        help="start from timm's pretrained weights of --model-name NAME[.TAG], from the "
        "Hugging Face Hub cache (downloaded once; HF_HUB_OFFLINE=1 uses the cache only)",
    )
    head: str = setting(
        "linear",
        commands=(TRAIN,),
        choices=("linear", "ml_decoder"),
        help="linear (timm's pooled classifier) or ml_decoder (ML-Decoder on the unpooled features; "
        "validate / infer / export read the head off the weights)",
    )
    num_of_groups: Optional[int] = setting(
        None,
        "--num-of-groups",
        check=_range(lambda v: v == -1 or v >= 1, ">= 1, or -1 (the official default)"),
        help="ML-Decoder: query groups G (unset or -1: min(100, classes)); checked against a file's head",
    )
    decoder_embedding: Optional[int] = setting(
        None,
        "--decoder-embedding",
        check=_range(lambda v: v == -1 or v >= 1, ">= 1, or -1 (768)"),
        help="ML-Decoder: decoder width D (unset or -1: 768); checked against a file's head",
    )
    class_names: Optional[str] = setting(
        None,
        commands=(VALIDATE, INFER, EXPORT),
        result=False,
        help="the model's class names, one per line in output order (files without names or with wrong ones)",
    )
    class_descriptions: Optional[str] = setting(
        None,
        commands=(INFER,),
        result=False,
        help="Open Images' class-descriptions CSV (MID,DisplayName): a model whose classes are MIDs tags with "
        "display names",
    )
    channels_last: Optional[bool] = setting(
        None, commands=(TRAIN,), result=False, help="channels_last memory format (unset: on for CUDA, off on the CPU)"
    )
    sync_bn: bool = setting(False, commands=(TRAIN,), help="SyncBatchNorm across processes under torchrun")
    compile: bool = setting(False, commands=(TRAIN,), help="torch.compile the model (first steps pay the compile)")


@dataclass
class LossConfig:
    """The training loss (asl.losses)."""

    COMMANDS: ClassVar[Tuple[str, ...]] = (TRAIN,)
    loss: str = setting(
        "asl",
        help="multi-label: asl | asl_optimized | adaptive_asl | focal | bce; single-label: asl (the single-label "
        "ASL) | asl_single_label | focal (softmax) | ce",
        choices=("asl", "asl_optimized", "adaptive_asl", "focal", "bce", "asl_single_label", "ce"),
    )
    gamma_neg: float = setting(4.0, check=_NONNEG, help="ASL gamma-")
    gamma_pos: float = setting(0.0, check=_NONNEG, help="ASL gamma+")
    clip: float = setting(0.05, check=_UNIT_OPEN_TOP, help="ASL probability margin m")
    focal_gamma: float = setting(2.0, check=_NONNEG, help="focal: gamma")
    eps: float = setting(1e-8, check=_OPEN_UNIT, help="log clamp")
    disable_torch_grad_focal_loss: bool = setting(True, help="no gradient through the focusing weights (official)")
    loss_reduction: str = setting(
        "sum", help="sum (official) | mean | batchmean | none", choices=("sum", "mean", "batchmean", "none")
    )
    label_smoothing: Optional[float] = setting(
        None,
        check=_UNIT_OPEN_TOP,
        help="multi-label: y <- y (1 - s) + s / 2 (unset: 0); single-label: y <- y (1 - s) + s / C (unset: 0.1 for "
        "asl and ce, as the official ASLSingleLabel and timm; 0 for focal)",
    )
    delta_p_target: float = setting(
        0.1, check=_range(lambda v: -1 < v < 1, "in (-1, 1)"), help="adaptive_asl: the target of delta_p"
    )
    adaptive_lambda: float = setting(0.1, check=_NONNEG, help="adaptive_asl: step size of the gamma_neg update")
    unknown_labels: Optional[str] = setting(
        None,
        help="how unknown (-1) labels train: unset: left out by ASL; negative | ignore | "
        "ignore_normalize_classes | selective: the partial-label loss (CSL modes, with --gamma-neg, "
        "--gamma-pos, --clip)",
        choices=("negative", "ignore", "ignore_normalize_classes", "selective"),
    )
    gamma_unann: float = setting(2.0, check=_NONNEG, help="partial-label loss: gamma of unknown labels")
    alpha_pos: float = setting(1.0, check=_NONNEG, help="partial-label loss: weight of positives")
    alpha_neg: float = setting(1.0, check=_NONNEG, help="partial-label loss: weight of negatives")
    alpha_unann: float = setting(1.0, check=_NONNEG, help="partial-label loss: weight of unknown labels")
    likelihood_topk: int = setting(
        5, check=_NONNEG, help="selective: unknown labels per image treated as likely positives (left out)"
    )
    prior_threshold: float = setting(
        0.05, check=_UNIT, help="selective: unknown labels of classes whose prior exceeds this are left out"
    )
    prior_file: Optional[str] = setting(
        None, help="selective: the class prior, a CSV 'Classes,avg_pred' (validate.py --write-prior writes it)"
    )


@dataclass
class OptimConfig:
    """Optimizer, schedule, EMA, precision."""

    COMMANDS: ClassVar[Tuple[str, ...]] = (TRAIN,)
    optimizer: str = setting(
        "adam", "--optimizer", "--opt", help="optimizer name from timm's factory (adam, adamw, sgd, ...)"
    )
    lr: float = setting(1e-4, check=_POS, help="learning rate (OneCycle maximum)")
    weight_decay: float = setting(
        1e-4, "--weight-decay", "--wd", check=_NONNEG, help="weight decay (not on biases and 1-D parameters)"
    )
    epochs: int = setting(80, check=_ONE_UP, help="planned epochs: the length of the OneCycle schedule")
    stop_epoch: Optional[int] = setting(
        None, check=_ONE_UP, help="stop after this many epochs of the planned schedule (official: 40 of 80)"
    )
    pct_start: float = setting(0.2, check=_OPEN_UNIT, help="OneCycle: warm-up fraction of the schedule")
    grad_clip: Optional[float] = setting(None, check=_POS, help="clip the gradient norm to this value")
    accum_steps: int = setting(1, check=_ONE_UP, help="micro-batches per optimizer step (gradient accumulation)")
    patience: int = setting(0, check=_NONNEG, help="early stopping: epochs without a better mAP (0: off)")
    ema: bool = setting(True, help="keep an EMA of the weights and validate it too")
    ema_decay: float = setting(0.9997, check=_UNIT_OPEN_TOP, help="EMA decay per step")
    ema_warmup: bool = setting(False, help="EMA warm-up (timm ModelEmaV3): decay 1-(1+step)^(-2/3) up to --ema-decay")
    amp: bool = setting(
        True,
        commands=(TRAIN, VALIDATE),
        help="mixed precision on CUDA (bf16 where supported, else fp16); off on the CPU",
    )


@dataclass
class RunConfig:
    """Where a run writes, on what, how it reports and recovers."""

    COMMANDS: ClassVar[Tuple[str, ...]] = (TRAIN,)
    output: Optional[str] = setting(
        None,
        "--output",
        "-o",
        commands=(TRAIN, VALIDATE, EXPORT),
        result=False,
        help={
            TRAIN: "the run's folder (unset: runs/<name of the data folder>)",
            VALIDATE: "a folder for metrics.json, scores.npy, targets.npy and report.html (unset: nothing written)",
            EXPORT: "the .onnx file (unset: beside the checkpoint)",
            None: "the output folder",
        },
    )
    seed: int = setting(0, check=_range(lambda v: 0 <= v < 2**63, "in [0, 2^63)"), help="random seed")
    tensorboard: bool = setting(
        False,
        commands=(TRAIN,),
        result=False,
        help="write TensorBoard event files into <output>/tensorboard (pip install '.[tensorboard]')",
    )
    log_dir: Optional[str] = setting(
        None,
        "--log-dir",
        commands=(TRAIN,),
        result=False,
        help="TensorBoard event files into this folder instead (implies --tensorboard)",
    )
    device: str = setting("auto", commands=(TRAIN, VALIDATE, INFER, EXPORT), help="auto | cpu | cuda | cuda:N")
    print_freq: int = setting(
        50, "--print-freq", "-p", check=_NONNEG, commands=(TRAIN, VALIDATE), result=False, help="log every N steps"
    )
    overwrite: bool = setting(
        False,
        commands=(TRAIN, VALIDATE, INFER, EXPORT),
        result=False,
        help="replace what an earlier run or command wrote there (prefer a new --output)",
    )
    checkpoint_every: int = setting(
        0, check=_NONNEG, result=False, help="also write last.pth every N steps (0: at epoch ends only)"
    )
    max_nonfinite: int = setting(20, check=_ONE_UP, help="stop after this many non-finite losses in a row")
    resume: Optional[str] = setting(None, result=False, help="checkpoint to resume from (a run's last.pth)")
    dry_run: bool = setting(
        False,
        result=False,
        help="resolve and check everything (config, pretrained weights, data, output folder), "
        "print the plan, train nothing",
    )


@dataclass
class EvalConfig:
    """validate.py: thresholds of the label metrics, calibration."""

    COMMANDS: ClassVar[Tuple[str, ...]] = (VALIDATE,)
    thre: float = setting(
        OFFICIAL_THRE, check=_UNIT, result=False, help=f"threshold of CP/CR/CF1/OP/OR/OF1 (official {OFFICIAL_THRE})"
    )
    calibrate: bool = setting(
        False, result=False, help="fit per-class F1-optimal thresholds, save a calibrated checkpoint copy"
    )
    write_prior: Optional[str] = setting(
        None,
        result=False,
        help="write the class prior (mean score per class over the split, 'Classes,avg_pred') to this CSV, "
        "for --unknown-labels selective",
    )


@dataclass
class InferConfig:
    """infer.py: which pictures, which labels are reported, how."""

    COMMANDS: ClassVar[Tuple[str, ...]] = (INFER,)
    pic_path: List[str] = setting(default_factory=list, result=False, help="images, folders or globs")
    th: Optional[float] = setting(
        None,
        check=_UNIT,
        result=False,
        help="score threshold (unset: the checkpoint's calibrated thresholds, else the official one of --dataset-type)",
    )
    top_k: Optional[int] = setting(None, check=_ONE_UP, result=False, help="report at most K labels per image")
    json: bool = setting(False, result=False, help="print one JSON list to stdout")
    save_image: Optional[str] = setting(
        None, result=False, help="write the (first) picture with its labels drawn on it"
    )
    dataset_type: Optional[str] = setting(
        None,
        result=False,
        choices=("ms_coco", "coco", "openimages"),
        help="official infer.py: MS-COCO (th 0.7) or OpenImages (th 0.995)",
    )
    tags_out: Optional[str] = setting(
        None,
        result=False,
        help="write one .txt of comma-separated tags per picture into this folder, mirroring the tree of "
        "the folders given (searched recursively); never over an existing file without --overwrite",
    )
    scores_csv: Optional[str] = setting(None, result=False, help="write every class's score of every picture (CSV)")
    exclude_tags: Optional[str] = setting(
        None, result=False, help="comma-separated class names never reported or written"
    )
    min_score: float = setting(0.0, check=_UNIT, result=False, help="report a tag only when its score is at least this")


@dataclass
class ExportConfig:
    """export.py: the ONNX file's form and its self-check."""

    COMMANDS: ClassVar[Tuple[str, ...]] = (EXPORT,)
    format: str = setting(
        "onnx",
        result=False,
        help="onnx: an .onnx file (onnxruntime) | hf: a Hugging Face model folder timm loads (--output DIR)",
        choices=("onnx", "hf"),
    )
    push_to_hub: Optional[str] = setting(
        None,
        commands=(TRAIN, EXPORT),
        result=False,
        help={
            None: "--format hf: upload the folder to this Hub repository (ORG/NAME) with your Hugging Face login",
            TRAIN: "at the end: best.pth as a Hugging Face folder (<output>/hf), uploaded to ORG/NAME",
        },
    )
    public: bool = setting(
        False, commands=(TRAIN, EXPORT), result=False, help="--push-to-hub: a public repository (default: private)"
    )
    opset: int = setting(17, check=_range(lambda v: 13 <= v <= 21, "in [13, 21]"), result=False, help="ONNX opset")
    dynamic_batch: bool = setting(False, result=False, help="a dynamic batch dimension (else batch 1)")
    fp16: bool = setting(False, result=False, help="float16 weights (GPU runtimes); inputs and outputs stay float32")
    sigmoid: bool = setting(True, result=False, help="output sigmoid scores (--no-sigmoid: logits)")
    check: bool = setting(
        True, result=False, help="compare onnxruntime with PyTorch on generated pictures; fail on a difference"
    )


SECTIONS = (DataConfig, ModelConfig, LossConfig, OptimConfig, RunConfig, EvalConfig, InferConfig, ExportConfig)


@dataclass
class Config(ExportConfig, InferConfig, EvalConfig, RunConfig, OptimConfig, LossConfig, ModelConfig, DataConfig):
    """Every setting of every command, flat: the form of YAML files and of a checkpoint's
    ``config``. A file may hold any of them; each command reads the fields it declares (the
    sections above, in their order)."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# field -> the commands that read it (its own list, else its section's)
COMMANDS: Dict[str, Tuple[str, ...]] = {
    f.name: f.metadata["commands"] or sec.COMMANDS for sec in SECTIONS for f in dataclasses.fields(sec)
}
# The fields that can change what a training run computes (the study's cache key).
RESULT_FIELDS = tuple(n for n, f in FIELDS.items() if f.metadata["result"] and TRAIN in COMMANDS[n])


def fields_for(command: str) -> List[str]:
    """The fields a command reads, in schema order."""
    return [n for n in FIELDS if command in COMMANDS[n]]


def flags_of(name: str) -> Tuple[str, ...]:
    """A field's command-line spellings (``--stop-epoch``; official ones such as ``--input-size``)."""
    return FIELDS[name].metadata["flags"] or (flag_name(name),)


def help_of(name: str, command: Optional[str] = None) -> str:
    """A field's ``--help`` line; a field that means something else to each command (``--output``)
    has one per command."""
    text = FIELDS[name].metadata["help"]
    return text.get(command, text[None]) if isinstance(text, dict) else text


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


@dataclass(frozen=True)
class FlagSpec:
    """What a command-line parser needs of one field: its spellings, help line (the command's own),
    base type, whether it may be unset (None) and whether it takes a list."""

    name: str
    flags: Tuple[str, ...]
    help: str
    type: Any
    optional: bool
    is_list: bool


def flag_specs(fields: Iterable[str], command: Optional[str] = None) -> List[FlagSpec]:
    """The :class:`FlagSpec` of each of ``fields``, as ``command`` shows them (``asl.cli.build_parser``)."""
    return [FlagSpec(n, flags_of(n), help_of(n, command), *_base_type(n)) for n in fields]


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
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise ConfigError(
            f"{source}: keys must be setting names, got {odd[0]!r} (a YAML key such as 1:, null: or "
            f"true: is not a name)"
        )
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    cfg = dataclasses.replace(base) if base is not None else Config()
    for k, v in values.items():
        try:
            v = coerce(k, v)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        if k in PATH_FIELDS and source != "flags":  # the shell expands ~ in flags; YAML does not
            v = (
                [os.path.expanduser(x) for x in v]
                if isinstance(v, list)
                else (os.path.expanduser(v) if isinstance(v, str) else v)
            )
        setattr(cfg, k, v)
    return cfg


# Fields naming files or folders: a leading ~ in a YAML file means the home folder, as in a shell.
PATH_FIELDS = (
    "data_root",
    "ann_file",
    "image_dir",
    "val_ann_file",
    "val_image_dir",
    "model_path",
    "init_checkpoint",
    "class_names",
    "output",
    "resume",
    "pic_path",
    "save_image",
    "prior_file",
    "write_prior",
)


@functools.lru_cache(maxsize=1)
def _unique_key_loader():
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                hashable = key in seen
            except TypeError:
                hashable = False
            if hashable:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            try:
                seen.add(key)
            except TypeError:
                pass
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML is a ConfigError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_unique_key_loader())
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


def load_config(
    path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None, base: Optional[Config] = None
) -> Config:
    """Defaults (or ``base``) <- YAML file <- overrides (flags)."""
    cfg = base if base is not None else Config()
    if path:
        cfg = from_dict(load_yaml(path), cfg, source=path)
    if overrides:
        cfg = from_dict(overrides, cfg, source="flags")
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# --- value checks: every value a run reads is checked before any data is read or model built.


def _finite(v) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


# Derived from the schema (no second list): field -> (test, what it must be); field -> names.
RANGES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    n: f.metadata["check"] for n, f in FIELDS.items() if f.metadata["check"]
}
# The optimizer is checked against timm's registry instead.
CHOICES: Dict[str, Tuple[str, ...]] = {n: f.metadata["choices"] for n, f in FIELDS.items() if f.metadata["choices"]}


def choice(value: str) -> str:
    """A name as ``CHOICES`` spells it: lower case, ``-`` and spaces as ``_`` (``MS-COCO`` -> ``ms_coco``)."""
    return str(value).strip().lower().replace("-", "_").replace(" ", "_")


def flag_name(name: str) -> str:
    """How a field is spelled on the command line (``--stop-epoch``), for messages."""
    return "--" + name.replace("_", "-")


def check_num_classes(expected: Optional[int], actual: int, what: str) -> None:
    """``--num-classes`` (the official flag), when given, must be the model's or the data's count."""
    if expected is not None and expected != actual:
        raise ConfigError(f"--num-classes {expected} but {what} has {actual} classes")


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
            raise ConfigError(
                f"unknown {name.replace('_', ' ')} {value!r}: {flag_name(name)} must be one of "
                f"{', '.join(CHOICES[name])}"
            )
    if "stop_epoch" in fields and cfg.stop_epoch is not None and cfg.stop_epoch > cfg.epochs:
        raise ConfigError(f"--stop-epoch {cfg.stop_epoch} is past the schedule's end (--epochs {cfg.epochs})")
    if "optimizer" in fields:
        from timm.optim import list_optimizers

        known = list_optimizers()
        if cfg.optimizer.lower() not in known:
            close = [n for n in known if cfg.optimizer.lower() in n][:5]
            raise ConfigError(
                f"--optimizer {cfg.optimizer!r} is not in timm's optimizer registry"
                + (f"; did you mean {', '.join(close)}?" if close else " (e.g. adam, adamw, sgd)")
            )
