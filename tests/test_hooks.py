"""asl.hooks: the TensorBoard hook's event file holds the per-step and per-epoch scalars and the
per-class PR curves (read back with TensorBoard's own reader)."""

from __future__ import annotations

import pytest

from tests.conftest import make_tagged
from tests.helpers import TINY, call, one_error


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_writes_scalars_and_pr_curves(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    data = make_tagged(tmp_path / "d", 16, 8)
    out = tmp_path / "run"
    argv = [data, "--dataset", "tagged", "--output", out, *TINY, "--batch-size", "4", "--epochs", "2"]
    rc, _, err = call("train", [*argv, "--tensorboard", "--loss", "adaptive_asl"], capsys)
    assert rc == 0, err
    acc = _events(out / "tensorboard")
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/gamma_neg", "epoch/mAP", "epoch/mAP_ema", "epoch/train_loss"} <= scalars
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))  # 4 steps per epoch, 2 epochs
    assert [e.step for e in acc.Scalars("epoch/mAP")] == [0, 1]
    import json

    maps = [json.loads(line)["mAP"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [round(e.value, 3) for e in acc.Scalars("epoch/mAP")] == [round(m, 3) for m in maps]
    pr = {t for t in acc.Tags()["tensors"] if t.startswith("pr/")}
    assert {p.split("/")[1] for p in pr} == {"cat", "dog", "sky", "tree"}


def test_log_dir_and_a_missing_extra_are_checked_before_work(tmp_path, capsys, monkeypatch):
    data = make_tagged(tmp_path / "d", 4, 2)
    rc, _, err = call("train", [data, "--dataset", "tagged", "--log-dir", data / "tb", *TINY], capsys)
    one_error(rc, err, "is inside the dataset folder")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    rc, _, err = call(
        "train", [data, "--dataset", "tagged", "--tensorboard", "--output", tmp_path / "o", *TINY], capsys
    )
    one_error(rc, err, "pip install '.[tensorboard]'")
    assert not (tmp_path / "o").exists()


def test_a_full_disk_under_the_event_files_is_one_error_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    import errno
    import threading

    import torch.utils.tensorboard as tb

    class Full(tb.SummaryWriter):
        def add_scalar(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tb, "SummaryWriter", Full)
    hook = threading.excepthook
    data = make_tagged(tmp_path / "d", 8, 4)
    argv = [data, "--dataset", "tagged", "--output", tmp_path / "run", *TINY, "--batch-size", "4", "--tensorboard"]
    rc, _, err = call("train", argv, capsys)
    one_error(rc, err, f"cannot write {tmp_path / 'run' / 'tensorboard'}: No space left on device")
    assert threading.excepthook is hook  # the run's quieting of the writer thread is undone
