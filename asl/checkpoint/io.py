"""Reading and writing checkpoints: the inference checkpoint's form, atomic writes, safe reads
(``weights_only=True``; safetensors), what a weights file is by its first bytes, and the values a
checkpoint describes its model with, checked before use."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..files import atomic_write
from ..models import unwrap_model


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


# More outputs than any real label set (Open Images: 9,605): a bigger count is a damaged file, and
# building its head would try to allocate gigabytes.
MAX_CLASSES = 100_000


def check_stored_values(ckpt: Dict[str, Any], path: Any = "checkpoint") -> None:
    """The values a checkpoint describes its model with, checked before any is used: one
    :class:`CheckpointError` line naming the first bad one (``num_classes: True``, ``10**8``,
    ``image_size: "64"``, ``model_name: 5``, a ``mean`` that is not 3 numbers, a zero ``std``,
    thresholds of the wrong length, ``idx_to_class`` keys that are not whole numbers)."""
    from ..predict import check_metadata

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
