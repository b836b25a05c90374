"""Functional forms of the asymmetric losses, with a fused analytic backward.

The multi-label loss (Ben-Baruch et al., "Asymmetric Loss For Multi-Label
Classification", ICCV 2021, Sec. 2.1-2.3) for one element, with p = sigmoid(x),
a label y in [0, 1] and the shifted negative probability p_m = max(p - m, 0):

    L+ = (1 - p)^gamma_pos * log(max(p, eps))
    L- = p_m^gamma_neg     * log(max(1 - p_m, eps))
    L  = -w_c * [ y * pos_weight_c * L+ + (1 - y) * L- ]

The official code computes this with ~20 element-wise autograd ops and keeps
nine (N, C) tensors alive for backward. Here the value and its derivative are
computed together in one pass over shared intermediates (log-sigmoid, p, 1 - p)
and only the (N, C) derivative is kept for backward: one float32 tensor instead
of nine, and about half the memory traffic. When no gradient is needed only the
value is computed.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .options import REDUCTIONS, ASLOptions

__all__ = ["asymmetric_loss", "asl_single_label", "check_targets", "ASLOptions", "REDUCTIONS"]

Number = Union[float, int]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # fp16/bf16 are computed in float32 (eps=1e-8 rounds to 0 in half precision,
    # official issue #53); float64 stays float64 so gradcheck can verify the math.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_targets(targets: torch.Tensor) -> None:
    """Labels are in [0, 1] (soft allowed) or -1 (unknown); anything else is a ValueError.

    Checked on CPU tensors only: on an accelerator the test would wait for the device at every
    step (a host synchronization), so there the contract is the caller's.
    """
    if targets.device.type == "cpu":
        _scan_targets(targets)


def _scan_targets(targets: torch.Tensor) -> Tuple[bool, bool]:
    """(soft, unknown) of CPU targets, read in one pass of four reductions: whether a label lies
    strictly between 0 and 1, and whether one is -1. A value outside [0, 1] and -1 is a ValueError.

    With ``t (t + 1) >= 0`` exactly on {-1} and [0, inf) and ``t (1 - t) > 0`` exactly on (0, 1),
    the labels are valid when min >= -1, max <= 1 and min t (t + 1) >= 0 (NaN fails each test).
    """
    if targets.dtype == torch.bool or not targets.numel():
        return False, False
    t = targets if targets.is_floating_point() else targets.to(torch.float32)
    lo, hi = torch.aminmax(t)
    both = torch.stack((lo, hi, torch.addcmul(t, t, t).min(), torch.addcmul(t, t, t, value=-1).max()))
    lo, hi, tt1, t1t = both.tolist()
    if not (lo >= -1 and hi <= 1 and tt1 >= 0):
        bad = ~(((t >= 0) & (t <= 1)) | (t == -1))
        value = t[bad][0].item()
        raise ValueError(f"targets must be in [0, 1] or -1 (unknown); got {value!r} ({int(bad.sum())} such values)")
    return t1t > 0, lo < 0


def _tensor_only(t: torch.Tensor) -> bool:
    """No value of ``t`` may be read back to Python: inside ``torch.compile`` (a data-dependent
    branch would break the graph) and on an accelerator (each read-back waits for the device, a
    host synchronization per step). Unknown labels, soft targets, the eps clamp and the mean's
    count are then tensor operations; on the CPU a read-back is free and picks the fused path."""
    return t.device.type != "cpu" or torch.compiler.is_compiling()


def _prepare_targets(targets: torch.Tensor, dtype: torch.dtype, label_smoothing: float, unknown: Optional[bool] = None):
    """Return (y, known): y in [0, 1] with unknown entries zeroed, known a 0/1 mask or None.
    ``unknown``: whether some label is -1, where the caller has read it already."""
    y = targets if targets.dtype == dtype else targets.to(dtype)
    known = None
    if targets.dtype != torch.bool and _tensor_only(y):
        known = (y >= 0).to(dtype)  # always masked: no read-back of whether any label is unknown
        y = y * known
    elif targets.dtype != torch.bool and y.numel() and (unknown if unknown is not None else float(y.min()) < 0):
        unknown = y < 0
        known = (~unknown).to(dtype)
        y = y.masked_fill(unknown, 0.0)
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
        if known is not None:
            y = y * known
    return y, known


class _Opts:
    """Loss options resolved once per call (plain floats, tensors in the compute dtype), built by
    :func:`asymmetric_loss` and passed down as one object."""

    __slots__ = ("gp", "gn", "clip", "eps", "log_eps", "detach", "pw", "weight", "reduction", "smoothing", "unknown")

    def __init__(self, options: ASLOptions, pw, weight):
        self.gp, self.gn = float(options.gamma_pos), float(options.gamma_neg)
        self.clip = float(options.clip) if options.clip else None
        self.eps, self.detach = options.eps, bool(options.disable_torch_grad_focal_loss)
        self.log_eps = math.log(options.eps)
        self.pw, self.weight = pw, weight
        self.reduction, self.smoothing = options.reduction, options.label_smoothing
        self.unknown: Optional[bool] = None  # whether some label is -1, where already read


def _safe_pow(base: torch.Tensor, exponent) -> torch.Tensor:
    """``base ** exponent`` for base >= 0 whose gradient is finite where base == 0.

    autograd of ``pow`` gives ``exponent * 0 ** (exponent - 1)`` there: inf for exponents below
    1, and inf * 0 = NaN once chained (a saturated logit, ``ASLSingleLabel(gamma_pos=0.5)`` on
    ``[[40, 0, 0]]``). The value is unchanged (0, or 1 for a zero exponent) and its gradient at
    base == 0 is 0, the limit of the loss's gradient there (the log factor vanishes too).
    """
    zero = base <= 0
    safe = torch.where(zero, torch.ones_like(base), base)
    at_zero = (torch.as_tensor(exponent, dtype=base.dtype, device=base.device) == 0).to(base.dtype)
    return torch.where(zero, at_zero, safe.pow(exponent))


def _ipow(t: torch.Tensor, g: float) -> torch.Tensor:
    """t ** g as a new tensor; repeated squaring for small integer g (pow is ~25x a multiply)."""
    if g == 1:
        return t.clone()
    if g == 2:
        return t * t
    if g == 3:
        return (t * t).mul_(t)
    if g == 4:
        s = t * t
        return s.mul_(s)
    return t.pow(g)


# Rows of one chunk are chosen so that a chunk's live temporaries (512 KiB each) mostly
# stay in the L2/L3 caches: the ~20 element-wise passes then run from cache, not from
# memory, and no large buffer is page-faulted in per op. 2**17 was the fastest of
# 2**13..2**20 at (64, 9605) and (1024, 9605) on 1 and 2 threads (bench/bench_loss.py).
_CHUNK_ELEMS = 1 << 17


def _kernel(  # noqa: C901  (the fused loss: one pass per chunk, its branches are the loss's options)
    x: torch.Tensor, y: torch.Tensor, known: Optional[torch.Tensor], o: _Opts, grad_out: Optional[torch.Tensor]
) -> torch.Tensor:
    """Element-wise loss of one chunk (R, C); writes dL/dx into grad_out when given.

    Returns ``l = neg + y (pos - neg)`` (= -L before class weights are applied: the caller
    negates), with pos = w+ log(max(p, eps)) and neg = w- log(max(1 - p_m, eps)).

    Derivatives (p = sigmoid(x), q = 1 - p, dp/dx = p q):
        d log max(p, eps) / dx      = q                      (0 where p <= eps: clamped)
        d log max(1 - p, eps) / dx  = -p                     (clip 0; 0 where clamped)
        d log(q + m) / dx           = -p q / (q + m)         (clip m > 0, p > m; else 0)
        d (1 - p)^g+ / dx           = -g+ p (1 - p)^g+
        d p_m^g- / dx               = g- p_m^(g- - 1) p q    (p > m; else 0)
    The focusing-weight terms are dropped when the weights are detached.
    """
    p = torch.sigmoid(x)
    # 1 - p from the logit: the subtraction loses all relative precision as p -> 1.
    q = torch.sigmoid(torch.neg(x)) if (o.gp or o.clip or grad_out is not None) else None
    if o.clip:
        pm = torch.sub(p, o.clip).clamp_(min=0.0)
        qm = torch.add(q, o.clip).clamp_(max=1.0)  # 1 - p_m = min(1 - p + m, 1) >= m
        if o.clip < o.eps:
            qm.clamp_(min=o.eps)
        B = torch.log(qm)
    else:
        pm = p
        # log(1 - p) from the logit: 1 - sigmoid(x) loses all precision for x > ~9.
        B = F.logsigmoid(-x).clamp_(min=o.log_eps)
    wn = _ipow(pm, o.gn) if o.gn else None
    neg = B * wn if wn is not None else B
    A = p.clamp(min=o.eps).log_()
    wp = _ipow(q, o.gp) if o.gp else None
    pos = A * wp if wp is not None else A
    if o.pw is not None:
        pos = pos * o.pw
    loss = torch.addcmul(neg, y, torch.sub(pos, neg))
    if o.weight is not None:
        loss.mul_(o.weight)
    if known is not None:
        loss.mul_(known)
    if grad_out is None:
        return loss

    # gpos = d pos / dx
    gpos = q.clone() if wp is not None and not o.detach else q
    if float(p.min()) <= o.eps:  # rare: some p inside the eps clamp, where log is flat
        gpos = torch.where(p > o.eps, gpos, 0.0)
    if wp is not None:
        if o.detach:
            gpos = gpos * wp
        else:
            gpos = torch.sub(gpos, p * A, alpha=o.gp).mul_(wp)  # wp (dA - g+ p A)
    if o.pw is not None:
        gpos = gpos * o.pw

    # ng = -(d neg / dx)
    if o.clip:
        ng = torch.mul(p, q).div_(qm)  # -dB, valid where p > m
        if wn is not None:
            ng.mul_(wn)  # wn = 0 where p <= m, which also zeroes the invalid region
            if not o.detach:
                # -(g- p_m^(g- - 1) p q B); B = log(1) = 0 where p <= m
                base = pm if o.gn >= 1 else torch.where(pm > 0, pm, torch.ones_like(pm))
                ng.sub_(_ipow(base, o.gn - 1.0).mul_(p).mul_(q).mul_(B), alpha=o.gn)
        else:
            ng.masked_fill_(pm == 0, 0.0)
        if o.clip < o.eps:
            ng.masked_fill_(qm <= o.eps, 0.0)
    else:
        ng = torch.where(B > o.log_eps, p, 0.0)  # -dB, 0 where log(1 - p) is clamped
        if wn is not None:
            ng.mul_(wn)
            if not o.detach:
                ng.sub_(wn * q * B, alpha=o.gn)  # -(g- p^g- q B)

    # dL/dx = -(gneg + y (gpos - gneg)) with gneg = -ng, i.e. ng - y (gpos + ng)
    torch.addcmul(ng, y, torch.add(gpos, ng), value=-1.0, out=grad_out)
    if o.weight is not None:
        grad_out.mul_(o.weight)
    if known is not None:
        grad_out.mul_(known)
    return loss


def _run(x: torch.Tensor, y: torch.Tensor, known: Optional[torch.Tensor], o: _Opts, reduction: str, need_grad: bool):
    """Loss (reduced with the reduction's scale applied later) and dL/dx over row chunks."""
    n, c = x.shape
    grad = torch.empty_like(x) if need_grad else None
    rows = n if x.device.type != "cpu" else max(1, _CHUNK_ELEMS // max(c, 1))
    per_elem = torch.empty_like(x) if reduction == "none" else None
    if rows >= n:  # one chunk: skip the slicing (per-call overhead dominates small inputs)
        loss = _kernel(x, y, known, o, grad)
        return (loss.neg_() if per_elem is not None else -loss.sum()), grad
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    for i in range(0, n, rows):
        sl = slice(i, i + rows)
        kn = known[sl] if known is not None else None
        g = grad[sl] if grad is not None else None
        loss = _kernel(x[sl], y[sl], kn, o, g)
        if per_elem is not None:
            torch.neg(loss, out=per_elem[sl])
        else:
            total = total - loss.sum()
    return (per_elem if per_elem is not None else total), grad


def _reduce_scale(reduction: str, n: int, known: Optional[torch.Tensor], numel: int):
    """The reduction's factor: a float, or (``mean`` over known labels inside ``torch.compile``) a
    0-d tensor, so the count is never read back; None for ``none``."""
    if reduction == "sum":
        return 1.0
    if reduction == "batchmean":
        return 1.0 / max(n, 1)
    if reduction == "mean":
        if known is not None and _tensor_only(known):
            return 1.0 / known.sum().clamp(min=1.0)
        count = float(known.sum()) if known is not None else float(numel)
        return 1.0 / max(count, 1.0)
    return None


def _forward(logits: torch.Tensor, targets: torch.Tensor, o: _Opts, need_grad: bool):
    dtype = _compute_dtype(logits)
    c = logits.shape[-1] if logits.dim() else 1
    x = logits.detach()
    if x.dtype != dtype:
        x = x.to(dtype)
    if x.dim() != 2:
        x, targets = x.reshape(-1, c), targets.reshape(-1, c)
    y, known = _prepare_targets(targets, dtype, o.smoothing, o.unknown)
    out, grad = _run(x.contiguous(), y.contiguous(), known, o, o.reduction, need_grad)
    scale = _reduce_scale(o.reduction, logits.shape[0] if logits.dim() else 1, known, x.numel())
    if grad is not None:
        grad = grad.reshape(logits.shape)  # (N, *) logits get their gradient in their own shape
    if scale is None:
        out = out.reshape(logits.shape)
    elif scale != 1.0:
        out = out * scale
    return out, grad, scale


class _FusedASL(torch.autograd.Function):
    """Value and analytic derivative in one forward; backward is one multiply.

    The derivative is kept in the compute dtype, not the logits' dtype: under fp16 loss
    scaling grad_output is ~65536 and an unscaled fp16 copy would already have underflowed.
    """

    @staticmethod
    def forward(ctx, logits, targets, o):
        out, grad, scale = _forward(logits, targets, o, need_grad=True)
        ctx.save_for_backward(grad)
        ctx.in_dtype = logits.dtype
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        g = torch.mul(grad, grad_output)
        if ctx.scale is not None and ctx.scale != 1.0:
            g.mul_(ctx.scale)
        if g.dtype != ctx.in_dtype:
            g = g.to(ctx.in_dtype)
        return g, None, None


def _soft_asl(logits: torch.Tensor, targets: torch.Tensor, o: _Opts) -> torch.Tensor:
    """The official element formula for any target y in [0, 1], with autograd.

    One focusing weight per element, ``w = (1 - pt)^(g+ y + g- (1 - y))`` with
    ``pt = p y + (1 - p_m)(1 - y)``, multiplies both log terms:
    ``L = -w [y log(max(p, eps)) + (1 - y) log(max(1 - p_m, eps))]``. For y in {0, 1} it is the
    fused path's value; for a soft y the official code does not split into two weighted terms,
    and neither does this. ``1 - pt`` is computed as ``y (1 - p) + (1 - y) p_m`` with 1 - p taken
    from the logit (no cancellation as p -> 1).
    """
    dtype = _compute_dtype(logits)
    x = logits.to(dtype)
    y, known = _prepare_targets(targets, dtype, o.smoothing, o.unknown)
    p, q = torch.sigmoid(x), torch.sigmoid(-x)
    log_pos = torch.log(p.clamp(min=o.eps))
    if o.clip:
        pm = (p - o.clip).clamp(min=0.0)
        log_neg = torch.log((q + o.clip).clamp(max=1.0).clamp(min=o.eps))
    else:
        pm = p
        log_neg = F.logsigmoid(-x).clamp(min=o.log_eps)
    if o.pw is not None:
        log_pos = log_pos * o.pw
    loss = -(y * log_pos + (1.0 - y) * log_neg)
    if o.gp or o.gn:
        base = y * q + (1.0 - y) * pm
        loss = loss * _safe_pow(base.detach() if o.detach else base, o.gp * y + o.gn * (1.0 - y))
    if o.weight is not None:
        loss = loss * o.weight
    if known is not None:
        loss = loss * known
    scale = _reduce_scale(o.reduction, logits.shape[0] if logits.dim() else 1, known, loss.numel())
    return loss if scale is None else loss.sum() * scale


def _as_tensor(v, device, dtype) -> Optional[torch.Tensor]:
    if v is None:
        return None
    return torch.as_tensor(v, dtype=dtype, device=device)


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: Number = 4,
    gamma_pos: Number = 1,
    clip: Optional[float] = 0.05,
    eps: float = 1e-8,
    disable_torch_grad_focal_loss: bool = True,
    reduction: str = "sum",
    label_smoothing: float = 0.0,
    weight: Optional[torch.Tensor] = None,
    pos_weight: Optional[Union[torch.Tensor, float]] = None,
    *,
    options: Optional[ASLOptions] = None,
) -> torch.Tensor:
    """Multi-label asymmetric loss (paper Sec. 2, Eq. 1-4), the official ``AsymmetricLoss`` for any
    target y in [0, 1]:

    ``L = -w_c (1 - pt)^(g+ y + g- (1 - y)) [ y pos_weight log(max(p, eps)) + (1-y) log(max(1-p_m, eps)) ]``

    with ``p = sigmoid(x)``, ``p_m = max(p - clip, 0)`` (no shift when clip is None or 0) and
    ``pt = p y + (1 - p_m)(1 - y)``. For y in {0, 1} this is
    ``-w_c [ y pos_weight (1-p)^g+ log(max(p, eps)) + (1-y) p_m^g- log(max(1-p_m, eps)) ]``, which
    the fused path computes (value and analytic derivative in one pass); soft targets and label
    smoothing take the element formula above with autograd.

    Args:
        logits: (N, C), or (N, *) with classes last, logits of any float dtype; computed in
            float32 (float64 stays float64). An empty batch gives 0.
        targets: the logits' shape, bool/int/float, values in [0, 1] (soft allowed) or -1 for
            unknown, which contributes neither loss nor gradient; any other value is a ValueError
            (checked on CPU tensors; on an accelerator the check would cost a host synchronization).
        gamma_neg: focusing parameter of negatives (gamma-).
        gamma_pos: focusing parameter of positives (gamma+).
        clip: probability margin m of the asymmetric clipping (Sec. 2.3).
        eps: lower clamp of the probabilities inside the logs.
        disable_torch_grad_focal_loss: treat the focusing weights as constants in backward.
        reduction: "sum" (official), "mean" (over known elements), "batchmean" (sum / N), "none".
        label_smoothing: s, y <- y (1 - s) + 0.5 s.
        weight: (C,) per-class factor.
        pos_weight: scalar or (C,) factor on the positive term.
        options: the scalar options above as one :class:`ASLOptions`, made and checked once (the
            loss modules pass theirs); the keyword values are then not read.

    Returns:
        float32 scalar, or (N, C) for ``reduction="none"`` (zero where unknown).
    """
    if options is None:
        options = ASLOptions(gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss, reduction, label_smoothing)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    if logits.numel() == 0:  # an empty batch: no loss, and a gradient of the right (empty) shape
        zero = logits.to(_compute_dtype(logits)).sum() * 0.0
        return zero.expand(logits.shape) if options.reduction == "none" else zero
    dtype = _compute_dtype(logits)
    o = _Opts(options, _as_tensor(pos_weight, logits.device, dtype), _as_tensor(weight, logits.device, dtype))
    if _tensor_only(logits):
        # the element formula covers hard and soft labels alike: under torch.compile and on an
        # accelerator it is the one path (no test of the labels' values, no host synchronization),
        # and there the compiler or the device's kernels carry its element-wise operations
        return _soft_asl(logits, targets, o)
    soft, o.unknown = _scan_targets(targets)  # the labels read once: valid, soft, unknown
    if soft or o.smoothing:
        return _soft_asl(logits, targets, o)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedASL.apply(logits, targets, o)
    out, _, _ = _forward(logits, targets, o, need_grad=False)  # no gradient wanted (evaluation)
    return out


def asl_single_label(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma_pos: Number = 0,
    gamma_neg: Number = 4,
    eps: float = 0.1,
    reduction: str = "mean",
) -> torch.Tensor:
    """Single-label (softmax) asymmetric loss, as the official ``ASLSingleLabel``.

    With log-probabilities ``log p = log_softmax(x)``, one-hot ``t``, ``pt = p`` on the
    target class and ``1 - p`` elsewhere, and smoothed targets ``y = t (1 - eps) + eps / C``:

        ``L = -sum_c y_c (1 - pt_c)^(g+ t_c + g- (1 - t_c)) log p_c``

    so the target class is weighted by (1 - p)^g+ and the others by p^g-.
    With gamma_pos = gamma_neg = eps = 0 this is ``F.cross_entropy``.

    Args:
        logits: (N, C) logits, computed in float32.
        target: (N,) int64 class indices.
        gamma_pos: focusing parameter of the target class.
        gamma_neg: focusing parameter of the other classes.
        eps: label smoothing.
        reduction: "mean" (official), "sum" or "none" ((N,)).

    Returns:
        float32 scalar, or (N,) for ``reduction="none"``.
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    x = logits.to(_compute_dtype(logits))
    num_classes = x.shape[-1]
    log_p = F.log_softmax(x, dim=-1)
    onehot = torch.zeros_like(x).scatter_(1, target.long().unsqueeze(1), 1.0)
    if gamma_pos or gamma_neg:
        p = log_p.exp()
        # base = 1 - pt: (1 - p) on the target, p elsewhere
        base = onehot + p - 2.0 * onehot * p
        w = _safe_pow(base, gamma_pos * onehot + gamma_neg * (1.0 - onehot))
        log_p = log_p * w
    y = onehot * (1.0 - eps) + eps / num_classes if eps > 0 else onehot
    loss = -(y * log_p).sum(-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
