"""Checkpoints: every format the package reads or writes, atomic writes, ``weights_only=True`` reads.

- The inference checkpoint (``best.pth``): a dict with the official keys
  ``model`` (state dict), ``num_classes`` and ``idx_to_class`` ({int: name}), so the official
  infer.py reads ours, plus ``model_name``, ``image_size``, ``mean``, ``std``, ``thresholds``
  (optional), ``config`` and ``epoch`` (:func:`make_checkpoint`, :func:`model_from_checkpoint`).
- The training state (``last.pth``): the same plus what a resume needs, described by
  :class:`RunState` (:func:`training_checkpoint`, :func:`restore_training_state`).
- The official layouts (inplace_abn TResNet, the Open Images bottleneck head), converted on read
  (:func:`normalize_state_dict`), and init weights (:func:`load_init_checkpoint`).

Every read goes through :func:`load_checkpoint`, which refuses a pickle that needs anything
beyond tensors and plain containers; every write through :func:`save_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .config import OFFICIAL_IMAGE_SIZE, zoo_image_size
from .errors import CheckpointError
from .files import atomic_write
from .heads import MLDecoderModel
from .models import create_model, head_keys, unwrap_model
from .predict import read_class_names  # noqa: F401  (a names file: torch-free, for the ONNX path too)

log = logging.getLogger(__name__)

__all__ = [
    "save_checkpoint",
    "make_checkpoint",
    "load_checkpoint",
    "state_dict_of",
    "model_from_checkpoint",
    "normalize_state_dict",
    "detect_official_tresnet",
    "load_init_checkpoint",
    "RunState",
    "training_checkpoint",
    "restore_training_state",
    "load_resume_checkpoint",
    "check_resume",
]

# Official ASL files carry no model name: the stem width tells the TResNet variant.
TRESNET_BY_STEM_WIDTH = {64: "tresnet_m", 76: "tresnet_l", 83: "tresnet_xl"}
# ML-Decoder's TResNet-L (timm's tresnet_v2_l) and XL have M's 64-wide stem; layer3's depth tells
# them apart (M: 11 blocks).
TRESNET_V2_BY_DEPTH = {23: "tresnet_v2_l", 34: "tresnet_v2_xl"}
_BOTTLENECK_KEY = "head.fc.embedding_generator.0.weight"


def strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keys without the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def load_init_checkpoint(model: nn.Module, path: str) -> Dict[str, list]:
    """Initialize ``model`` from a local checkpoint (ImageNet or another run's weights).

    Keys must match; the classifier head is dropped when its shape differs (a different
    class count), and the dropped keys are logged and returned.

    Args:
        model: the freshly created model.
        path: a ``.pth`` file holding a state dict or a dict with ``model`` / ``state_dict``.

    Returns:
        ``{"dropped": [...], "missing": [...]}``.
    """
    # Official ASL files (inplace_abn layout) are converted to timm's layout first.
    state = normalize_state_dict(state_dict_of(load_checkpoint(path, require_model=False), path), path)
    if isinstance(model, MLDecoderModel) and not any(k.startswith("backbone.") for k in state):
        # a plain backbone (a linear-head file, ImageNet weights) under an ML-Decoder: its
        # classifier goes with the head it no longer has
        with torch.device("meta"):
            linear = head_keys(create_model(model.backbone_name, 1)) if model.backbone_name else set()
        state = {"backbone." + k: v for k, v in state.items() if k not in linear}
    elif not isinstance(model, MLDecoderModel) and _ML_DECODER_QUERY in state:
        # an ML-Decoder file's backbone under a linear head: the decoder stays behind
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    unexpected = [k for k in state if k not in own]
    for k in dropped:
        del state[k]
    head = head_keys(model)
    bad = [k for k in dropped if k not in head]
    if bad or unexpected:
        first = (bad or unexpected)[:3]
        raise CheckpointError(
            f"{path}: does not fit model ({len(bad)} shape mismatches outside the head, "
            f"{len(unexpected)} unexpected keys; first: {', '.join(first)})"
        )
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if [k for k in missing if k not in head]:
        raise CheckpointError(
            f"{path}: lacks weights of the model, first: {', '.join([k for k in missing if k not in head][:3])}"
        )
    model.load_state_dict(state, strict=False)
    if dropped or missing:
        log.info("init checkpoint %s: head not loaded (%s)", path, ", ".join(sorted(set(dropped + missing))))
    return {"dropped": dropped, "missing": missing}


# ML-Decoder's head before the official code's 2021-12-02 layout change (and timm's copy): these
# four entries sat on the head itself, not under head.decoder.
_ML_DECODER_MOVED = ("embed_standart.", "query_embed.", "duplicate_pooling")
_ML_DECODER_QUERY = "head.decoder.query_embed.weight"


def _ml_decoder_renamed(state: Dict[str, torch.Tensor], path: Any = "checkpoint") -> Dict[str, torch.Tensor]:
    """The older ML-Decoder key layout renamed to ``head.decoder.*``; a file holding both is refused."""
    new = [k for k in state if any(k.startswith("head.decoder." + m) for m in _ML_DECODER_MOVED)]
    old = [k for k in state if any(k.startswith("head." + m) for m in _ML_DECODER_MOVED)]
    if new and old:
        raise CheckpointError(
            f"{path}: its ML-Decoder head keys mix two layouts ({old[0]} of the older one beside {new[0]}); "
            f"a file holds one of them"
        )
    if not old:
        return state
    return {("head.decoder." + k[len("head.") :] if k in old else k): v for k, v in state.items()}


def ml_decoder_shape(state: Dict[str, torch.Tensor], path: Any = "checkpoint") -> Optional[Dict[str, int]]:
    """The ML-Decoder head a state dict (``head.decoder.*`` layout) holds, read off its weights:
    ``groups`` G, ``k`` K, ``embed_dim`` D, ``num_classes`` C, ``in_features``; None for another head.

    Raises:
        CheckpointError: the head's tensors disagree with each other or with the official
            K = int(C / G + 0.999).
    """
    if _ML_DECODER_QUERY not in state:
        return None
    q = state[_ML_DECODER_QUERY]
    pool, bias = state.get("head.decoder.duplicate_pooling"), state.get("head.decoder.duplicate_pooling_bias")
    embed = state.get("head.decoder.embed_standart.weight")
    if pool is None or bias is None or embed is None or q.ndim != 2 or pool.ndim != 3 or bias.ndim != 1:
        raise CheckpointError(f"{path}: an incomplete ML-Decoder head (queries without group weights or projection)")
    g, d = (int(v) for v in q.shape)
    c = int(bias.shape[0])
    if tuple(pool.shape[:2]) != (g, d) or embed.ndim != 2 or int(embed.shape[0]) != d:
        raise CheckpointError(
            f"{path}: its ML-Decoder tensors disagree: queries {tuple(q.shape)}, group weights "
            f"{tuple(pool.shape)}, projection {tuple(embed.shape)}"
        )
    k = int(pool.shape[2])
    if g > c or k != int(c / g + 0.999):
        raise CheckpointError(
            f"{path}: its ML-Decoder has {g} groups of {k} outputs for {c} classes; the official head has "
            f"{int(c / min(g, c) + 0.999)} per group"
        )
    return {"groups": g, "k": k, "embed_dim": d, "num_classes": c, "in_features": int(embed.shape[1])}


def is_official_layout(state: Dict[str, torch.Tensor]) -> bool:
    """The official inplace_abn layout: ``Sequential(conv, InPlaceABN)`` as ``conv1.0`` / ``conv1.1``."""
    return "body.conv1.0.weight" in state and "body.conv1.conv.weight" not in state


def detect_official_tresnet(state: Dict[str, torch.Tensor]) -> Tuple[Optional[str], Optional[int], str]:
    """(timm model name, class count, head) of a TResNet state dict, either layout, with a linear,
    bottleneck or ML-Decoder head (either ML-Decoder layout)."""
    stem = state.get("body.conv1.0.weight", state.get("body.conv1.conv.weight"))
    name = TRESNET_BY_STEM_WIDTH.get(int(stem.shape[0])) if stem is not None else None
    if name == "tresnet_m":  # ML-Decoder's L and XL share M's stem: told apart by their depth
        depth = len({k.split(".")[2] for k in state if k.startswith("body.layer3.")})
        name = TRESNET_V2_BY_DEPTH.get(depth, name)
    if _ML_DECODER_QUERY in state or "head.query_embed.weight" in state:
        bias = state.get("head.decoder.duplicate_pooling_bias", state.get("head.duplicate_pooling_bias"))
        return name, (int(bias.shape[0]) if bias is not None and bias.ndim == 1 else None), "ml_decoder"
    if _BOTTLENECK_KEY in state:
        fc = state.get("head.fc.FC.weight")
        return name, (int(fc.shape[0]) if fc is not None else None), "bottleneck"
    fc = state.get("head.fc.weight")
    return name, (int(fc.shape[0]) if fc is not None else None), "linear"


def normalize_state_dict(state: Dict[str, torch.Tensor], path: Any = "checkpoint") -> Dict[str, torch.Tensor]:
    """Strip wrapper prefixes; convert the official inplace_abn TResNet layout to timm's with
    ``timm.models.tresnet.checkpoint_filter_fn`` (InPlaceABN scales by |w| + eps); rename the older
    ML-Decoder layout, and put an official ML-Decoder file's backbone under ``backbone.``
    (:class:`asl.heads.MLDecoderModel`'s layout)."""
    state = _ml_decoder_renamed(strip_prefixes(state), path)
    if is_official_layout(state):
        from timm.models.tresnet import checkpoint_filter_fn

        head = {k: v for k, v in state.items() if k.startswith("head.decoder.")}
        state = {**checkpoint_filter_fn({k: v for k, v in state.items() if k not in head}, None), **head}
    if _ML_DECODER_QUERY in state and not any(k.startswith("backbone.") for k in state):
        state = {(k if k.startswith("head.") else "backbone." + k): v for k, v in state.items()}
    return state


def _describe(state, model_name, class_names, image_size, mean, std) -> Dict[str, Any]:
    """The keys every checkpoint of ours has: the weights and what they need to run (the official
    ``model``, ``num_classes``, ``idx_to_class``, then ``model_name``, ``image_size``, ``mean``, ``std``)."""
    return {
        "model": state,
        "num_classes": len(class_names),
        "idx_to_class": {i: str(n) for i, n in enumerate(class_names)},
        "model_name": model_name,
        "image_size": int(image_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def make_checkpoint(
    model: nn.Module,
    *,
    model_name: str,
    class_names: Sequence[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: Optional[Dict[str, Any]] = None,
    epoch: Optional[int] = None,
    thresholds: Optional[Sequence[float]] = None,
    head: str = "linear",
    **extra: Any,
) -> Dict[str, Any]:
    """The inference checkpoint dict for ``model`` (unwrapped, on the CPU): the official keys plus
    ours (module docstring)."""
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    ckpt: Dict[str, Any] = {
        **_describe(state, model_name, class_names, image_size, mean, std),
        "config": config,
        "epoch": epoch,
        "head": head,
    }
    if thresholds is not None:
        ckpt["thresholds"] = [float(t) for t in thresholds]
    ckpt.update(extra)
    return ckpt


def save_checkpoint(ckpt: Dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically (:func:`asl.files.atomic_write`): a crash mid-write never leaves a
    truncated checkpoint under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, writer=lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | os.PathLike, require_model: bool = True) -> Dict[str, Any]:
    """Read a checkpoint with ``torch.load(..., weights_only=True)`` onto the CPU.

    A missing file, a file that is not a checkpoint, or a pickle that would run code or
    needs classes beyond tensors and containers raises :class:`CheckpointError`; nothing
    from such a file is executed.

    Args:
        path: the ``.pth`` file.
        require_model: the dict must hold a ``model`` (or ``state_dict``) state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path}" if not p.exists() else f"{path} is a folder, not a checkpoint file"
        )
    kind = sniff_weights(p)
    if kind == "safetensors":
        obj = _load_safetensors(p)
        if require_model:
            state_dict_of(obj, path)
        return obj
    if kind == "unknown":  # a text file, a picture, a truncated header: nothing to unpickle, nothing unsafe
        raise CheckpointError(
            f"{path}: refused, not a readable PyTorch checkpoint (neither a torch.save file, nor safetensors, "
            f"nor ONNX, by its first bytes)"
        )
    if kind == "onnx":
        raise CheckpointError(
            f"{path} is an ONNX model (export.py's output), not a PyTorch checkpoint: name it "
            f".onnx and pass it to infer.py or validate.py; training starts from a .pth or "
            f".safetensors"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols on stderr; the verdict below is what counts.
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        reason = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), "unsafe content")
        raise CheckpointError(
            f"{path}: refused, it needs more than tensors and containers to load "
            f"({reason[:160]}); nothing in it was run"
        ) from None
    except Exception as e:  # noqa: BLE001
        # Arbitrary bytes can fail anywhere inside the unpickler (IndexError, KeyError, ...);
        # every such failure means the same thing to the user.
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if require_model:
        state_dict_of(obj, path)
    return obj


def sniff_weights(path: Path) -> str:
    """What a weights file is, from its first bytes: ``torch`` (a zip or a pickle), ``safetensors``
    (an 8-byte header length, then a JSON header), ``onnx`` (a protobuf ModelProto), or ``unknown``."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    if len(head) >= 10 and head[8:10] in (b'{"', b"{ ", b"{\n") and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    # ModelProto: field 1 (ir_version, tag 0x08), then the producer's name
    if head[:1] == b"\x08" and any(w in head for w in (b"pytorch", b"onnx", b"tf2onnx", b"skl2onnx")):
        return "onnx"
    return "unknown"


def check_weights_file(path: Path) -> str:
    """That ``path`` is a whole weights file, read without loading its tensors: a safetensors
    header that parses and fits the file, a torch.save zip whose directory reads and whose members
    fit, or a legacy pickle. Returns the kind (:func:`sniff_weights`).

    Raises:
        CheckpointError: not a weights file, or one cut short.
    """
    kind = sniff_weights(path)
    if kind == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(e)[:120]})") from None
    elif kind == "torch":
        with open(path, "rb") as f:
            legacy = f.read(1) == b"\x80"  # a pickle (torch before 1.6): nothing to check without unpickling
        if not legacy:
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise CheckpointError(f"{path}: a torch.save file cut short ({e})") from None
            if bad is not None:
                raise CheckpointError(f"{path}: a torch.save file with a damaged member ({bad})")
    else:
        raise CheckpointError(
            f"{path}: not a weights file (neither safetensors nor a torch.save file, by its first bytes)"
        )
    return kind


def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors (no code can run from this format)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e)[:120]})") from None


def state_dict_of(obj: Any, path: Any = "checkpoint") -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint (``model``, ``state_dict``, or the dict itself)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no model state dict")
    return obj


def with_thresholds(
    ckpt: Dict[str, Any],
    thresholds: Sequence[float],
    *,
    model_name: str,
    class_names: Sequence[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Dict[str, Any]:
    """A copy of ``ckpt`` carrying per-class ``thresholds`` that every command can load.

    A checkpoint dict keeps all it had; a plain state dict (a timm model's weights alone) becomes
    a checkpoint of :func:`make_checkpoint`'s form, with the model name, class names, size and
    normalisation it was validated with (a state dict with one more key would load nowhere)."""
    thresholds = [float(t) for t in thresholds]
    if any(isinstance(ckpt.get(k), dict) for k in ("model", "state_dict", "model_state_dict")):
        return dict(ckpt, thresholds=thresholds)
    return dict(_describe(state_dict_of(ckpt), model_name, class_names, image_size, mean, std), thresholds=thresholds)


def class_names_of(ckpt: Dict[str, Any], num_classes: int) -> list:
    """Class names from ``idx_to_class`` (keys may be ints or strings), else ``class_<k>``."""
    idx = ckpt.get("idx_to_class") or {}
    names = {int(k): str(v) for k, v in idx.items()} if isinstance(idx, dict) else {}
    return [names.get(k, f"class_{k}") for k in range(num_classes)]


def match_classes(
    model_names: Sequence[str], data_names: Sequence[str], named: bool = True, path: Any = "checkpoint"
) -> Optional[list]:
    """How the model's outputs map onto the dataset's classes, matched by name.

    Args:
        model_names: the checkpoint's class names, in output order.
        data_names: the dataset's class names, in target order.
        named: False when the checkpoint carries no names (a plain state dict): then only the
            count is checked and outputs are taken in order.
        path: for messages.

    Returns:
        None when output k is class k already; else the list ``order`` with
        ``scores[:, order]`` in the dataset's class order (the same set in another order).

    Raises:
        CheckpointError: different counts, or names that differ (the first differences listed).
    """
    if len(model_names) != len(data_names):
        raise CheckpointError(f"{path} has {len(model_names)} classes, the dataset {len(data_names)}")
    if not named or list(model_names) == list(data_names):
        return None
    in_model, in_data = set(model_names), set(data_names)
    only_model = [n for n in model_names if n not in in_data]
    only_data = [n for n in data_names if n not in in_model]
    if only_model or only_data:

        def first(names):
            return ", ".join(map(repr, names[:3])) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

        raise CheckpointError(
            f"{path} was trained on other classes than the dataset's: {len(only_model)} only in "
            f"the checkpoint ({first(only_model)}), {len(only_data)} only in the dataset "
            f"({first(only_data)}); if the checkpoint's names are wrong, pass the right ones with "
            f"--class-names FILE"
        )
    index = {n: k for k, n in enumerate(model_names)}
    return [index[n] for n in data_names]


def model_from_checkpoint(
    ckpt: Dict[str, Any],
    model_name: Optional[str] = None,
    path: Any = "checkpoint",
    num_groups: Optional[int] = None,
    decoder_embedding: Optional[int] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights strictly.

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        model_name: overrides the checkpoint's ``model_name`` (needed for files without one). On an
            official ML-Decoder file, the official names ``tresnet_l`` / ``tresnet_xl`` mean that
            repository's L and XL (``tresnet_v2_l``, ``tresnet_v2_xl``), as its commands mean them.
        path: for messages.
        num_groups, decoder_embedding: ``--num-of-groups`` / ``--decoder-embedding``, checked
            against the ML-Decoder head the weights hold (None or -1: not checked).

    Returns:
        (model in eval mode on the CPU, info dict with ``model_name``, ``num_classes``,
        ``class_names`` (``class_<k>`` when the file has none, and then ``named`` is False),
        ``image_size``, ``mean``, ``std``, ``thresholds``, ``config``).
    """
    raw = strip_prefixes(state_dict_of(ckpt, path))
    check_stored_values(ckpt, path)
    detected, detected_classes, head = detect_official_tresnet(raw)
    head = ckpt.get("head") or head
    state = normalize_state_dict(raw, path)
    decoder = ml_decoder_shape(state, path)
    head = "ml_decoder" if decoder else ("linear" if head == "ml_decoder" else head)
    name = model_name or ckpt.get("model_name") or detected
    if (
        decoder
        and model_name in ("tresnet_l", "tresnet_xl")
        and not ckpt.get("model_name")
        and detected in ("tresnet_v2_l", "tresnet_v2_xl")
    ):
        log.info("%s: ML-Decoder's %s is timm's %s", path, model_name, detected)
        name = detected
    if not name:
        raise CheckpointError(f"{path}: names no model; pass --model-name")
    num_classes = ckpt.get("num_classes", detected_classes)
    if num_classes is None:
        num_classes = _head_size(name, state)  # a plain timm state dict: the head's row count
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise CheckpointError(f"{path}: has no 'num_classes'")
    extra = {}
    if decoder:
        _check_decoder_flags(decoder, num_classes, num_groups, decoder_embedding, path)
        extra = dict(num_groups=decoder["groups"], decoder_embedding=decoder["embed_dim"])
    elif num_groups not in (None, -1) or decoder_embedding not in (None, -1):
        raise CheckpointError(f"{path}: --num-of-groups / --decoder-embedding: its head is {head}, not ML-Decoder")
    model = create_model(name, num_classes, head=head, **extra)
    own = model.state_dict()
    problems = []
    for k, v in state.items():
        if k not in own:
            problems.append(f"unexpected key {k}")
        elif tuple(v.shape) != tuple(own[k].shape):
            problems.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    # BatchNorm's step counter is not in inplace_abn files and carries no weights.
    problems += [f"missing key {k}" for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if problems:
        raise CheckpointError(
            f"{path}: does not fit {name} with {num_classes} classes "
            f"({len(problems)} problems; first: {'; '.join(problems[:3])})"
        )
    model.load_state_dict(state, strict=False)  # every key was checked above
    model.eval()
    from .models import data_config

    mean, std = data_config(model)
    info = {
        "model_name": name,
        "num_classes": num_classes,
        "class_names": class_names_of(ckpt, num_classes),
        "named": bool(ckpt.get("idx_to_class")),
        "image_size": ckpt.get("image_size") or zoo_image_size(path) or OFFICIAL_IMAGE_SIZE.get(name.split(".")[0]),
        "head": head,
        "decoder": decoder,
        "mean": tuple(ckpt.get("mean") or mean),
        "std": tuple(ckpt.get("std") or std),
        "thresholds": ckpt.get("thresholds"),
        "config": ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None,
    }
    return model, info


def _check_decoder_flags(decoder: Dict[str, int], num_classes: int, groups, embed, path) -> None:
    """``--num-of-groups`` and ``--decoder-embedding`` (as the official commands pass them) against
    the ML-Decoder head the weights hold."""
    if decoder["num_classes"] != num_classes:
        raise CheckpointError(
            f"{path}: says {num_classes} classes, its ML-Decoder head has {decoder['num_classes']} outputs"
        )
    if groups not in (None, -1) and min(int(groups), num_classes) != decoder["groups"]:
        raise CheckpointError(
            f"{path}: --num-of-groups {groups}, but its ML-Decoder head has {decoder['groups']} groups "
            f"({decoder['k']} classes each); pass --num-of-groups {decoder['groups']} or leave it out"
        )
    if embed not in (None, -1) and int(embed) != decoder["embed_dim"]:
        raise CheckpointError(
            f"{path}: --decoder-embedding {embed}, but its ML-Decoder head is {decoder['embed_dim']} wide; "
            f"pass --decoder-embedding {decoder['embed_dim']} or leave it out"
        )


# More outputs than any real label set (Open Images: 9,605): a bigger count is a damaged file, and
# building its head would try to allocate gigabytes.
MAX_CLASSES = 100_000


def check_stored_values(ckpt: Dict[str, Any], path: Any = "checkpoint") -> None:
    """The values a checkpoint describes its model with, checked before any is used: one
    :class:`CheckpointError` line naming the first bad one (``num_classes: True``, ``10**8``,
    ``image_size: "64"``, ``model_name: 5``, a ``mean`` that is not 3 numbers, a zero ``std``,
    thresholds of the wrong length, ``idx_to_class`` keys that are not whole numbers)."""
    from .predict import check_metadata

    what = f"{path}:"
    n = ckpt.get("num_classes")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CLASSES):
        raise CheckpointError(f"{what} 'num_classes' must be a whole number in [1, {MAX_CLASSES}], got {n!r}")
    name = ckpt.get("model_name")
    if name is not None and not isinstance(name, str):
        raise CheckpointError(f"{what} 'model_name' must be a timm model name, got {name!r}")
    idx = ckpt.get("idx_to_class")
    names = None
    if idx is not None:
        if not isinstance(idx, dict):
            raise CheckpointError(f"{what} 'idx_to_class' must map output numbers to names")
        bad = [k for k in idx if isinstance(k, bool) or not str(k).strip().lstrip("-").isdigit()]
        if bad:
            raise CheckpointError(f"{what} 'idx_to_class' key {bad[0]!r} is not an output number")
        keys = sorted(int(k) for k in idx)
        names = [str(idx[k]) for k in sorted(idx, key=int)]
        if n is not None and keys and not 0 <= keys[0] <= keys[-1] < n:
            raise CheckpointError(f"{what} 'idx_to_class' names outputs outside 0..{n - 1}")
    meta = {
        "class_names": names,
        "image_size": ckpt.get("image_size"),
        "mean": _as_list(ckpt.get("mean")),
        "std": _as_list(ckpt.get("std")),
        "thresholds": _as_list(ckpt.get("thresholds")),
    }
    check_metadata(meta, what=what, num_classes=n)


def _as_list(v: Any) -> Any:
    """Tuples and tensors of numbers as lists (the forms a checkpoint may hold them in)."""
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return list(v) if isinstance(v, tuple) else v


def _head_size(name: str, state: Dict[str, torch.Tensor]) -> Optional[int]:
    """Rows of the classifier weight in ``state`` for timm model ``name`` (None if absent).
    The model is built on the ``meta`` device only to learn the head's keys."""
    with torch.device("meta"):
        probe = create_model(name, 1)
    weights = [k for k in head_keys(probe) if k in state and state[k].ndim >= 2]
    return int(state[weights[0]].shape[0]) if weights else None


# --------------------------------------------------------------------------- training state


@dataclass
class RunState:
    """Where a training run stands: the counters a ``last.pth`` holds beside the objects' states.

    Attributes:
        epoch: the epoch this state belongs to: finished (``step_in_epoch == 0``) or in progress.
        global_step: optimizer steps taken since the start of the run.
        best: the best validation result so far, ``{"mAP": -1.0}`` before any (else with
            ``epoch`` and ``selected``: ``model`` or ``ema``).
        step_in_epoch: batches of ``epoch`` already trained (a mid-epoch checkpoint), else 0.
        partial: the running loss sums of that epoch (``train_one_epoch``'s resume stats).
        rng: Python, numpy and torch RNG states (``asl.engine.get_rng_state``), taken last.
    """

    epoch: int = -1
    global_step: int = 0
    best: Dict[str, Any] = field(default_factory=lambda: {"mAP": -1.0})
    step_in_epoch: int = 0
    partial: Optional[Dict[str, Any]] = None
    rng: Optional[Dict[str, Any]] = None

    @property
    def mid_epoch(self) -> bool:
        return bool(self.step_in_epoch)

    @property
    def next_epoch(self) -> int:
        """The epoch to train next: the one in progress, else the one after the last finished."""
        return self.epoch if self.mid_epoch else self.epoch + 1

    def epoch_resume(self) -> Optional[Dict[str, Any]]:
        """``train_one_epoch``'s ``resume`` argument for a mid-epoch state, else None."""
        if not self.mid_epoch:
            return None
        return {"partial": self.partial, "rng": self.rng, "step": self.step_in_epoch}


def training_checkpoint(
    state: RunState,
    model: nn.Module,
    *,
    optimizer,
    scheduler,
    ema=None,
    scaler=None,
    loss_fn: Optional[nn.Module] = None,
    **meta: Any,
) -> Dict[str, Any]:
    """The ``last.pth`` dict: the inference checkpoint of ``model`` plus everything a resume needs.

    Args:
        state: the run's counters.
        model: the bare model (unwrapped).
        optimizer, scheduler, ema, scaler: their ``state_dict()`` is saved (``ema``: its module's).
        loss_fn: a loss with state (adaptive gamma-) keeps it in its own ``state_dict()``.
        **meta: :func:`make_checkpoint`'s keyword arguments (model name, classes, size, ...).
    """
    loss_state = dict(loss_fn.state_dict()) if loss_fn is not None else None
    return make_checkpoint(
        model,
        epoch=state.epoch,
        global_step=state.global_step,
        best=state.best,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        ema=ema.module.state_dict() if ema is not None else None,
        scaler=scaler.state_dict() if scaler is not None else None,
        loss_state=loss_state or None,
        step_in_epoch=state.step_in_epoch,
        partial=state.partial,
        rng=state.rng,
        **meta,
    )


def restore_training_state(
    ckpt: Dict[str, Any],
    model: nn.Module,
    optimizer,
    scheduler,
    ema=None,
    scaler=None,
    loss_fn: Optional[nn.Module] = None,
) -> RunState:
    """Load a ``last.pth`` into the run's objects and return its :class:`RunState`.

    RNG states are not applied here: at an epoch boundary the trainer restores ``state.rng``
    before the next epoch; mid-epoch, ``train_one_epoch`` restores them once the loader's
    iterator exists (``state.epoch_resume()``).
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
    loss_state = ckpt.get("loss_state")
    if loss_state and loss_fn is not None:
        if "_extra_state" not in loss_state and "gamma_neg" in loss_state:
            loss_state = {"_extra_state": dict(loss_state)}  # a last.pth written before losses kept their state
        loss_fn.load_state_dict(loss_state)
    return RunState(
        epoch=int(ckpt["epoch"]),
        global_step=int(ckpt.get("global_step", 0)),
        best=ckpt.get("best") or {"mAP": -1.0},
        step_in_epoch=int(ckpt.get("step_in_epoch") or 0),
        partial=ckpt.get("partial"),
        rng=ckpt.get("rng"),
    )


def load_resume_checkpoint(path: str) -> dict:
    """A ``last.pth`` to resume from; anything else is refused before any work starts."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scheduler", "epoch") if ckpt.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it, it lacks {', '.join(missing)} (resume from a last.pth)")
    return ckpt


# Settings the optimizer, schedule, EMA and loss states of a last.pth were built with: a resume
# with another value would crash (the schedule's step count, the optimizer's state keys) or
# silently keep the old one (the learning rate lives in the optimizer's state).
RESUME_FIXED = (
    "epochs",
    "batch_size",
    "accum_steps",
    "optimizer",
    "lr",
    "weight_decay",
    "pct_start",
    "ema",
    "ema_decay",
    "ema_warmup",
    "loss",
    "head",
    "num_of_groups",
    "decoder_embedding",
)


def check_resume(
    ckpt: Dict[str, Any],
    model_name: str,
    image_size: int,
    path: str,
    class_names: Optional[Sequence[str]] = None,
    config: Any = None,
) -> None:
    """Refuse a resume checkpoint that does not describe this run, naming what differs:
    the model, the image size, the settings of ``RESUME_FIXED`` (with ``config``, the run's
    resolved config) and (once the data is read) the classes."""
    diffs = []
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if config is not None:
        for name in RESUME_FIXED:
            if name in saved:
                old, new = saved[name], getattr(config, name)
                if (str(old).lower() if isinstance(old, str) else old) != (
                    str(new).lower() if isinstance(new, str) else new
                ):
                    diffs.append(f"--{name.replace('_', '-')} {old!r} vs {new!r}")
    if ckpt.get("model_name") and ckpt["model_name"] != model_name:
        diffs.append(f"model {ckpt['model_name']} vs {model_name}")
    if ckpt.get("image_size") and int(ckpt["image_size"]) != image_size:
        diffs.append(f"image size {ckpt['image_size']} vs {image_size}")
    if class_names is not None:
        have = class_names_of(ckpt, int(ckpt.get("num_classes") or 0))
        if have != list(class_names):
            diffs.append(
                f"{len(have)} classes vs {len(class_names)}"
                if len(have) != len(class_names)
                else "the class names or their order"
            )
    if diffs:
        raise CheckpointError(
            f"--resume {path} was saved by another run ({'; '.join(diffs)}, "
            f"checkpoint vs this run); resume with the settings it was trained with, or start "
            f"a new --output"
        )
