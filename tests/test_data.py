"""Demo generator, tagged loader, transforms, bad files."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from asl.data import ReadOptions, build_transform, create_dataset
from asl.data.demo import CLASS_NAMES, generate_demo
from asl.data.transforms import CutoutPIL
from asl.errors import DataError

from .conftest import make_tagged


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
