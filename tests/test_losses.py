"""Losses against plain float64 transcriptions of the reference formulas."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from asl import functional as AF
from asl.losses import AdaptiveAsymmetricLoss, ASLSingleLabel, AsymmetricLoss, AsymmetricLossOptimized, build_loss
from bench.official import official_asymmetric_loss, official_single_label


def reference(
    x,
    y,
    gamma_neg,
    gamma_pos,
    clip,
    eps=1e-8,
    detach=True,
    reduction="sum",
    smoothing=0.0,
    weight=None,
    pos_weight=None,
):
    """The interface's promise (the official element formula, one focusing weight per element, for
    any y in [0, 1]), written out in float64 with autograd doing the derivative."""
    x = x.double()
    y = y.double()
    known = (y != -1).double()
    y = torch.where(y == -1, torch.zeros_like(y), y)
    if smoothing:
        y = y * (1 - smoothing) + 0.5 * smoothing
    p = torch.sigmoid(x)
    xs_neg = (1 - p + clip).clamp(max=1) if clip else 1 - p  # 1 - p_m
    pos = torch.log(p.clamp(min=eps))
    if pos_weight is not None:
        pos = pos * pos_weight.double()
    loss = y * pos + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg or gamma_pos:
        pt = p * y + xs_neg * (1 - y)
        w = (1 - pt) ** (gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * (w.detach() if detach else w)
    loss = -loss
    if weight is not None:
        loss = loss * weight.double()
    loss = loss * known
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / known.sum()
    if reduction == "batchmean":
        return loss.sum() / x.shape[0]
    return loss


def _data(n=12, c=9, seed=0, soft=False, unknown=False, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g) * scale
    y = (torch.rand(n, c, generator=g) < 0.3).float()
    if soft:
        y = torch.rand(n, c, generator=g)
    if unknown:
        y[torch.rand(n, c, generator=g) < 0.2] = -1
    return x, y


PARAMS = list(itertools.product([0.0, 1.0, 2.0, 4.0, 2.5], [0.0, 1.0, 0.5], [0.0, 0.05, 0.3], [True, False]))


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip,detach", PARAMS)
def test_value_and_gradient_match_reference(gamma_neg, gamma_pos, clip, detach):
    x, y = _data(seed=int(gamma_neg * 10 + gamma_pos * 3 + clip * 100))
    xa = x.clone().requires_grad_()
    loss = AF.asymmetric_loss(xa, y, gamma_neg, gamma_pos, clip, disable_torch_grad_focal_loss=detach)
    loss.backward()
    xr = x.double().requires_grad_()
    ref = reference(xr, y, gamma_neg, gamma_pos, clip, detach=detach)
    ref.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "none"])
@pytest.mark.parametrize(
    "soft,unknown,smoothing", [(False, False, 0.0), (True, False, 0.1), (False, True, 0.2), (True, True, 0.0)]
)
def test_options_match_reference(reduction, soft, unknown, smoothing):
    x, y = _data(soft=soft, unknown=unknown, seed=3)
    c = x.shape[1]
    weight = torch.linspace(0.5, 2.0, c)
    pos_weight = torch.linspace(1.0, 3.0, c)
    xa = x.clone().requires_grad_()
    out = AF.asymmetric_loss(
        xa, y, 4, 1, 0.05, reduction=reduction, label_smoothing=smoothing, weight=weight, pos_weight=pos_weight
    )
    xr = x.double().requires_grad_()
    ref = reference(xr, y, 4, 1, 0.05, reduction=reduction, smoothing=smoothing, weight=weight, pos_weight=pos_weight)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)
    out.backward(g.float())
    ref.backward(g)
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4, 1, 0.05), (2, 2, 0.0), (3.5, 0.5, 0.2), (0.5, 0, 0.1)])
def test_gradcheck_through_focusing_weights(gamma_neg, gamma_pos, clip):
    """disable_torch_grad_focal_loss=False: the exact derivative of the whole expression."""
    x, y = _data(n=5, c=4, soft=True, seed=7, scale=2.0)
    x = x.double().requires_grad_()
    fn = lambda t: AF.asymmetric_loss(
        t,
        y.double(),
        gamma_neg,
        gamma_pos,
        clip,  # noqa: E731
        disable_torch_grad_focal_loss=False,
        reduction="none",
    )
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4, 1, 0.05), (2, 2, 0.0), (4, 0, 0.3)])
def test_detached_gradient_is_derivative_with_frozen_weights(gamma_neg, gamma_pos, clip):
    """disable_torch_grad_focal_loss=True: d/dx of L with the focusing weights held at x0."""
    x0, y = _data(n=4, c=5, soft=True, seed=11, scale=2.0)
    x0, y = x0.double(), y.double()
    p0 = torch.sigmoid(x0)
    pm0 = (p0 - clip).clamp(min=0) if clip else p0
    w0 = (1 - (p0 * y + (1 - pm0) * (1 - y))) ** (gamma_pos * y + gamma_neg * (1 - y))  # (1 - pt)^(...)

    def frozen(x):
        p = torch.sigmoid(x)
        pm = (p - clip).clamp(min=0) if clip else p
        return -(w0 * (y * torch.log(p) + (1 - y) * torch.log(1 - pm))).sum()

    h = 1e-6
    numeric = torch.zeros_like(x0)
    for idx in itertools.product(range(x0.shape[0]), range(x0.shape[1])):
        e = torch.zeros_like(x0)
        e[idx] = h
        numeric[idx] = (frozen(x0 + e) - frozen(x0 - e)) / (2 * h)
    xa = x0.clone().requires_grad_()
    AF.asymmetric_loss(xa, y, gamma_neg, gamma_pos, clip, disable_torch_grad_focal_loss=True).backward()
    torch.testing.assert_close(xa.grad, numeric, rtol=1e-6, atol=1e-7)


def test_bce_special_case():
    x, y = _data(soft=True, seed=5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(xa, y)
    ref = F.binary_cross_entropy_with_logits(xb, y, reduction="sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    assert isinstance(build_loss("bce"), AsymmetricLoss)
    torch.testing.assert_close(build_loss("bce")(x, y), ref.detach(), rtol=1e-5, atol=1e-5)


def test_focal_special_case():
    from torchvision.ops import sigmoid_focal_loss

    x, y = _data(seed=6)
    for g in (1.0, 2.0):
        ours = build_loss("focal", gamma=g)(x, y)
        ref = sigmoid_focal_loss(x, y, alpha=-1, gamma=g, reduction="sum")
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_single_label():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64) * 2
    t = torch.randint(0, 6, (10,), generator=g)
    torch.testing.assert_close(ASLSingleLabel(0, 0, 0)(x, t), F.cross_entropy(x, t))
    for gp, gn, eps in [(0, 4, 0.1), (1, 2, 0.0), (0.5, 3, 0.2)]:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = build_loss("asl_single_label", gamma_pos=gp, gamma_neg=gn, eps=eps)(xa, t)
        ref = official_single_label(xb, t, gp, gn, eps)
        torch.testing.assert_close(ours, ref)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(xa.grad, xb.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    x, y = _data(seed=8)
    xh = x.to(dtype).requires_grad_()
    loss = AsymmetricLoss(4, 1, 0.05)(xh, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref = reference(xh.detach().float(), y, 4, 1, 0.05)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-4)
    loss.backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()


def test_extreme_logits_are_finite():
    x = torch.tensor([[1e4, -1e4, 1e4, -1e4, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
    for loss_fn in (AsymmetricLoss(4, 1, 0.05), AsymmetricLoss(0, 0, 0), AsymmetricLossOptimized(2, 1, 0.0)):
        x.grad = None
        loss = loss_fn(x, y)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # a confidently right logit costs nothing; a wrong one costs at most -log(eps)
    per = AsymmetricLoss(0, 0, 0, reduction="none")(x.detach(), y)
    assert per[0, 0] == 0 and per[0, 3] == 0
    torch.testing.assert_close(per[0, 1], torch.tensor(18.420681), rtol=1e-5, atol=0)


def test_unknown_labels_get_no_loss_and_no_gradient():
    x, y = _data(seed=9, unknown=True)
    assert (y == -1).any()
    xa = x.clone().requires_grad_()
    per = AsymmetricLoss(reduction="none")(xa, y)
    per.sum().backward()
    unknown = y == -1
    assert (per[unknown] == 0).all() and (xa.grad[unknown] == 0).all()
    assert (xa.grad[~unknown] != 0).any()
    # changing an unknown logit changes nothing
    x2 = x.clone()
    x2[unknown] += 5
    torch.testing.assert_close(AsymmetricLoss()(x2, y), AsymmetricLoss()(x, y))


def test_at_most_two_nc_tensors_saved_for_backward():
    n, c = 64, 50
    x, y = _data(n, c, seed=10)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    xa = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = AsymmetricLoss(4, 1, 0.05)(xa, y)
    assert sum(s for s in sizes if s >= n * c) <= 2 * n * c
    loss.backward()


def test_no_global_grad_mode_change_and_value_only_path():
    x, y = _data(seed=12)
    with torch.no_grad():
        v = AsymmetricLossOptimized(4, 1, 0.05)(x.clone().requires_grad_(), y)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert v.grad_fn is None
    torch.testing.assert_close(v, AsymmetricLossOptimized(4, 1, 0.05)(x.clone().requires_grad_(), y).detach())


def test_chunked_path_equals_single_chunk(monkeypatch):
    x, y = _data(n=64, c=33, seed=13, unknown=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    whole = AsymmetricLoss(reduction="mean")(xa, y)
    monkeypatch.setattr(AF, "_CHUNK_ELEMS", 100)  # 3 rows per chunk
    chunked = AsymmetricLoss(reduction="mean")(xb, y)
    torch.testing.assert_close(whole, chunked)
    whole.backward()
    chunked.backward()
    torch.testing.assert_close(xa.grad, xb.grad)


def test_adaptive_asymmetry_moves_gamma_neg():
    x, y = _data(n=32, c=10, seed=14)
    x = x - 4  # confident negatives, unsure positives: delta_p well below 0
    loss = AdaptiveAsymmetricLoss(gamma_neg=0.0, delta_p_target=0.0, lam=1.0)
    loss.train()
    loss(x, y)
    assert loss.delta_p < 0 and loss.gamma_neg > 0
    g = loss.gamma_neg
    loss.eval()
    loss(x, y)
    assert loss.gamma_neg == g  # frozen in eval mode
    # the value uses the updated gamma_neg
    torch.testing.assert_close(loss(x, y), AsymmetricLoss(gamma_neg=g, gamma_pos=0, clip=0.05)(x, y))


def test_build_loss_names_and_errors():
    assert isinstance(build_loss("asl"), AsymmetricLoss)
    assert isinstance(build_loss("asl_optimized"), AsymmetricLossOptimized)
    assert isinstance(build_loss("adaptive_asl"), AdaptiveAsymmetricLoss)
    assert isinstance(build_loss("asl_single_label"), ASLSingleLabel)
    with pytest.raises(ValueError):
        build_loss("nope")
    with pytest.raises(ValueError):
        AsymmetricLoss(reduction="avg")


def test_soft_targets_equal_the_official_loss():
    # the element: x = 0.5, y = 0.95, (4, 0, 0.05): official 0.407689 (the split form gave 0.454936)
    x, y = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[0.95]], dtype=torch.float64)
    assert AsymmetricLoss(4, 0, 0.05)(x, y).item() == pytest.approx(0.407689, abs=1e-6)
    g = torch.Generator().manual_seed(21)
    x = torch.randn(64, 80, generator=g, dtype=torch.float64) * 3
    hard = (torch.rand(64, 80, generator=g) < 0.1).double()
    soft = torch.rand(64, 80, generator=g, dtype=torch.float64)
    for gn, gp, clip, detach in [(4, 0, 0.05, True), (4, 1, 0.05, False), (2, 2, 0.0, True), (3, 0.5, 0.2, False)]:
        cases = [(soft, 0.0, soft), (hard, 0.1, hard * 0.9 + 0.05)]  # soft labels; label smoothing 0.1
        for targets, smoothing, official_y in cases:
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ours = AsymmetricLoss(gn, gp, clip, disable_torch_grad_focal_loss=detach, label_smoothing=smoothing)(
                xa, targets
            )
            ref = official_asymmetric_loss(xb, official_y, gn, gp, clip, detach=detach)
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
            ours.backward()
            ref.backward()
            torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_single_label_is_finite_at_saturated_logits(dtype):
    # official ASLSingleLabel(gamma_pos=0.5): 0^(0.5 - 1) in autograd of pow gives a NaN gradient
    for gp in (0.0, 0.5, 1.0, 2.0):
        for gn in (0.0, 0.5, 4.0):
            for logits in ([[40.0, 0.0, 0.0]], [[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]]):
                x = torch.tensor(logits, dtype=dtype, requires_grad=True)
                loss = ASLSingleLabel(gamma_pos=gp, gamma_neg=gn)(x, torch.tensor([0]))
                loss.backward()
                assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), (gp, gn, logits, loss, x.grad)
    x = torch.tensor([[40.0, 0.0, 0.0]], requires_grad=True)
    ASLSingleLabel(gamma_pos=0.5, gamma_neg=4, eps=0.0)(x, torch.tensor([0])).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # p = 1 on the target, exactly: nothing to learn


def test_one_options_value_for_the_module_the_function_and_jax():
    """ASLOptions: the loss module's options, the functional form's and the JAX form's are one value."""
    import numpy as np

    from asl import ASLOptions
    from asl.functional import asymmetric_loss

    opts = ASLOptions(gamma_neg=3.0, gamma_pos=0.5, clip=0.1, reduction="none", label_smoothing=0.1)
    x, y = torch.randn(6, 5, dtype=torch.float64), (torch.rand(6, 5) > 0.6).double()
    by_module = AsymmetricLoss(**{k: getattr(opts, k) for k in opts.__dataclass_fields__})(x, y)
    by_function = asymmetric_loss(x, y, options=opts)
    assert torch.equal(by_module, by_function)
    loss = AsymmetricLoss()
    loss.gamma_neg = 3.0  # an attribute set after construction, as on the official module, is read
    assert loss.options.gamma_neg == 3.0
    with pytest.raises(ValueError, match="reduction must be one of"):
        ASLOptions(reduction="avg")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from asl.jax import asymmetric_loss as jax_loss

    np.testing.assert_allclose(
        np.asarray(jax_loss(x.numpy(), y.numpy(), options=opts)), by_function.numpy(), rtol=1e-10
    )
