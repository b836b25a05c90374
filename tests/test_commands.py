"""The commands (asl.cli, asl.config, asl.infer, asl.export) on inputs a new user gives them:
missing PyTorch, odd standard outputs, odd YAML, pictures PIL cannot write or read."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asl.checkpoint import load_checkpoint
from asl.config import load_config
from asl.errors import ConfigError
from tests.conftest import REPO
from tests.helpers import call, one_error, tree_digest, validation_metrics

NO_TORCH = "import sys\nfor m in ('torch', 'timm', 'torchvision'): sys.modules[m] = None\n"


@pytest.fixture(scope="module")
def onnx_model(trained_run, tmp_path_factory):
    from asl import cli
    from asl.export import main

    dest = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    assert cli.run(main, ["--model-path", str(trained_run["out"] / "best.pth"), "--output", str(dest)]) == 0
    return dest


def _run(code: str, *, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


def _last(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines, proc.stderr
    return lines[-1]


@pytest.mark.slow
def test_without_pytorch_each_command_says_what_is_needed(trained_run, onnx_model):
    pic = trained_run["data"] / "img" / "0000.png"
    for script, argv in (
        ("validate", [str(trained_run["data"]), "--dataset", "tagged", "--model-path", str(onnx_model)]),
        ("infer", ["--model-path", str(trained_run["out"] / "best.pth"), "--pic-path", str(pic)]),
        ("train", []),
    ):
        proc = _run(NO_TORCH + f"from asl import cli\nimport {script}\nsys.exit(cli.run({script}.main, {argv!r}))")
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert _last(proc).startswith("error: this command needs PyTorch") and "requirements.txt" in _last(proc)
        assert "requirements-infer.txt" in _last(proc)  # the way to tag without it


@pytest.mark.slow
def test_a_full_or_closed_stdout_is_one_error_line(trained_run):
    cmd = [
        sys.executable,
        str(REPO / "infer.py"),
        "--model-path",
        str(trained_run["out"] / "best.pth"),
        "--pic-path",
        str(trained_run["data"] / "img"),
        "--th",
        "0",
    ]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert _last(proc) == "error: cannot write to standard output: No space left on device"
    proc = subprocess.run(["bash", "-c", " ".join(cmd) + " >&-"], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and proc.returncode == 0, proc.stderr  # nowhere to print: nothing to say


def test_unicode_class_names_on_an_ascii_only_stdout_are_escaped(trained_run, tmp_path, capsys):
    import torch

    ckpt = torch.load(trained_run["out"] / "best.pth", weights_only=True)
    torch.save(dict(ckpt, idx_to_class={0: "café", 1: "chien", 2: "ciel", 3: "arbre"}), tmp_path / "u.pth")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "infer.py"),
            "--model-path",
            str(tmp_path / "u.pth"),
            "--pic-path",
            str(trained_run["data"] / "img"),
            "--th",
            "0",
        ],
        capture_output=True,
        timeout=120,
        env=dict(os.environ, PYTHONIOENCODING="ascii"),
    )
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr
    assert b"caf\\xe9" in proc.stdout


def test_yaml_keys_that_are_not_names_duplicates_and_home_paths(tmp_path, monkeypatch):
    for text in ("1: 2\n", "null: 2\n", "true: 2\n"):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match="keys must be setting names"):
            load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "c.yaml").write_text("lr: 0.1\nepochs: 3\nlr: 0.2\n")
    with pytest.raises(ConfigError, match="line 3 .*'lr' is given twice"):
        load_config(str(tmp_path / "c.yaml"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "c.yaml").write_text("output: ~/runs/x\ndata_root: ~/data\n")
    cfg = load_config(str(tmp_path / "c.yaml"))
    assert cfg.output == str(tmp_path / "home" / "runs" / "x") and cfg.data_root == str(tmp_path / "home" / "data")


@pytest.mark.parametrize("ext", [".psd", ".fits", ".xpm", ".cur", ".blp"])
def test_save_image_in_a_format_pil_cannot_write_is_refused_before_tagging(ext, trained_run, tmp_path, capsys):
    rc, out, err = call(
        "infer",
        [
            "--model-path",
            trained_run["out"] / "best.pth",
            "--pic-path",
            trained_run["data"] / "img" / "0000.png",
            "--save-image",
            tmp_path / f"x{ext}",
        ],
        capsys,
    )
    one_error(rc, err, "cannot write them")
    assert out == "" and not (tmp_path / f"x{ext}").exists()


def test_a_folder_with_bad_pictures_is_tagged_and_the_bad_ones_named(trained_run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        shutil.copy(trained_run["data"] / "img" / f"000{i}.png", folder / f"p{i}.png")
    shutil.copy(trained_run["data"] / "img" / "0003.png", folder / "p3.jfif")  # a JPEG by another name
    (folder / "._p0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # what macOS leaves on a USB stick
    os.mkfifo(folder / "pipe.jpg")  # would block a reader forever
    rc, out, err = call(
        "infer", ["--model-path", trained_run["out"] / "best.pth", "--pic-path", folder, "--json", "--th", "0"], capsys
    )
    assert rc == 0, err
    tagged = sorted(os.path.basename(r["image"]) for r in json.loads(out))
    assert tagged == ["p0.png", "p1.png", "p2.png", "p3.jfif"]
    assert any("._p0.png" in ln for ln in err) and not any("pipe.jpg" in ln for ln in err)


def test_model_name_is_not_silently_ignored_for_an_onnx_model(trained_run, onnx_model, capsys):
    pic = trained_run["data"] / "img" / "0000.png"
    rc, _, err = call("infer", ["--model-path", onnx_model, "--pic-path", pic, "--model-name", "resnet50"], capsys)
    one_error(rc, err, "--model-name resnet50 does not apply")
    rc, _, err = call("infer", ["--model-path", onnx_model, "--pic-path", pic, "--model-name", "test_resnet"], capsys)
    assert rc == 0, err  # the name it was exported from
    rc, _, err = call(
        "validate",
        [trained_run["data"], "--dataset", "tagged", "--model-path", onnx_model, "--model-name", "resnet50"],
        capsys,
    )
    one_error(rc, err, "--model-name resnet50 does not apply")


def test_onnx_metadata_with_a_non_numeric_size_is_one_error_line(trained_run, onnx_model, tmp_path, capsys):
    import onnx

    proto = onnx.load(str(onnx_model))
    for p in proto.metadata_props:
        if p.key == "image_size":
            p.value = "big"
    onnx.save(proto, str(tmp_path / "m.onnx"))
    rc, _, err = call(
        "infer", ["--model-path", tmp_path / "m.onnx", "--pic-path", trained_run["data"] / "img" / "0000.png"], capsys
    )
    one_error(rc, err, "'image_size' is not a whole number")


def test_a_vit_at_an_opset_it_cannot_export_to_is_one_error_line(tmp_path, capsys):
    import timm

    from asl.checkpoint import make_checkpoint, save_checkpoint

    model = timm.create_model("test_vit", num_classes=3)
    save_checkpoint(
        make_checkpoint(
            model, model_name="test_vit", class_names=["a", "b", "c"], image_size=160, mean=(0.5,) * 3, std=(0.5,) * 3
        ),
        tmp_path / "vit.pth",
    )
    rc, _, err = call("export", ["--model-path", tmp_path / "vit.pth", "--opset", "13"], capsys)
    one_error(rc, err, "cannot be exported at --opset 13")
    assert not (tmp_path / "vit.onnx").exists()


def test_a_study_file_missing_keys_names_them(tmp_path):
    from asl.study import load_study

    (tmp_path / "s.yaml").write_text("name: s\nseeds: [0]\n")
    with pytest.raises(ConfigError, match="missing keys base_config, baseline, settings"):
        load_study(str(tmp_path / "s.yaml"))


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


def test_validate_matches_classes_by_name(trained_run, tmp_path, capsys):
    best = trained_run["out"] / "best.pth"
    true = validation_metrics([trained_run["data"], "--model-path", best], tmp_path, capsys, "a")
    reordered = _relabel(trained_run["data"], tmp_path / "reordered", order=["tree", "sky", "dog", "cat"])
    m = validation_metrics([reordered, "--model-path", best], tmp_path, capsys, "b")
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
    m = validation_metrics([renamed, "--model-path", best, "--class-names", names], tmp_path, capsys, "c")
    assert m["mAP"] == pytest.approx(true["mAP"], abs=1e-9)


def test_calibrated_thresholds_follow_the_models_output_order(trained_run, tmp_path, capsys):
    best = trained_run["out"] / "best.pth"
    reordered = _relabel(trained_run["data"], tmp_path / "reordered", order=["tree", "sky", "dog", "cat"])
    validation_metrics([trained_run["data"], "--model-path", best, "--calibrate"], tmp_path, capsys, "a")
    validation_metrics([reordered, "--model-path", best, "--calibrate"], tmp_path, capsys, "b")
    a = load_checkpoint(tmp_path / "a" / "calibrated.pth")["thresholds"]
    b = load_checkpoint(tmp_path / "b" / "calibrated.pth")["thresholds"]
    assert a == pytest.approx(b)


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


def _nested_pictures(trained_run, root):
    """Pictures in a nested tree: a/, a/b/ and the top."""
    src = sorted((trained_run["data"] / "img").glob("*.png"))[:5]
    for k, (rel) in enumerate(["top.png", "a/one.png", "a/two.png", "a/b/three.png", "a/b/four.png"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src[k], root / rel)
    return root


@pytest.mark.parametrize("kind", ["pth", "onnx"])
def test_folder_tagging_writes_a_sidecar_tree_and_a_scores_csv(kind, trained_run, tmp_path, capsys):
    pics = _nested_pictures(trained_run, tmp_path / "pics")
    model = trained_run["out"] / "best.pth"
    if kind == "onnx":
        rc, _, err = call("export", ["--model-path", model, "--output", tmp_path / "m.onnx", "--dynamic-batch"], capsys)
        assert rc == 0, err
        model = tmp_path / "m.onnx"
    before = tree_digest(pics)
    argv = ["--model-path", model, "--pic-path", pics, "--tags-out", tmp_path / "tags", "--batch-size", "16"]
    argv += ["--scores-csv", tmp_path / "scores.csv", "--th", "0", "--exclude-tags", "dog"]
    rc, out, err = call("infer", argv, capsys)
    assert rc == 0, err
    assert out.strip().startswith("5 pictures tagged ->")
    written = sorted(str(p.relative_to(tmp_path / "tags")) for p in (tmp_path / "tags").rglob("*.txt"))
    assert written == ["a/b/four.txt", "a/b/three.txt", "a/one.txt", "a/two.txt", "top.txt"]
    rows = list(csv.reader(open(tmp_path / "scores.csv")))
    assert rows[0] == ["image", "cat", "dog", "sky", "tree"] and len(rows) == 6
    for row in rows[1:]:
        rel = Path(row[0]).relative_to(pics).with_suffix(".txt")
        tags = (tmp_path / "tags" / rel).read_text().strip().split(", ")
        scores = dict(zip(rows[0][1:], map(float, row[1:])))
        assert tags == sorted((c for c in scores if c != "dog"), key=lambda c: -scores[c])  # --th 0, dog excluded
    assert tree_digest(pics) == before  # the pictures' folder is left as it was
    rc, _, err = call("infer", argv, capsys)
    one_error(rc, err, "exists (+4 more); pass --overwrite")
    rc, _, err = call("infer", [*argv, "--overwrite", "--min-score", "1"], capsys)
    assert rc == 0, err
    assert (tmp_path / "tags" / "top.txt").read_text() == "\n"  # no score reaches 1: no tag


def test_tags_out_bad_input_is_one_error(trained_run, tmp_path, capsys):
    pics = _nested_pictures(trained_run, tmp_path / "pics")
    shutil.copy(pics / "top.png", tmp_path / "top.png")
    best = trained_run["out"] / "best.pth"
    rc, _, err = call(
        "infer", ["--model-path", best, "--pic-path", pics, tmp_path / "top.png", "--tags-out", tmp_path / "t"], capsys
    )
    one_error(rc, err, "would both be tagged in")
    rc, _, err = call(
        "infer",
        ["--model-path", best, "--pic-path", pics, "--tags-out", tmp_path / "t", "--exclude-tags", "cow"],
        capsys,
    )
    one_error(rc, err, "'cow' is not a class of the model")
    assert not (tmp_path / "t").exists()


def test_validate_never_generates_data(trained_run, tmp_path, monkeypatch, capsys):
    """A checkpoint whose config names the demo's relative folder, validated from another folder:
    one error line, and no demo is generated there."""
    import torch

    ckpt = torch.load(trained_run["out"] / "best.pth", weights_only=True)
    ckpt["config"] = dict(ckpt["config"], data_root="data/demo", dataset="demo")
    torch.save(ckpt, tmp_path / "best.pth")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, _, err = call("validate", ["--model-path", tmp_path / "best.pth"], capsys)
    one_error(rc, err, "data folder not found: data/demo")
    assert "pass the data folder" in err[-1] and list(elsewhere.iterdir()) == []


def test_nan_scores_are_said_with_their_class_count(trained_run, tmp_path, capsys):
    """A diverged checkpoint whose outputs are NaN for 2 of its 4 classes: validate.py and infer.py
    both say how many classes score NaN, and name them."""
    import torch

    ckpt = torch.load(trained_run["out"] / "best.pth", weights_only=True)
    state = ckpt["model"]
    bias = next(k for k, v in state.items() if k.endswith("bias") and v.shape == (4,))
    state[bias][:2] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pth")
    rc, out, err = call("validate", [trained_run["data"], "--model-path", tmp_path / "nan.pth"], capsys)
    assert rc == 0 and "mAP" in out
    assert any("2 of 4 classes score NaN or inf: cat, dog" in line for line in err), err
    rc, out, err = call(
        "infer", ["--model-path", tmp_path / "nan.pth", "--pic-path", trained_run["data"] / "img"], capsys
    )
    assert rc == 0
    assert any("2 of 4 classes score NaN or inf: cat, dog" in line and "never tagged" in line for line in err), err


def test_every_tag_file_target_is_checked_before_the_first_write(trained_run, tmp_path, capsys):
    pics = _nested_pictures(trained_run, tmp_path / "pics")
    out = tmp_path / "tags"
    (out / "a").mkdir(parents=True)
    (out / "a" / "b").write_text("mine")  # a file where the folder of a/b/*.txt goes
    argv = ["--model-path", trained_run["out"] / "best.pth", "--pic-path", pics, "--tags-out", out, "--batch-size", "1"]
    rc, _, err = call("infer", argv, capsys)
    one_error(rc, err, f"{out / 'a' / 'b'} is a file, where a folder of tags goes")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a", "a/b"]  # nothing tagged
    assert (out / "a" / "b").read_text() == "mine"
