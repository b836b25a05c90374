"""The asymmetric loss's options as one value, shared by its three forms: the loss modules
(:class:`asl.losses.AsymmetricLoss` and its variants), the functional form
(:func:`asl.functional.asymmetric_loss`) and the JAX form (:func:`asl.jax.asymmetric_loss`).
Torch-free, so the JAX form needs no PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ASLOptions", "REDUCTIONS"]

REDUCTIONS = ("none", "sum", "mean", "batchmean")


@dataclass(frozen=True)
class ASLOptions:
    """Options of the multi-label asymmetric loss (paper Sec. 2), checked once when made.

    Attributes:
        gamma_neg: focusing parameter of negatives (gamma-, Sec. 2.1); >= 0.
        gamma_pos: focusing parameter of positives (gamma+); >= 0.
        clip: probability margin m of the asymmetric clipping (Sec. 2.3), in [0, 1); None or 0: none.
        eps: lower clamp of the probabilities inside the logs.
        disable_torch_grad_focal_loss: the focusing weights are constants in backward (the
            official name; the JAX form calls it ``stop_gradient_focusing``).
        reduction: ``sum`` (official), ``mean`` (over known labels), ``batchmean`` (sum / N),
            ``none`` (the JAX form always returns per-element losses).
        label_smoothing: s, targets become y (1 - s) + 0.5 s; in [0, 1).
    """

    gamma_neg: float = 4.0
    gamma_pos: float = 1.0
    clip: Optional[float] = 0.05
    eps: float = 1e-8
    disable_torch_grad_focal_loss: bool = True
    reduction: str = "sum"
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.gamma_neg < 0 or self.gamma_pos < 0 or (self.clip is not None and not 0 <= self.clip < 1):
            raise ValueError("gammas must be >= 0 and clip in [0, 1)")
