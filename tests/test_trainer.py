"""The training run as a library: ``asl.trainer.fit(cfg) -> RunResult``, the typed ``RunState``
that ``asl.checkpoint`` serializes, a loss that keeps its state in ``state_dict()``, and ``fit``
leaving the process as it found it (signal handlers, logging)."""

from __future__ import annotations

import json
import logging
import signal

import pytest
import torch

from asl.builders import build_optimizer, build_scheduler
from asl.checkpoint import (
    RunState,
    get_rng_state,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_checkpoint,
)
from asl.config import load_config
from asl.engine import Optimization
from asl.losses import AdaptiveAsymmetricLoss, AsymmetricLoss
from asl.models import create_model
from asl.trainer import RunResult, fit

from .conftest import make_tagged


def test_fit_is_a_library_call_that_leaves_the_process_as_it_was(tmp_path):
    data = make_tagged(tmp_path / "data", n_train=24, n_val=12)

    def mine(signum, frame):  # an application's own handler must survive the run
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    sigint = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup / a background job
    root_handlers = list(logging.getLogger().handlers)
    try:
        cfg = load_config(
            None,
            {
                "dataset": "tagged",
                "data_root": str(data),
                "model_name": "test_resnet",
                "image_size": 32,
                "batch_size": 8,
                "epochs": 2,
                "workers": 0,
                "ema_decay": 0.9,
                "output": str(tmp_path / "out"),
                "print_freq": 0,
            },
        )
        result = fit(cfg)
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is sigint
        assert logging.getLogger().handlers == root_handlers  # the library configures no logging
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(result, RunResult) and result.exit_code == 0 and result.stopped_by is None
    recorded = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in result.history] == [0, 1] and result.history == recorded
    assert result.best_checkpoint == tmp_path / "out" / "best.pth" and result.best_checkpoint.is_file()
    assert result.best["mAP"] == max(max(r["mAP"], r["mAP_ema"]) for r in recorded)
    best = load_checkpoint(result.best_checkpoint)
    assert best["model_name"] == "test_resnet" and best["image_size"] == 32 and best["num_classes"] == 4


def test_fit_checks_its_config_before_any_work(tmp_path):
    from asl.errors import ConfigError

    cfg = load_config(
        None, {"dataset": "tagged", "data_root": str(tmp_path / "nowhere"), "lr": -1.0, "output": str(tmp_path / "out")}
    )
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        fit(cfg)
    assert not (tmp_path / "out").exists()


def _objects(gamma_neg=4.0):
    torch.manual_seed(0)
    model = create_model("test_resnet", 3)
    opt = build_optimizer(model, "adam", 1e-3, 1e-4)
    sched = build_scheduler(opt, 1e-3, 2, 5)
    return model, opt, sched, AdaptiveAsymmetricLoss(gamma_neg=gamma_neg)


def test_run_state_round_trips_through_last_pth(tmp_path):
    model, opt, sched, loss = _objects()
    loss.train()
    loss(torch.randn(8, 3), (torch.rand(8, 3) > 0.5).float())  # gamma- adapts
    adapted = loss.gamma_neg
    assert adapted != 4.0 and loss.state_dict()["_extra_state"]["gamma_neg"] == adapted
    opt.step()
    sched.step()
    state = RunState(
        epoch=1,
        global_step=7,
        best={"mAP": 12.5, "epoch": 0, "selected": "ema"},
        step_in_epoch=3,
        partial={"loss_sum": 1.5, "steps": 3, "skipped": 0},
        rng=get_rng_state(),
    )
    meta = dict(model_name="test_resnet", class_names=["a", "b", "c"], image_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    save_checkpoint(training_checkpoint(state, model, Optimization(loss, opt, sched), **meta), tmp_path / "last.pth")
    ckpt = load_checkpoint(tmp_path / "last.pth")  # weights_only
    model2, opt2, sched2, loss2 = _objects(gamma_neg=0.0)
    back = restore_training_state(ckpt, model2, Optimization(loss2, opt2, sched2))
    assert (back.epoch, back.global_step, back.best, back.step_in_epoch, back.partial) == (
        1,
        7,
        state.best,
        3,
        state.partial,
    )
    assert back.mid_epoch and back.next_epoch == 1 and back.epoch_resume()["step"] == 3
    assert loss2.gamma_neg == adapted  # the loss's state came back through its own state_dict()
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v)
    # an epoch boundary: the next epoch is the one after it, nothing to resume inside an epoch
    boundary = RunState(epoch=1, global_step=10)
    assert boundary.next_epoch == 2 and boundary.epoch_resume() is None and RunState().next_epoch == 0


def test_a_last_pth_from_before_losses_kept_their_state_still_resumes(tmp_path):
    model, opt, sched, _ = _objects()
    ckpt = training_checkpoint(
        RunState(epoch=0, global_step=5),
        model,
        Optimization(AsymmetricLoss(), opt, sched),
        model_name="test_resnet",
        class_names=["a", "b", "c"],
        image_size=32,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    assert ckpt["loss_state"] is None  # a loss without state saves none
    ckpt["loss_state"] = {"gamma_neg": 2.75}  # the format train.py wrote for adaptive gamma- before
    loss = AdaptiveAsymmetricLoss(gamma_neg=4.0)
    model, opt, sched, _ = _objects()
    state = restore_training_state(ckpt, model, Optimization(loss, opt, sched))
    assert loss.gamma_neg == 2.75 and state.next_epoch == 1


def test_hooks_add_to_the_record_and_can_end_the_run(tmp_path):
    import torch

    from asl.config import load_config
    from asl.trainer import Hook, fit

    from .conftest import make_tagged

    class Count(Hook):  # what a new metric or a logger is: a hook, not an edit of the loop
        def __init__(self):
            self.steps = 0

        def after_step(self, trainer, step, partial):
            self.steps += 1
            return False

        def after_epoch(self, trainer, record):
            record["steps_seen"] = self.steps

    class StopAt(Hook):
        def after_step(self, trainer, step, partial):
            return step == 5

    data = make_tagged(tmp_path / "d", n_train=24, n_val=8)
    base = {
        "dataset": "tagged",
        "data_root": str(data),
        "model_name": "test_resnet",
        "image_size": 32,
        "batch_size": 8,
        "epochs": 3,
        "workers": 0,
    }
    counting = Count()
    result = fit(load_config(None, {**base, "output": str(tmp_path / "a")}), hooks=[counting])
    assert [r["steps_seen"] for r in result.history] == [3, 6, 9] and counting.steps == 9
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert '"steps_seen": 9' in lines[-1]
    result = fit(load_config(None, {**base, "output": str(tmp_path / "b")}), hooks=[StopAt()])
    assert result.stopped_by == "hook" and result.exit_code == 0 and len(result.history) == 1
    last = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert (last["epoch"], last["step_in_epoch"], last["global_step"]) == (1, 2, 5)
