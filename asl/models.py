"""Models: any timm backbone with a multi-label head. This module builds models and loads no
file: every checkpoint format, init weights included, lives in :mod:`asl.checkpoint`."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from .errors import ConfigError
from .heads import BottleneckHead, MLDecoder, MLDecoderModel

__all__ = [
    "create_model",
    "is_model",
    "feature_layout",
    "data_config",
    "unwrap_model",
    "check_image_size",
    "head_keys",
    "SelectOutputs",
]


HEADS = ("linear", "bottleneck", "ml_decoder")

# ML-Decoder's TResNet-XL (layers 3, 8, 34, 5; Bottleneck blocks; width 1.0): the v2 design at XL
# depth, which timm builds but does not register. Its L is timm's tresnet_v2_l.
EXTRA_MODELS = {"tresnet_v2_xl": dict(layers=[3, 8, 34, 5], width_factor=1.0, v2=True)}
EXTRA_BASE = {"tresnet_v2_xl": "tresnet_v2_l"}  # the registered model whose timm config (mean, std) it shares


def is_model(name: str) -> bool:
    """Whether ``name`` is a timm model (with or without its tag) or one of :data:`EXTRA_MODELS`."""
    import timm

    return name in EXTRA_MODELS or timm.is_model(name)


def _timm_model(name: str, pretrained_file: Optional[str] = None, **kwargs) -> nn.Module:
    import timm

    if name in EXTRA_MODELS:
        from timm.models.tresnet import TResNet

        model = TResNet(**EXTRA_MODELS[name], **kwargs)
        model.pretrained_cfg = dict(
            timm.models.get_pretrained_cfg(EXTRA_BASE[name]).to_dict(), input_size=(3, 640, 640)
        )
        return model
    if pretrained_file is not None:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)), **kwargs
        )
    return timm.create_model(name, pretrained=False, **kwargs)


def feature_layout(name: str, image_size: Optional[int] = None) -> Tuple[int, bool]:
    """(width F, channels-last) of the features ``name``'s ``forward_features`` yields: a 4-D map
    (channels first, or last for Swin-style models) or 3-D tokens (ViT). Measured by one forward
    on the ``meta`` device (no memory, no weights).

    Raises:
        ConfigError: the model yields neither (ML-Decoder needs spatial features or tokens).
    """
    with torch.device("meta"):
        backbone = _timm_model(name, num_classes=0).eval()  # eval: a batch of one passes BatchNorm
        pcfg = getattr(backbone, "pretrained_cfg", None) or {}
        size = image_size or int((pcfg.get("input_size") or (3, 224, 224))[-1])
        try:
            f = backbone.forward_features(torch.empty(1, 3, size, size))
        except (RuntimeError, ValueError, AssertionError, NotImplementedError) as e:
            raise ConfigError(f"--head ml_decoder: {name} gives no features at {size} px ({e})") from None
    last = getattr(backbone, "output_fmt", "NCHW") == "NHWC"
    if not isinstance(f, torch.Tensor) or f.dim() not in (3, 4):
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ConfigError(
            f"--head ml_decoder needs spatial features or tokens; {name}'s forward_features gives {shape}"
        )
    return int(f.shape[-1] if f.dim() == 3 or last else f.shape[1]), last


class SelectOutputs(nn.Module):
    """``model``'s logits in another class order: output k is ``model``'s output ``order[k]``
    (a checkpoint scored against a dataset that lists the same classes in another order).

    Shapes: (N, ...) -> (N, len(order)).
    """

    def __init__(self, model: nn.Module, order):
        super().__init__()
        self.model = model
        self.register_buffer("order", torch.as_tensor(list(order), dtype=torch.long), persistent=False)

    def forward(self, x):
        return self.model(x).index_select(1, self.order)


def create_model(
    name: str,
    num_classes: int,
    head: str = "linear",
    pretrained_file: Optional[str] = None,
    num_groups: Optional[int] = None,
    decoder_embedding: Optional[int] = None,
    **kwargs,
) -> nn.Module:
    """A timm model with ``num_classes`` logits, without downloading anything.

    Args:
        name: any timm model name, with or without its pretrained tag (``resnet10t``,
            ``tresnet_m.miil_in21k``, ...), or ``tresnet_v2_xl`` (ML-Decoder's XL).
        num_classes: size of the classifier head.
        head: ``linear`` (timm's), ``bottleneck`` (the official Open Images head, 512 wide) or
            ``ml_decoder`` (:class:`asl.heads.MLDecoder` on the backbone's unpooled features).
        pretrained_file: timm's pretrained weights for ``name``, a local file
            (:func:`asl.pretrained.resolve_pretrained`); loaded by timm, which adapts the first
            convolution and drops the classifier when the class count differs (21K -> 80).
        num_groups: ML-Decoder's G (``--num-of-groups``; None or -1: min(100, C)).
        decoder_embedding: ML-Decoder's D (``--decoder-embedding``; None or -1: 768).
        **kwargs: passed to ``timm.create_model`` (``drop_rate``, ...).
    """
    import timm

    if not is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model name {name!r}{hint}")
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
    if "." in name:
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:  # timm: "Invalid pretrained tag"
            arch, tag = name.split(".", 1)
            tags = timm.list_pretrained(f"{arch}.*")
            raise ConfigError(
                f"{name} names no pretrained weights timm knows (no tag {tag!r} for {arch}; its tags: "
                f"{', '.join(tags[:6])}{' ...' if len(tags) > 6 else ''})"
            ) from None
    if head == "ml_decoder":
        width, channels_last = feature_layout(name)
        backbone = _timm_model(name, pretrained_file, num_classes=0, **kwargs)
        head_ = MLDecoder(num_classes, width, num_groups, decoder_embedding)
        return MLDecoderModel(backbone, head_, channels_last, backbone_name=name)
    model = _timm_model(name, pretrained_file, num_classes=num_classes, **kwargs)
    if head == "bottleneck":
        fc = model.get_classifier()
        if not isinstance(fc, nn.Linear) or not hasattr(model, "head") or getattr(model.head, "fc", None) is not fc:
            raise ConfigError(f"the bottleneck head needs a model with head.fc (TResNet); {name} has none")
        model.head.fc = BottleneckHead(fc.in_features, num_classes)
    return model


def check_image_size(name: str, image_size: int) -> None:
    """Refuse an input side the model cannot take: below its total stride (the last feature
    map would be empty), or other than its size when timm marks the input size as fixed (ViT).
    The model is built on the ``meta`` device: no memory, no weights, a fraction of a second."""
    with torch.device("meta"):
        model = create_model(name, 1)  # an unknown name raises the ConfigError with suggestions
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    if pcfg.get("fixed_input_size") and image_size != pcfg["input_size"][-1]:
        raise ConfigError(f"--image-size {image_size}: {name} takes {pcfg['input_size'][-1]} px inputs only")
    try:
        stride = int(model.feature_info[-1]["reduction"])
    except (AttributeError, TypeError, KeyError, IndexError):
        stride = 32  # a model that does not declare its stride: the common CNN downsampling
    if image_size < stride:
        raise ConfigError(
            f"--image-size {image_size} is below {stride}, the smallest input {name} takes (its total stride)"
        )


def check_batch_trainable(name: str, image_size: int, batch: int) -> None:
    """Refuse a training batch BatchNorm cannot normalize: one value per channel (a batch of one
    picture where a feature map is 1 x 1, e.g. after global pooling). Checked with one forward
    on the ``meta`` device (no memory, no weights), before any work."""
    with torch.device("meta"):
        model = create_model(name, 1)
        model.train()
        try:
            model(torch.empty(batch, 3, image_size, image_size))
        except ValueError as e:
            if "more than 1 value per channel" not in str(e):
                raise
            raise ConfigError(
                f"a training batch of {batch} picture{'s' if batch > 1 else ''} cannot train {name} at "
                f"{image_size} px: BatchNorm needs more than one value per channel; use --batch-size 2 "
                f"or more (and a training split of at least 2 images)"
            ) from None


def data_config(model_or_name) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) a model expects, from its timm config; (0, 0, 0) / (1, 1, 1) for TResNet.

    Args:
        model_or_name: a model, or a timm model name (read from timm's registry, nothing built).
    """
    import timm

    if isinstance(model_or_name, str):
        if not is_model(model_or_name):
            create_model(model_or_name, 1)  # raises the ConfigError with suggestions
        pcfg = timm.models.get_pretrained_cfg(EXTRA_BASE.get(model_or_name, model_or_name))
        if pcfg is None:
            from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

            return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
        mean, std = pcfg.mean, pcfg.std
    else:
        cfg = timm.data.resolve_model_data_config(unwrap_model(model_or_name))
        mean, std = cfg["mean"], cfg["std"]
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def head_keys(model: nn.Module) -> set:
    """State-dict keys of the classifier (timm's ``get_classifier``)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        return set()
    names = {id(p): n for n, p in model.state_dict(keep_vars=True).items()}
    return {names[id(p)] for p in head.state_dict(keep_vars=True).values() if id(p) in names}
