"""asl.data: the demo generator, the tagged loader, transforms; MS-COCO, Pascal VOC and NUS-WIDE on tiny
datasets in their exact on-disk layouts; label files as users have them, unusual and broken; one
class-name rule for every dataset."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from asl import cli
from asl.data import ReadOptions, build_transform, create_dataset
from asl.data.base import split_warnings
from asl.data.demo import CLASS_NAMES, generate_demo
from asl.data.transforms import CutoutPIL
from asl.data.voc import VOC_CLASSES
from asl.errors import DataError
from tests.conftest import make_coco, make_tagged, make_voc
from tests.helpers import TINY, assert_one_line_error, call, fuzzed_dds, one_error, run_script

from .conftest import make_nuswide


def test_demo_generation_is_deterministic_and_shaped(tmp_path):
    a = generate_demo(tmp_path / "a", num_train=120, num_val=40, seed=3)
    b = generate_demo(tmp_path / "b", num_train=120, num_val=40, seed=3)
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    assert (a / "images/train/000005.png").read_bytes() == (b / "images/train/000005.png").read_bytes()
    ds = create_dataset("tagged", str(a), "train")
    assert len(ds) == 120 and ds.class_names == CLASS_NAMES and len(CLASS_NAMES) == 80
    img, target = ds[0]
    assert img.size == (64, 64) if not isinstance(img, torch.Tensor) else img.shape[-1] == 64
    card = (ds.targets == 1).sum(1)
    assert card.min() >= 1 and card.max() <= 4
    assert 2.2 < card.mean() < 3.2
    val = create_dataset("tagged", str(a), "val")
    assert len(val) == 40
    c = generate_demo(tmp_path / "c", num_train=120, num_val=40, seed=4)
    assert (c / "labels.csv").read_text() != (a / "labels.csv").read_text()


def test_demo_statistics_match_the_design(tmp_path):
    root = generate_demo(tmp_path / "d", num_train=1500, num_val=10, seed=0)
    t = create_dataset("tagged", str(root), "train").targets
    assert 0.028 < (t == 1).mean() < 0.040  # ~3.4% of labels positive
    freq = np.sort((t == 1).sum(0))[::-1]
    assert freq[0] > 10 * max(freq[-10:].mean(), 1)  # Zipf-like: a long tail


def test_tagged_loader_reads_labels(tagged_root):
    ds = create_dataset("tagged", str(tagged_root), "train", build_transform(False, 32))
    assert ds.class_names == ["cat", "dog", "sky", "tree"]
    rows = list(csv.reader(open(tagged_root / "labels.csv")))[1:]
    first = rows[0]
    img, target = ds[0]
    assert img.shape == (3, 32, 32) and target.dtype == torch.float32
    expected = [1.0 if c in first[1].split("|") else 0.0 for c in ds.class_names]
    assert target.tolist() == expected


def test_classes_txt_fixes_order_and_unknown_tags_fail(tagged_root):
    (tagged_root / "classes.txt").write_text("tree\nsky\ndog\ncat\n")
    assert create_dataset("tagged", str(tagged_root), "val").class_names == ["tree", "sky", "dog", "cat"]
    (tagged_root / "classes.txt").write_text("tree\nsky\n")
    with pytest.raises(DataError, match="not in"):
        create_dataset("tagged", str(tagged_root), "val")


def test_split_without_split_column_is_seeded(tmp_path):
    root = make_tagged(tmp_path / "t", n_train=30, n_val=10, split_column=False)
    tr = create_dataset("tagged", str(root), "train", val_fraction=0.25, seed=0)
    va = create_dataset("tagged", str(root), "val", val_fraction=0.25, seed=0)
    assert len(tr) == 30 and len(va) == 10 and not set(tr.paths) & set(va.paths)
    assert create_dataset("tagged", str(root), "val", val_fraction=0.25, seed=0).paths == va.paths


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("img,tags\nx.png,a\n", "header"),
        ("image,labels,split\nx.png,a\n", "expected 3 fields"),
        ("image,labels,split\nx.png,a,holdout\n", "unknown split"),
    ],
)
def test_malformed_csv(tmp_path, content, fragment):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DataError, match=fragment):
        create_dataset("tagged", str(tmp_path), "train")


def test_missing_root_and_empty_split(tmp_path, tagged_root):
    with pytest.raises(DataError, match="not found"):
        create_dataset("tagged", str(tmp_path / "nowhere"), "train")
    with pytest.raises(DataError, match="empty"):
        create_dataset("tagged", str(tagged_root), "test")
    with pytest.raises(DataError, match="unknown dataset"):
        create_dataset("imagenet", str(tagged_root), "train")


def test_corrupt_image_is_skipped_and_named(tagged_root, caplog):
    (tagged_root / "img/0001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tagged_root / "img/0002.png").unlink()
    ds = create_dataset(
        "tagged", str(tagged_root), "train", build_transform(False, 32), ReadOptions(max_bad_fraction=0.1)
    )
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == len(ds)
    assert {p.split("/")[-1] for p in ds.bad_images} == {"0001.png", "0002.png"}
    assert "0001.png" in caplog.text and "0002.png" in caplog.text
    torch.testing.assert_close(items[1][1], torch.from_numpy(ds.targets[3]))  # the next readable sample
    # A missing file is found when the dataset is built, before any epoch.
    with pytest.raises(DataError, match="1 of 48 images are missing or unreadable"):
        create_dataset(
            "tagged",
            str(tagged_root),
            "train",
            build_transform(False, 32),
            ReadOptions(max_bad_fraction=0.0, max_bad_images=0),
        )
    shutil.copy(tagged_root / "img/0000.png", tagged_root / "img/0002.png")
    strict = create_dataset(
        "tagged",
        str(tagged_root),
        "train",
        build_transform(False, 32),
        ReadOptions(max_bad_fraction=0.0, max_bad_images=0),
    )
    strict[0]
    with pytest.raises(DataError, match="unreadable"):
        strict[1]


def test_transforms_squish_and_normalize():
    from PIL import Image

    img = Image.new("RGB", (100, 30), (255, 0, 0))
    t = build_transform(False, 48)(img)
    assert t.shape == (3, 48, 48) and float(t[0].mean()) == pytest.approx(1.0)  # no normalization
    t = build_transform(False, 48, mean=(0.5,) * 3, std=(0.5,) * 3)(img)
    assert float(t[0].mean()) == pytest.approx(1.0) and float(t[1].mean()) == pytest.approx(-1.0)
    aug = build_transform(True, 48, augment="cutout_randaugment")
    assert aug(img).shape == (3, 48, 48)
    out = np.asarray(CutoutPIL(0.5)(Image.new("RGB", (40, 40), (0, 0, 0))))
    assert 0 < (out.sum(-1) > 0).mean() <= 0.35


def test_training_decode_uses_jpeg_draft(tmp_path):
    from PIL import Image

    from asl.builders import dataset_from_config
    from asl.config import Config

    root = tmp_path / "t"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (256, 256), (10, 200, 30)).save(root / "img" / "a.jpg")
    Image.new("RGB", (256, 256), (10, 200, 30)).save(root / "img" / "b.jpg")
    (root / "labels.csv").write_text("image,labels,split\nimg/a.jpg,x,train\nimg/b.jpg,x,val\n")
    cfg = Config(dataset="tagged", data_root=str(root), image_size=64)
    train = dataset_from_config(cfg, train=True, mean=(0, 0, 0), std=(1, 1, 1))
    val = dataset_from_config(cfg, train=False, mean=(0, 0, 0), std=(1, 1, 1))
    assert train.load_image(0).size == (64, 64)  # decoded at 1/4 scale
    assert val.load_image(0).size == (256, 256)  # evaluation: the full decode, as the official code
    assert train[0][0].shape == val[0][0].shape == (3, 64, 64)


def test_label_noise_flips_a_seeded_fraction_of_positives(tagged_root):
    from asl.builders import flip_positives

    a = create_dataset("tagged", str(tagged_root), "train")
    b = create_dataset("tagged", str(tagged_root), "train")
    pos = int((a.targets == 1).sum())
    assert flip_positives(a, 0.25, seed=1) == round(0.25 * pos)
    assert int((a.targets == 1).sum()) == pos - round(0.25 * pos)
    assert int((a.targets == -1).sum()) == 0
    flip_positives(b, 0.25, seed=1)
    assert (a.targets == b.targets).all()


# --------------------------------------------------------------------------- label files as users have them


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


# --------------------------------------------------------------------------- MS-COCO, Pascal VOC and NUS-WIDE layouts


def test_coco_official_semantics(tmp_path):
    root = make_coco(tmp_path / "coco")
    ds = create_dataset("coco", str(root), "val", build_transform(False, 32))
    assert ds.class_names == ["kite", "person", "toothbrush"]  # coco.cats order, not sorted ids
    assert len(ds) == 3  # the unannotated image is left out
    np.testing.assert_array_equal(ds.targets, [[0, 1, 1], [1, 0, 0], [0, 1, 0]])
    assert ds.paths[0].endswith("val2014/COCO_val2014_000000000011.jpg")
    img, target = ds[0]
    assert img.shape == (3, 32, 32) and target.tolist() == [0.0, 1.0, 1.0]
    keep = create_dataset("coco", str(root), "val2014", keep_unannotated=True)
    assert len(keep) == 4 and keep.targets[3].sum() == 0


def test_coco_format_json_from_a_labeling_tool(tmp_path):
    root = make_coco(tmp_path / "coco", split="val2017")
    kw = dict(ann_file=str(root / "annotations/instances_val2017.json"), image_dir=str(root / "val2017"))
    ds = create_dataset("coco", str(tmp_path), "all", **kw)
    assert len(ds) == 3 and ds.class_names == ["kite", "person", "toothbrush"]
    train, val = (create_dataset("coco", str(tmp_path), s, **kw) for s in ("train", "val"))  # a seeded split
    assert (len(train), len(val)) == (2, 1) and sorted(train.paths + val.paths) == sorted(ds.paths)
    assert create_dataset("coco", str(root), "val").name == "coco val2017"  # 2017 when only it exists


def test_coco_bad_inputs(tmp_path):
    root = make_coco(tmp_path / "coco")
    ann = root / "annotations/instances_val2014.json"
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 9, "image_id": 22, "category_id": 55, "bbox": [0, 0, 1, 1], "area": 1})
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="unknown category id 55"):
        create_dataset("coco", str(root), "val")
    ann.write_text('{"images": [,}')
    with pytest.raises(DataError, match="malformed JSON"):
        create_dataset("coco", str(root), "val")
    with pytest.raises(DataError, match="instances_train2014.json or instances_train2017.json"):
        create_dataset("coco", str(root), "train")
    with pytest.raises(DataError, match="not found"):
        create_dataset("coco", str(tmp_path / "nowhere"), "val")
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DataError, match="empty"):
        create_dataset("coco", str(root), "val")


@pytest.mark.parametrize("difficult,expected", [("ignore", -1.0), ("positive", 1.0), ("negative", 0.0)])
def test_voc_difficult(tmp_path, difficult, expected):
    root = make_voc(tmp_path / "voc")
    ds = create_dataset("voc", str(root), "trainval", difficult=difficult)
    assert ds.class_names == list(VOC_CLASSES) and len(ds) == 3
    k = {c: i for i, c in enumerate(VOC_CLASSES)}
    t = ds.targets
    assert t[0, k["dog"]] == 1 and t[0, k["person"]] == 1 and t[0].sum() == 2
    assert t[1, k["cat"]] == expected and (np.delete(t[1], k["cat"]) == 0).all()
    assert t[2, k["cat"]] == 1 and t[2, k["car"]] == 1  # a difficult duplicate of an easy object is positive
    assert ds.paths[0].endswith("VOCdevkit/VOC2007/JPEGImages/000001.jpg")


def test_voc_bad_inputs(tmp_path):
    root = make_voc(tmp_path / "voc")
    d = root / "VOCdevkit/VOC2007"
    with pytest.raises(DataError, match="VOC split 'val' not found"):
        create_dataset("voc", str(root), "val")
    (d / "ImageSets/Main/val.txt").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        create_dataset("voc", str(root), "val")
    (d / "Annotations/000004.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DataError, match="000004.xml: malformed XML"):
        create_dataset("voc", str(root), "test")
    (d / "Annotations/000004.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DataError, match="unknown class 'unicorn'"):
        create_dataset("voc", str(root), "test")
    (d / "Annotations/000004.xml").unlink()
    with pytest.raises(DataError, match="annotation not found"):
        create_dataset("voc", str(root), "test")


def test_evaluation_leaves_difficult_labels_out(tmp_path):
    import numpy as np
    import torch

    from asl.engine import evaluate
    from asl.metrics import mAP, mAP_known

    targets = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    data = torch.utils.data.TensorDataset(torch.randn(4, 3), targets)
    model = torch.nn.Linear(3, 2)
    ev = evaluate(model, torch.utils.data.DataLoader(data, batch_size=2), torch.device("cpu"))
    assert ev["mAP"] == mAP_known(ev["targets"], ev["scores"])
    assert ev["per_class_ap"].shape == (2,) and ev["mAP"] == 100 * ev["per_class_ap"].mean()
    assert np.array_equal(ev["targets"], targets.numpy())
    clean = torch.utils.data.TensorDataset(torch.randn(4, 3), targets.clamp(min=0))
    ev = evaluate(model, torch.utils.data.DataLoader(clean, batch_size=2), torch.device("cpu"))
    assert ev["mAP"] == mAP(ev["targets"], ev["scores"])


def test_nuswide(tmp_path):
    root = make_nuswide(tmp_path / "nus")
    tr = create_dataset("nuswide", str(root), "train")
    assert tr.class_names == ["clouds", "sky", "water"] and len(tr) == 3
    np.testing.assert_array_equal(tr.targets, [[1, 1, 0], [0, 0, 0], [0, 1, 1]])  # [] = no label
    va = create_dataset("nuswide", str(root), "val")
    np.testing.assert_array_equal(va.targets, [[0, 0, 1], [0, 1, 0]])
    assert tr.paths[0].endswith("nus/images/a.jpg")


@pytest.mark.parametrize(
    "labels,fragment",
    [
        ("__import__('os').system('echo hi')", "not a list literal"),
        ("['sky'", "not a list literal"),
        ("[1, 2]", "list of names"),
    ],
)
def test_nuswide_labels_are_parsed_safely(tmp_path, labels, fragment):
    root = tmp_path / "nus"
    root.mkdir()
    (root / "nus_wid_data.csv").write_text(f'path,labels,split\nimages/a.jpg,"{labels}",train\n')
    with pytest.raises(DataError, match=fragment):
        create_dataset("nuswide", str(root), "train")


@pytest.mark.parametrize("fmt", ["coco", "voc", "nuswide", "tagged"])
def test_train_one_epoch_per_format(tmp_path, fmt):
    import train

    if fmt == "tagged":
        root = make_tagged(tmp_path / "tagged", n_train=8, n_val=4, split_column=False)
    elif fmt == "coco":
        root = make_coco(tmp_path / "coco", split="train2014")
        make_coco(root, split="val2014")
    elif fmt == "voc":
        root = make_voc(tmp_path / "voc")
    else:
        root = make_nuswide(tmp_path / "nus")
    out = tmp_path / "out"
    rc = cli.run(
        train.main,
        [
            str(root),
            "--dataset",
            fmt,
            "--no-pretrained",
            "--model-name",
            "test_resnet",
            "--image-size",
            "64",
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--output",
            str(out),
            "--augment",
            "cutout_randaugment",
        ],
    )
    assert rc == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(rec["train_loss"]) and 0 <= rec["mAP"] <= 100 and rec["bad_images"] == 0


@pytest.mark.slow
def test_corrupt_images_are_counted_across_workers(tmp_path):
    root = make_coco(tmp_path / "coco", split="train2014")
    make_coco(root, split="val2014")
    (root / "train2014/COCO_train2014_000000000022.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "out"
    proc = run_script(
        "train.py",
        root,
        "--dataset",
        "coco",
        "--no-pretrained",
        "--model-name",
        "test_resnet",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--workers",
        "2",
        "--output",
        out,
        "--keep-unannotated",
        "--config",
        _tolerant(tmp_path),
    )  # 4 images: a batch per worker
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["bad_images"] == 1
    assert proc.stderr.count("COCO_train2014_000000000022.jpg") >= 1
    assert_one_line_error(
        run_script(
            "train.py",
            root,
            "--dataset",
            "coco",
            "--no-pretrained",
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--workers",
            "2",
            "--batch-size",
            "2",
            "--keep-unannotated",
            "--max-bad-images",
            "0",
            "--output",
            tmp_path / "strict",
        ),
        "unreadable",
        after_logs=True,
    )


def _tolerant(tmp_path):
    f = tmp_path / "tolerant.yaml"
    f.write_text("max_bad_fraction: 0.5\nprint_freq: 0\n")
    return f


def test_each_dataset_declares_the_options_it_reads(tmp_path, capsys):
    import train

    # every option a dataset declares is a config field, and the factories take no catch-all
    from asl.config import FIELDS
    from asl.data import DATASET_OPTIONS, DATASETS
    from asl.errors import ConfigError

    assert set(DATASET_OPTIONS) <= set(FIELDS)
    root = make_voc(tmp_path / "voc")
    with pytest.raises(ConfigError, match="dataset voc does not take ann_file"):
        create_dataset("voc", str(root), "test", ann_file="x.json")
    assert create_dataset("voc", str(root), "test", voc_year="2007", difficult="positive").num_classes == 20
    assert DATASETS["coco"].options == (
        "ann_file",
        "image_dir",
        "keep_unannotated",
        "val_ann_file",
        "val_image_dir",
        "val_fraction",
        "seed",
    )
    # on the command line: an option of another dataset is one error line before any work
    out = tmp_path / "out"
    rc = cli.run(
        train.main,
        [
            str(root),
            "--dataset",
            "voc",
            "--no-pretrained",
            "--model-name",
            "test_resnet",
            "--image-size",
            "32",
            "--keep-unannotated",
            "--output",
            str(out),
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        rc == 2
        and len(err) == 1
        and err[0].startswith("error: --keep-unannotated True is not read by --dataset voc (it is a coco option)")
    )
    assert not out.exists()
    rc = cli.run(train.main, [str(root), "--dataset", "tagged", "--voc-year", "2012", "--output", str(out)])
    assert rc == 2 and "--voc-year '2012' is not read by --dataset tagged" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_is_generated_by_an_explicit_step_only(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO

    root = tmp_path / "demo"
    with pytest.raises(DataError, match="python -m asl.data.demo"):
        create_dataset("demo", str(root), "train", demo_classes=10)
    assert not root.exists()  # building a dataset reads; it never writes
    proc = subprocess.run(
        [sys.executable, "-m", "asl.data.demo", str(root), "--classes", "10"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "RuntimeWarning" not in proc.stderr, proc.stderr
    ds = create_dataset("demo", str(root), "val", demo_classes=10)
    assert ds.num_classes == 10 and len(ds) == 1000
    with pytest.raises(DataError, match="holds the 10-class demo"):
        create_dataset("demo", str(root), "val", demo_classes=80)
