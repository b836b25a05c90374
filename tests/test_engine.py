"""Engine helpers: the schedule on tiny runs, AMP selection on the CPU."""

from __future__ import annotations

import pytest
import torch

from asl.engine import amp_dtype_for, build_optimizer, build_scheduler


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7, 50])
def test_one_cycle_survives_tiny_runs(steps):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, "adam", 1e-3, 1e-4)
    sched = build_scheduler(opt, 1e-3, epochs=1, steps_per_epoch=steps)
    lrs = []
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0 < lr <= 1e-3 + 1e-12 for lr in lrs)
    if steps >= 50:
        assert max(lrs) == pytest.approx(1e-3, rel=0.05) and lrs[-1] < 1e-4  # up, then annealed


def test_no_weight_decay_on_biases():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, "adam", 1e-3, 1e-4)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight)}


def test_amp_is_off_on_cpu():
    assert amp_dtype_for(torch.device("cpu"), True) is None


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradient_accumulation_equals_the_larger_batch(reduction):
    from asl.engine import train_one_epoch
    from asl.losses import AsymmetricLoss

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), (torch.rand(16, 3) < 0.3).float()
    data = torch.utils.data.TensorDataset(x, y)

    def run(batch, accum):
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        stats = train_one_epoch(model, torch.utils.data.DataLoader(data, batch_size=batch), AsymmetricLoss(
            reduction=reduction), opt, torch.device("cpu"), accum_steps=accum, print_freq=0)
        return model, stats

    big, s1 = run(8, 1)
    small, s2 = run(4, 2)
    assert s1["global_step"] == s2["global_step"] == 2 and s2["steps"] == 4
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b)
