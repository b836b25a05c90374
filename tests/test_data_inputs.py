"""asl.data: label files as users have them, unusual and broken; one class-name rule for every dataset."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from asl.data import ReadOptions, build_transform, create_dataset
from asl.data.base import split_warnings
from asl.errors import DataError
from tests.conftest import make_coco, make_tagged, make_voc
from tests.helpers import TINY, call, one_error
from tests.test_images import fuzzed_dds


def _coco(root, edit):
    make_coco(root)
    ann = root / "annotations" / "instances_val2014.json"
    data = json.loads(ann.read_text())
    edit(data)
    ann.write_text(json.dumps(data))
    return ann


def test_unreadable_text_files_are_one_error_line(tmp_path):
    data = make_tagged(tmp_path / "t", n_train=4, n_val=2)
    (data / "classes.txt").write_bytes("chat\nchien\nciel\narbre\n\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="classes.txt: not a UTF-8 text file"):
        create_dataset("tagged", str(data), "train")
    (data / "classes.txt").unlink()
    (data / "classes.txt").mkdir()
    with pytest.raises(DataError, match="classes.txt is a folder"):
        create_dataset("tagged", str(data), "train")
    folder = tmp_path / "f"
    (folder / "labels.csv").mkdir(parents=True)
    with pytest.raises(DataError, match="is a folder"):
        create_dataset("tagged", str(folder), "train")
    voc = make_voc(tmp_path / "voc")
    (voc / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_bytes(b"00000\xff4\n")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        create_dataset("voc", str(voc), "test")


def test_duplicate_class_names_are_refused_for_every_dataset(tmp_path):
    data = make_tagged(tmp_path / "t", n_train=4, n_val=2)
    (data / "classes.txt").write_text("cat\ndog\nsky\ntree\ncat\n")
    with pytest.raises(DataError, match="listed twice .*'cat'"):
        create_dataset("tagged", str(data), "train")
    root = tmp_path / "c1"
    _coco(root, lambda d: d["categories"].append({"id": 8, "name": "kite"}))
    with pytest.raises(DataError, match="category name is listed twice .*'kite'"):
        create_dataset("coco", str(root), "val2014")
    root = tmp_path / "c2"
    _coco(root, lambda d: d["categories"].append({"id": 7, "name": "kite2"}))
    with pytest.raises(DataError, match="category id is listed twice"):
        create_dataset("coco", str(root), "val2014")
    root = tmp_path / "c3"
    _coco(root, lambda d: d["images"].append(dict(d["images"][0], file_name="other.jpg")))
    with pytest.raises(DataError, match="image id is listed twice"):
        create_dataset("coco", str(root), "val2014")


@pytest.mark.parametrize("bad", ["a\nb", "a\x00b"])
def test_tags_holding_a_newline_or_nul_are_refused(bad, tmp_path):
    import csv

    data = make_tagged(tmp_path / "t", n_train=4, n_val=2)
    rows = list(csv.reader(open(data / "labels.csv", newline="")))
    rows[1][1] = bad
    with open(data / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DataError, match="newline, tab, NUL"):
        create_dataset("tagged", str(data), "train")


@pytest.mark.parametrize("file_name", [None, 5, ""])
def test_coco_images_without_a_usable_file_name(file_name, tmp_path):
    root = tmp_path / "c"
    _coco(root, lambda d: d["images"][0].update(file_name=file_name))
    with pytest.raises(DataError, match="has no file name"):
        create_dataset("coco", str(root), "val2014")


def test_coco_ann_file_that_is_a_folder_and_json_with_a_bom(tmp_path):
    root = tmp_path / "c"
    ann = _coco(root, lambda d: None)
    with pytest.raises(DataError, match="is a folder, not a COCO annotation file"):
        create_dataset("coco", str(root), "train", ann_file=str(root / "annotations"))
    ann.write_bytes(b"\xef\xbb\xbf" + ann.read_bytes())  # saved by a Windows editor
    ds = create_dataset("coco", str(root), "val2014")
    assert ds.class_names == ["kite", "person", "toothbrush"] and len(ds) == 3


def test_a_coco_export_is_split_instead_of_validated_on_its_training_images(tmp_path):
    root = tmp_path / "c"
    ann = _coco(root, lambda d: None)
    kw = dict(ann_file=str(ann), image_dir=str(root / "val2014"), keep_unannotated=True, val_fraction=0.5)
    train = create_dataset("coco", str(root), "train", **kw)
    val = create_dataset("coco", str(root), "val", **kw)
    assert len(train) == 2 and len(val) == 2 and not set(train.paths) & set(val.paths)
    assert not any("both the training and the evaluation" in w for w in split_warnings(train, val))
    every = create_dataset("coco", str(root), "all", **kw)
    assert sorted(every.paths) == sorted(train.paths + val.paths)
    # an evaluation file of its own
    other = tmp_path / "o"
    make_coco(other, split="val2017")
    val2 = create_dataset(
        "coco",
        str(root),
        "val",
        val_ann_file=str(other / "annotations" / "instances_val2017.json"),
        val_image_dir=str(other / "val2017"),
        **kw,
    )
    assert all("val2017" in p for p in val2.paths) and len(val2) == 4
    assert create_dataset("coco", str(root), "train", **{**kw, "val_ann_file": str(ann)}).paths == every.paths


def test_the_train_command_splits_a_single_coco_export(tmp_path, capsys):
    from tests.helpers import TINY, call

    root = tmp_path / "c"
    ann = _coco(root, lambda d: None)
    rc, _, err = call(
        "train",
        [
            root,
            "--dataset",
            "coco",
            "--ann-file",
            ann,
            "--image-dir",
            root / "val2014",
            "--keep-unannotated",
            "--val-fraction",
            "0.5",
            *TINY,
            "--batch-size",
            "2",
            "--output",
            tmp_path / "o",
        ],
        capsys,
    )
    assert rc == 0, err
    assert not any("both the training and the evaluation split" in ln for ln in err)


def test_classes_without_validation_positives_are_named(tmp_path):
    data = make_tagged(tmp_path / "t", n_train=8, n_val=8)
    train = create_dataset("tagged", str(data), "train")
    val = create_dataset("tagged", str(data), "val")
    val.targets[:, 2] = 0
    warnings = split_warnings(train, val)
    assert any("of 4 classes have no positive" in w and "sky" in w and "AP 0" in w for w in warnings)


def test_a_one_image_tagged_set_names_val_fraction(tmp_path):
    data = make_tagged(tmp_path / "t", n_train=1, n_val=0, split_column=False)
    with pytest.raises(DataError, match="--val-fraction"):
        create_dataset("tagged", str(data), "val")


def test_an_unreadable_picture_inside_a_dataset_is_skipped_and_named(tmp_path, caplog):
    data = make_tagged(tmp_path / "t", n_train=8, n_val=2)
    fuzzed_dds(data / "img" / "0001.png")  # a fuzzed DDS file under a .png name
    ds = create_dataset("tagged", str(data), "train")
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == 8 and ds.bad_images == [str(data / "img" / "0001.png")]
    assert "0001.png" in caplog.text
    assert np.asarray(items[1][0]).size  # another picture in its place


def test_missing_files_are_listed_when_the_dataset_is_built(tagged_root, caplog):
    for i in (1, 5, 7):
        (tagged_root / "img" / f"{i:04d}.png").unlink()
    ds = create_dataset("tagged", str(tagged_root), "train", build_transform(False, 32))
    assert "3 of 48 images are missing" in caplog.text and "0005.png" in caplog.text
    assert ds.bad_count == 3  # counted before any image is read; 3 <= 5 (--max-bad-images) goes on
    with pytest.raises(DataError, match="3 of 48 images are missing or unreadable .*--max-bad-images"):
        create_dataset("tagged", str(tagged_root), "train", build_transform(False, 32), ReadOptions(max_bad_images=2))


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
