"""The partial-label asymmetric loss: training with labels that are mostly unknown (Open Images).

Ben-Baruch et al., "Multi-label Classification with Partial Annotations using Class-aware
Selective Loss" (CVPR 2022), Sec. 3-4. Each (image, class) label is 1 (annotated positive), 0
(annotated negative) or -1 (unknown: nobody looked). With ``p = sigmoid(z)`` and the shifted
negative probability ``p_- = min(1 - p + m, 1)`` (``m`` the clip; no shift for ``m = 0``), one
entry's loss is

    positive:  -w alpha_pos   (1 - p)^gamma_pos     log(max(p, 1e-8))
    negative:  -w alpha_neg   (1 - p_-)^gamma_neg   log(max(p_-, 1e-8))
    unknown:   -w alpha_unann (1 - p_-)^gamma_unann log(max(p_-, 1e-8))

summed over the batch, with the focusing factor a constant in backward. The weight ``w`` is the
mode's (``partial_loss_mode``):

- ``negative``: w = 1: an unknown label is a negative, with its own gamma and alpha.
- ``ignore``: w = 0 on unknown labels.
- ``ignore_normalize_classes``: w = 0 on unknown labels, ``1 / (1 + n) + 1`` elsewhere, n the
  image's annotated labels (Durand et al.).
- ``selective`` (CSL): unknown labels of the classes whose prior exceeds ``prior_threshold`` get
  w = 0 (the class-aware part, when a prior is given); then the ``likelihood_topk x N`` unknown
  labels of the batch with the smallest ``p_-`` (the likeliest positives) get w = 0; every other
  unknown label is a negative.

Only the top-k of ``selective`` reads the batch's values, and it reads them on the device
(``torch.topk``): nothing comes back to the host.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = ["PartialAsymmetricLoss", "partial_asymmetric_loss", "PARTIAL_MODES"]

PARTIAL_MODES = ("negative", "ignore", "ignore_normalize_classes", "selective")


def _weights(
    targets: torch.Tensor,
    p_neg: torch.Tensor,
    mode: str,
    likelihood_topk: int,
    prior: Optional[torch.Tensor],
    prior_threshold: Optional[float],
    dtype: torch.dtype,
) -> torch.Tensor:
    """(N, C) weights of the mode (no gradient); ``p_neg`` the clipped negative probability."""
    unknown = targets == -1
    if mode == "negative":
        return torch.ones_like(p_neg)
    if mode == "ignore":
        return (~unknown).to(dtype)
    if mode == "ignore_normalize_classes":
        n_annotated = (~unknown).sum(dim=1, keepdim=True).to(dtype)
        return (~unknown).to(dtype) * (1.0 / (1.0 + n_annotated) + 1.0)
    w = torch.ones_like(p_neg)
    if prior is not None and prior_threshold:
        frequent = (prior.to(p_neg.device) > prior_threshold).unsqueeze(0)  # (1, C)
        w = w.masked_fill(unknown & frequent, 0.0)
    k = min(int(likelihood_topk) * targets.shape[0], targets.numel())
    if k > 0:
        # the k unknown labels with the smallest p_- (annotated ones sort last): weight 0
        key = torch.where(unknown, p_neg, torch.full_like(p_neg, float("inf"))).flatten()
        picked = torch.topk(key, k, largest=False, sorted=False).indices
        chosen = torch.zeros_like(key, dtype=torch.bool)
        chosen[picked] = True
        w = w.masked_fill((chosen.view_as(unknown) & unknown), 0.0)
    return w


def partial_asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    partial_loss_mode: str = "negative",
    clip: float = 0.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 1.0,
    gamma_unann: float = 2.0,
    alpha_pos: float = 1.0,
    alpha_neg: float = 1.0,
    alpha_unann: float = 1.0,
    likelihood_topk: int = 5,
    prior: Optional[torch.Tensor] = None,
    prior_threshold: Optional[float] = 0.05,
) -> torch.Tensor:
    """The partial-label loss (module docstring), summed over the batch.

    Args:
        logits: (N, C) logits of any float dtype; computed in float32 (float64 stays float64).
        targets: (N, C) 1 (positive), 0 (negative) or -1 (unknown).
        partial_loss_mode: one of ``PARTIAL_MODES``.
        clip: the margin m of the shifted negative probability (0: none).
        gamma_pos, gamma_neg, gamma_unann: focusing of positives, negatives and unknown labels.
        alpha_pos, alpha_neg, alpha_unann: their weights.
        likelihood_topk: ``selective``: unknown labels per image (on average) treated as likely positives.
        prior: ``selective``: (C,) class prior in the logits' class order (the mean sigmoid of a
            model trained in ``ignore`` mode), or None.
        prior_threshold: ``selective``: the unknown labels of classes whose prior exceeds it are ignored.

    Returns:
        the scalar loss (float32; float64 for float64 logits).
    """
    if partial_loss_mode not in PARTIAL_MODES:
        raise ValueError(f"partial_loss_mode must be one of {PARTIAL_MODES}, got {partial_loss_mode!r}")
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must be one (N, C) shape")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(dtype)
    t = targets.to(dtype)
    pos, neg, unk = t == 1, t == 0, t == -1
    p = torch.sigmoid(z)
    p_neg = 1.0 - p  # from p, as the CSL code computes it (its clamp below bounds the log)
    if clip and clip > 0:
        p_neg = (p_neg + clip).clamp(max=1.0)
    log_pos = torch.log(p.clamp(min=1e-8))
    log_neg = torch.log(p_neg.clamp(min=1e-8))
    with torch.no_grad():
        base = torch.where(pos, 1.0 - p, 1.0 - p_neg)
        gamma = torch.where(pos, gamma_pos, torch.where(neg, gamma_neg, gamma_unann)).to(dtype)
        focus = base.pow(gamma)
        alpha = torch.where(pos, alpha_pos, torch.where(neg, alpha_neg, alpha_unann)).to(dtype)
        alpha = alpha * (pos | neg | unk).to(dtype)  # any other value contributes nothing
        w = _weights(t, p_neg, partial_loss_mode, likelihood_topk, prior, prior_threshold, dtype)
        factor = alpha * focus * w
    term = torch.where(pos, log_pos, log_neg)
    return -(term * factor).sum()


class PartialAsymmetricLoss(nn.Module):
    """The partial-label asymmetric loss (:mod:`asl.partial`), with the official
    ``PartialSelectiveLoss``'s arguments and defaults (``negative``, clip 0, gamma 0 / 1 / 2,
    alphas 1, top-k 5, prior threshold 0.05).

    Args:
        partial_loss_mode: ``negative``, ``ignore``, ``ignore_normalize_classes`` or ``selective``.
        clip, gamma_pos, gamma_neg, gamma_unann, alpha_pos, alpha_neg, alpha_unann,
        likelihood_topk, prior_threshold: :func:`partial_asymmetric_loss`'s.
        prior: (C,) class prior in the model's class order (a tensor or a sequence), or None;
            kept as a buffer.

    Shapes:
        logits (N, C), targets (N, C) in {1, 0, -1}; output a scalar (the sum over the batch).
    """

    def __init__(
        self,
        partial_loss_mode: str = "negative",
        clip: float = 0.0,
        gamma_pos: float = 0.0,
        gamma_neg: float = 1.0,
        gamma_unann: float = 2.0,
        alpha_pos: float = 1.0,
        alpha_neg: float = 1.0,
        alpha_unann: float = 1.0,
        likelihood_topk: int = 5,
        prior: Optional[Union[torch.Tensor, Sequence[float]]] = None,
        prior_threshold: Optional[float] = 0.05,
    ):
        super().__init__()
        if partial_loss_mode not in PARTIAL_MODES:
            raise ValueError(f"partial_loss_mode must be one of {PARTIAL_MODES}, got {partial_loss_mode!r}")
        if min(gamma_pos, gamma_neg, gamma_unann) < 0 or not 0 <= (clip or 0) < 1 or likelihood_topk < 0:
            raise ValueError("gammas must be >= 0, clip in [0, 1) and likelihood_topk >= 0")
        self.partial_loss_mode = partial_loss_mode
        self.clip = float(clip or 0.0)
        self.gamma_pos, self.gamma_neg, self.gamma_unann = float(gamma_pos), float(gamma_neg), float(gamma_unann)
        self.alpha_pos, self.alpha_neg, self.alpha_unann = float(alpha_pos), float(alpha_neg), float(alpha_unann)
        self.likelihood_topk = int(likelihood_topk)
        self.prior_threshold = prior_threshold
        # not persistent: the prior comes from the run's --prior-file, not from a checkpoint
        self.register_buffer(
            "prior", None if prior is None else torch.as_tensor(prior, dtype=torch.float32), persistent=False
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return partial_asymmetric_loss(
            logits,
            targets,
            self.partial_loss_mode,
            self.clip,
            self.gamma_pos,
            self.gamma_neg,
            self.gamma_unann,
            self.alpha_pos,
            self.alpha_neg,
            self.alpha_unann,
            self.likelihood_topk,
            self.prior,
            self.prior_threshold,
        )

    def extra_repr(self) -> str:
        return (
            f"partial_loss_mode={self.partial_loss_mode!r}, clip={self.clip}, gamma_pos={self.gamma_pos}, "
            f"gamma_neg={self.gamma_neg}, gamma_unann={self.gamma_unann}, likelihood_topk={self.likelihood_topk}"
        )
