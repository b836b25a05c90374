"""asl.jax: the optax-style asymmetric losses agree with asl.functional (values and gradients), are
stable in log space, and work under jit / grad / vmap. Skipped, with the reason, without JAX."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="JAX is not installed: pip install -r requirements-jax.txt")
jnp = pytest.importorskip("jax.numpy")

from asl.functional import asl_single_label, asymmetric_loss  # noqa: E402
from asl.jax import asymmetric_loss as jasl  # noqa: E402
from asl.jax import asymmetric_loss_single_label as jasl_single  # noqa: E402


def _inputs(seed=0, n=16, c=12, soft=False):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    x[0, :4] = [30.0, -30.0, 12.0, -12.0]  # saturated sigmoids
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    if soft:
        y = np.where(rng.random((n, c)) < 0.5, y, rng.random((n, c))).astype(np.float32)
    known = rng.random((n, c)) > 0.2
    return x, y, known


def _torch_ref(x, y, known, **kw):
    t = torch.tensor(np.where(known, y, -1.0) if known is not None else y)
    xt = torch.tensor(x, requires_grad=True)
    loss = asymmetric_loss(xt, t, reduction="none", **kw)
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


OPTIONS = list(
    itertools.product(
        [(0, 0, 0), (2, 2, 0), (4, 0, 0.05), (4, 1, 0.05), (3.5, 0.5, 0.2), (1, 0, 1e-9)],  # (g-, g+, m)
        [True, False],  # stop_gradient_focusing / disable_torch_grad_focal_loss
        [0.0, 0.1],  # label smoothing
        [False, True],  # unknown labels (where / -1)
        [False, True],  # soft labels
    )
)


@pytest.mark.parametrize("gammas,detach,smooth,masked,soft", OPTIONS)
def test_parity_with_torch(gammas, detach, smooth, masked, soft):
    gn, gp, m = gammas
    x, y, known = _inputs(soft=soft)
    known = known if masked else None
    ref_val, ref_grad = _torch_ref(
        x, y, known, gamma_neg=gn, gamma_pos=gp, clip=m, disable_torch_grad_focal_loss=detach, label_smoothing=smooth
    )
    kw = dict(gamma_neg=gn, gamma_pos=gp, clip=m, stop_gradient_focusing=detach, label_smoothing=smooth, where=known)
    val = np.asarray(jasl(x, y, **kw))
    grad = np.asarray(jax.grad(lambda z: jasl(z, y, **kw).sum())(x))
    np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-5)
    if masked:
        assert np.all(val[~known] == 0) and np.all(grad[~known] == 0)


def test_special_cases_match_optax_formulas():
    x, y, _ = _inputs(1)
    bce = np.asarray(jasl(x, y, gamma_neg=0, gamma_pos=0, clip=0))
    ref = -(y * np.asarray(jax.nn.log_sigmoid(x)) + (1 - y) * np.asarray(jax.nn.log_sigmoid(-x)))
    np.testing.assert_allclose(bce, np.maximum(ref, 0) * 0 + np.minimum(ref, -np.log(1e-8)), rtol=1e-5, atol=1e-6)
    optax = pytest.importorskip("optax")
    np.testing.assert_allclose(
        bce, np.asarray(optax.sigmoid_binary_cross_entropy(x, y)).clip(max=-np.log(1e-8)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_finite_at_extreme_logits(dtype):
    x = jnp.asarray([[1e4, -1e4, 50.0, -50.0, 0.0, 88.0, -88.0]], dtype=dtype)
    y = jnp.asarray([[1, 1, 0, 0, 1, 0, 1]], dtype=jnp.float32)
    for kw in (
        dict(),
        dict(gamma_pos=1.0),
        dict(clip=0.0),
        dict(gamma_neg=2.5, gamma_pos=0.5, clip=0.0),
        dict(stop_gradient_focusing=False, gamma_pos=1.0),
    ):
        val = jasl(x, y, **kw)
        grad = jax.grad(lambda z, kw=kw: jasl(z, y, **kw).sum())(x)
        assert val.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(val))) and bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32)))), kw
        # the right answer at saturation: a confident correct logit costs ~0, a wrong one log(1/eps) at most
        assert float(val[0, 0]) < 1e-6 and float(val[0, 1]) == pytest.approx(18.42, abs=0.01)


def test_jit_vmap_grad():
    x, y, known = _inputs(2)
    f = jax.jit(lambda z, t, w: jasl(z, t, where=w))
    np.testing.assert_allclose(np.asarray(f(x, y, known)), np.asarray(jasl(x, y, where=known)), rtol=1e-6)
    per_row = jax.vmap(lambda z, t: jasl(z, t).sum())(x, y)
    np.testing.assert_allclose(np.asarray(per_row), np.asarray(jasl(x, y).sum(-1)), rtol=1e-5)
    g = jax.jit(jax.grad(lambda z: jasl(z, y, gamma_pos=1.0, stop_gradient_focusing=False).sum()))(x)
    # against central differences in float64 on a few elements
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        for i, j in [(1, 2), (3, 5), (7, 0)]:
            h = 1e-5
            up = jasl(x64.at[i, j].add(h), y, gamma_pos=1.0, stop_gradient_focusing=False).sum()
            dn = jasl(x64.at[i, j].add(-h), y, gamma_pos=1.0, stop_gradient_focusing=False).sum()
            assert float(g[i, j]) == pytest.approx(float((up - dn) / (2 * h)), rel=1e-3, abs=1e-5)


def test_label_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        jasl(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


@pytest.mark.parametrize("gp,gn,smooth", [(0, 0, 0.0), (0, 4, 0.1), (1, 4, 0.1), (2, 0.5, 0.0)])
def test_single_label_parity(gp, gn, smooth):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((10, 7)) * 3).astype(np.float32)
    t = rng.integers(0, 7, size=10)
    xt = torch.tensor(x, requires_grad=True)
    ref = asl_single_label(xt, torch.tensor(t), gamma_pos=gp, gamma_neg=gn, eps=smooth, reduction="none")
    ref.sum().backward()
    f = lambda z: jasl_single(z, t, gamma_pos=gp, gamma_neg=gn, label_smoothing=smooth)  # noqa: E731
    np.testing.assert_allclose(np.asarray(f(x)), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda z: f(z).sum())(x)), xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    if gp == gn == smooth == 0:
        optax = pytest.importorskip("optax")
        np.testing.assert_allclose(
            np.asarray(f(x)), np.asarray(optax.softmax_cross_entropy_with_integer_labels(x, t)), rtol=1e-5
        )


@pytest.mark.slow  # a subprocess without PyTorch / a wheel build: the slow leg
def test_import_does_not_need_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "from asl.jax import asymmetric_loss; import jax.numpy as jnp\n"
        "print(float(asymmetric_loss(jnp.zeros((1, 2)), jnp.ones((1, 2))).sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(2 * np.log(2), rel=1e-6)


def test_optax_training_step_learns():
    """The example of docs/loss.md: a linear multi-label classifier trained with optax.adam on ASL."""
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((256, 16)).astype(np.float32)
    w_true = rng.standard_normal((16, 5)).astype(np.float32)
    labels = (feats @ w_true > 1.0).astype(np.float32)
    params = {"w": jnp.zeros((16, 5)), "b": jnp.zeros(5)}
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(lambda p: jasl(x @ p["w"] + p["b"], y).sum())(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(200):
        params, state, loss = step(params, state, feats, labels)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0]
    from asl.metrics import mAP

    assert mAP(labels, np.asarray(feats @ params["w"] + params["b"])) > 90


def test_soft_labels_equal_the_official_loss_in_float64():
    """The official element formula for soft labels and label smoothing, in float64 (scoped x64)."""
    from bench.official import official_asymmetric_loss

    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 12, generator=g, dtype=torch.float64) * 3
    soft = torch.rand(16, 12, generator=g, dtype=torch.float64)
    hard = (torch.rand(16, 12, generator=g) < 0.2).double()
    with jax.enable_x64(True):
        for gn, gp, clip in [(4, 0, 0.05), (2, 1, 0.0), (3, 0.5, 0.2)]:
            for labels, smoothing, official_y in [(soft, 0.0, soft), (hard, 0.1, hard * 0.9 + 0.05)]:
                xt = x.clone().requires_grad_()
                ref = official_asymmetric_loss(xt, official_y, gn, gp, clip)
                ref.backward()

                def total(z, labels=labels, smoothing=smoothing, gn=gn, gp=gp, clip=clip):
                    return jasl(
                        z, jnp.asarray(labels.numpy()), gamma_neg=gn, gamma_pos=gp, clip=clip, label_smoothing=smoothing
                    ).sum()

                value, grad = jax.value_and_grad(total)(jnp.asarray(x.numpy()))
                assert value.dtype == jnp.float64
                np.testing.assert_allclose(float(value), ref.item(), rtol=1e-12)
                np.testing.assert_allclose(np.asarray(grad), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
