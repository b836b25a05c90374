"""Tag images with an exported ONNX model, without PyTorch: onnxruntime, numpy and Pillow only.

``export.py`` (``asl.export``) writes the model with what a runtime needs in its
``metadata_props`` (:data:`METADATA`): class names, input size, mean / std, the resize rule,
whether the output is already a sigmoid score, and the calibrated per-class thresholds when the
checkpoint had them. :class:`OnnxTagger` reads them and preprocesses exactly as ``infer.py``
does for a PyTorch checkpoint (PIL ``resize((S, S))``, ``/ 255``, mean / std), so both paths give
the same labels and scores. Nothing in this module imports torch or timm.

    from asl.predict import OnnxTagger

    tagger = OnnxTagger("model.onnx")
    scores = tagger.scores([Image.open("photo.jpg").convert("RGB")])   # (1, C) in [0, 1]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .classes import check_class_names
from .errors import CheckpointError, ConfigError

__all__ = [
    "OnnxTagger",
    "METADATA",
    "read_metadata",
    "preprocess",
    "check_metadata",
]

# metadata_props keys written by asl.export (values are strings; JSON where structured)
METADATA = {
    "asl_format": "1",
    "model_name": "timm model name",
    "class_names": "JSON list, in output order",
    "image_size": "input side S",
    "mean": "JSON list of 3 (0, 0, 0 for TResNet / ASL checkpoints)",
    "std": "JSON list of 3 (1, 1, 1 for TResNet / ASL checkpoints)",
    "resize": "pil_squish: PIL img.resize((S, S)) (Pillow's default filter), as the official infer.py",
    "output": "scores (sigmoid included) or logits",
    "thresholds": "JSON list of C calibrated thresholds (validate.py --calibrate), when the checkpoint had them",
    "config": "JSON: the training config, when the checkpoint had one (validate.py's defaults)",
    "source": "the checkpoint's file name",
}


def read_metadata(session) -> Dict[str, Any]:
    """The ``metadata_props`` of an onnxruntime session, decoded (missing keys absent)."""
    raw = dict(session.get_modelmeta().custom_metadata_map)
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("class_names", "mean", "std", "thresholds", "config"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                raise CheckpointError(f"metadata {key!r} is not JSON: {value[:60]!r}") from None
        elif key == "image_size":
            try:
                out[key] = int(value)
            except ValueError:
                raise CheckpointError(f"metadata 'image_size' is not a whole number: {value[:60]!r}") from None
        else:
            out[key] = value
    return check_metadata(out)


def _numbers(v: Any, n: Optional[int] = None) -> bool:
    return (
        isinstance(v, list)
        and (n is None or len(v) == n)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x for x in v)
    )


def check_metadata(
    meta: Dict[str, Any], what: str = "metadata", unique: bool = False, num_classes: Optional[int] = None
) -> Dict[str, Any]:
    """The values a model file describes itself with, checked: class names (distinct strings),
    the input size (in ``[1, MAX_IMAGE_SIZE]``), mean / std (3 numbers, std non-zero) and one
    threshold per class in [0, 1]. One :class:`CheckpointError` line names the first bad value.

    Args:
        meta: the values, by their metadata key.
        what: where they come from, for messages.
        unique: class names must also be distinct.
        num_classes: the class count the thresholds must match (default: the class names').
    """
    from .zoo import MAX_IMAGE_SIZE

    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{what} 'class_names' must be a list of names")
        # A model's names are reported, not matched, so a name given twice (the Open Images list
        # has some) is kept; a dataset's names must be distinct (asl.data.base).
        check_class_names(names, f"{what} 'class_names'", unique=unique)
    size = meta.get("image_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE):
        raise CheckpointError(f"{what} 'image_size' must be a whole number in [1, {MAX_IMAGE_SIZE}], got {size!r}")
    for key in ("mean", "std"):
        if meta.get(key) is not None and not _numbers(meta[key], 3):
            raise CheckpointError(f"{what} {key!r} must be a list of 3 numbers, got {meta[key]!r}")
    if meta.get("std") is not None and any(v == 0 for v in meta["std"]):
        raise CheckpointError(f"{what} 'std' holds a 0 (every input would divide by zero): {meta['std']!r}")
    thr = meta.get("thresholds")
    if thr is not None:
        n = num_classes if num_classes is not None else len(names) if isinstance(names, list) else None
        if not _numbers(thr, n) or not all(0 <= t <= 1 for t in thr):
            raise CheckpointError(
                f"{what} 'thresholds' must hold one value per class"
                + (f" ({n})" if n is not None else "")
                + f", each in [0, 1]; got {len(thr) if isinstance(thr, list) else repr(thr)}"
            )
    return meta


def preprocess(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``infer.py``'s preprocessing in numpy: PIL ``resize((S, S))`` -> float32 CHW in [0, 1] ->
    ``(x - mean) / std`` (skipped for mean 0, std 1). Equal to the torchvision pipeline
    (``asl.data.transforms.build_infer_transform``) bit for bit: the same float32 operations.

    Shapes: PIL RGB image -> (3, S, S) float32.
    """
    arr = np.asarray(img.resize((size, size)), dtype=np.uint8)
    x = arr.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    if any(m != 0.0 for m in mean) or any(s != 1.0 for s in std):
        x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def providers(device: str = "auto") -> List[str]:
    """onnxruntime's execution providers: CUDA first where present (``auto`` / ``cuda``), else the CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in have:
            raise ConfigError(
                f"device {device!r} asked for, but onnxruntime has no CUDA provider here (install onnxruntime-gpu)"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxTagger:
    """An exported model and what it needs to tag a picture.

    Args:
        path: the ``.onnx`` file (asl.export's, or any one image-in / logits-out model).
        device: ``auto`` (CUDA provider when present), ``cpu`` or ``cuda``.
        image_size, class_names: override the metadata (required where a file has none).

    Raises:
        CheckpointError: not an ONNX model, or one that lacks what tagging needs (the message
            names the flags that supply it).
    """

    def __init__(
        self, path: str, device: str = "auto", image_size: Optional[int] = None, class_names: Optional[List[str]] = None
    ):
        import onnxruntime as ort

        self.path = str(path)
        if not Path(path).is_file():
            raise CheckpointError(f"model not found: {path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # its warnings are not the user's business; errors still raise
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=providers(device))
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own unexported classes)
            raise CheckpointError(
                f"{path}: not a loadable ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            ) from None
        self.meta = read_metadata(self.session)
        inp = self.session.get_inputs()
        out = self.session.get_outputs()
        if len(inp) != 1 or len(out) < 1 or len(inp[0].shape) != 4:
            raise CheckpointError(
                f"{path}: expected one image input (N, 3, S, S), found {[(i.name, i.shape) for i in inp]}"
            )
        self.input_name = inp[0].name
        shape = inp[0].shape
        fixed = shape[2] if isinstance(shape[2], int) else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.image_size = image_size or self.meta.get("image_size") or fixed
        out_classes = out[0].shape[-1] if isinstance(out[0].shape[-1], int) else None
        names = class_names or self.meta.get("class_names")
        missing = []
        if not self.image_size:
            missing.append("the input size (pass --image-size N)")
        if names is None:
            missing.append("the class names (pass --class-names FILE, one name per line in output order)")
        if missing:
            raise CheckpointError(
                f"{path} carries no {' and no '.join(missing)}; a model exported by export.py has them in its metadata"
            )
        if fixed is not None and self.image_size != fixed:
            raise ConfigError(
                f"{path} takes {fixed} px inputs only (exported without a dynamic size); "
                f"got --image-size {self.image_size}"
            )
        if out_classes is not None and len(names) != out_classes:
            raise CheckpointError(f"{path} has {out_classes} outputs but {len(names)} class names")
        self.class_names = list(names)
        self.num_classes = len(self.class_names)
        self.mean = tuple(self.meta.get("mean") or (0.0, 0.0, 0.0))
        self.std = tuple(self.meta.get("std") or (1.0, 1.0, 1.0))
        self.outputs_scores = self.meta.get("output") == "scores"
        self.thresholds = self.meta.get("thresholds")

    def check_model_name(self, model_name: Optional[str]) -> None:
        """An exported model is its own graph: a ``--model-name`` other than the one it was exported
        from is refused, not silently ignored."""
        stored = self.meta.get("model_name")
        if model_name and model_name != stored:
            raise ConfigError(
                f"--model-name {model_name} does not apply to {self.path}: an exported model is its own "
                f"graph (exported from {stored or 'an unnamed model'}); drop --model-name"
            )

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return preprocess(img, self.image_size, self.mean, self.std)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores (N, C) float32 in [0, 1] of preprocessed images (N, 3, S, S)."""
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            # a model exported without --dynamic-batch: one call per fixed-size chunk
            parts = [self.run(batch[i : i + self.fixed_batch]) for i in range(0, len(batch), self.fixed_batch)]
            return np.concatenate(parts)
        y = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        y = y.astype(np.float32)
        if not self.outputs_scores:
            if self.meta.get("task") == "single_label":  # softmax, as the graph would have
                z = np.exp(y - y.max(axis=1, keepdims=True))
                return z / z.sum(axis=1, keepdims=True)
            with np.errstate(over="ignore"):  # exp(-y) of a very negative logit: inf, and the score 0
                y = 1.0 / (1.0 + np.exp(-y))
        return y

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Scores (N, C) of PIL RGB images."""
        return self.run(np.stack([self.preprocess(im) for im in images]))
