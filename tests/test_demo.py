"""asl.data.demo: the demo replaces only the files it wrote itself, checked file by file."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from PIL import Image

from asl import cli
from asl.data import demo
from asl.errors import DataError
from tests.test_safety import call, one_error, tree_digest

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
