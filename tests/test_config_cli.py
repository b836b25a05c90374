"""Config schema, flag parsing, and the one-line error contract of the three scripts."""

from __future__ import annotations

import pickle

import pytest
import torch

from asl import cli
from asl.config import Config, dump_config, load_config
from asl.errors import ConfigError
from tests.helpers import assert_one_line_error, run_script

from .conftest import REPO
from .helpers import call, one_error


def test_yaml_numbers_are_coerced_and_flags_override(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 1e-4\nepochs: '3'\nema: 'false'\nstop_epoch: null\nclip: 0\n")
    cfg = load_config(str(cfg_file))
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.epochs == 3 and cfg.ema is False and cfg.stop_epoch is None and cfg.clip == 0.0
    parser = cli.build_parser("t", "t", cli.TRAIN_FIELDS, positional_data=True)
    cfg = cli.parse_args(parser, ["--config", str(cfg_file), "--lr", "0.5", "some/root", "--no-ema", "-b", "7"])
    assert cfg.lr == 0.5 and cfg.data_root == "some/root" and cfg.ema is False and cfg.batch_size == 7
    assert cfg.epochs == 3  # from the file, not overridden


def test_unknown_key_and_wrong_type_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key learning_rate"):
        load_config(str(bad))
    bad.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_config(str(bad))
    bad.write_text("epochs: 2.5\n")
    with pytest.raises(ConfigError):
        load_config(str(bad))
    bad.write_text("epochs: 2.5e0\n")  # an exponent form (a string to PyYAML) is refused alike
    with pytest.raises(ConfigError, match="epochs"):
        load_config(str(bad))
    bad.write_text("epochs: 3e0\n")
    assert load_config(str(bad)).epochs == 3


def test_official_spellings_map_to_the_same_fields():
    parser = cli.build_parser("infer", "i", cli.INFER_FIELDS)
    a = cli.parse_args(
        parser,
        [
            "--model_path",
            "m.pth",
            "--pic_path",
            "a.jpg",
            "b.jpg",
            "--input_size",
            "224",
            "--model_name",
            "tresnet_m",
            "--th",
            "0.5",
            "--dataset_type",
            "OpenImages",
        ],
    )
    b = cli.parse_args(
        parser,
        [
            "--model-path",
            "m.pth",
            "--pic-path",
            "a.jpg",
            "b.jpg",
            "--input-size",
            "224",
            "--model-name",
            "tresnet_m",
            "--th",
            "0.5",
            "--dataset-type",
            "OpenImages",
        ],
    )
    assert a == b
    assert a.image_size == 224 and a.pic_path == ["a.jpg", "b.jpg"] and a.th == 0.5


def test_config_round_trip(tmp_path):
    cfg = Config(lr=3e-4, pic_path=["x.png"], stop_epoch=4)
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")) == cfg


def only_error(rc, err, fragment):
    """Exit 2 and one ``error:`` line, the only stderr line (the command run in this process)."""
    one_error(rc, err, fragment)
    assert err == [err[-1]], err


@pytest.mark.parametrize("script", ["train", "validate", "infer"])
def test_missing_config_file(script, tmp_path, capsys):
    only_error(*call(script, ["--config", tmp_path / "nope.yaml"], capsys)[::2], "config file not found")


def test_unknown_config_key_via_cli(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: demo\nbatchsize: 4\n")
    only_error(*call("train", ["--config", bad], capsys)[::2], "unknown key batchsize")


def test_flag_of_wrong_type(capsys):
    only_error(*call("train", ["--epochs", "abc"], capsys)[::2], "--epochs")
    only_error(*call("validate", ["--thre", "high"], capsys)[::2], "--thre")


@pytest.mark.slow
def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    assert_one_line_error(run_script("validate.py", "--model-path", junk), "not a readable PyTorch checkpoint")
    assert_one_line_error(
        run_script("infer.py", "--model-path", junk, "--pic-path", REPO / "pics" / "demo.png"),
        "not a readable PyTorch checkpoint",
    )
    assert_one_line_error(run_script("validate.py", "--model-path", tmp_path / "missing.pth"), "not found")


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path, capsys, monkeypatch):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    monkeypatch.chdir(tmp_path)  # where the payload would write
    only_error(*call("validate", ["--model-path", evil], capsys)[::2], "refused")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "name",
    [
        "demo",
        "coco_tresnet_l_448",
        "coco_tresnet_m_224",
        "voc_tresnet_xl_448",
        "nuswide_tresnet_l_448",
        "custom_example",
        "finetune",
    ],
)
def test_shipped_configs_load(name):
    import timm

    from asl.data import DATASETS

    cfg = load_config(str(REPO / "configs" / f"{name}.yaml"))
    assert cfg.dataset in DATASETS and cfg.loss == "asl" and cfg.gamma_neg == 4 and cfg.clip == 0.05
    if name != "demo":
        assert cfg.lr == 1e-4 and cfg.weight_decay == 1e-4 and cfg.ema_decay >= 0.999
        assert cfg.augment == "cutout_randaugment" and cfg.resize == "squish"
    assert timm.is_model(cfg.model_name)  # the name resolves, without building the (large) model


def test_the_checked_names_are_the_ones_the_library_takes():
    from asl.config import CHOICES
    from asl.data import DATASETS
    from asl.data.transforms import AUGMENTATIONS
    from asl.data.voc import DIFFICULT
    from asl.functional import REDUCTIONS
    from asl.losses import LOSSES

    assert set(CHOICES["augment"]) == set(AUGMENTATIONS) and set(CHOICES["dataset"]) == set(DATASETS) | {"auto"}
    assert set(CHOICES["difficult"]) == set(DIFFICULT) and set(CHOICES["loss_reduction"]) == set(REDUCTIONS)
    from asl.losses import SINGLE_LABEL_LOSSES

    assert set(CHOICES["loss"]) == set(LOSSES) | set(SINGLE_LABEL_LOSSES)  # both tasks' losses


def test_a_flag_that_means_something_else_per_command_has_its_own_help(capsys):
    """--output is the run's folder to train.py, a folder of metrics to validate.py and a file to export.py."""
    import export
    import train
    import validate

    texts = {}
    for name, module in (("train", train), ("validate", validate), ("export", export)):
        with pytest.raises(SystemExit) as info:
            cli.run(module.main, ["--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        texts[name] = " ".join(out[out.index("--output OUTPUT, -o OUTPUT") :].split()[:12])
    assert "the run's folder" in texts["train"]
    assert "metrics.json" in texts["validate"] and "run's folder" not in texts["validate"]
    assert "the .onnx file" in texts["export"] and "run's folder" not in texts["export"]
