"""The official checkpoints' layouts, converted on read: the inplace_abn TResNet files of
Alibaba-MIIL/ASL (M / L / XL told apart by their stem width, ML-Decoder's L / XL by layer3's depth),
the Open Images bottleneck head, both ML-Decoder head layouts; and a weights file as a run's start
(:func:`load_init_checkpoint`)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..heads import MLDecoderModel
from ..models import create_model, head_keys
from .io import load_checkpoint, state_dict_of

log = logging.getLogger(__name__)


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


def head_size(name: str, state: Dict[str, torch.Tensor]) -> Optional[int]:
    """Rows of the classifier weight in ``state`` for timm model ``name`` (None if absent).
    The model is built on the ``meta`` device only to learn the head's keys."""
    with torch.device("meta"):
        probe = create_model(name, 1)
    weights = [k for k in head_keys(probe) if k in state and state[k].ndim >= 2]
    return int(state[weights[0]].shape[0]) if weights else None
