"""asl.functional under torch.compile(fullgraph=True): no value is read back to Python (unknown
labels, soft targets, the eps clamp and the mean's count are tensor operations), and the
compiled loss equals the eager one, value and gradient, on the CPU."""

from __future__ import annotations

import pytest
import torch

from asl.functional import asymmetric_loss

CASES = [
    dict(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="sum"),  # the official recipe
    dict(gamma_neg=4, gamma_pos=1, clip=0.05, reduction="mean"),
    dict(gamma_neg=2, gamma_pos=2, clip=0.0, reduction="batchmean"),  # focal
    dict(gamma_neg=0, gamma_pos=0, clip=0.0, reduction="none"),  # BCE
    dict(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="sum", label_smoothing=0.1),
    dict(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean", disable_torch_grad_focal_loss=False),
]


def _targets(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(16, 10, generator=g) < 0.3).float()
    if kind == "unknown":
        y[torch.rand(16, 10, generator=g) < 0.2] = -1.0
    elif kind == "soft":
        y = y * 0.8 + 0.1 * torch.rand(16, 10, generator=g)
    return y


@pytest.mark.parametrize("kind", ["hard", "unknown", "soft"])
@pytest.mark.parametrize("opts", CASES, ids=[f"{c['reduction']}-{i}" for i, c in enumerate(CASES)])
def test_fullgraph_compile_equals_eager(opts, kind):
    torch._dynamo.reset()
    x = (torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * 6).requires_grad_(True)
    x[0, 0].data.fill_(40.0)  # a saturated logit: inside the eps clamp of log(p) for its negatives
    y = _targets(kind)

    def loss(logits, targets):
        return asymmetric_loss(logits, targets, **opts)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")  # fails on any graph break
    want = loss(x, y)
    (gw,) = torch.autograd.grad(want.sum(), x)
    got = compiled(x, y)
    (gg,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gg, gw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["hard", "unknown", "soft"])
@pytest.mark.parametrize("opts", CASES, ids=[f"{c['reduction']}-{i}" for i, c in enumerate(CASES)])
def test_accelerator_path_reads_nothing_back(opts, kind):
    """Off the CPU the loss takes the tensor-only path in eager mode too: on the meta device,
    where any read-back (``float``, ``bool``, ``.item()``) raises, the value and its gradient are
    still computed, in the right shapes."""
    x = torch.randn(16, 10, device="meta", requires_grad=True)
    y = _targets(kind).to("meta")
    out = asymmetric_loss(x, y, **opts)
    out.sum().backward()
    assert out.shape == ((16, 10) if opts["reduction"] == "none" else ())
    assert x.grad.shape == (16, 10)
    with pytest.raises(RuntimeError, match="meta"):
        float(out.detach().sum())  # the guard is real: a read-back here would have raised


def test_accelerator_path_equals_cpu_fused_path(monkeypatch):
    """The tensor-only path, forced on the CPU, gives the fused path's value and gradient."""
    import asl.functional as AF

    x = (torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * 6).requires_grad_(True)
    y = _targets("unknown")
    for opts in CASES[:4]:
        want = asymmetric_loss(x, y, **opts)
        (gw,) = torch.autograd.grad(want.sum(), x)
        with monkeypatch.context() as m:
            m.setattr(AF, "_tensor_only", lambda t: True)
            got = asymmetric_loss(x, y, **opts)
        (gg,) = torch.autograd.grad(got.sum(), x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gg, gw, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the host synchronizations are counted there")
def test_cuda_loss_step_makes_no_host_synchronization():
    x = (torch.randn(64, 80, device="cuda") * 6).requires_grad_(True)
    y = _targets("unknown").repeat(4, 8).to("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing call raises
    try:
        for opts in CASES:
            asymmetric_loss(x, y, **opts).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x.grad).all()
