"""asl.data.demo: the demo replaces only the files it wrote itself, checked file by file."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from PIL import Image

from asl import cli
from asl.data import demo
from asl.data.demo import generate_demo
from asl.errors import DataError
from tests.helpers import call, one_error, tree_digest

SMALL = dict(num_train=6, num_val=3, image_size=16)


@pytest.fixture
def small_demo(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEFAULTS", dict(demo.DEFAULTS, **SMALL))  # the demo's own step, at a tiny size
    return demo.ensure_demo(tmp_path / "d", num_classes=20)


def test_a_users_photo_in_a_sub_folder_of_a_demo_copy_survives(small_demo):
    (small_demo / "images" / "mine").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(small_demo / "images" / "mine" / "photo.webp")
    before = tree_digest(small_demo)
    assert cli.run(demo.main, [str(small_demo), "--classes", "40"]) == 2
    assert tree_digest(small_demo) == before and (small_demo / "images" / "mine" / "photo.webp").is_file()


def test_a_dataset_begun_as_a_demo_copy_is_never_replaced(small_demo, tmp_path, capsys):
    # the user kept demo.json, wrote their own labels.csv and put their own picture in
    rows = [
        ["image", "labels", "split"],
        ["images/train/000000.png", "mine", "train"],
        ["images/val/000000.png", "mine", "val"],
    ]
    with open(small_demo / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(small_demo / "images" / "train" / "000000.png")
    (small_demo / "classes.txt").write_text("mine\n")
    before = tree_digest(small_demo)
    rc, _, err = call(
        "train", [small_demo, "--demo-classes", "10", "--epochs", "1", "--output", tmp_path / "o"], capsys
    )
    one_error(rc, err, "other files or changes")
    assert "labels.csv changed" in err[-1]
    assert tree_digest(small_demo) == before and not (tmp_path / "o").exists()


def test_the_demo_as_generated_is_replaced_and_an_identical_one_kept(small_demo):
    meta = json.loads((small_demo / "demo.json").read_text())
    assert meta["version"] == demo.VERSION and "labels.csv" in meta["files"]
    stamp = (small_demo / "labels.csv").stat().st_mtime_ns
    demo.ensure_demo(small_demo, num_classes=20)  # identical: nothing is written
    assert (small_demo / "labels.csv").stat().st_mtime_ns == stamp
    demo.ensure_demo(small_demo, num_classes=10)  # another demo, over the untouched one: replaced
    assert json.loads((small_demo / "demo.json").read_text())["num_classes"] == 10


def test_a_demo_without_a_manifest_is_used_but_never_replaced(small_demo):
    meta = json.loads((small_demo / "demo.json").read_text())
    del meta["files"]
    meta["version"] = 1  # written by an earlier version: nothing says which files are its own
    (small_demo / "demo.json").write_text(json.dumps(meta))
    assert demo.ensure_demo(small_demo, num_classes=20) == small_demo  # same parameters: used as it is
    copy = small_demo.parent / "copy"
    shutil.copytree(small_demo, copy)
    with pytest.raises(DataError, match="older version"):
        demo.ensure_demo(copy, num_classes=10)
    assert tree_digest(copy) == tree_digest(small_demo)


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
