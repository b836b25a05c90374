"""Nothing a user owns is lost, and every bad input is one ``error:`` line before any work.

One test (at least) per item of the issue: the demo and a user's folder, classes matched by name,
the defaults that run, value checks, outputs, resume mismatches, decompression bombs, small
datasets and plain state dicts. Signals to the process group: tests/test_resume.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from asl import cli
from asl.checkpoint import load_checkpoint
from asl.config import load_config
from asl.data import build_transform, create_dataset
from asl.data.base import split_warnings
from asl.data.demo import generate_demo
from asl.errors import ConfigError, DataError

from .conftest import REPO, make_tagged

TINY = [
    "--no-pretrained",
    "--model-name",
    "test_resnet",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--workers",
    "0",
]


def call(script: str, argv, capsys):
    """Run a script's main in this process: (exit code, stdout, non-empty stderr lines)."""
    module = __import__(script)
    rc = cli.run(module.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, [ln for ln in err.splitlines() if ln.strip()]


def one_error(rc, err, fragment):
    assert rc == 2, err
    assert err and err[-1].startswith("error: ") and sum(ln.startswith("error: ") for ln in err) == 1, err
    assert fragment in err[-1], err[-1]


def tree_digest(root: Path) -> str:
    """Names and bytes of every file under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def png_bomb(path: Path, side: int = 50_000) -> Path:
    """A 60-byte PNG that declares side x side pixels (PIL refuses it as a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


# --- 1. the demo never deletes a user's folder


def test_demo_refuses_a_users_folder_and_leaves_it_intact(tagged_root, trained_run, tmp_path, capsys):
    (tagged_root / "notes.txt").write_text("my notes")
    before = tree_digest(tagged_root)
    rc, _, err = call("train", [tagged_root, "--output", tmp_path / "o"], capsys)  # forgot --dataset tagged
    one_error(rc, err, "--dataset tagged")
    assert "not the built-in demo" in err[-1]
    (tmp_path / "o" / "best.pth").parent.mkdir()
    (tmp_path / "o" / "best.pth").write_bytes(b"an earlier run")
    rc, _, err = call("train", [tagged_root, "--output", tmp_path / "o"], capsys)
    one_error(rc, err, "not the built-in demo")  # the folder's problem comes first, before the output's
    rc, _, err = call(
        "validate", [tagged_root, "--model-path", trained_run["out"] / "best.pth", "--dataset", "demo"], capsys
    )
    one_error(rc, err, "--dataset tagged")
    with pytest.raises(DataError, match="not the built-in demo"):
        generate_demo(tagged_root, num_train=4, num_val=2)
    assert tree_digest(tagged_root) == before


def test_demo_regenerates_only_a_folder_of_its_own(tmp_path):
    root = generate_demo(tmp_path / "demo", num_train=6, num_val=3, image_size=16, num_classes=10)
    generate_demo(root, num_train=5, num_val=2, image_size=16, num_classes=10)  # its own folder: replaced
    assert json.loads((root / "demo.json").read_text())["num_train"] == 5
    (root / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="other files"):
        generate_demo(root, num_train=4, num_val=2, image_size=16, num_classes=10)
    assert (root / "mine.txt").read_text() == "x" and json.loads((root / "demo.json").read_text())["num_train"] == 5
    (tmp_path / "empty").mkdir()
    assert (generate_demo(tmp_path / "empty", num_train=2, num_val=1, image_size=16) / "demo.json").is_file()


# --- 2. validate.py matches classes by name


def _relabel(src: Path, dest: Path, rename=None, order=None) -> Path:
    """A copy of a tagged set with classes renamed and/or a classes.txt in another order."""
    shutil.copytree(src, dest)
    rows = list(csv.reader(open(dest / "labels.csv", newline="")))
    if rename:
        for r in rows[1:]:
            r[1] = "|".join(rename[t] for t in r[1].split("|") if t)
        with open(dest / "labels.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    if order:
        (dest / "classes.txt").write_text("\n".join(order) + "\n")
    return dest


def _val_map(argv, tmp_path, capsys, name):
    rc, _, err = call("validate", [*argv, "--workers", "0", "--output", tmp_path / name], capsys)
    assert rc == 0, err
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_validate_matches_classes_by_name(trained_run, tmp_path, capsys):
    best = trained_run["out"] / "best.pth"
    true = _val_map([trained_run["data"], "--model-path", best], tmp_path, capsys, "a")
    reordered = _relabel(trained_run["data"], tmp_path / "reordered", order=["tree", "sky", "dog", "cat"])
    m = _val_map([reordered, "--model-path", best], tmp_path, capsys, "b")
    assert m["mAP"] == pytest.approx(true["mAP"], abs=1e-9)
    assert m["per_class_ap"] == pytest.approx(true["per_class_ap"])
    renamed = _relabel(
        trained_run["data"],
        tmp_path / "renamed",
        rename={"cat": "kitten", "dog": "puppy", "sky": "sky", "tree": "tree"},
    )
    rc, _, err = call("validate", [renamed, "--model-path", best, "--workers", "0"], capsys)
    one_error(rc, err, "other classes than the dataset's")
    assert "'cat'" in err[-1] and "'kitten'" in err[-1]
    names = tmp_path / "names.txt"  # the checkpoint's outputs under the dataset's (new) names
    names.write_text("kitten\npuppy\nsky\ntree\n")
    m = _val_map([renamed, "--model-path", best, "--class-names", names], tmp_path, capsys, "c")
    assert m["mAP"] == pytest.approx(true["mAP"], abs=1e-9)


def test_calibrated_thresholds_follow_the_models_output_order(trained_run, tmp_path, capsys):
    best = trained_run["out"] / "best.pth"
    reordered = _relabel(trained_run["data"], tmp_path / "reordered", order=["tree", "sky", "dog", "cat"])
    _val_map([trained_run["data"], "--model-path", best, "--calibrate"], tmp_path, capsys, "a")
    _val_map([reordered, "--model-path", best, "--calibrate"], tmp_path, capsys, "b")
    a = load_checkpoint(tmp_path / "a" / "calibrated.pth")["thresholds"]
    b = load_checkpoint(tmp_path / "b" / "calibrated.pth")["thresholds"]
    assert a == pytest.approx(b)


# --- 3. defaults you can see


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
    rc, _, err = call(
        "train",
        [
            tmp_path / "nodata",
            "--dataset",
            "tagged",
            "--init-checkpoint",
            tmp_path / "resnet18_imagenet.pth",
            "--output",
            tmp_path / "o",
        ],
        capsys,
    )
    one_error(rc, err, "data folder not found")
    data = make_tagged(tmp_path / "d", 4, 2)
    rc, _, err = call(
        "train",
        [
            data,
            "--dataset",
            "tagged",
            "--init-checkpoint",
            tmp_path / "resnet18_imagenet.pth",
            "--output",
            tmp_path / "o",
        ],
        capsys,
    )
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


# --- 4. every value checked before any work

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
]


@pytest.mark.parametrize("argv,fragment", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_training_values_fail_before_any_work(argv, fragment, tmp_path, capsys):
    data = make_tagged(tmp_path / "d", 4, 2)
    rc, _, err = call("train", [data, "--dataset", "tagged", "--output", tmp_path / "o", *argv], capsys)
    one_error(rc, err, fragment)
    assert err == [err[-1]] and not (tmp_path / "o").exists()  # no log line, no folder: nothing was done


def test_bad_inference_and_validation_values(trained_run, tmp_path, capsys):
    best, pic = trained_run["out"] / "best.pth", trained_run["data"] / "img" / "0000.png"
    for argv, fragment in (
        (["--batch-size", "0"], "--batch-size"),
        (["--top-k", "-1"], "--top-k"),
        (["--th", "2"], "--th must be in [0, 1]"),
        (["--num-classes", "5"], "has 4"),
    ):
        rc, out, err = call("infer", ["--model-path", best, "--pic-path", pic, *argv], capsys)
        one_error(rc, err, fragment)
        assert out == ""
    rc, _, err = call("validate", ["--model-path", best, "--thre", "-3"], capsys)
    one_error(rc, err, "--thre must be in [0, 1]")


# --- 5. outputs


def test_a_folder_with_an_earlier_best_pth_is_refused(trained_run, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    shutil.copy(trained_run["out"] / "best.pth", out / "best.pth")
    before = (out / "best.pth").read_bytes()
    rc, _, err = call("train", [trained_run["data"], "--dataset", "tagged", *TINY, "--output", out], capsys)
    one_error(rc, err, "already holds a run (best.pth)")
    assert err[-1].index("choose a new --output") < err[-1].index("--overwrite")
    assert (out / "best.pth").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["best.pth"]


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_unwritable_outputs_fail_before_any_work(where, trained_run, tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    out = {"file": tmp_path / "f", "under_file": tmp_path / "f" / "sub", "proc": Path("/proc/asl_run")}[where]
    rc, _, err = call("train", [trained_run["data"], "--dataset", "tagged", *TINY, "--output", out], capsys)
    one_error(rc, err, "--output")
    assert err == [err[-1]]
    rc, out_text, err = call("validate", ["--model-path", trained_run["out"] / "best.pth", "--output", out], capsys)
    one_error(rc, err, "--output")
    assert out_text == "" and (tmp_path / "f").read_text() == "mine"


def test_save_image_is_checked_before_tagging(trained_run, tmp_path, capsys):
    best, pic = trained_run["out"] / "best.pth", trained_run["data"] / "img" / "0000.png"
    for dest, fragment in (
        (tmp_path / "x.unknownext", "unknown picture format"),
        (pic, "already exists"),
        (Path("/proc/x.png"), "cannot write"),
    ):
        before = pic.read_bytes()
        rc, out, err = call("infer", ["--model-path", best, "--pic-path", pic, "--save-image", dest], capsys)
        one_error(rc, err, fragment)
        assert out == "" and pic.read_bytes() == before


@pytest.mark.slow
def test_closed_stdout_ends_quietly(trained_run):
    cmd = (
        f"{sys.executable} {REPO / 'infer.py'} --model-path {trained_run['out'] / 'best.pth'} "
        f"--pic-path {trained_run['data'] / 'img'} --th 0 | head -1"
    )
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and "0000.png" in proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


# --- 6. resume mismatches name what differs


def test_resume_of_another_run_names_the_difference(trained_run, tmp_path, capsys):
    last = trained_run["out"] / "last.pth"
    rc, _, err = call(
        "train",
        [
            trained_run["data"],
            "--dataset",
            "tagged",
            *TINY,
            "--model-name",
            "resnet10t",
            "--resume",
            last,
            "--output",
            tmp_path / "a",
        ],
        capsys,
    )
    one_error(rc, err, "model test_resnet vs resnet10t")
    assert err == [err[-1]]
    three = make_tagged(tmp_path / "three", classes=("cat", "dog", "sky"))
    same = [*TINY[:-4], "--epochs", "2", "--lr", "3e-3", "--ema-decay", "0.9", "--seed", "1", "--workers", "0"]
    rc, _, err = call(
        "train", [three, "--dataset", "tagged", *same, "--resume", last, "--output", tmp_path / "b"], capsys
    )
    one_error(rc, err, "4 classes vs 3")
    assert "Traceback" not in "\n".join(err) and len(err[-1]) < 400


# --- 8. decompression bombs are unreadable images


def test_decompression_bomb_is_skipped_in_training_and_refused_by_infer(trained_run, tmp_path, capsys):
    data = make_tagged(tmp_path / "d", n_train=16, n_val=8)
    png_bomb(data / "img" / "0003.png")  # a training image
    png_bomb(data / "img" / "0020.png")  # a validation image
    rc, _, err = call("train", [data, "--dataset", "tagged", *TINY, "--output", tmp_path / "o"], capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["bad_images"] == 2 and "DecompressionBombError" in "\n".join(err)
    rc, out, err = call(
        "infer", ["--model-path", trained_run["out"] / "best.pth", "--pic-path", data / "img" / "0003.png"], capsys
    )
    one_error(rc, err, "cannot read image")
    assert "DecompressionBombError" in err[-1] and out == ""


# --- 9. small datasets


def test_missing_files_are_listed_when_the_dataset_is_built(tagged_root, caplog):
    for i in (1, 5, 7):
        (tagged_root / "img" / f"{i:04d}.png").unlink()
    ds = create_dataset("tagged", str(tagged_root), "train", build_transform(False, 32))
    assert "3 of 48 images are missing" in caplog.text and "0005.png" in caplog.text
    assert ds.bad_count == 3  # counted before any image is read; 3 <= 5 (--max-bad-images) goes on
    with pytest.raises(DataError, match="3 of 48 images are missing or unreadable .*--max-bad-images"):
        create_dataset("tagged", str(tagged_root), "train", build_transform(False, 32), max_bad_images=2)


def test_one_bad_photo_does_not_stop_a_small_set(tmp_path, capsys):
    data = make_tagged(tmp_path / "d", n_train=16, n_val=8)
    (data / "img" / "0002.png").write_bytes(b"not a png")
    rc, _, err = call("train", [data, "--dataset", "tagged", *TINY, "--output", tmp_path / "o"], capsys)
    assert rc == 0, err
    rc, _, err = call(
        "train", [data, "--dataset", "tagged", *TINY, "--output", tmp_path / "s", "--max-bad-images", "0"], capsys
    )
    one_error(rc, err, "--max-bad-images")


def test_utf8_bom_duplicates_and_overlap_are_handled(tmp_path, caplog):
    data = make_tagged(tmp_path / "d", n_train=8, n_val=4)
    rows = (data / "labels.csv").read_text().splitlines()
    rows += [rows[1], rows[2].replace(",train", ",val")]  # a duplicate row; a training image also in val
    (data / "labels.csv").write_bytes(b"\xef\xbb\xbf" + ("\n".join(rows) + "\n").encode())  # Excel's UTF-8
    train = create_dataset("tagged", str(data), "train")
    val = create_dataset("tagged", str(data), "val")
    assert len(train) == 9 and len(val) == 5
    assert "1 rows repeat an image" in caplog.text and "0000.png" in caplog.text
    warnings = split_warnings(train, val)
    assert any("1 images are in both" in w and "0001.png" in w for w in warnings)
    assert any("only 5 images" in w for w in warnings)
    assert split_warnings(None, create_dataset("tagged", str(make_tagged(tmp_path / "big", 2, 60)), "val")) == []


def test_plain_timm_state_dict_validates_and_infers(trained_run, tmp_path, capsys):
    best = trained_run["out"] / "best.pth"
    plain = tmp_path / "plain.pth"
    torch.save(load_checkpoint(best)["model"], plain)  # what `torch.save(model.state_dict())` writes
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nsky\ntree\n")
    true = _val_map([trained_run["data"], "--model-path", best], tmp_path, capsys, "a")
    common = ["--model-name", "test_resnet", "--dataset", "tagged", "--image-size", "32"]
    m = _val_map([trained_run["data"], "--model-path", plain, *common, "--class-names", names], tmp_path, capsys, "b")
    assert m["mAP"] == pytest.approx(true["mAP"], abs=1e-9)
    rc, out, err = call(
        "infer",
        [
            "--model-path",
            plain,
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--pic-path",
            trained_run["data"] / "img" / "0000.png",
            "--th",
            "0",
            "--json",
            "--class-names",
            names,
        ],
        capsys,
    )
    assert rc == 0, err
    assert {lab["label"] for lab in json.loads(out)[0]["labels"]} == {"cat", "dog", "sky", "tree"}
    rc, out, err = call(
        "infer",
        [
            "--model-path",
            plain,
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--pic-path",
            trained_run["data"] / "img" / "0000.png",
            "--th",
            "0",
            "--json",
        ],
        capsys,
    )
    assert rc == 0 and {lab["label"] for lab in json.loads(out)[0]["labels"]} == {f"class_{k}" for k in range(4)}
    names.write_text("cat\ndog\nsky\n")
    rc, _, err = call(
        "infer",
        [
            "--model-path",
            plain,
            "--model-name",
            "test_resnet",
            "--pic-path",
            trained_run["data"] / "img" / "0000.png",
            "--class-names",
            names,
        ],
        capsys,
    )
    one_error(rc, err, "lists 3 names, the model has 4 classes")


def test_the_checked_names_are_the_ones_the_library_takes():
    from asl.config import CHOICES
    from asl.data import DATASETS
    from asl.data.transforms import AUGMENTATIONS
    from asl.data.voc import DIFFICULT
    from asl.functional import REDUCTIONS
    from asl.losses import LOSSES

    assert set(CHOICES["augment"]) == set(AUGMENTATIONS) and set(CHOICES["dataset"]) == set(DATASETS)
    assert set(CHOICES["difficult"]) == set(DIFFICULT) and set(CHOICES["loss_reduction"]) == set(REDUCTIONS)
    assert set(CHOICES["loss"]) == set(LOSSES) - {"asl_single_label"}  # train.py's losses are multi-label
