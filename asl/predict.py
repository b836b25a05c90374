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
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .errors import CheckpointError, ConfigError

__all__ = ["OnnxTagger", "METADATA", "read_metadata", "preprocess", "read_class_names"]

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
            out[key] = int(value)
        else:
            out[key] = value
    return out


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
            raise ConfigError(f"device {device!r} asked for, but onnxruntime has no CUDA provider here "
                              f"(install onnxruntime-gpu)")
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

    def __init__(self, path: str, device: str = "auto", image_size: Optional[int] = None,
                 class_names: Optional[List[str]] = None):
        import onnxruntime as ort

        self.path = str(path)
        if not Path(path).is_file():
            raise CheckpointError(f"model not found: {path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # its warnings are not the user's business; errors still raise
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=providers(device))
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own unexported classes)
            raise CheckpointError(f"{path}: not a loadable ONNX model ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:160]})") from None
        self.meta = read_metadata(self.session)
        inp = self.session.get_inputs()
        out = self.session.get_outputs()
        if len(inp) != 1 or len(out) < 1 or len(inp[0].shape) != 4:
            raise CheckpointError(f"{path}: expected one image input (N, 3, S, S), found "
                                  f"{[(i.name, i.shape) for i in inp]}")
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
            raise CheckpointError(f"{path} carries no {' and no '.join(missing)}; a model exported by "
                                  f"export.py has them in its metadata")
        if fixed is not None and self.image_size != fixed:
            raise ConfigError(f"{path} takes {fixed} px inputs only (exported without a dynamic size); "
                              f"got --image-size {self.image_size}")
        if out_classes is not None and len(names) != out_classes:
            raise CheckpointError(f"{path} has {out_classes} outputs but {len(names)} class names")
        self.class_names = list(names)
        self.num_classes = len(self.class_names)
        self.mean = tuple(self.meta.get("mean") or (0.0, 0.0, 0.0))
        self.std = tuple(self.meta.get("std") or (1.0, 1.0, 1.0))
        self.outputs_scores = self.meta.get("output") == "scores"
        self.thresholds = self.meta.get("thresholds")

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return preprocess(img, self.image_size, self.mean, self.std)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores (N, C) float32 in [0, 1] of preprocessed images (N, 3, S, S)."""
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            # a model exported without --dynamic-batch: one call per fixed-size chunk
            parts = [self.run(batch[i:i + self.fixed_batch]) for i in range(0, len(batch), self.fixed_batch)]
            return np.concatenate(parts)
        y = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        y = y.astype(np.float32)
        if not self.outputs_scores:
            with np.errstate(over="ignore"):  # exp(-y) of a very negative logit: inf, and the score 0
                y = 1.0 / (1.0 + np.exp(-y))
        return y

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Scores (N, C) of PIL RGB images."""
        return self.run(np.stack([self.preprocess(im) for im in images]))
