"""Checkpoints: one format, atomic writes, ``weights_only=True`` reads.

A checkpoint is a dict with the official keys ``model`` (state dict),
``num_classes`` and ``idx_to_class`` ({int: name}), so the official infer.py
reads ours, plus ``model_name``, ``image_size``, ``mean``, ``std``,
``thresholds`` (optional), ``config`` and ``epoch``; ``last.pth`` adds what a
resume needs. Every read goes through :func:`load_checkpoint`, which refuses a
pickle that needs anything beyond tensors and plain containers.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .errors import CheckpointError
from .models import _strip_prefixes, create_model, unwrap_model

__all__ = ["save_checkpoint", "make_checkpoint", "load_checkpoint", "state_dict_of", "model_from_checkpoint",
           "normalize_state_dict", "detect_official_tresnet"]

# Official ASL files carry no model name: the stem width tells the TResNet variant.
TRESNET_BY_STEM_WIDTH = {64: "tresnet_m", 76: "tresnet_l", 83: "tresnet_xl"}
DEFAULT_IMAGE_SIZE = {"tresnet_m": 224, "tresnet_l": 448, "tresnet_xl": 448}
_BOTTLENECK_KEY = "head.fc.embedding_generator.0.weight"


def is_official_layout(state: Dict[str, torch.Tensor]) -> bool:
    """The official inplace_abn layout: ``Sequential(conv, InPlaceABN)`` as ``conv1.0`` / ``conv1.1``."""
    return "body.conv1.0.weight" in state and "body.conv1.conv.weight" not in state


def detect_official_tresnet(state: Dict[str, torch.Tensor]) -> Tuple[Optional[str], Optional[int], str]:
    """(timm model name, class count, head) of a TResNet state dict, either layout."""
    stem = state.get("body.conv1.0.weight", state.get("body.conv1.conv.weight"))
    name = TRESNET_BY_STEM_WIDTH.get(int(stem.shape[0])) if stem is not None else None
    if _BOTTLENECK_KEY in state:
        fc = state.get("head.fc.FC.weight")
        return name, (int(fc.shape[0]) if fc is not None else None), "bottleneck"
    fc = state.get("head.fc.weight")
    return name, (int(fc.shape[0]) if fc is not None else None), "linear"


def normalize_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip wrapper prefixes; convert the official inplace_abn TResNet layout to timm's with
    ``timm.models.tresnet.checkpoint_filter_fn`` (InPlaceABN scales by |w| + eps)."""
    state = _strip_prefixes(state)
    if is_official_layout(state):
        from timm.models.tresnet import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, None)
    return state


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
    """The checkpoint dict of CONTRACT.md section 3 for ``model`` (unwrapped, on the CPU)."""
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    ckpt: Dict[str, Any] = {
        "model": state,
        "num_classes": len(class_names),
        "idx_to_class": {i: str(n) for i, n in enumerate(class_names)},
        "model_name": model_name,
        "image_size": int(image_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "config": config,
        "epoch": epoch,
        "head": head,
    }
    if thresholds is not None:
        ckpt["thresholds"] = [float(t) for t in thresholds]
    ckpt.update(extra)
    return ckpt


def save_checkpoint(ckpt: Dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, then ``os.replace``,
    so a crash mid-write never leaves a truncated checkpoint under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols on stderr; the verdict below is what counts.
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        reason = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), "unsafe content")
        raise CheckpointError(f"{path}: refused, it needs more than tensors and containers to load "
                              f"({reason[:160]}); nothing in it was run") from None
    except Exception as e:  # noqa: BLE001
        # Arbitrary bytes can fail anywhere inside the unpickler (IndexError, KeyError, ...);
        # every such failure means the same thing to the user.
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if require_model:
        state_dict_of(obj, path)
    return obj


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


def class_names_of(ckpt: Dict[str, Any], num_classes: int) -> list:
    """Class names from ``idx_to_class`` (keys may be ints or strings), else ``class_<k>``."""
    idx = ckpt.get("idx_to_class") or {}
    names = {int(k): str(v) for k, v in idx.items()} if isinstance(idx, dict) else {}
    return [names.get(k, f"class_{k}") for k in range(num_classes)]


def read_class_names(path: str | os.PathLike, num_classes: Optional[int] = None) -> list:
    """Class names from a text file, one per line (blank lines skipped), e.g. a tagged set's
    ``classes.txt``; their count must be ``num_classes`` when given."""
    p = Path(path)
    try:
        names = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise CheckpointError(f"--class-names file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"--class-names {path}: cannot read it ({type(e).__name__})") from None
    if len(set(names)) != len(names):
        raise CheckpointError(f"--class-names {path}: a name is listed twice")
    if num_classes is not None and len(names) != num_classes:
        raise CheckpointError(f"--class-names {path} lists {len(names)} names, the model has {num_classes} classes")
    return names


def match_classes(model_names: Sequence[str], data_names: Sequence[str], named: bool = True,
                  path: Any = "checkpoint") -> Optional[list]:
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

        raise CheckpointError(f"{path} was trained on other classes than the dataset's: {len(only_model)} only in "
                              f"the checkpoint ({first(only_model)}), {len(only_data)} only in the dataset "
                              f"({first(only_data)}); if the checkpoint's names are wrong, pass the right ones with "
                              f"--class-names FILE")
    index = {n: k for k, n in enumerate(model_names)}
    return [index[n] for n in data_names]


def model_from_checkpoint(ckpt: Dict[str, Any], model_name: Optional[str] = None,
                          path: Any = "checkpoint") -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights strictly.

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        model_name: overrides the checkpoint's ``model_name`` (needed for files without one).
        path: for messages.

    Returns:
        (model in eval mode on the CPU, info dict with ``model_name``, ``num_classes``,
        ``class_names`` (``class_<k>`` when the file has none, and then ``named`` is False),
        ``image_size``, ``mean``, ``std``, ``thresholds``, ``config``).
    """
    raw = _strip_prefixes(state_dict_of(ckpt, path))
    detected, detected_classes, head = detect_official_tresnet(raw)
    head = ckpt.get("head") or head
    state = normalize_state_dict(raw)
    name = model_name or ckpt.get("model_name") or detected
    if not name:
        raise CheckpointError(f"{path}: names no model; pass --model-name")
    num_classes = ckpt.get("num_classes", detected_classes)
    if num_classes is None:
        num_classes = _head_size(name, state)  # a plain timm state dict: the head's row count
    if not isinstance(num_classes, int):
        raise CheckpointError(f"{path}: has no 'num_classes'")
    model = create_model(name, num_classes, head=head)
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
        raise CheckpointError(f"{path}: does not fit {name} with {num_classes} classes "
                              f"({len(problems)} problems; first: {'; '.join(problems[:3])})")
    model.load_state_dict(state, strict=False)  # every key was checked above
    model.eval()
    from .models import data_config

    mean, std = data_config(model)
    info = {
        "model_name": name,
        "num_classes": num_classes,
        "class_names": class_names_of(ckpt, num_classes),
        "named": bool(ckpt.get("idx_to_class")),
        "image_size": ckpt.get("image_size") or DEFAULT_IMAGE_SIZE.get(name),
        "head": head,
        "mean": tuple(ckpt.get("mean") or mean),
        "std": tuple(ckpt.get("std") or std),
        "thresholds": ckpt.get("thresholds"),
        "config": ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None,
    }
    return model, info


def _head_size(name: str, state: Dict[str, torch.Tensor]) -> Optional[int]:
    """Rows of the classifier weight in ``state`` for timm model ``name`` (None if absent).
    The model is built on the ``meta`` device only to learn the head's keys."""
    from .models import _head_keys

    with torch.device("meta"):
        probe = create_model(name, 1)
    weights = [k for k in _head_keys(probe) if k in state and state[k].ndim >= 2]
    return int(state[weights[0]].shape[0]) if weights else None
