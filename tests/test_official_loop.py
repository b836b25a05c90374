"""fit's first optimizer steps against a transcription of the official train.py loop
(bench/official.py): the same batches, the same start, the same weights, EMA and learning rates."""

from __future__ import annotations

import copy

import pytest
import torch

from asl.config import load_config
from bench.official import official_train
from tests.conftest import REPO, make_tagged

K, B = 3, 8  # batches per epoch, batch size


def _fit_recording(tmp_path, monkeypatch, **overrides):
    """Run fit on the COCO recipe (augmentation off) and record its start, its batches in order (a
    tagged set of K batches per epoch, test_resnet at 32 px) and the learning rate after each step."""
    import asl.builders as builders
    import asl.trainer as trainer

    seen = {"batches": [], "targets": [], "lrs": [], "start": None}
    real_loss = builders.loss_from_config

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits, targets):
            seen["targets"].append(targets.detach().clone())
            return self.inner(logits, targets)

    monkeypatch.setattr(builders, "loss_from_config", lambda cfg: Recording(real_loss(cfg)))
    import asl.models as models

    real_create = models.create_model

    def create(*a, **k):
        model = real_create(*a, **k)

        def pre_hook(module, args):
            if module.training:
                if seen["start"] is None:
                    seen["start"] = copy.deepcopy(module.state_dict())
                seen["batches"].append(args[0].detach().clone())

        model.register_forward_pre_hook(pre_hook)
        return model

    monkeypatch.setattr(models, "create_model", create)

    class RecordRate(trainer.Hook):  # a hook: what a user adds to fit without touching the loop
        def after_step(self, t, step, partial):
            seen["lrs"].append(t.lr)
            return False

    data = make_tagged(tmp_path / "d", n_train=K * B, n_val=8)
    cfg = load_config(
        str(REPO / "configs" / "coco_tresnet_m_224.yaml"),
        {
            "dataset": "tagged",
            "data_root": str(data),
            "model_name": "test_resnet",
            "pretrained": False,
            "image_size": 32,
            "batch_size": B,
            "workers": 0,
            "augment": "none",
            "amp": False,
            "output": str(tmp_path / "run"),
            **overrides,
        },
    )
    result = trainer.fit(cfg, hooks=[RecordRate()])
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    return seen, last, result


@pytest.mark.parametrize(
    "overrides",
    [{"epochs": 4, "stop_epoch": 2}, {"epochs": 4, "stop_epoch": 2, "lr": 3e-3, "weight_decay": 0.05}],
    ids=["coco-recipe", "large-lr-and-decay"],
)
def test_fit_takes_the_official_steps(overrides, tmp_path, monkeypatch):
    seen, last, _ = _fit_recording(tmp_path, monkeypatch, **overrides)
    steps = len(seen["lrs"])
    assert steps == 2 * K  # stop_epoch 2: two epochs, the official loop's Stop_epoch 1
    import timm

    model = timm.create_model("test_resnet", num_classes=4)
    model.load_state_dict(seen["start"])
    epoch_batches = [
        list(zip(seen["batches"][e * K : (e + 1) * K], seen["targets"][e * K : (e + 1) * K])) for e in range(2)
    ]

    class Epochs(list):
        """The official loop iterates its loader once per epoch: hand it epoch e's batches."""

        def __init__(self):
            super().__init__(epoch_batches[0])
            self.epoch = 0

        def __iter__(self):
            out = iter(epoch_batches[self.epoch])
            self.epoch += 1
            return out

    model, ema, lrs = official_train(
        model,
        Epochs(),
        lr=overrides.get("lr", 1e-4),
        epochs=overrides["epochs"],
        stop_epoch=overrides["stop_epoch"] - 1,
        weight_decay=overrides.get("weight_decay", 1e-4),
        ema_decay=0.9997,
    )
    assert len(lrs) == steps
    torch.testing.assert_close(
        torch.tensor(seen["lrs"], dtype=torch.float64), torch.tensor(lrs, dtype=torch.float64), rtol=0, atol=1e-12
    )
    ours, ours_ema = last["model"], last["ema"]
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    worst = max(float((ours[k] - model.state_dict()[k]).abs().max()) for k in floats)
    worst_ema = max(float((ours_ema[k] - ema.state_dict()[k]).abs().max()) for k in floats)
    assert worst <= 1e-6 and worst_ema <= 1e-6, (worst, worst_ema)
    moved = max(float((ours[k] - seen["start"][k]).abs().max()) for k in floats)
    assert moved > 100 * max(worst, 1e-8)  # the steps moved the weights far more than the two loops differ


def test_the_recipe_configs_train_the_official_number_of_epochs():
    from asl.config import load_config

    for name in ("coco_tresnet_m_224", "coco_tresnet_l_448", "voc_tresnet_xl_448", "nuswide_tresnet_l_448"):
        cfg = load_config(str(REPO / "configs" / f"{name}.yaml"))
        # the official loop: `for epoch in range(80): if epoch > 40: break` trains epochs 0..40
        assert (cfg.epochs, cfg.stop_epoch) == (80, 41), name
