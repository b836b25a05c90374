"""asl.trainer's checks before any work: a resume with other optimizer or schedule settings, a
batch BatchNorm cannot train, a damaged metrics.jsonl, input sizes past any real one."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import RUN_SETTINGS, make_tagged
from tests.test_safety import TINY, call, one_error

SAME = RUN_SETTINGS  # trained_run's own settings


def _set(argv, flag, value):
    i = argv.index(flag) if flag in argv else None
    return argv[:i] + [flag, value] + argv[i + 2 :] if i is not None else argv + [flag, value]


@pytest.mark.parametrize(
    "flag,value,shown",
    [
        ("--epochs", "5", "--epochs 2 vs 5"),
        ("--batch-size", "8", "--batch-size 16 vs 8"),
        ("--optimizer", "sgd", "--optimizer 'adam' vs 'sgd'"),
        ("--accum-steps", "2", "--accum-steps 1 vs 2"),
        ("--lr", "0.01", "--lr 0.003 vs 0.01"),
    ],
)
def test_a_resume_with_other_optimizer_or_schedule_settings_is_refused_first(
    flag, value, shown, trained_run, tmp_path, capsys
):
    out = tmp_path / "out"
    shutil.copytree(trained_run["out"], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, _, err = call(
        "train",
        [
            trained_run["data"],
            "--dataset",
            "tagged",
            *_set(SAME, flag, value),
            "--resume",
            out / "last.pth",
            "--output",
            out,
        ],
        capsys,
    )
    one_error(rc, err, shown)
    assert err == [err[-1]]  # before any work: no line of training
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_resume_with_the_same_settings_continues(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(trained_run["out"], out)
    rc, _, err = call(
        "train",
        [
            trained_run["data"],
            "--dataset",
            "tagged",
            *_set(SAME, "--epochs", "2"),
            "--stop-epoch",
            "2",
            "--resume",
            out / "last.pth",
            "--output",
            out,
        ],
        capsys,
    )
    assert rc == 0, err


def test_a_batch_of_one_that_batchnorm_cannot_train_is_refused_before_training(tmp_path, capsys):
    data = make_tagged(tmp_path / "d", n_train=8, n_val=4)
    rc, _, err = call(
        "train", [data, "--dataset", "tagged", *_set(TINY, "--batch-size", "1"), "--output", tmp_path / "o"], capsys
    )
    one_error(rc, err, "BatchNorm needs more than one value per channel")
    one = make_tagged(tmp_path / "one", n_train=1, n_val=4)  # a training split of a single picture
    rc, _, err = call("train", [one, "--dataset", "tagged", *TINY, "--output", tmp_path / "o1"], capsys)
    one_error(rc, err, "use --batch-size 2")
    # 17 images, batch 16: the last batch would be one picture; it is dropped and training runs
    data17 = make_tagged(tmp_path / "d17", n_train=17, n_val=4)
    rc, _, err = call("train", [data17, "--dataset", "tagged", *TINY, "--output", tmp_path / "o17"], capsys)
    assert rc == 0, err


def test_a_damaged_metrics_file_is_one_error_line_on_resume(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(trained_run["out"], out)
    (out / "metrics.jsonl").write_text('{"epoch": 0, "mAP": 1}\n{"epoch": 1, "mAP"\n')
    rc, _, err = call(
        "train",
        [trained_run["data"], "--dataset", "tagged", *SAME, "--resume", out / "last.pth", "--output", out],
        capsys,
    )
    one_error(rc, err, "metrics.jsonl is damaged")


def test_input_sizes_past_any_real_one_are_refused(trained_run, tmp_path, capsys):
    (tmp_path / "big.yaml").write_text("image_size: 100000\n")
    rc, _, err = call("train", ["--config", tmp_path / "big.yaml", "--output", tmp_path / "o"], capsys)
    one_error(rc, err, "--image-size must be in [1, 4096]")
    import torch

    ckpt = torch.load(trained_run["out"] / "best.pth", weights_only=True)
    torch.save(dict(ckpt, image_size=100000), tmp_path / "big.pth")
    rc, _, err = call(
        "infer", ["--model-path", tmp_path / "big.pth", "--pic-path", trained_run["data"] / "img" / "0000.png"], capsys
    )
    one_error(rc, err, "'image_size' must be a whole number in [1, 4096]")
