"""The asymmetric losses for JAX, in optax's functional style (per-element values, no reduction).

    pip install -r requirements-jax.txt      # or: pip install .[jax]

    from asl.jax import asymmetric_loss
    loss = asymmetric_loss(logits, labels).sum()

This module needs JAX only (not PyTorch): ``asl/__init__`` imports its torch parts lazily. The
definitions are those of ``asl.functional`` (the official element formula, paper Sec. 2), and a parity test
checks values and gradients against it for every option.

Multi-label ASL (Ben-Baruch et al., ICCV 2021, Sec. 2.1-2.3), for one element with
p = sigmoid(x), a label y in [0, 1] and the shifted negative probability p_m = max(p - m, 0):

    L+ = (1 - p)^gamma_pos * log(max(p, eps))
    L- = p_m^gamma_neg     * log(max(1 - p_m, eps))
    L  = -[ y L+ + (1 - y) L- ]

Everything is computed from the logit in log space: log p = log_sigmoid(x), 1 - p = sigmoid(-x),
log(1 - p) = log_sigmoid(-x) and 1 - p_m = min(sigmoid(-x) + m, 1), so no ``log(0)`` or
``1 - p`` cancellation occurs for |x| up to float32's range; bfloat16 and float16 inputs are
computed in float32 (eps = 1e-8 is 0 in half precision).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from .options import ASLOptions

__all__ = ["asymmetric_loss", "asymmetric_loss_single_label"]


def _compute_dtype(x: jax.Array):
    return jnp.promote_types(x.dtype, jnp.float32)


def _safe_pow(base: jax.Array, g) -> jax.Array:
    """base ** g for base >= 0 with 0 ** 0 = 1 and a finite gradient at base = 0 for any g >= 0
    (the double-where form: the unused branch never sees log(0))."""
    if isinstance(g, (int, float)):
        if g == 0:
            return jnp.ones_like(base)
        if g == int(g) and 1 <= g <= 4:
            return base ** int(g)  # exact and differentiable everywhere
    pos = base > 0
    safe = jnp.where(pos, base, 1.0)
    return jnp.where(pos, jnp.exp(g * jnp.log(safe)), jnp.where(g == 0, 1.0, 0.0))


def asymmetric_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: Optional[float] = 0.05,
    eps: float = 1e-8,
    stop_gradient_focusing: bool = True,
    label_smoothing: float = 0.0,
    where: Optional[jax.Array] = None,
    options: Optional[ASLOptions] = None,
) -> jax.Array:
    """Multi-label asymmetric loss per element (paper Sec. 2, Eq. 1-4), no reduction.

    ``L = -(1 - pt)^(g+ y + g- (1 - y)) [ y log(max(p, eps)) + (1-y) log(max(1-p_m, eps)) ]``,
    ``p = sigmoid(x)``, ``p_m = max(p - clip, 0)``, ``pt = p y + (1 - p_m)(1 - y)``: the official
    ``AsymmetricLoss`` for any label in [0, 1] (one focusing weight per element); for hard labels
    ``-[ y (1-p)^g+ log(max(p, eps)) + (1-y) p_m^g- log(max(1-p_m, eps)) ]``. (0, 0, 0) is sigmoid binary cross-entropy;
    (g, g, 0) is sigmoid focal loss without alpha. The defaults are the official training
    recipe's (4, 0, 0.05). The official loss is the sum over batch and classes:
    ``asymmetric_loss(...).sum()``.

    Args:
        logits: (..., C) logits, any float dtype; half precision is computed in float32.
        labels: (..., C) multi-hot or soft labels in [0, 1], same shape as ``logits``.
        gamma_pos: focusing parameter of positives (gamma+, Sec. 2.2).
        gamma_neg: focusing parameter of negatives (gamma-, Sec. 2.2).
        clip: probability margin m of the asymmetric clipping (Sec. 2.3); 0 or None: none.
        eps: lower clamp of the probabilities inside the logs (log eps = -18.4 bounds the loss).
        stop_gradient_focusing: treat the focusing weights as constants in the gradient (the
            official ``disable_torch_grad_focal_loss=True``).
        label_smoothing: s, labels <- labels (1 - s) + s / 2.
        where: optional boolean mask of the same shape; False marks an unknown label, which
            contributes neither loss nor gradient (PyTorch side: target -1).
        options: the options as the PyTorch forms take them (:class:`asl.options.ASLOptions`);
            when given, its gammas, clip, eps, ``disable_torch_grad_focal_loss`` (as
            ``stop_gradient_focusing``) and label smoothing are used. Its reduction must be
            ``none``: this form returns per-element losses.

    The gammas, clip, eps and label_smoothing are Python numbers (static under ``jax.jit``: close
    over them or mark them static), as in optax's losses.

    Returns:
        (..., C) per-element losses in float32 (float64 under x64 for float64 input); zero where
        ``where`` is False.
    """
    if options is not None:
        if options.reduction != "none":
            raise ValueError(
                f"asl.jax.asymmetric_loss returns per-element losses: pass options with reduction 'none', "
                f"got {options.reduction!r}"
            )
        gamma_pos, gamma_neg, clip, eps = options.gamma_pos, options.gamma_neg, options.clip, options.eps
        stop_gradient_focusing, label_smoothing = options.disable_torch_grad_focal_loss, options.label_smoothing
    if jnp.shape(logits) != jnp.shape(labels):
        raise ValueError(f"logits {jnp.shape(logits)} and labels {jnp.shape(labels)} differ in shape")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError("label_smoothing must be in [0, 1)")
    dtype = _compute_dtype(jnp.asarray(logits))
    x = jnp.asarray(logits, dtype)
    y = jnp.asarray(labels, dtype)
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    log_eps = math.log(eps)
    sg = jax.lax.stop_gradient if stop_gradient_focusing else (lambda t: t)

    p = jax.nn.sigmoid(x)
    q = jax.nn.sigmoid(-x)  # 1 - p without the cancellation as p -> 1
    log_pos = jnp.maximum(jax.nn.log_sigmoid(x), log_eps)
    if clip:
        p_m = jnp.maximum(p - clip, 0.0)
        one_minus_pm = jnp.minimum(q + clip, 1.0)  # = 1 - p_m, >= clip > 0
        log_neg = jnp.maximum(jnp.log(one_minus_pm), log_eps)
    else:
        p_m = p
        log_neg = jnp.maximum(jax.nn.log_sigmoid(-x), log_eps)
    loss = -(y * log_pos + (1.0 - y) * log_neg)
    if gamma_pos or gamma_neg:
        base = y * q + (1.0 - y) * p_m  # 1 - pt, with 1 - p from the logit
        loss = loss * sg(_safe_pow(base, gamma_pos * y + gamma_neg * (1.0 - y)))
    if where is not None:
        loss = jnp.where(jnp.asarray(where, bool), loss, 0.0)
    return loss


def asymmetric_loss_single_label(
    logits: jax.Array,
    labels: jax.Array,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    label_smoothing: float = 0.1,
    stop_gradient_focusing: bool = False,
    where: Optional[jax.Array] = None,
) -> jax.Array:
    """Single-label (softmax) asymmetric loss per example, as the official ``ASLSingleLabel``.

    With ``log p = log_softmax(x)``, one-hot ``t``, ``pt = p`` on the label's class and ``1 - p``
    elsewhere, and smoothed targets ``y = t (1 - s) + s / C``:

        ``L = -sum_c y_c (1 - pt_c)^(g+ t_c + g- (1 - t_c)) log p_c``

    (0, 0, 0) is softmax cross-entropy. The official reduction is the mean over examples.

    Args:
        logits: (..., C) logits; half precision is computed in float32.
        labels: (...,) integer class indices.
        gamma_pos: focusing parameter of the label's class.
        gamma_neg: focusing parameter of the other classes.
        label_smoothing: s (the official ``eps``, default 0.1).
        stop_gradient_focusing: constants in the gradient; False as in the official code.
        where: optional (...,) boolean mask; False examples give 0 loss and no gradient.

    Returns:
        (...,) per-example losses in float32.
    """
    dtype = _compute_dtype(jnp.asarray(logits))
    x = jnp.asarray(logits, dtype)
    num_classes = x.shape[-1]
    log_p = jax.nn.log_softmax(x, axis=-1)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=dtype)
    if gamma_pos or gamma_neg:
        p = jnp.exp(log_p)
        # 1 - pt: 1 - p on the label's class (from log p: -expm1 keeps it exact near p = 1), p elsewhere
        base = jnp.where(onehot > 0, -jnp.expm1(log_p), p)
        expo = gamma_pos * onehot + gamma_neg * (1.0 - onehot)
        safe = jnp.where(base > 0, base, 1.0)
        w = jnp.where(base > 0, jnp.exp(expo * jnp.log(safe)), jnp.where(expo == 0, 1.0, 0.0))
        if stop_gradient_focusing:
            w = jax.lax.stop_gradient(w)
        log_p = log_p * w
    y = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes if label_smoothing else onehot
    loss = -(y * log_p).sum(-1)
    if where is not None:
        loss = jnp.where(jnp.asarray(where, bool), loss, 0.0)
    return loss
