"""train.py -> validate.py -> infer.py on a tiny tagged set, through the command lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from asl import cli
from asl.checkpoint import load_checkpoint

from .helpers import assert_one_line_error, run_script


def test_train_writes_the_run(trained_run):
    out = trained_run["out"]
    for f in ("last.pth", "best.pth", "metrics.jsonl", "config.yaml", "curves.png"):
        assert (out / f).is_file(), f
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1]
    for r in recs:
        assert {"epoch", "train_loss", "mAP", "mAP_ema", "lr", "seconds"} <= set(r)
        assert 0 <= r["mAP"] <= 100 and np.isfinite(r["train_loss"])
    ckpt = load_checkpoint(out / "best.pth")
    assert ckpt["num_classes"] == 4 and ckpt["idx_to_class"] == {0: "cat", 1: "dog", 2: "sky", 3: "tree"}
    assert ckpt["model_name"] == "test_resnet" and ckpt["image_size"] == 32
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert ckpt["config"]["epochs"] == 2
    last = load_checkpoint(out / "last.pth")
    assert {"optimizer", "scheduler", "ema", "epoch"} <= set(last)
    assert yaml.safe_load((out / "config.yaml").read_text())["model_name"] == "test_resnet"
    best_map = max(max(r["mAP"], r["mAP_ema"]) for r in recs)
    assert ckpt["mAP"] == best_map


def test_refuses_to_overwrite_a_run(trained_run):
    proc = run_script("train.py", trained_run["data"], "--dataset", "tagged", "--output", trained_run["out"])
    assert_one_line_error(proc, "already holds a run")


def test_validate_reproduces_training_map(trained_run, tmp_path, capsys):
    import validate

    out = trained_run["out"]
    rc = cli.run(
        validate.main,
        ["--model-path", str(out / "best.pth"), "--output", str(tmp_path / "v"), "--workers", "0", "--calibrate"],
    )
    assert rc == 0
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert {"mAP", "CP", "CR", "CF1", "F_C", "OP", "OR", "OF1", "num_images", "per_class_ap"} <= set(m)
    assert m["num_images"] == 24 and set(m["per_class_ap"]) == {"cat", "dog", "sky", "tree"}
    assert abs(m["mAP"] - load_checkpoint(out / "best.pth")["mAP"]) < 1e-6
    scores, targets = np.load(tmp_path / "v" / "scores.npy"), np.load(tmp_path / "v" / "targets.npy")
    assert scores.shape == targets.shape == (24, 4)
    cal = load_checkpoint(tmp_path / "v" / "calibrated.pth")
    assert len(cal["thresholds"]) == 4
    printed = capsys.readouterr().out
    assert "mAP" in printed and f"CF1 {m['CF1']:.2f}  F_C {m['F_C']:.2f}" in printed


def test_infer_json_and_picture(trained_run, tmp_path, capsys):
    import infer

    out, data = trained_run["out"], trained_run["data"]
    rc = cli.run(
        infer.main,
        [
            "--model_path",
            str(out / "best.pth"),
            "--pic_path",
            str(data / "img"),
            "--json",
            "--th",
            "0.0",
            "--top-k",
            "2",
            "--save-image",
            str(tmp_path / "p.png"),
        ],
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res) == 72 and res[0]["image"].endswith("0000.png")
    for r in res:
        assert len(r["labels"]) == 2
        scores = [lab["score"] for lab in r["labels"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert {lab["label"] for lab in r["labels"]} <= {"cat", "dog", "sky", "tree"}
    assert (tmp_path / "p.png").is_file()
    rc = cli.run(
        infer.main, ["--model-path", str(out / "best.pth"), "--pic-path", str(data / "img" / "0001.png"), "--th", "1.0"]
    )
    assert rc == 0 and "(no label)" in capsys.readouterr().out


@pytest.mark.slow
def test_infer_bad_inputs(trained_run, tmp_path):
    best = trained_run["out"] / "best.pth"
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_script("infer.py", "--model-path", best, "--pic-path", tmp_path / "empty"), "no images")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert_one_line_error(run_script("infer.py", "--model-path", best, "--pic-path", bad), "cannot read image")
    assert_one_line_error(
        run_script("infer.py", "--model-path", best, "--pic-path", bad, "--model-name", "resnet18"),
        "does not fit resnet18",
    )


def test_validate_wrong_class_count(trained_run, tmp_path):
    ckpt = load_checkpoint(trained_run["out"] / "best.pth")
    ckpt["num_classes"] = 5
    torch.save(ckpt, tmp_path / "wrong.pth")
    assert_one_line_error(run_script("validate.py", "--model-path", tmp_path / "wrong.pth"), "does not fit")


@pytest.mark.slow
def test_train_bad_inputs(trained_run, tmp_path):
    data = trained_run["data"]
    assert_one_line_error(
        run_script("train.py", data, "--dataset", "tagged", "--model-name", "resnet_nope", "--output", tmp_path / "a"),
        "unknown model name",
    )
    assert_one_line_error(
        run_script("train.py", data, "--dataset", "tagged", "--loss", "hinge", "--output", tmp_path / "b"),
        "unknown loss",
    )
    assert_one_line_error(
        run_script(
            "train.py",
            data,
            "--dataset",
            "tagged",
            "--no-pretrained",
            "--model-name",
            "test_resnet",
            "--resume",
            trained_run["out"] / "best.pth",
            "--output",
            tmp_path / "c",
        ),
        "cannot resume",
    )
    assert_one_line_error(
        run_script("train.py", tmp_path / "nowhere", "--dataset", "tagged", "--output", tmp_path / "d"), "not found"
    )


def test_infer_uses_the_official_infer_preprocessing_and_strict_threshold(trained_run, tmp_path, capsys):
    from PIL import Image

    import infer
    from asl.data.transforms import build_infer_transform, build_transform
    from asl.opening import model_from_checkpoint

    rng = np.random.default_rng(0)
    pic = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (61, 97, 3), dtype=np.uint8)).save(pic)  # not square, not 32 px
    img = Image.open(pic).convert("RGB")
    # the official infer.py: im.resize((S, S)), np.array(uint8), permute, float() / 255.0
    official = torch.from_numpy(np.array(img.resize((32, 32)), dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    assert torch.equal(build_infer_transform(32)(img), official)
    assert not torch.equal(build_transform(False, 32)(img), official)  # validate.py's bilinear resize differs
    model, info = model_from_checkpoint(load_checkpoint(trained_run["out"] / "best.pth"))
    mean, std = torch.tensor(info["mean"])[:, None, None], torch.tensor(info["std"])[:, None, None]
    with torch.inference_mode():
        scores = torch.sigmoid(model(((official - mean) / std)[None]))[0]
    th = float(scores.median())  # a threshold equal to a score: strict > leaves that class out
    rc = cli.run(
        infer.main,
        ["--model-path", str(trained_run["out"] / "best.pth"), "--pic-path", str(pic), "--json", "--th", repr(th)],
    )
    assert rc == 0
    labels = json.loads(capsys.readouterr().out)[0]["labels"]
    expected = {info["class_names"][k]: round(float(scores[k]), 4) for k in range(4) if scores[k] > th}
    assert {lab["label"]: lab["score"] for lab in labels} == expected
