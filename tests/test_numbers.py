"""The numbers on every input (asl.metrics, asl.functional): NaN scores, labels outside the
contract, empty batches and logits of more than two dimensions, against the official code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asl.losses import AdaptiveAsymmetricLoss, AsymmetricLoss, AsymmetricLossOptimized, build_loss
from asl.metrics import average_precision, mAP, multilabel_metrics
from bench.official import official_asymmetric_loss, official_map

LOSSES = [
    lambda: AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05),
    lambda: AsymmetricLossOptimized(),
    lambda: AdaptiveAsymmetricLoss(),
    lambda: build_loss("focal"),
    lambda: build_loss("bce"),
]
IDS = ["asl", "asl_optimized", "adaptive_asl", "focal", "bce"]


def test_nan_scores_are_ranked_as_the_official_code_ranks_them():
    t, s = np.array([[1.0], [0.0]]), np.array([[0.5], [np.nan]])
    assert official_map(t, s) == pytest.approx(50.0)
    assert mAP(t, s) == official_map(t, s)
    rng = np.random.default_rng(0)
    t = (rng.random((200, 6)) < 0.2).astype(np.float64)
    s = rng.random((200, 6))
    s[rng.random((200, 6)) < 0.1] = np.nan
    assert mAP(t, s) == official_map(t, s)  # the same argsort: bit for bit
    ap = average_precision(t, s)
    assert np.isfinite(ap).all()


def test_validate_warns_when_scores_are_not_finite(trained_run, tmp_path, capsys, monkeypatch):
    import asl.engine as engine
    from asl.labelled import ScoreCollector
    from asl.metrics import evaluation_result
    from tests.helpers import call

    real = engine.evaluate

    def broken(*a, **k):
        ev = real(*a, **k)
        scores = ev["scores"].copy()
        scores[0, 0] = np.nan
        collected = ScoreCollector(*scores.shape)
        collected.add(scores, ev["targets"])
        return evaluation_result(collected, 1.0)

    monkeypatch.setattr(engine, "evaluate", broken)
    rc, _, err = call(
        "validate",
        [trained_run["data"], "--dataset", "tagged", "--model-path", trained_run["out"] / "best.pth", "--workers", "0"],
        capsys,
    )
    assert rc == 0 and any("1 of 4 classes score NaN or inf" in ln for ln in err), err


@pytest.mark.parametrize("bad", [2.0, -2.0, 1.5, float("nan")])
def test_labels_outside_the_contract_are_a_value_error_everywhere(bad):
    t = np.array([[1.0, 0.0], [0.0, bad]])
    s = np.array([[0.9, 0.1], [0.2, 0.3]])
    for metric in (mAP, average_precision, lambda a, b: multilabel_metrics(a, b, 0.5)):
        with pytest.raises(ValueError, match=r"targets must be in \[0, 1\] or -1"):
            metric(t, s)
    for make in LOSSES:
        with pytest.raises(ValueError, match=r"targets must be in \[0, 1\] or -1"):
            make()(torch.zeros(2, 2, requires_grad=True), torch.tensor(t, dtype=torch.float32))


def test_unknown_labels_stay_allowed():
    t = np.array([[1.0, -1.0], [0.0, 1.0], [1.0, 0.0]])
    s = np.array([[0.9, 0.1], [0.2, 0.3], [0.6, 0.2]])
    assert np.isfinite(average_precision(t, s)).all()
    x = torch.randn(3, 2, requires_grad=True)
    loss = AsymmetricLoss()(x, torch.tensor(t, dtype=torch.float32))
    loss.backward()
    assert x.grad[0, 1] == 0


@pytest.mark.parametrize("make", LOSSES, ids=IDS)
def test_an_empty_batch_gives_zero_and_a_gradient(make):
    x = torch.zeros(0, 5, requires_grad=True)
    loss = make()(x, torch.zeros(0, 5))
    assert loss.dtype == torch.float32 and float(loss.detach()) == 0.0
    loss.backward()
    assert x.grad.shape == (0, 5)
    official = official_asymmetric_loss(torch.zeros(0, 5), torch.zeros(0, 5))
    assert float(official) == 0.0


@pytest.mark.parametrize("make", LOSSES, ids=IDS)
def test_logits_of_more_than_two_dimensions_get_their_gradient_in_their_shape(make):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 3, 4) < 0.3).double()
    loss = make()(x, y)
    loss.backward()
    assert x.grad.shape == x.shape
    flat = x.detach().reshape(-1, 4).clone().requires_grad_(True)
    make()(flat, y.reshape(-1, 4)).backward()
    torch.testing.assert_close(x.grad.reshape(-1, 4), flat.grad)
    if not isinstance(make(), AdaptiveAsymmetricLoss):
        m = make()
        ref = official_asymmetric_loss(x.detach(), y, m.gamma_neg, m.gamma_pos, m.clip or 0.0)
        torch.testing.assert_close(loss.detach(), ref.to(loss.dtype), rtol=1e-6, atol=1e-8)
