"""Engine helpers: the schedule on tiny runs, AMP selection on the CPU."""

from __future__ import annotations

import pytest
import torch

from asl.builders import amp_dtype_for, build_optimizer, build_scheduler


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
    from asl.engine import Optimization, StepSettings, train_one_epoch
    from asl.losses import AsymmetricLoss

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), (torch.rand(16, 3) < 0.3).float()
    data = torch.utils.data.TensorDataset(x, y)

    def run(batch, accum):
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        stats = train_one_epoch(
            model,
            torch.utils.data.DataLoader(data, batch_size=batch),
            Optimization(AsymmetricLoss(reduction=reduction), opt),
            torch.device("cpu"),
            StepSettings(accum_steps=accum),
            print_freq=0,
        )
        return model, stats

    big, s1 = run(8, 1)
    small, s2 = run(4, 2)
    assert s1["global_step"] == s2["global_step"] == 2 and s2["steps"] == 4
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b)


class _SometimesNaN(torch.nn.Module):
    """ASL whose value is NaN on the listed calls (a diverging batch), to exercise the guard."""

    def __init__(self, bad):
        super().__init__()
        from asl.losses import AsymmetricLoss

        self.inner, self.bad, self.calls, self.reduction = AsymmetricLoss(), set(bad), 0, "sum"

    def forward(self, logits, targets):
        loss = self.inner(logits, targets)
        self.calls += 1
        return loss * float("nan") if self.calls in self.bad else loss


def _epoch(defer_sync, bad, accum=1, max_nonfinite=20, fused=True, clip=None):
    from asl.engine import Optimization, StepSettings, train_one_epoch

    torch.manual_seed(0)
    x, y = torch.randn(48, 6), (torch.rand(48, 3) < 0.3).float()
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = build_optimizer(model, "adam", 1e-2, 1e-4, fused=fused)
    sched = build_scheduler(opt, 1e-2, 1, 48 // 4 // accum)
    stats = train_one_epoch(
        model,
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4),
        Optimization(_SometimesNaN(bad), opt, scheduler=sched, grad_clip=clip),
        torch.device("cpu"),
        StepSettings(accum_steps=accum, defer_sync=defer_sync, check_every=3, max_nonfinite=max_nonfinite),
        print_freq=0,
    )
    return model, opt, stats


@pytest.mark.parametrize("accum,bad,clip", [(1, (3, 4, 9), None), (2, (3, 8), None), (1, (2,), 0.5)])
def test_deferred_sync_skips_exactly_the_steps_the_default_path_skips(accum, bad, clip):
    """The CUDA path (no read-back per step: the fused optimizer skips a non-finite step on the
    device) against the default path, both with torch's fused Adam on the CPU: the same weights,
    moments, step counts, loss and skipped count."""
    ref_model, ref_opt, ref = _epoch(False, bad, accum, clip=clip)
    model, opt, got = _epoch(True, bad, accum, clip=clip)
    for a, b in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(ref_opt.state[a]["exp_avg"], opt.state[b]["exp_avg"])
        assert float(ref_opt.state[a]["step"]) == float(opt.state[b]["step"]) == 12 // accum - len(bad)
    assert got["nonfinite_steps"] == ref["nonfinite_steps"] == len(bad)
    assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6) and got["global_step"] == 12 // accum


def test_deferred_sync_stops_a_diverging_run():
    from asl.engine import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="4 steps in a row"):
        _epoch(True, bad=range(5, 9), max_nonfinite=4)
    _epoch(True, bad=range(5, 8), max_nonfinite=4)  # 3 in a row: goes on
    with pytest.raises(ValueError, match="fused"):
        _epoch(True, bad=(), fused=False)  # a step skipped on the device needs a fused optimizer


class _Times(torch.nn.Module):
    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor, self.reduction = inner, factor, "sum"

    def forward(self, logits, targets):
        return self.inner(logits, targets) * self.factor


def test_the_schedule_follows_the_steps_a_grad_scaler_takes():
    """fp16's GradScaler skips the first steps (its scale overflows the gradients): the OneCycle
    schedule must not advance for them, nor warn that it stepped before the optimizer."""
    import warnings

    from asl.engine import Optimization, train_one_epoch
    from asl.losses import AsymmetricLoss

    torch.manual_seed(0)
    x, y = torch.randn(200, 6), (torch.rand(200, 3) < 0.3).float()
    model = torch.nn.Linear(6, 3)
    opt = build_optimizer(model, "adam", 1e-2, 0.0)
    sched = build_scheduler(opt, 1e-2, 1, 50)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # the scaled gradients overflow float32 at first
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Detected call of lr_scheduler.step() before optimizer.step()"
        stats = train_one_epoch(
            model,
            torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4),
            Optimization(_Times(AsymmetricLoss(), 1e6), opt, scheduler=sched, scaler=scaler),
            torch.device("cpu"),
            print_freq=0,
        )
    taken = int(opt.state[model.weight]["step"])
    assert 0 < taken < 50 and stats["global_step"] == 50
    assert sched.last_epoch == taken  # the schedule counts the optimizer's steps, not the batches
