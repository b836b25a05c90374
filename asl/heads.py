"""Classifier heads beyond timm's linear one: the official Open Images bottleneck and ML-Decoder.

ML-Decoder (Ridnik et al., "ML-Decoder: Scalable and Versatile Classification Head", WACV 2023)
replaces global pooling and the linear classifier with one cross-attention decoder layer: G
learned-once, frozen queries attend to the backbone's spatial features (a CNN's map, a ViT's
tokens), and a group fully-connected layer reads K = int(C / G + 0.999) logits off each query.
With G = C (COCO's 80 classes) every class has its own query; Open Images' 9,605 classes share 200.

The decoder layer is called directly (not through ``nn.TransformerDecoder``, whose torch >= 2
interface the official layer lacks), and its attribute names are the official ones, so an official
state dict loads key for key (``head.decoder.*``; :mod:`asl.checkpoint` also renames the older
``head.embed_standart`` / ``head.query_embed`` / ``head.duplicate_pooling*`` layout).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["BottleneckHead", "MLDecoder", "MLDecoderModel", "ml_decoder_groups", "DEFAULT_GROUPS", "DEFAULT_EMBED"]

DEFAULT_GROUPS = 100  # official: --num-of-groups -1 means min(100, C)
DEFAULT_EMBED = 768  # official --decoder-embedding
FFN_DIM, NUM_HEADS, DROPOUT = 2048, 8, 0.1  # fixed in the official head


class BottleneckHead(nn.Module):
    """The official Open Images head: Linear(features -> 512) then Linear(512 -> classes), no
    activation between; the attribute names match the official state dict
    (``head.fc.embedding_generator.0``, ``head.fc.FC``).

    Shapes: (N, features) -> (N, num_classes).
    """

    def __init__(self, in_features: int, num_classes: int, bottleneck: int = 512):
        super().__init__()
        self.embedding_generator = nn.Sequential(nn.Linear(in_features, bottleneck))
        self.FC = nn.Linear(bottleneck, num_classes)

    def forward(self, x):
        return self.FC(self.embedding_generator(x))


def ml_decoder_groups(num_classes: int, num_groups: Optional[int] = None) -> Tuple[int, int]:
    """(G, K): the official query count ``G = min(100 or num_groups, C)`` and outputs per query
    ``K = int(C / G + 0.999)`` (not ``ceil``: the official rounding, kept so that files load).

    Args:
        num_classes: C.
        num_groups: ``--num-of-groups``; None or a negative value means the official default, 100.
    """
    g = DEFAULT_GROUPS if num_groups is None or num_groups < 0 else int(num_groups)
    if g == 0:
        raise ConfigError("--num-of-groups must be >= 1 (or -1: the official default, min(100, classes))")
    if g > num_classes and num_groups not in (None, -1):
        log.warning(
            "warning: --num-of-groups %d is more than the %d classes: ML-Decoder uses %d groups (one query per class)",
            g,
            num_classes,
            num_classes,
        )
    g = min(g, num_classes)
    k = int(num_classes / g + 0.999)
    if g * k < num_classes:  # the official rounding falls short past 1000 groups
        raise ConfigError(
            f"--num-of-groups {g} for {num_classes} classes: {g} x {k} outputs do not cover every class "
            f"(the official K = int(C / G + 0.999) rounds down); choose fewer groups"
        )
    return g, k


class DecoderLayer(nn.Module):
    """The official decoder layer (``TransformerDecoderLayerOptimal``): no self-attention, post-norm.

    In eval: ``t = norm1(2 q)`` (the query plus its own dropout, not a residual around a sublayer),
    ``t = norm2(t + MHA(t, memory, memory))``, ``t = norm3(t + W2 relu(W1 t))``.

    Shapes: tgt (G, B, D), memory (T, B, D) -> (G, B, D) (sequence first, as the official MHA).
    """

    def __init__(self, d_model: int, nhead: int = NUM_HEADS, dim_feedforward: int = FFN_DIM, dropout: float = DROPOUT):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
        self.norm3 = nn.LayerNorm(d_model, eps=1e-5)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # The factor 2 (eval) matters: LayerNorm(2q) differs from LayerNorm(q) through its eps.
        tgt = self.norm1(tgt + self.dropout1(tgt))
        attn = self.multihead_attn(tgt, memory, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ff = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ff))


class _Decoder(nn.Module):
    """What the official code hangs on its decoder object: the layer list, the input projection,
    the queries and the group FC weights (the state-dict names under ``head.decoder.``)."""

    def __init__(self, num_classes: int, in_features: int, groups: int, k: int, embed_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(embed_dim)])
        self.embed_standart = nn.Linear(in_features, embed_dim)  # sic: the official name
        # Frozen N(0, 1) queries ("non-learnable queries"): they live in the checkpoint.
        self.query_embed = nn.Embedding(groups, embed_dim)
        self.query_embed.requires_grad_(False)
        self.duplicate_pooling = nn.Parameter(torch.empty(groups, embed_dim, k))
        self.duplicate_pooling_bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.xavier_normal_(self.duplicate_pooling)


class MLDecoder(nn.Module):
    """ML-Decoder head (WACV 2023, Sec. 3; the official ``MLDecoder``), equal in eval to:

    ``m = relu(E x)`` over the T feature tokens (no positional encoding),
    ``h = DecoderLayer(q, m)`` with the G frozen queries q,
    ``logit_c = h[c // K] . W[c // K][:, c % K] + b_c`` for c < C (the G K outputs cut to C).

    Args:
        num_classes: C.
        in_features: channels of the backbone's map (or the tokens' width).
        num_groups: G before ``min(G, C)``; None / -1: the official 100.
        embed_dim: D, the decoder width (official 768; -1 also means 768).

    Shapes: (B, in_features, H, W) or (B, T, in_features) -> (B, C).
    """

    def __init__(
        self, num_classes: int, in_features: int, num_groups: Optional[int] = None, embed_dim: Optional[int] = None
    ):
        super().__init__()
        embed_dim = DEFAULT_EMBED if embed_dim is None or embed_dim < 0 else int(embed_dim)
        if embed_dim % NUM_HEADS:
            raise ConfigError(f"--decoder-embedding {embed_dim} must be a multiple of {NUM_HEADS} (attention heads)")
        self.num_classes = int(num_classes)
        self.groups, self.k = ml_decoder_groups(self.num_classes, num_groups)
        self.embed_dim = embed_dim
        self.decoder = _Decoder(self.num_classes, in_features, self.groups, self.k, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2) if x.dim() == 4 else x  # (B, H W, F), token h W + w
        d = self.decoder
        memory = F.relu(d.embed_standart(tokens)).transpose(0, 1)  # (T, B, D)
        queries = d.query_embed.weight.unsqueeze(1).expand(-1, tokens.shape[0], -1)  # (G, B, D)
        h = d.layers[0](queries, memory).transpose(0, 1)  # (B, G, D)
        out = torch.einsum("bgd,gdk->bgk", h, d.duplicate_pooling.to(h.dtype)).flatten(1)
        return out[:, : self.num_classes] + d.duplicate_pooling_bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, groups={self.groups}, k={self.k}, embed_dim={self.embed_dim}"


class MLDecoderModel(nn.Module):
    """A timm backbone's unpooled features through :class:`MLDecoder`: a CNN's (B, F, H, W) map
    (channels-last maps are moved to channels first), a ViT's (B, T, F) tokens.

    ``backbone`` is the timm model with its classifier removed (``num_classes=0``); its timm
    config (``pretrained_cfg``: mean, std, input size) and ``feature_info`` are the model's.

    Shapes: (B, 3, S, S) -> (B, C).
    """

    def __init__(
        self, backbone: nn.Module, head: MLDecoder, channels_last_features: bool = False, backbone_name: str = ""
    ):
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.head = head
        self.channels_last_features = channels_last_features
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", None)

    @property
    def feature_info(self):
        return self.backbone.feature_info

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone.forward_features(x)
        return f.permute(0, 3, 1, 2) if self.channels_last_features and f.dim() == 4 else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
