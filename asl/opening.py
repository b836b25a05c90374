"""One way to open a model: :func:`open_model` for a ``.pth`` (ours, the official files, a plain
state dict) and an exported ``.onnx`` alike, used by validate, infer and export.

The :class:`OpenedModel` it returns carries what every command needs: the class names (the file's,
or ``--class-names``), the input size (``--image-size``, else the file's own, else the model zoo's
for its files, else the model's default), the preprocessing (mean / std), the calibrated
thresholds, the training config the file carries, and the scorer: ``scores(pictures)`` with
infer.py's preprocessing, ``evaluate(loader, ...)`` on validate.py's input tensors. The ONNX path
imports neither torch nor timm (``asl.predict``).

    from asl.opening import open_model

    model = open_model("runs/demo/best.pth")            # or "demo.onnx"
    scores = model.scores([load_rgb("photo.jpg")])       # (1, C) in [0, 1]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import check_num_classes
from .errors import CheckpointError, ConfigError
from .zoo import default_image_size, zoo_image_size

log = logging.getLogger(__name__)

__all__ = ["OpenedModel", "open_model", "is_onnx"]


def is_onnx(path: Any) -> bool:
    """Whether a model file is opened as an exported ONNX model (by its name, as the commands do)."""
    return Path(str(path)).suffix.lower() == ".onnx"


@dataclass(frozen=True)
class OpenedModel:
    """A model file, opened.

    Attributes:
        path: the file.
        kind: ``pytorch`` or ``onnx``.
        model_name: the timm name (None for an ONNX file without metadata).
        class_names: the outputs' names, in order.
        named: whether the names come from the file or ``--class-names`` (else ``class_<k>``).
        image_size: the input side this model runs at (resolved, see the module docstring).
        own_size: the size the file itself names (None where it names none).
        size_from: where ``image_size`` came from: ``flag``, ``file`` or ``default``.
        mean, std: its normalisation.
        thresholds: calibrated per-class thresholds, or None.
        config: the training config the file carries, or None.
        checkpoint: the ``.pth`` dict (None for ONNX): what a calibrated copy extends.
        net: the ``nn.Module`` (eval mode, on the CPU) or the :class:`~asl.predict.OnnxTagger`.
        device: where it scores (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
    """

    path: str
    kind: str
    model_name: Optional[str]
    class_names: List[str]
    named: bool
    image_size: int
    own_size: Optional[int]
    size_from: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    thresholds: Optional[List[float]]
    config: Optional[Dict[str, Any]]
    checkpoint: Optional[Dict[str, Any]]
    net: Any
    device: str = "auto"
    task: str = "multi_label"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def at_size(self, size: int) -> "OpenedModel":
        """The same model at another input side (checked: a fixed-size model refuses another)."""
        if size == self.image_size:
            return self
        if self.kind == "onnx":
            from .predict import OnnxTagger

            return replace(
                self,
                image_size=size,
                net=OnnxTagger(self.path, device=self.device, image_size=size, class_names=self.class_names),
            )
        from .models import check_image_size

        check_image_size(self.model_name, size)
        return replace(self, image_size=size)

    def scores(self, pictures: Sequence[Any]) -> np.ndarray:
        """(N, C) float32 scores of PIL RGB pictures, preprocessed as the official infer.py."""
        if self.kind == "onnx":
            return self.net.scores(pictures)
        import torch

        from .data.transforms import build_infer_transform

        device = _torch_device(self.device)
        transform = build_infer_transform(self.image_size, self.mean, self.std)  # the official infer.py's resize
        net = self.net.to(device)
        with torch.inference_mode():
            x = torch.stack([transform(p) for p in pictures]).to(device)
            logits = net(x).float()
            probs = torch.softmax(logits, dim=1) if self.task == "single_label" else torch.sigmoid(logits)
            return probs.cpu().numpy()

    def evaluate(self, loader, amp: bool = True, order: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        """``asl.engine.evaluate``'s result on a loader's batches (validate.py's preprocessing);
        ``order`` picks the outputs in the dataset's class order."""
        if self.kind == "onnx":
            return _evaluate_onnx(self.net, loader, order, self.task == "single_label")
        from .builders import amp_dtype_for
        from .engine import evaluate
        from .models import SelectOutputs

        device = _torch_device(self.device)
        net = SelectOutputs(self.net, order) if order is not None else self.net
        return evaluate(
            net.to(device),
            loader,
            device,
            amp_dtype=amp_dtype_for(device, amp),
            single_label=self.task == "single_label",
        )


def _task(own: Optional[str], config: Optional[Dict[str, Any]], given: Optional[str], path) -> str:
    """The file's task (its own key, else its config's, else multi-label), checked against ``--task``."""
    task = own or (config or {}).get("task") or "multi_label"
    if given and given != task:
        raise CheckpointError(
            f"{path} is a {task.replace('_', '-')} model (its outputs are "
            f"{'softmax' if task == 'single_label' else 'sigmoid'} scores); drop --task {given.replace('_', '-')}"
        )
    return task


def _torch_device(name: str):
    from .checks import resolve_device

    return resolve_device(name)


def _evaluate_onnx(tagger, loader, order=None, single_label: bool = False) -> Dict[str, Any]:
    """onnxruntime on the loader's batches, in ``asl.engine.evaluate``'s form."""
    import time

    from .labelled import ScoreCollector
    from .metrics import evaluation_result

    collected = ScoreCollector.for_dataset(loader.dataset, single_label=single_label)
    t0 = time.perf_counter()
    for images, target in loader:
        s = tagger.run(images.numpy())
        collected.add(s[:, order] if order is not None else s, target.numpy())
    return evaluation_result(collected, time.perf_counter() - t0, loader.dataset)


def open_configured(cfg, device: str = "auto") -> "OpenedModel":
    """:func:`open_model` with a command's model flags (``--model-path``, ``--model-name``,
    ``--image-size``, ``--class-names``, ``--num-classes``, ``--num-of-groups``,
    ``--decoder-embedding``, ``--task``) read from its config; ``device``: where it scores."""
    return open_model(
        cfg.model_path,
        cfg.model_name,
        cfg.image_size,
        cfg.class_names,
        cfg.num_classes,
        device,
        cfg.num_of_groups,
        cfg.decoder_embedding,
        task=cfg.task,
    )


def open_model(
    path: str,
    model_name: Optional[str] = None,
    image_size: Optional[int] = None,
    class_names: Optional[str] = None,
    num_classes: Optional[int] = None,
    device: str = "auto",
    num_groups: Optional[int] = None,
    decoder_embedding: Optional[int] = None,
    task: Optional[str] = None,
) -> OpenedModel:
    """Open a ``.pth`` or an ``.onnx`` model file with what the command line says of it.

    Args:
        path: the file.
        model_name: ``--model-name`` (needed for a plain state dict; an ONNX file refuses another).
        image_size: ``--image-size``, else the file's own size, the zoo's, the model's default.
        class_names: ``--class-names FILE``: the outputs' names, in order.
        num_classes: ``--num-classes`` (the official flag), checked against the file.
        device: where it scores.
        num_groups, decoder_embedding: the official ML-Decoder flags, checked against the head the
            weights hold (an ONNX file's head is fixed: they are refused there).
        task: ``--task``, checked against the file's (a file without one is multi-label).

    Raises:
        ASLError: one line, for a file that is missing, unsafe, of another kind or that does not
            fit what the flags say.
    """
    if is_onnx(path):
        from .classes import read_class_names
        from .predict import OnnxTagger

        names = read_class_names(class_names) if class_names else None
        tagger = OnnxTagger(path, device=device, image_size=image_size, class_names=names)
        tagger.check_model_name(model_name)
        fixed = [
            f
            for f, v in (("--num-of-groups", num_groups), ("--decoder-embedding", decoder_embedding))
            if v not in (None, -1)
        ]
        if fixed:
            raise ConfigError(
                f"{' and '.join(fixed)} describe the ML-Decoder head of a PyTorch file; {path} is an exported "
                f"model whose head is part of its graph: drop {' and '.join(fixed)}"
            )
        check_num_classes(num_classes, tagger.num_classes, path)
        saved = tagger.meta.get("config")
        return OpenedModel(
            path=str(path),
            kind="onnx",
            model_name=tagger.meta.get("model_name"),
            class_names=list(tagger.class_names),
            named=True,
            image_size=tagger.image_size,
            own_size=tagger.meta.get("image_size"),
            size_from="flag" if image_size else "file",
            mean=tuple(tagger.mean),
            std=tuple(tagger.std),
            thresholds=tagger.thresholds,
            config=dict(saved, image_size=tagger.image_size) if isinstance(saved, dict) else None,
            checkpoint=None,
            net=tagger,
            device=device,
            task=_task(tagger.meta.get("task"), saved, task, path),
        )
    from .checkpoint import load_checkpoint
    from .classes import read_class_names
    from .hub import checkpoint_of_hf_folder, hf_folder
    from .models import check_image_size

    folder = hf_folder(path)
    ckpt = checkpoint_of_hf_folder(folder) if folder is not None else load_checkpoint(path)
    path = str(folder) if folder is not None else path
    net, info = model_from_checkpoint(ckpt, model_name, path, num_groups, decoder_embedding)
    check_num_classes(num_classes, info["num_classes"], path)
    names, named = info["class_names"], info["named"]
    if class_names:  # the outputs' names, in order: for files without names, or with wrong ones
        names, named = read_class_names(class_names, info["num_classes"]), True
    size = image_size or info["image_size"] or default_image_size(info["model_name"])
    check_image_size(info["model_name"], size)
    return OpenedModel(
        path=str(path),
        kind="pytorch",
        model_name=info["model_name"],
        class_names=list(names),
        named=named,
        image_size=size,
        own_size=ckpt.get("image_size") or zoo_image_size(path),
        size_from="flag" if image_size else "file" if info["image_size"] else "default",
        mean=tuple(info["mean"]),
        std=tuple(info["std"]),
        thresholds=info["thresholds"],
        config=info["config"],
        checkpoint=ckpt,
        net=net,
        device=device,
        task=_task(ckpt.get("task"), info["config"], task, path),
    )


def model_from_checkpoint(
    ckpt: Dict[str, Any],
    model_name: Optional[str] = None,
    path: Any = "checkpoint",
    num_groups: Optional[int] = None,
    decoder_embedding: Optional[int] = None,
) -> Tuple[Any, Dict[str, Any]]:
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
    from .checkpoint import check_stored_values, state_dict_of
    from .checkpoint.official import (
        detect_official_tresnet,
        head_size,
        ml_decoder_shape,
        normalize_state_dict,
        strip_prefixes,
    )
    from .classes import class_names_of
    from .models import create_model
    from .zoo import OFFICIAL_IMAGE_SIZE

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
        num_classes = head_size(name, state)  # a plain timm state dict: the head's row count
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
