"""asl.trainer's checks before any work: a resume with other optimizer or schedule settings, a
batch BatchNorm cannot train, a damaged metrics.jsonl, input sizes past any real one."""

from __future__ import annotations

import shutil

import pytest
import torch

from asl.config import load_config
from asl.errors import ConfigError
from tests.conftest import REPO, RUN_SETTINGS, make_tagged
from tests.helpers import TINY, call, one_error

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


def test_own_data_without_config_uses_the_finetuning_base(tmp_path, monkeypatch, capsys):
    data = make_tagged(tmp_path / "mytags", n_train=16, n_val=8)
    monkeypatch.chdir(tmp_path)
    rc, _, err = call("train", [data, "--dataset", "tagged", *TINY], capsys)
    assert rc == 0, err
    cfg = load_config(str(tmp_path / "runs" / "mytags" / "config.yaml"))  # runs/<name of the data folder>
    fine = load_config(str(REPO / "configs" / "finetune.yaml"))
    assert cfg.lr == fine.lr == 1e-4 and cfg.ema_warmup and cfg.ema_decay == fine.ema_decay
    assert cfg.augment == "cutout_randaugment" and cfg.output == "runs/mytags"
    assert "warning:" in "\n".join(err) and "only 8 images" in "\n".join(err)


def test_help_lists_each_flag_once_with_the_default_that_runs(capsys):
    import train

    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert "configs/finetune.yaml" in text and "configs/demo.yaml" in text
    assert text.count("--epochs EPOCHS") == 2  # the usage line and the option list
    assert "--model_path MODEL_PATH" not in text and "--dataset DATASET, --dataset" not in text
    lr_help = " ".join(text.split("--lr LR", 2)[2].split())
    assert lr_help.startswith("learning rate (OneCycle maximum) (default: 0.0001; the demo: 0.002)")
    with pytest.raises(ConfigError) as e:
        train.main(["--epochs", "x"])
    assert "--epochs/" not in str(e.value)


def test_workers_are_capped_at_the_cores(tmp_path):
    from asl.checks import available_cores, prepare_training

    cfg = prepare_training(
        None,
        {
            "dataset": "tagged",
            "data_root": str(make_tagged(tmp_path / "d", 4, 2)),
            "workers": 64,
            "model_name": "test_resnet",
            "image_size": 32,
        },
    )
    assert cfg.workers == min(64, available_cores()) < 64


def test_missing_init_weights_fail_before_the_data_is_read(tmp_path, capsys):
    flags = ["--dataset", "tagged", "--init-checkpoint", tmp_path / "resnet18_imagenet.pth", "--output", tmp_path / "o"]
    rc, _, err = call("train", [tmp_path / "nodata", *flags], capsys)
    one_error(rc, err, "data folder not found")
    data = make_tagged(tmp_path / "d", 4, 2)
    rc, _, err = call("train", [data, *flags], capsys)
    one_error(rc, err, "--pretrained-path")
    assert "not found" in err[-1]
    assert err == [err[-1]]  # nothing logged: no dataset summary came before the error


def test_the_readmes_finetune_command_works_with_a_timm_state_dict(tmp_path, monkeypatch, capsys):
    import timm

    (tmp_path / "models_local").mkdir()
    torch.save(
        timm.create_model("resnet18", pretrained=False).state_dict(),  # the README's line, offline
        tmp_path / "models_local" / "resnet18_imagenet.pth",
    )
    make_tagged(tmp_path / "data" / "mytags", n_train=16, n_val=8)
    monkeypatch.chdir(tmp_path)
    rc, _, err = call(
        "train",
        [
            "data/mytags",
            "--dataset",
            "tagged",
            "--model-name",
            "resnet18",
            "--init-checkpoint",
            "models_local/resnet18_imagenet.pth",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--workers",
            "0",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "head not loaded (fc.bias, fc.weight)" in "\n".join(err)
    assert (tmp_path / "runs" / "mytags" / "best.pth").is_file()


BAD_TRAIN = [
    (["--lr", "-1"], "--lr must be > 0"),
    (["--lr", "nan"], "finite"),
    (["--batch-size", "0"], "--batch-size"),
    (["--image-size", "0"], "--image-size"),
    (["--image-size", "7"], "below 32"),
    (["--augment", "bogus"], "unknown augment"),
    (["--resize", "bogus"], "unknown resize"),
    (["--workers", "-1"], "--workers"),
    (["--optimizer", "foo"], "timm's optimizer registry"),
    (["--accum-steps", "0"], "--accum-steps"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--stop-epoch", "-1"], "--stop-epoch"),
    (["--epochs", "3", "--stop-epoch", "4"], "past the schedule"),
    (["--ema-decay", "2"], "--ema-decay must be in [0, 1)"),
    (["--val-fraction", "-0.5"], "--val-fraction"),
    (["--gamma-neg", "-1"], "--gamma-neg"),
    (["--clip", "1.5"], "--clip"),
    (["--max-bad-fraction", "2"], "fraction"),
    (["--model-name", "resnet_nope"], "unknown model name"),
    (["--loss", "hinge"], "unknown loss"),
    (["--loss", "bce", "--gamma-neg", "4"], "--gamma-neg 4.0 is not read by --loss bce"),
    (["--loss", "focal", "--clip", "0.05"], "--clip 0.05 is not read by --loss focal"),
    (["--loss", "asl", "--focal-gamma", "3"], "--focal-gamma 3.0 is not read by --loss asl"),
    (["--init-checkpoint", "a.pth", "--pretrained-path", "b.pth"], "set the same setting (init_checkpoint)"),
    (["--model-path", "a.pth", "--pretrained-path", "b.pth"], "both name the weights training starts from"),
]


@pytest.mark.parametrize("argv,fragment", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_training_values_fail_before_any_work(argv, fragment, tmp_path, capsys):
    data = make_tagged(tmp_path / "d", 4, 2)
    rc, _, err = call("train", [data, "--dataset", "tagged", "--output", tmp_path / "o", *argv], capsys)
    one_error(rc, err, fragment)
    assert err == [err[-1]] and not (tmp_path / "o").exists()  # no log line, no folder: nothing was done


def test_the_command_line_checks_a_run_once(tmp_path, monkeypatch, capsys):
    import asl.checks as checks
    import asl.trainer as trainer

    calls = []
    real = checks.check_training
    counted = lambda *a, **k: calls.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(checks, "check_training", counted)
    monkeypatch.setattr(trainer, "check_training", counted)
    data = make_tagged(tmp_path / "d", 8, 4)
    rc, _, err = call("train", [data, "--dataset", "tagged", *TINY, "--dry-run", "--output", tmp_path / "o"], capsys)
    assert rc == 0, err
    assert len(calls) == 1
